"""archive index

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 21:11:01.278202
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

import pacs.db
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('study',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('patient', sa.Integer(), nullable=False),
    sa.Column('order', sa.Integer(), nullable=True),
    sa.Column('accession_number', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('study_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('study_date', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('study_time', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('referring_physician', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('modalities', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('number_of_series', sa.Integer(), nullable=False),
    sa.Column('number_of_instances', sa.Integer(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('received', sa.JSON(), nullable=False),
    sa.Column('charset', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('reconciled_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', pacs.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', pacs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order'], ['imaging_order.id'], ),
    sa.ForeignKeyConstraint(['patient'], ['patient.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_instance_uid')
    )
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index('ix_study_date_time', ['study_date', 'study_time'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_order'), ['order'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_patient'), ['patient'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_updated_at'), ['updated_at'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('study', sa.Integer(), nullable=False),
    sa.Column('modality', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('body_part', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('laterality', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('series_date', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('series_time', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('station_name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('institution', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('performing_physician', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('operators', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('protocol', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('calling_ae_title', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('number_of_instances', sa.Integer(), nullable=False),
    sa.Column('created_at', pacs.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', pacs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['study'], ['study.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('series_instance_uid')
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_modality'), ['modality'], unique=False)
        batch_op.create_index(batch_op.f('ix_series_study'), ['study'], unique=False)

    op.create_table('instance',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('series', sa.Integer(), nullable=False),
    sa.Column('sop_class_uid', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('transfer_syntax_uid', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('content_date', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('content_time', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('number_of_frames', sa.Integer(), nullable=True),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('checksum', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('received_at', pacs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['series'], ['series.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid')
    )
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instance_series'), ['series'], unique=False)

    op.create_table('instance_file',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('instance', sa.Integer(), nullable=False),
    sa.Column('area', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('checksum', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', pacs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['instance'], ['instance.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('instance_file', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instance_file_instance'), ['instance'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('instance_file', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_file_instance'))

    op.drop_table('instance_file')
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_series'))

    op.drop_table('instance')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study'))
        batch_op.drop_index(batch_op.f('ix_series_modality'))

    op.drop_table('series')
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_updated_at'))
        batch_op.drop_index(batch_op.f('ix_study_patient'))
        batch_op.drop_index(batch_op.f('ix_study_order'))
        batch_op.drop_index('ix_study_date_time')
        batch_op.drop_index(batch_op.f('ix_study_accession_number'))

    op.drop_table('study')

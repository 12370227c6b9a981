"""storage tiers

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 21:48:57.726240
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

import pacs.db
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('scrub_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('started_at', pacs.db.UTCDateTime(), nullable=False),
    sa.Column('finished_at', pacs.db.UTCDateTime(), nullable=True),
    sa.Column('checked', sa.Integer(), nullable=False),
    sa.Column('corrupt', sa.Integer(), nullable=False),
    sa.Column('missing', sa.Integer(), nullable=False),
    sa.Column('repaired', sa.Integer(), nullable=False),
    sa.Column('unrepairable', sa.Integer(), nullable=False),
    sa.Column('orphans', sa.Integer(), nullable=False),
    sa.Column('note', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('pending_replica',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('instance', sa.Integer(), nullable=False),
    sa.Column('area', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', pacs.db.UTCDateTime(), nullable=False),
    sa.Column('next_attempt_at', pacs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['instance'], ['instance.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('instance', 'area', name='uq_pending_replica')
    )
    with op.batch_alter_table('pending_replica', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pending_replica_instance'), ['instance'], unique=False)
        batch_op.create_index(batch_op.f('ix_pending_replica_next_attempt_at'), ['next_attempt_at'], unique=False)

    with op.batch_alter_table('instance_file', schema=None) as batch_op:
        batch_op.add_column(sa.Column('transfer_syntax_uid', sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('cached', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('verified_at', pacs.db.UTCDateTime(), nullable=True))
        batch_op.create_index('ix_instance_file_area', ['area', 'instance'], unique=False)

    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_accessed_at', pacs.db.UTCDateTime(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_column('last_accessed_at')

    with op.batch_alter_table('instance_file', schema=None) as batch_op:
        batch_op.drop_index('ix_instance_file_area')
        batch_op.drop_column('verified_at')
        batch_op.drop_column('cached')
        batch_op.drop_column('transfer_syntax_uid')

    with op.batch_alter_table('pending_replica', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pending_replica_next_attempt_at'))
        batch_op.drop_index(batch_op.f('ix_pending_replica_instance'))

    op.drop_table('pending_replica')
    op.drop_table('scrub_run')

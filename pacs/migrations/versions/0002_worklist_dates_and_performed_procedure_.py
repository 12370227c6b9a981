"""worklist dates and performed procedure steps

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 20:42:37.102601
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

import pacs.db
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('performed_procedure_step',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('calling_ae_title', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('order', sa.Integer(), nullable=True),
    sa.Column('step_ids', sa.JSON(), nullable=False),
    sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('modality', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('station_ae_title', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('pps_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('started', sa.DateTime(), nullable=True),
    sa.Column('ended', sa.DateTime(), nullable=True),
    sa.Column('performed_series', sa.JSON(), nullable=False),
    sa.Column('attributes', sa.JSON(), nullable=False),
    sa.Column('created_at', pacs.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', pacs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order'], ['imaging_order.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid')
    )
    with op.batch_alter_table('performed_procedure_step', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_performed_procedure_step_order'), ['order'], unique=False)

    with op.batch_alter_table('procedure_step', schema=None) as batch_op:
        batch_op.add_column(sa.Column('start_date', sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('start_time', sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                      server_default=''))
        batch_op.create_index(batch_op.f('ix_procedure_step_start_date'), ['start_date'], unique=False)

    # Fill the DICOM date and time strings of steps scheduled before this revision.
    bind = op.get_bind()
    steps = sa.table('procedure_step', sa.column('id', sa.Integer), sa.column('start', sa.DateTime),
                     sa.column('start_date', sa.String), sa.column('start_time', sa.String))
    for step_id, start in bind.execute(sa.select(steps.c.id, steps.c.start).where(steps.c.start.is_not(None))):
        bind.execute(steps.update().where(steps.c.id == step_id).values(
            start_date=start.strftime('%Y%m%d'), start_time=start.strftime('%H%M%S')))



def downgrade() -> None:
    with op.batch_alter_table('procedure_step', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_procedure_step_start_date'))
        batch_op.drop_column('start_time')
        batch_op.drop_column('start_date')

    with op.batch_alter_table('performed_procedure_step', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_performed_procedure_step_order'))

    op.drop_table('performed_procedure_step')

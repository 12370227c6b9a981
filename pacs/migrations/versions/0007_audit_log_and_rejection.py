"""audit log and rejection

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 21:58:25.212406
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

import pacs.db
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_cursor',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('last_id', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', pacs.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('audit_event',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('recorded_at', pacs.db.UTCDateTime(), nullable=False),
    sa.Column('event_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('event_type', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('outcome', sa.Integer(), nullable=False),
    sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('user_kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('target', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index('ix_audit_event_event_id_recorded_at', ['event_id', 'recorded_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_event_recorded_at'), ['recorded_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_event_user_id'), ['user_id'], unique=False)

    op.create_table('audit_object',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('event', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('value', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['event'], ['audit_event.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_object', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_object_event'), ['event'], unique=False)
        batch_op.create_index('ix_audit_object_kind_value', ['kind', 'value'], unique=False)

    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rejected_at', pacs.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('rejection_code', sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                      server_default=''))
        batch_op.create_index(batch_op.f('ix_instance_rejected_at'), ['rejected_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_rejected_at'))
        batch_op.drop_column('rejection_code')
        batch_op.drop_column('rejected_at')

    with op.batch_alter_table('audit_object', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_object_kind_value')
        batch_op.drop_index(batch_op.f('ix_audit_object_event'))

    op.drop_table('audit_object')
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_event_user_id'))
        batch_op.drop_index(batch_op.f('ix_audit_event_recorded_at'))
        batch_op.drop_index('ix_audit_event_event_id_recorded_at')

    op.drop_table('audit_event')
    op.drop_table('audit_cursor')

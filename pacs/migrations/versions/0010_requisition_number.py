"""paper requisition number of an order booked at the desk

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The number printed on a paper requisition the registration desk books (IHE RAD-3 filler
    # order): what the desk's scanner reads, so it is looked up by it.
    with op.batch_alter_table('imaging_order') as batch:
        batch.add_column(sa.Column('requisition_number', sa.String(), nullable=False, server_default=''))
    op.create_index('ix_imaging_order_requisition_number', 'imaging_order', ['requisition_number'])


def downgrade() -> None:
    op.drop_index('ix_imaging_order_requisition_number', table_name='imaging_order')
    with op.batch_alter_table('imaging_order') as batch:
        batch.drop_column('requisition_number')

"""study publication

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 21:33:13.213877
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

import pacs.db
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.add_column(sa.Column('published_at', pacs.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('publish_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                      server_default=''))



def downgrade() -> None:
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_column('publish_hash')
        batch_op.drop_column('published_at')


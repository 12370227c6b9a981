"""shared links: a study shown without an account, for a while (consultation, cloud film)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 20:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import pacs.db

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A link issued for a study (pacs.auth.links.SharedLink): who made it, until when, revoked.
    op.create_table(
        'shared_link',
        sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('study_instance_uid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('purpose', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column('created_at', pacs.db.UTCDateTime(), nullable=False),
        sa.Column('expires_at', pacs.db.UTCDateTime(), nullable=False),
        sa.Column('revoked_at', pacs.db.UTCDateTime(), nullable=True),
        sa.Column('revoked_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_shared_link_study_instance_uid', 'shared_link', ['study_instance_uid'])


def downgrade() -> None:
    op.drop_index('ix_shared_link_study_instance_uid', table_name='shared_link')
    op.drop_table('shared_link')

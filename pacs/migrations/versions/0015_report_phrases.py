"""report phrases: each radiologist's own phrases for the report editor

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import pacs.db

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A radiologist's own phrases (pacs.reporting.models.ReportPhrase); the department's are in
    # the mappings (report_phrases.yaml).
    text = sqlmodel.sql.sqltypes.AutoString()
    op.create_table(
        'report_phrase',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('owner', text, nullable=False),
        sa.Column('abbreviation', text, nullable=False),
        sa.Column('title', text, nullable=False),
        sa.Column('text', text, nullable=False),
        sa.Column('modality', text, nullable=False),
        sa.Column('created_at', pacs.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('owner', 'abbreviation'),
    )
    op.create_index('ix_report_phrase_owner', 'report_phrase', ['owner'])


def downgrade() -> None:
    op.drop_index('ix_report_phrase_owner', table_name='report_phrase')
    op.drop_table('report_phrase')

"""radiology reports: one per order, its draft and claim, and its signed versions

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import pacs.db

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The report of an imaging order with the draft being written and who holds the claim
    # (pacs.reporting.models.Report), and each signed version, written once (ReportVersion:
    # HL7 OBR-25 P, F, C).
    text = sqlmodel.sql.sqltypes.AutoString()
    op.create_table(
        'report',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('order', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', text, nullable=False),
        sa.Column('status', text, nullable=False),
        sa.Column('template', text, nullable=False),
        sa.Column('claimed_by', text, nullable=False),
        sa.Column('claimed_at', pacs.db.UTCDateTime(), nullable=True),
        sa.Column('findings', text, nullable=False),
        sa.Column('impression', text, nullable=False),
        sa.Column('key_images', sa.JSON(), nullable=False),
        sa.Column('critical', sa.Boolean(), nullable=False),
        sa.Column('critical_told', text, nullable=False),
        sa.Column('critical_told_at', pacs.db.UTCDateTime(), nullable=True),
        sa.Column('draft_saved_at', pacs.db.UTCDateTime(), nullable=True),
        sa.Column('draft_revision', sa.Integer(), nullable=False),
        sa.Column('current_version', sa.Integer(), nullable=False),
        sa.Column('created_at', pacs.db.UTCDateTime(), nullable=False),
        sa.Column('updated_at', pacs.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['order'], ['imaging_order.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('order'),
    )
    for column in ('claimed_by', 'status', 'study_instance_uid'):
        op.create_index(f'ix_report_{column}', 'report', [column])
    op.create_table(
        'report_version',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('report', sa.Integer(), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('status', text, nullable=False),
        sa.Column('findings', text, nullable=False),
        sa.Column('impression', text, nullable=False),
        sa.Column('key_images', sa.JSON(), nullable=False),
        sa.Column('critical', sa.Boolean(), nullable=False),
        sa.Column('critical_told', text, nullable=False),
        sa.Column('critical_told_at', pacs.db.UTCDateTime(), nullable=True),
        sa.Column('author', text, nullable=False),
        sa.Column('author_name', text, nullable=False),
        sa.Column('signed_at', pacs.db.UTCDateTime(), nullable=False),
        sa.Column('verifier', text, nullable=False),
        sa.Column('verifier_name', text, nullable=False),
        sa.Column('verified_at', pacs.db.UTCDateTime(), nullable=True),
        sa.Column('reason', text, nullable=False),
        sa.Column('sr_sop_instance_uid', text, nullable=False),
        sa.Column('pdf_sop_instance_uid', text, nullable=False),
        sa.ForeignKeyConstraint(['report'], ['report.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('report', 'number'),
    )
    op.create_index('ix_report_version_report', 'report_version', ['report'])


def downgrade() -> None:
    op.drop_index('ix_report_version_report', table_name='report_version')
    op.drop_table('report_version')
    for column in ('claimed_by', 'status', 'study_instance_uid'):
        op.drop_index(f'ix_report_{column}', table_name='report')
    op.drop_table('report')

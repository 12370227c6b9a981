"""reconciliation list: what arrived and found no order

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 17:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import pacs.db

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A study (or, later, a non-DICOM file) the device rules found no order or more than one for,
    # with the reason and the candidate orders, until a person attaches it (IHE RAD PIR;
    # pacs.archive.reconciliation).
    text = sqlmodel.sql.sqltypes.AutoString()
    op.create_table(
        'reconciliation_item',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', text, nullable=False),
        sa.Column('status', text, nullable=False),
        sa.Column('study', sa.Integer(), nullable=True),
        sa.Column('area', text, nullable=False),
        sa.Column('key', text, nullable=False),
        sa.Column('file_name', text, nullable=False),
        sa.Column('media_type', text, nullable=False),
        sa.Column('patient', sa.Integer(), nullable=True),
        sa.Column('accession_number', text, nullable=False),
        sa.Column('study_instance_uid', text, nullable=False),
        sa.Column('keys', sa.JSON(), nullable=False),
        sa.Column('reason', text, nullable=False),
        sa.Column('device', text, nullable=False),
        sa.Column('candidates', sa.JSON(), nullable=False),
        sa.Column('order', sa.Integer(), nullable=True),
        sa.Column('resolved_by', text, nullable=False),
        sa.Column('resolution', text, nullable=False),
        sa.Column('created_at', pacs.db.UTCDateTime(), nullable=False),
        sa.Column('resolved_at', pacs.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['study'], ['study.id']),
        sa.ForeignKeyConstraint(['patient'], ['patient.id']),
        sa.ForeignKeyConstraint(['order'], ['imaging_order.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    for column in ('status', 'study', 'patient', 'accession_number', 'study_instance_uid'):
        op.create_index(f'ix_reconciliation_item_{column}', 'reconciliation_item', [column])


def downgrade() -> None:
    for column in ('status', 'study', 'patient', 'accession_number', 'study_instance_uid'):
        op.drop_index(f'ix_reconciliation_item_{column}', table_name='reconciliation_item')
    op.drop_table('reconciliation_item')

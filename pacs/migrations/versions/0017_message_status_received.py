"""the message browser's status and time together: errors of the last day

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 00:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # "Refused in the last 24 hours" read every refused message ever kept (the status index, then
    # each row's time); status and time in one index make it a range. Its first column serves
    # what the status index served.
    op.create_index('ix_message_status_received', 'message', ['status', 'received_at'])
    op.drop_index('ix_message_status', table_name='message')


def downgrade() -> None:
    op.create_index('ix_message_status', 'message', ['status'])
    op.drop_index('ix_message_status_received', table_name='message')

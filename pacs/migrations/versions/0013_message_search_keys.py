"""the message browser's search keys: MSH-10 and the accession number

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 17:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # /engine finds a message by its control ID alone (the sender index leads with the sending
    # application) or by an order's accession number, among millions.
    op.create_index('ix_message_control_id', 'message', ['control_id'])
    op.create_index('ix_message_accession_number', 'message', ['accession_number'])


def downgrade() -> None:
    op.drop_index('ix_message_accession_number', table_name='message')
    op.drop_index('ix_message_control_id', table_name='message')

"""case-insensitive name index

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 23:25:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Name wildcards match the alphabetic group without regard to case: an index on the
    # upper-cased value lets ZHANG* be a range instead of a scan (PS3.4 C.2.2.2.4 matching).
    op.create_index('ix_patient_name_alphabetic_upper', 'patient', [sa.text('upper(name_alphabetic)')])


def downgrade() -> None:
    op.drop_index('ix_patient_name_alphabetic_upper', table_name='patient')

"""search keys of the desk's patient search; walk-in counters

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = ('search_name', 'search_pinyin', 'search_initials', 'search_phone')
BATCH = 5000  # patients whose keys are computed and written at a time
# PostgreSQL's statistics target for the name keys: histogram buckets of 0.1 % of the patients
# rather than 1 %. The planner cannot estimate a prefix range inside one bucket (it took 罗, 1.2 %
# of the patients, for 5 rows and hashed them all); with these it knows a common surname from a
# rare one and joins the recent orders' patients to it by their keys, not the other way round.
STATISTICS = 1000


def upgrade() -> None:
    # The keys the desk's search matches names and phones by (pacs.registry.search), compared
    # byte by byte ("C" on PostgreSQL, SQLite's default BINARY) so that a prefix is an index range.
    key = sa.String().with_variant(sa.String(collation='C'), 'postgresql')
    for name in KEYS:
        op.add_column('patient', sa.Column(name, key, nullable=False, server_default=''))
    _fill_keys()
    for name in KEYS:
        op.create_index(f'ix_patient_{name}', 'patient', [name])
    if op.get_bind().dialect.name == 'postgresql':
        for name in KEYS[:3]:
            op.execute(f'ALTER TABLE patient ALTER COLUMN {name} SET STATISTICS {STATISTICS}')
    op.create_index('ix_patient_national_id', 'patient', ['national_id'])
    op.create_table(
        'registry_sequence',
        sa.Column('name', sa.String(), nullable=False),
        sa.Column('value', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def _fill_keys() -> None:
    """The keys of the patients already registered, computed as the registry computes them."""
    from pacs.registry.search import name_keys, phone_key

    bind = op.get_bind()
    patient = sa.table('patient', sa.column('id', sa.Integer), sa.column('name_alphabetic', sa.String),
                       sa.column('name_ideographic', sa.String), sa.column('phone', sa.String),
                       *(sa.column(name, sa.String) for name in KEYS))
    update = (patient.update().where(patient.c.id == sa.bindparam('row_id'))
              .values(**{name: sa.bindparam(f'new_{name}') for name in KEYS}))
    last = 0
    while True:
        rows = bind.execute(sa.select(patient.c.id, patient.c.name_alphabetic, patient.c.name_ideographic,
                                      patient.c.phone).where(patient.c.id > last).order_by(patient.c.id)
                            .limit(BATCH)).all()
        if not rows:
            return
        values = []
        for row_id, alphabetic, ideographic, phone in rows:
            keys = name_keys(alphabetic or '', ideographic or '')
            values.append({'row_id': row_id, 'new_search_name': keys.name, 'new_search_pinyin': keys.pinyin,
                           'new_search_initials': keys.initials, 'new_search_phone': phone_key(phone or '')})
        bind.execute(update, values)
        last = rows[-1][0]


def downgrade() -> None:
    op.drop_table('registry_sequence')
    op.drop_index('ix_patient_national_id', table_name='patient')
    for name in KEYS:
        op.drop_index(f'ix_patient_{name}', table_name='patient')
    with op.batch_alter_table('patient') as batch:
        for name in KEYS:
            batch.drop_column(name)

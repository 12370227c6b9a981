"""pacs.db.nested: each block of a batch is undone alone when it fails and kept when it succeeds,
its savepoint released with the next block's (one round trip on PostgreSQL) or by the commit;
a new transaction on the same session starts clean. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select
from sqlmodel import Session

from pacs.db import Database, nested, utcnow
from pacs.registry.models import Patient
from pacs.registry.service import PATIENT_DEFAULTS

PATIENT = Patient.__table__  # type: ignore[attr-defined]


@pytest.fixture
def db(database_url: str):  # type: ignore[no-untyped-def]
    database = Database(database_url)
    yield database
    database.dispose()


def add(session: Session, patient_id: str) -> None:
    now = utcnow()
    session.connection().execute(insert(PATIENT).values(
        {**{k: v for k, v in PATIENT_DEFAULTS.items() if k != "id"}, "patient_id": patient_id, "created_at": now,
         "updated_at": now}))


def stored(db: Database) -> list[str]:
    with db.engine.connect() as conn:
        return sorted(conn.execute(select(PATIENT.c.patient_id)).scalars())


def apply(session: Session, patient_id: str, fail: bool = False) -> bool:
    try:
        with nested(session, "message"):
            add(session, patient_id)
            if fail:
                add(session, patient_id + "-second")
                raise RuntimeError("this message fails part-way")
    except RuntimeError:
        return False
    return True


def test_a_failed_block_is_undone_alone_and_the_batch_goes_on(db: Database) -> None:
    with Session(db.engine) as session:
        outcomes = [apply(session, "A"), apply(session, "B", fail=True), apply(session, "C"),
                    apply(session, "D", fail=True), apply(session, "E")]
        session.commit()
        assert outcomes == [True, False, True, False, True]
        # the same session, a new transaction: nothing of the last one is released again
        apply(session, "F")
        apply(session, "G", fail=True)
        session.commit()
    assert stored(db) == ["A", "C", "E", "F"]


def test_a_rollback_of_the_transaction_undoes_its_blocks_and_the_next_one_starts_clean(db: Database) -> None:
    with Session(db.engine) as session:
        apply(session, "A")
        apply(session, "B")
        session.rollback()
        apply(session, "C")
        session.commit()
    assert stored(db) == ["C"]

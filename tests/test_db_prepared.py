"""pacs.db.Prepared: a Core statement compiled once and run on the driver's cursor gives what
SQLAlchemy's own execution gives (types converted both ways, constants the statement carries),
on SQLite and PostgreSQL; it runs only inside the caller's transaction and refuses statements
whose SQL depends on the values."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from sqlalchemy import bindparam, insert, select, update

from pacs.db import Database, Prepared, savepoint, utcnow
from pacs.integration.message_store import MESSAGE
from pacs.registry.models import Patient
from pacs.registry.service import PATIENT_DEFAULTS

PATIENT = Patient.__table__  # type: ignore[attr-defined]

INSERT_PATIENT = Prepared(insert(PATIENT).returning(PATIENT.c.id))
UPDATE_PATIENT = Prepared(update(PATIENT).where(PATIENT.c.id == bindparam("row_id")))
PATIENT_BY_ID = Prepared(select(PATIENT).where(PATIENT.c.id == bindparam("pk")))
NEWEST_OF = Prepared(select(PATIENT.c.id, PATIENT.c.patient_id).where(PATIENT.c.issuer == bindparam("issuer"))
                     .order_by(PATIENT.c.id.desc()).limit(1))


@pytest.fixture
def db(database_url: str):  # type: ignore[no-untyped-def]
    database = Database(database_url)
    yield database
    database.dispose()


def new_patient(**values: object) -> dict[str, object]:
    now = utcnow()
    return {**{k: v for k, v in PATIENT_DEFAULTS.items() if k != "id"}, "patient_id": "P1", "issuer": "HOSP", "family_name": "张", "given_name": "三", "sex": "M",
            "birth_date": date(1980, 2, 29), "created_at": now, "updated_at": now, **values}


def test_rows_read_back_as_sqlalchemy_reads_them(db: Database) -> None:
    with db.engine.connect() as conn, conn.begin():
        row_id = INSERT_PATIENT.rows(conn, new_patient())[0]["id"]
        prepared = PATIENT_BY_ID.first(conn, {"pk": row_id})
        core = dict(conn.execute(select(PATIENT).where(PATIENT.c.id == row_id)).one()._mapping)
    assert prepared == core
    assert prepared is not None and prepared["birth_date"] == date(1980, 2, 29)
    assert prepared["created_at"].tzinfo == UTC  # UTCDateTime's result processing ran


def test_timestamps_are_stored_as_utc_whatever_their_zone(db: Database) -> None:
    shanghai = datetime(2026, 11, 26, 18, 30, tzinfo=timezone(timedelta(hours=8)))
    with db.engine.connect() as conn, conn.begin():
        row_id = INSERT_PATIENT.rows(conn, new_patient(created_at=shanghai))[0]["id"]
        stored = conn.execute(select(PATIENT.c.created_at).where(PATIENT.c.id == row_id)).scalar_one()
    assert stored == datetime(2026, 11, 26, 10, 30, tzinfo=UTC)


def test_an_update_writes_only_the_columns_given_each_time(db: Database) -> None:
    with db.engine.connect() as conn, conn.begin():
        row_id = INSERT_PATIENT.rows(conn, new_patient())[0]["id"]
        UPDATE_PATIENT.execute(conn, {"sex": "F", "row_id": row_id})
        UPDATE_PATIENT.execute(conn, {"phone": "13900000000", "address": "北京", "row_id": row_id})
        row = PATIENT_BY_ID.first(conn, {"pk": row_id})
    assert row is not None
    assert (row["sex"], row["phone"], row["address"], row["family_name"]) == ("F", "13900000000", "北京", "张")


def test_constants_of_the_statement_and_many_rows(db: Database) -> None:
    with db.engine.connect() as conn, conn.begin():
        Prepared(insert(PATIENT)).execute_many(conn, [new_patient(patient_id=f"P{i}") for i in range(5)])
        newest = NEWEST_OF.rows(conn, {"issuer": "HOSP"})
        none = NEWEST_OF.first(conn, {"issuer": "elsewhere"})
    assert [r["patient_id"] for r in newest] == ["P4"]  # LIMIT 1, a value the statement carries
    assert none is None


def test_many_rows_in_one_statement_are_stored_as_one_at_a_time(db: Database) -> None:
    """Several rows (a pipeline on PostgreSQL) and one row (a plain execute) give the same:
    bytes, JSON, timestamps in any zone, text and NULLs."""
    shanghai = datetime(2026, 12, 7, 9, 5, tzinfo=timezone(timedelta(hours=8)))
    rows = [{"raw": f"MSH|^~\\&|{i}".encode() + b"\x00\xff", "received_at": shanghai + timedelta(minutes=i),
             "mapped": {"name": "王芳", "n": i} if i % 2 else None, "control_id": f"C{i}",
             "patient_id": "" if i == 2 else f"P{i}", "status": "PROCESSED"} for i in range(4)]
    many = Prepared(insert(MESSAGE))
    keys = (MESSAGE.c.raw, MESSAGE.c.received_at, MESSAGE.c.mapped, MESSAGE.c.control_id, MESSAGE.c.patient_id,
            MESSAGE.c.status)
    with db.engine.connect() as conn, conn.begin():
        many.execute_many(conn, rows)
        together = [tuple(r) for r in conn.execute(select(*keys).order_by(MESSAGE.c.id))]
        conn.execute(MESSAGE.delete())
        for row in rows:
            many.execute_many(conn, [row])
        alone = [tuple(r) for r in conn.execute(select(*keys).order_by(MESSAGE.c.id))]
    assert together == alone
    assert [r[0] for r in together] == [row["raw"] for row in rows]
    assert together[1][2] == {"name": "王芳", "n": 1} and together[1][1] == shanghai + timedelta(minutes=1)


def test_an_update_of_many_rows_by_id_writes_each_its_own_values(db: Database) -> None:
    """An UPDATE run for several rows writes each row's values to the row it names."""
    save = Prepared(update(MESSAGE).where(MESSAGE.c.id == bindparam("row_id")))
    with db.engine.connect() as conn, conn.begin():
        ids = [conn.execute(insert(MESSAGE).values(raw=b"MSH|", received_at=utcnow())).inserted_primary_key[0]
               for _ in range(4)]
        save.execute_many(conn, [{"status": f"S{n}", "mapped": {"n": n} if n else None, "error": None, "row_id": i}
                                 for n, i in enumerate(ids[:3])])
        stored = [tuple(r) for r in conn.execute(select(MESSAGE.c.status, MESSAGE.c.mapped, MESSAGE.c.error)
                                                  .order_by(MESSAGE.c.id))]
    assert stored[:3] == [("S0", None, None), ("S1", {"n": 1}, None), ("S2", {"n": 2}, None)]
    assert stored[3][0] not in ("S0", "S1", "S2")  # a row not named is left alone


def test_json_columns_are_serialised_as_sqlalchemy_would(db: Database) -> None:
    save = Prepared(update(MESSAGE).where(MESSAGE.c.id == bindparam("row_id")))
    with db.engine.connect() as conn, conn.begin():
        row_id = conn.execute(insert(MESSAGE).values(raw=b"MSH|", received_at=utcnow())).inserted_primary_key[0]
        save.execute_many(conn, [{"mapped": {"name": "王芳", "ids": [1, 2]}, "status": "PROCESSED", "row_id": row_id}])
        mapped = conn.execute(select(MESSAGE.c.mapped).where(MESSAGE.c.id == row_id)).scalar_one()
    assert mapped == {"name": "王芳", "ids": [1, 2]}


def test_a_rolled_back_savepoint_undoes_only_what_came_after_it(db: Database) -> None:
    with db.engine.connect() as conn:
        savepoint(conn, "SAVEPOINT whole")  # begins the transaction, as SQLAlchemy would have
        assert conn.in_transaction()
        kept = INSERT_PATIENT.rows(conn, new_patient(patient_id="KEPT"))[0]["id"]
        savepoint(conn, "SAVEPOINT message")
        INSERT_PATIENT.rows(conn, new_patient(patient_id="GONE"))
        savepoint(conn, "ROLLBACK TO SAVEPOINT message")
        savepoint(conn, "RELEASE SAVEPOINT message")
        savepoint(conn, "RELEASE SAVEPOINT whole")
        conn.commit()
    with db.engine.connect() as conn:
        ids = conn.execute(select(PATIENT.c.patient_id)).scalars().all()
    assert ids == ["KEPT"] and kept


def test_nothing_runs_outside_a_transaction(db: Database) -> None:
    with db.engine.connect() as conn, pytest.raises(RuntimeError, match="transaction"):
        PATIENT_BY_ID.first(conn, {"pk": 1})


def test_a_statement_rendered_per_execution_is_refused(db: Database) -> None:
    expanding = Prepared(select(PATIENT.c.id).where(PATIENT.c.patient_id.in_(bindparam("ids", expanding=True))))
    with db.engine.connect() as conn, conn.begin(), pytest.raises(ValueError, match="rendered at execution"):
        expanding.rows(conn, {"ids": ["P1"]})


def test_columns_left_out_take_their_defaults(db: Database) -> None:
    now = utcnow()
    with db.engine.connect() as conn, conn.begin():
        row_id = INSERT_PATIENT.rows(conn, {"patient_id": "P9", "created_at": now, "updated_at": now})[0]["id"]
        row = PATIENT_BY_ID.first(conn, {"pk": row_id})
    assert row is not None
    expected = {k: v for k, v in PATIENT_DEFAULTS.items() if k not in ("id", "patient_id", "created_at", "updated_at")}
    assert {k: row[k] for k in expected} == expected


def test_returning_each_gives_the_ids_in_the_order_of_the_rows(db: Database) -> None:
    insert_message = Prepared(insert(MESSAGE).returning(MESSAGE.c.id))
    rows = [{"raw": f"MSH|{i}".encode(), "control_id": f"C{i}", "received_at": utcnow(), "mapped": {"n": i}}
            for i in range(3)]
    with db.engine.connect() as conn, conn.begin():
        ids = [r["id"] for r in insert_message.returning_each(conn, rows)]
        stored = dict(conn.execute(select(MESSAGE.c.id, MESSAGE.c.control_id)).all())
    assert [stored[i] for i in ids] == ["C0", "C1", "C2"] and ids == sorted(ids)


def test_first_alone_reads_what_is_committed_outside_any_transaction(db: Database) -> None:
    """The lookup store() makes for every object received (pacs.archive.store.Archive._held)."""
    assert PATIENT_BY_ID.first_alone(db.engine, {"pk": 1}) is None
    with db.engine.connect() as conn, conn.begin():
        row_id = INSERT_PATIENT.rows(conn, new_patient(patient_id="ALONE"))[0]["id"]
        assert PATIENT_BY_ID.first_alone(db.engine, {"pk": row_id}) is None  # not committed yet
    row = PATIENT_BY_ID.first_alone(db.engine, {"pk": row_id})
    assert row is not None and row["patient_id"] == "ALONE" and row["created_at"].tzinfo == UTC
    checked_out = db.engine.pool.checkedout()  # type: ignore[attr-defined]
    for _ in range(3 * 30):  # more lookups than the pool holds connections: each goes back
        PATIENT_BY_ID.first_alone(db.engine, {"pk": row_id})
    assert db.engine.pool.checkedout() == checked_out  # type: ignore[attr-defined]


def test_insert_each_gives_each_row_its_own_id_in_order(db: Database) -> None:
    """On PostgreSQL the ids come from the sequence and the rows go in one executemany; on SQLite
    one INSERT … RETURNING a row: either way row n gets id n, and a later plain INSERT does not
    collide with them (the sequence moved on)."""
    names = ["一", "二", "三", "四"]
    with db.engine.connect() as conn, conn.begin():
        ids = INSERT_PATIENT.insert_each(conn, [new_patient(patient_id=f"E{n}", family_name=name)
                                                 for n, name in enumerate(names)])
        assert len(set(ids)) == 4 and ids == sorted(ids)
        for n, (row_id, name) in enumerate(zip(ids, names, strict=True)):
            stored = PATIENT_BY_ID.first(conn, {"pk": row_id})
            assert stored is not None and (stored["patient_id"], stored["family_name"]) == (f"E{n}", name)
        after = INSERT_PATIENT.rows(conn, new_patient(patient_id="E9"))[0]["id"]
        assert after > max(ids)
        assert INSERT_PATIENT.insert_each(conn, []) == []

"""pacs.db.Shapes: a SELECT built per request is compiled once per shape (the statement without
its values) and run on the driver's cursor, and reads exactly what SQLAlchemy's own execution
reads, on SQLite and PostgreSQL; statements whose SQL depends on the values still run, through
SQLAlchemy; the cache stays within its size."""

from __future__ import annotations

from datetime import UTC, date

import pytest
from sqlalchemy import insert, select

from pacs.db import Database, Shaped, Shapes, utcnow
from pacs.registry.models import Patient
from pacs.registry.service import PATIENT_DEFAULTS

PATIENT = Patient.__table__  # type: ignore[attr-defined]


@pytest.fixture
def db(database_url: str):  # type: ignore[no-untyped-def]
    database = Database(database_url)
    now = utcnow()
    rows = [("P1", "HOSP", "ZHANG", date(1980, 2, 29)), ("P2", "HOSP", "WANG", None), ("P3", "OTHER", "LI", date(1975, 1, 1))]
    with database.engine.begin() as conn:
        conn.execute(insert(PATIENT), [
            {**{k: v for k, v in PATIENT_DEFAULTS.items() if k != "id"}, "patient_id": pid, "issuer": issuer,
             "family_name": name, "name_alphabetic": name, "birth_date": born, "created_at": now, "updated_at": now}
            for pid, issuer, name, born in rows])
    yield database
    database.dispose()


def by_issuer(issuer: str):  # type: ignore[no-untyped-def]
    return select(PATIENT).where(PATIENT.c.issuer == issuer).order_by(PATIENT.c.patient_id).limit(10)


def sqlalchemy_rows(conn, statement) -> list[tuple[object, ...]]:  # type: ignore[no-untyped-def]
    return [tuple(row) for row in conn.execute(statement)]


def test_one_shape_compiled_once_reads_what_sqlalchemy_reads(db: Database) -> None:
    shapes = Shapes()
    with db.reader.connect() as conn:
        hosp = shapes.rows(conn, by_issuer("HOSP"))
        other = shapes.rows(conn, by_issuer("OTHER"))
        assert len(shapes) == 1  # the same statement with other values: one shape
        assert hosp == sqlalchemy_rows(conn, by_issuer("HOSP"))
        assert other == sqlalchemy_rows(conn, by_issuer("OTHER"))
    assert [row[PATIENT.c.keys().index("patient_id")] for row in hosp] == ["P1", "P2"]
    born = PATIENT.c.keys().index("birth_date")
    assert hosp[0][born] == date(1980, 2, 29) and hosp[1][born] is None  # the column types' readers ran
    assert hosp[0][PATIENT.c.keys().index("created_at")].tzinfo == UTC  # and UTCDateTime's


def test_other_keys_are_other_shapes(db: Database) -> None:
    shapes = Shapes()
    wildcard = select(PATIENT.c.patient_id).where(PATIENT.c.name_alphabetic.like("ZH%"))
    exact = select(PATIENT.c.patient_id).where(PATIENT.c.name_alphabetic == "LI")
    limited = by_issuer("HOSP").limit(1)
    with db.reader.connect() as conn:
        assert shapes.rows(conn, wildcard) == [("P1",)]
        assert shapes.rows(conn, exact) == [("P3",)]
        assert [row[1] for row in shapes.rows(conn, limited)] == ["P1"]
    assert len(shapes) == 3


def test_a_list_of_values_runs_through_sqlalchemy(db: Database) -> None:
    shapes = Shapes()
    with db.reader.connect() as conn:
        two = shapes.rows(conn, select(PATIENT.c.patient_id).where(PATIENT.c.patient_id.in_(["P1", "P3"]))
                          .order_by(PATIENT.c.patient_id))
        three = shapes.rows(conn, select(PATIENT.c.patient_id).where(PATIENT.c.patient_id.in_(["P1", "P2", "P3"]))
                            .order_by(PATIENT.c.patient_id))
    assert [tuple(row) for row in two] == [("P1",), ("P3",)]
    assert [tuple(row) for row in three] == [("P1",), ("P2",), ("P3",)]


def test_a_shaped_select_is_built_once_per_key(db: Database) -> None:
    """A Shaped statement is built from bound parameters once per key; its values only fill them."""
    shapes = Shapes()
    built = []

    def by_issuer_limited(values):  # type: ignore[no-untyped-def]
        built.append(values)
        return (select(PATIENT.c.patient_id).where(PATIENT.c.issuer == values[0])
                .order_by(PATIENT.c.patient_id).limit(values[1]))

    with db.reader.connect() as conn:
        assert shapes.rows(conn, Shaped(("issuer",), ("HOSP", 10), by_issuer_limited)) == [("P1",), ("P2",)]
        assert shapes.rows(conn, Shaped(("issuer",), ("OTHER", 10), by_issuer_limited)) == [("P3",)]
        assert shapes.rows(conn, Shaped(("issuer",), ("HOSP", 1), by_issuer_limited)) == [("P1",)]
    assert len(built) == 1 and len(shapes) == 1


def test_a_shaped_select_that_cannot_be_prepared_is_built_with_its_values(db: Database) -> None:
    """An expanding IN has no SQL before its values: each such query is built with them."""
    shapes = Shapes()

    def among(values):  # type: ignore[no-untyped-def]
        return select(PATIENT.c.patient_id).where(PATIENT.c.patient_id.in_(values[0])).order_by(PATIENT.c.patient_id)

    with db.reader.connect() as conn:
        assert [tuple(r) for r in shapes.rows(conn, Shaped(("among",), (["P1", "P3"],), among))] == [("P1",), ("P3",)]
        assert [tuple(r) for r in shapes.rows(conn, Shaped(("among",), (["P2"],), among))] == [("P2",)]


def test_the_cache_keeps_its_size_and_still_answers(db: Database) -> None:
    shapes = Shapes(size=2)
    statements = [select(PATIENT.c.patient_id).where(PATIENT.c.patient_id == "P1"),
                  select(PATIENT.c.patient_id).where(PATIENT.c.issuer == "OTHER"),
                  select(PATIENT.c.patient_id).where(PATIENT.c.family_name == "WANG")]
    with db.reader.connect() as conn:
        for _ in range(2):
            assert [shapes.rows(conn, s) for s in statements] == [[("P1",)], [("P3",)], [("P2",)]]
            assert len(shapes) <= 2


def test_a_read_outside_a_transaction_begins_none(db: Database) -> None:
    """A lone SELECT begins no transaction: on PostgreSQL it runs in autocommit (no BEGIN before
    it, no ROLLBACK when the connection goes back: two round trips of three), and the connection
    is back in its usual mode for the next user."""
    shapes = Shapes()
    with db.reader.connect() as conn:
        assert len(shapes.rows(conn, by_issuer("HOSP"))) == 2
        driver = conn.connection.driver_connection
        if db.engine.dialect.name == "postgresql":
            from psycopg.pq import TransactionStatus

            assert driver.info.transaction_status == TransactionStatus.IDLE  # type: ignore[union-attr]
            assert driver.autocommit is False  # type: ignore[union-attr]
        else:
            assert not driver.in_transaction  # type: ignore[union-attr]
        with conn.begin():  # within SQLAlchemy's transaction, the statement is part of it
            assert len(shapes.rows(conn, by_issuer("OTHER"))) == 1
            assert conn.in_transaction()


def test_a_reading_reads_both_ways_and_gives_its_connection_back(db: Database) -> None:
    """Database.reading: Shapes read on its pooled connection, a statement that goes SQLAlchemy's
    way runs on the same one, and the pool has it back afterwards, also after an error."""
    pool = db.engine.pool
    before = pool.checkedout()  # type: ignore[attr-defined]
    among = select(PATIENT.c.patient_id).where(PATIENT.c.patient_id.in_(["P1", "P3"])).order_by(PATIENT.c.patient_id)
    with db.reading() as reading:
        assert pool.checkedout() == before + 1  # type: ignore[attr-defined]
        assert [row[PATIENT.c.keys().index("patient_id")] for row in Shapes().rows(reading, by_issuer("HOSP"))] == [
            "P1", "P2"]
        assert [tuple(row) for row in reading.execute(among)] == [("P1",), ("P3",)]
        assert pool.checkedout() == before + 1  # type: ignore[attr-defined]
    assert pool.checkedout() == before  # type: ignore[attr-defined]
    with pytest.raises(ZeroDivisionError), db.reading() as reading:
        Shapes().rows(reading, by_issuer("OTHER"))
        raise ZeroDivisionError
    assert pool.checkedout() == before  # type: ignore[attr-defined]

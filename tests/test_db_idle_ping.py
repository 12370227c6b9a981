"""PostgreSQL connections that sat in the pool are pinged at checkout, and one the database has
dropped is replaced before anyone uses it; one back from work moments ago is not pinged (a round
trip every C-FIND and request paid), and a drop within that moment fails one statement, after
which the pool is renewed (SQLAlchemy's disconnect handling)."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy.exc import DBAPIError

from pacs import db as pacs_db
from pacs.db import Database


@pytest.fixture
def postgres(database_url: str):  # type: ignore[no-untyped-def]
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite: a file opened in this process, no connection to lose")
    database = Database(database_url)
    yield database
    database.dispose()


def backend_of(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def terminate(database_url: str, pid: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
    time.sleep(0.2)  # the backend is gone before the pool is used again


def test_an_idle_connection_the_database_dropped_is_replaced_at_checkout(postgres, database_url, monkeypatch):
    monkeypatch.setattr(pacs_db, "PING_AFTER_IDLE_SECONDS", 0.1)
    dropped = backend_of(postgres)
    terminate(database_url, dropped)
    assert backend_of(postgres) != dropped  # the ping failed, the pool connected afresh, nothing failed


def test_a_connection_used_moments_ago_is_not_pinged(postgres, database_url, monkeypatch):
    monkeypatch.setattr(pacs_db, "PING_AFTER_IDLE_SECONDS", 60.0)
    pings: list[object] = []
    ping = postgres.engine.dialect.do_ping
    monkeypatch.setattr(postgres.engine.dialect, "do_ping", lambda connection: pings.append(connection) or ping(connection))
    first = backend_of(postgres)
    assert backend_of(postgres) == first and pings == []  # the same connection, no ping
    terminate(database_url, first)
    with pytest.raises(DBAPIError) as failed:  # dropped within the moment: the statement finds it
        backend_of(postgres)
    assert failed.value.connection_invalidated
    assert backend_of(postgres) != first  # and the pool was renewed

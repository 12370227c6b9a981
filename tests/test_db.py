"""SQLite writers take turns through the lock file beside the database (pacs.db.WriterConnection,
used when several processes write: ``[dicom] processes``):
a write transaction holds it from BEGIN to COMMIT or ROLLBACK, a read-only one never takes it,
and a lock that cannot be had does not stop the transaction, which SQLite's own locking then
orders."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from pacs import db as pacs_db
from pacs.db import Database


@pytest.fixture
def database(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(f"sqlite:///{tmp_path / 'pacs.db'}", writer_lock=True)
    with database.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (n INTEGER)")
    yield database
    database.dispose()


def held(path: Path) -> bool:
    """Whether someone holds the writer lock (tried from a descriptor of our own)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_write_transaction_holds_the_lock_until_it_ends(database, tmp_path):
    lock = tmp_path / "pacs.db.writer"
    for ending in ("commit", "rollback"):
        connection = database.engine.connect()
        transaction = connection.begin()
        connection.execute(text("INSERT INTO t VALUES (1)"))
        assert held(lock)
        getattr(transaction, ending)()
        assert not held(lock)
        connection.close()
    with database.reader.connect() as reader, reader.begin():  # read-only: no lock
        assert reader.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
        assert not held(lock)


def test_a_waiting_writer_goes_in_when_the_other_commits(database):
    first = database.engine.connect()
    transaction = first.begin()
    first.execute(text("INSERT INTO t VALUES (1)"))
    entered = threading.Event()

    def second() -> None:
        with database.engine.begin() as connection:
            entered.set()
            connection.execute(text("INSERT INTO t VALUES (2)"))

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.2)
    assert not entered.is_set()  # it waits for the writer lock
    transaction.commit()
    first.close()
    thread.join(10)
    assert entered.is_set()
    with database.engine.connect() as connection:
        assert connection.execute(text("SELECT n FROM t ORDER BY n")).scalars().all() == [1, 2]


def test_a_lock_that_cannot_be_had_does_not_stop_the_transaction(database, tmp_path, monkeypatch):
    monkeypatch.setattr(pacs_db, "WRITER_TIMEOUT", 0.2)
    fd = os.open(tmp_path / "pacs.db.writer", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held by someone that never lets go
    try:
        with database.engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (3)"))
        with database.engine.connect() as connection:
            assert connection.execute(text("SELECT n FROM t")).scalars().all() == [3]
    finally:
        os.close(fd)

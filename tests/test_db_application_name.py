"""Each process names its PostgreSQL connections (``application_name``: the machine and the
process), so that ``pg_stat_activity`` and ``pg_locks`` tell the nodes of a cluster apart; a
name given in the database URL is kept."""

from __future__ import annotations

import os
import socket

import pytest

from pacs.db import Database

on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def seen_as(database: Database) -> str:
    with database.engine.connect() as connection:
        return str(connection.exec_driver_sql(
            "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()").scalar_one())


@on_postgresql
def test_connections_are_named_after_the_machine_and_the_process(database_url):
    database = Database(database_url)
    try:
        assert seen_as(database) == f"pacs {socket.gethostname()} {os.getpid()}"[:63]
    finally:
        database.dispose()


@on_postgresql
def test_a_name_in_the_url_is_kept(database_url):
    database = Database(f"{database_url}?application_name=reporting-replica")
    try:
        assert seen_as(database) == "reporting-replica"
    finally:
        database.dispose()

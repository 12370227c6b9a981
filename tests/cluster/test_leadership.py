"""Singleton jobs on several nodes sharing one PostgreSQL database: one node leads a job at a time,
and when the leader's connection dies another node takes the job over."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import text

from pacs.cluster import Leadership
from pacs.db import Database
from pacs.housekeeping import Housekeeping, Job
from pacs.settings import Settings


def postgres_only(url: str) -> None:
    if url.startswith("sqlite"):
        pytest.skip("SQLite: one process owns the database, so there is no second node to lead")


def terminate(db: Database, leadership: Leadership) -> None:
    """Cut the leader's connection as a dead node's would be (pg_terminate_backend)."""
    assert leadership._connection is not None
    pid = leadership._connection.execute(text("SELECT pg_backend_pid()")).scalar()
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()


def wait_until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sqlite_always_leads(database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the SQLite case")
    db = Database(database_url)
    assert Leadership(db, "retention").leads() and Leadership(db, "retention").leads()
    db.dispose()


def test_one_node_runs_the_job_at_a_time_and_a_dead_leader_hands_it_over(database_url: str) -> None:
    postgres_only(database_url)
    nodes = [Database(database_url) for _ in range(2)]
    try:
        leaders = [Leadership(db, "retention") for db in nodes]
        inside = 0
        overlaps = 0
        runs = [0, 0]
        guard = threading.Lock()
        start = threading.Barrier(2)

        def node(number: int) -> None:
            nonlocal inside, overlaps
            start.wait()
            for _ in range(100):
                if not leaders[number].leads():
                    time.sleep(0.001)
                    continue
                with guard:
                    inside += 1
                    overlaps += inside > 1
                    runs[number] += 1
                time.sleep(0.002)  # the job's work: the other node asks meanwhile
                with guard:
                    inside -= 1

        threads = [threading.Thread(target=node, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert overlaps == 0, "both nodes ran the job at once"
        assert sorted(runs) == [0, 100], runs
        leader = runs.index(100)
        follower = 1 - leader
        assert not leaders[follower].leads()

        terminate(nodes[follower], leaders[leader])
        wait_until(lambda: leaders[follower].leads())  # the lock died with the connection
        assert not leaders[leader].leads(), "the old leader still believes it leads"

        leaders[follower].resign()  # a node that stops gives the lead up at once
        assert leaders[leader].leads()
        leaders[leader].resign()
    finally:
        for db in nodes:
            db.dispose()


def test_housekeeping_runs_retention_on_one_node_then_on_the_next(database_url: str, settings: Settings) -> None:
    postgres_only(database_url)
    nodes = []
    ran: list[str] = []
    for name in ("node-a", "node-b"):
        db = Database(database_url)
        housekeeping = Housekeeping(SimpleNamespace(settings=settings, db=db), first_run_delay=0.0)
        housekeeping.jobs = [Job("retention", lambda name=name: ran.append(name), lambda: 0.001),
                             Job("metadata", lambda name=name: ran.append(f"{name} metadata"), lambda: 0.001,
                                 singleton=False)]
        nodes.append((db, housekeeping))
    try:
        for _ in range(5):
            for _, housekeeping in nodes:
                housekeeping.run_due()
                time.sleep(0.002)
        singleton = [name for name in ran if not name.endswith("metadata")]
        assert len(singleton) == 5 and len(set(singleton)) == 1, ran
        assert {name for name in ran if name.endswith("metadata")} == {"node-a metadata", "node-b metadata"}
        leader = 0 if singleton[0] == "node-a" else 1
        terminate(nodes[1 - leader][0], nodes[leader][1].leadership)
        ran.clear()
        for _ in range(3):
            for _, housekeeping in reversed(nodes) if leader == 0 else nodes:
                housekeeping.run_due()
                time.sleep(0.002)
        assert "node-a" in ran or "node-b" in ran
        assert {name for name in ran if not name.endswith("metadata")} == {"node-b" if leader == 0 else "node-a"}
    finally:
        for db, housekeeping in nodes:
            housekeeping.leadership.resign()
            db.dispose()

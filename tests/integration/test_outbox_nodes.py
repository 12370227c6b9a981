"""Several outbox workers on one PostgreSQL database, as nodes behind a load balancer run them:
each item is delivered once, in order per destination, and a node that dies frees its queue."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from pacs.db import Database
from pacs.integration.outbox import (
    Delivered,
    OutboxItem,
    OutboxStatus,
    OutboxWorker,
    destination_lock_key,
    enqueue,
)

DESTINATIONS = ("his", "platform", "dicom:CT1")


def postgres_only(url: str) -> None:
    if url.startswith("sqlite"):
        pytest.skip("SQLite: one process owns the database, so there is no second node to share a queue with")


def wait_until(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def statuses(db: Database) -> list[str]:
    with db.session(read_only=True) as session:
        return list(session.exec(select(OutboxItem.status)).all())


def test_two_nodes_deliver_each_item_once_in_order_per_destination(database_url: str) -> None:
    postgres_only(database_url)
    db = Database(database_url)
    with db.session() as session:
        for n in range(40):
            for destination in DESTINATIONS:
                enqueue(session, destination=destination, kind="hl7v2", payload=f"{destination} {n}")
    delivered: list[tuple[str, str, int]] = []
    guard = threading.Lock()

    def deliverer(node: str):  # type: ignore[no-untyped-def]
        def deliver(item: OutboxItem) -> Delivered:
            time.sleep(0.002)  # a receiver's round trip: both nodes are inside a delivery at once
            with guard:
                delivered.append((node, item.destination, item.id or 0))
            return Delivered("AA")
        return deliver

    nodes = []
    for node in ("node-a", "node-b"):
        own = Database(database_url)  # each node its own engine and pool
        deliver = deliverer(node)
        nodes.append((own, OutboxWorker(own, {"his": deliver, "platform": deliver, "dicom:": deliver},
                                        poll_seconds=0.01)))
    for _, worker in nodes:
        worker.start()
    try:
        wait_until(lambda: set(statuses(db)) == {OutboxStatus.SENT})
    finally:
        for own, worker in nodes:
            worker.stop()
            own.dispose()
    ids = [item_id for _, _, item_id in delivered]
    assert len(ids) == 3 * 40 and len(set(ids)) == len(ids), "an item was delivered twice"
    per_destination: dict[str, list[int]] = defaultdict(list)
    for _, destination, item_id in delivered:
        per_destination[destination].append(item_id)
    assert set(per_destination) == set(DESTINATIONS)
    for destination, order in per_destination.items():
        assert order == sorted(order), f"{destination} delivered out of order"
    with db.session(read_only=True) as session:
        assert all(row.attempts == 1 for row in session.exec(select(OutboxItem)).all())
    db.dispose()


def test_a_node_that_dies_mid_delivery_frees_its_queue_for_another(database_url: str) -> None:
    postgres_only(database_url)
    db = Database(database_url)
    with db.session() as session:
        first = enqueue(session, destination="his", kind="hl7v2", payload="MSH|first")
        enqueue(session, destination="his", kind="hl7v2", payload="MSH|second")
    inside = threading.Event()
    release = threading.Event()
    survivor: list[int] = []

    def hanging(item: OutboxItem) -> Delivered:  # the first node stops answering inside a delivery
        inside.set()
        release.wait(60)
        raise ConnectionError("node gone")

    def working(item: OutboxItem) -> Delivered:
        survivor.append(item.id or 0)
        return Delivered("AA")

    dying_db, surviving_db = Database(database_url), Database(database_url)
    dying = OutboxWorker(dying_db, {"his": hanging}, poll_seconds=0.01, base_delay=30)
    surviving = OutboxWorker(surviving_db, {"his": working}, poll_seconds=0.01)
    dying.start()
    try:
        assert inside.wait(30)
        surviving.start()
        time.sleep(0.5)
        assert survivor == [], "the queue was delivered while another node held it"
        # The dying node's connections go, as they do when its machine stops: its lock with them.
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            key = destination_lock_key("his") & 0xFFFFFFFFFFFFFFFF  # a bigint key: classid high, objid low
            holders = connection.execute(text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND classid::bigint = :high AND objid::bigint = :low"),
                {"high": key >> 32, "low": key & 0xFFFFFFFF}).scalars().all()
            assert len(holders) == 1
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": holders[0]})
        wait_until(lambda: len(survivor) == 2)
        assert survivor[0] == first.id  # the unanswered item first, then the one behind it
    finally:
        release.set()
        dying.stop()
        surviving.stop()
        dying_db.dispose()
        surviving_db.dispose()
    with db.session(read_only=True) as session:
        rows = session.exec(select(OutboxItem).order_by(col(OutboxItem.id))).all()
        assert [row.status for row in rows] == [OutboxStatus.SENT, OutboxStatus.SENT]
    db.dispose()

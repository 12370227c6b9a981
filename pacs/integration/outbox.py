"""The outbox: every outbound delivery, written in the same transaction as the change it reports.

A status change that the HIS must hear about is enqueued by the code that makes the change,
inside its unit of work, so the two commit together or not at all (the transactional outbox).
A worker delivers each destination's items in order, retries failures with exponential backoff,
and gives up only on a definite refusal (an HL7 AE/AR) or after ``max_attempts``; what it gave up
on stays visible and can be sent again (``pacs outbox retry``, ``POST /api/outbox/{id}/retry``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import text
from sqlmodel import Field, Session, SQLModel, col, func, select

from pacs.db import Database, UTCDateTime, utcnow

log = logging.getLogger(__name__)


class OutboxStatus(StrEnum):
    PENDING = "PENDING"  # not yet tried
    RETRYING = "RETRYING"  # tried, failed for a reason that may pass; will be tried again
    SENT = "SENT"  # delivered and accepted
    DEAD = "DEAD"  # refused, or out of attempts: waits for a person


class OutboxItem(SQLModel, table=True):
    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    destination: str = Field(index=True)  # "his", "platform", a peer's AE title ...
    kind: str  # "hl7v2", "fhir"
    description: str = ""  # what it says, for people: "ORM^O01 SC IP for A00000042"
    payload: str  # the message as it will be sent
    status: str = Field(default=OutboxStatus.PENDING, index=True)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_error: str = ""
    response: str = ""
    order: int | None = None  # the order it is about, if any
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


def enqueue(session: Session, *, destination: str, kind: str, payload: str, description: str = "",
            order: int | None = None) -> OutboxItem:
    """Add a delivery to the caller's unit of work (it is sent only if that commits)."""
    item = OutboxItem(destination=destination, kind=kind, payload=payload, description=description, order=order)
    session.add(item)
    return item


class DeliveryRefused(Exception):
    """The receiver answered and said no: retrying the same content will not help."""

    def __init__(self, reason: str, response: str = "") -> None:
        super().__init__(reason)
        self.response = response


@dataclass
class Delivered:
    response: str = ""


Deliver = Callable[[OutboxItem], Delivered]


WAITING = (OutboxStatus.PENDING, OutboxStatus.RETRYING)


def destination_lock_key(destination: str) -> int:
    """The PostgreSQL advisory lock key (a signed 64-bit integer) of one destination's queue."""
    digest = hashlib.blake2b(f"outbox:{destination}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class OutboxWorker:
    """Delivers due items, oldest first, one destination's queue at a time in order.

    Several processes may run a worker on one PostgreSQL database (nodes behind a load
    balancer): a worker delivers a destination's head only while it holds that destination's
    session-level advisory lock (PostgreSQL 15 §9.27.10), taken with ``pg_try_advisory_lock`` on
    a connection of its own, so one destination is served by one worker at a time, in order. The
    lock dies with the connection: a node that stops mid-delivery frees the queue for the
    others, which deliver the item again (at least once; a receiver that keeps MSH-10 or the
    resource's conditional key sees one). On SQLite, one process owns the database and needs no
    lock.
    """

    def __init__(self, db: Database, deliverers: dict[str, Deliver], *, poll_seconds: float = 1.0,
                 base_delay: float = 2.0, max_delay: float = 300.0, max_attempts: int = 1000) -> None:
        self.db = db
        self.deliverers = deliverers
        self.poll_seconds = poll_seconds
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_attempts = max_attempts
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("outbox pass failed")
                busy = False
            if not busy:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    def run_once(self, now: datetime | None = None) -> bool:
        """Try the first due item of each destination; True if anything was attempted."""
        now = now or utcnow()
        attempted = False
        with Session(self.db.reader) as session:
            heads = session.exec(
                select(func.min(OutboxItem.id)).where(col(OutboxItem.status).in_(WAITING))
                .group_by(OutboxItem.destination)
            ).all()
            items = session.exec(select(OutboxItem).where(col(OutboxItem.id).in_(heads))
                                 .order_by(col(OutboxItem.id))).all() if heads else []
        for item in items:
            deliver = self.deliverer(item.destination)
            if item.next_attempt_at > now or deliver is None:
                continue
            with self._claim(item.destination) as claimed:
                if not claimed:
                    continue  # another node is delivering this destination's queue
                head = self._head(item.destination)
                if head is None or head.next_attempt_at > now:
                    continue  # delivered, or put back, while this worker waited for the lock
                attempted = True
                self._attempt(head, deliver)
        return attempted

    @contextmanager
    def _claim(self, destination: str) -> Iterator[bool]:
        """Hold ``destination``'s queue for the block (on PostgreSQL; SQLite has one process)."""
        if self.db.is_sqlite:
            yield True
            return
        key = destination_lock_key(destination)
        with self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
            try:
                yield got
            finally:
                if got:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})

    def _head(self, destination: str) -> OutboxItem | None:
        """The destination's first waiting item, read again under the claim."""
        with Session(self.db.reader) as session:
            return session.exec(select(OutboxItem).where(OutboxItem.destination == destination)
                                .where(col(OutboxItem.status).in_(WAITING))
                                .order_by(col(OutboxItem.id)).limit(1)).first()

    def deliverer(self, destination: str) -> Deliver | None:
        """The deliverer for a destination, by its full name or its kind ("dicom:CT1" → "dicom:")."""
        found = self.deliverers.get(destination)
        if found is None and ":" in destination:
            found = self.deliverers.get(destination.split(":", 1)[0] + ":")
        return found

    def _attempt(self, item: OutboxItem, deliver: Deliver) -> None:
        started = time.monotonic()
        try:
            result = deliver(item)
        except DeliveryRefused as exc:
            self._record(item, OutboxStatus.DEAD, error=str(exc), response=exc.response)
            log.error("outbox %s to %s refused: %s", item.id, item.destination, exc)
            return
        except Exception as exc:  # network down, timeout, receiver error: try again later
            attempts = item.attempts + 1
            status = OutboxStatus.DEAD if attempts >= self.max_attempts else OutboxStatus.RETRYING
            delay = min(self.base_delay * 2 ** min(attempts - 1, 20), self.max_delay)
            self._record(item, status, error=f"{type(exc).__name__}: {exc}", delay=delay)
            log.warning("outbox %s to %s failed (attempt %d, next in %.0f s): %s", item.id, item.destination,
                        attempts, delay, exc)
            return
        self._record(item, OutboxStatus.SENT, response=result.response)
        log.info("outbox %s delivered to %s in %.0f ms", item.id, item.destination,
                 (time.monotonic() - started) * 1000)

    def _record(self, item: OutboxItem, status: OutboxStatus, *, error: str = "", response: str = "",
                delay: float = 0.0) -> None:
        with self.db.session() as session:
            row = session.get_one(OutboxItem, item.id)
            if row.status == OutboxStatus.SENT and status != OutboxStatus.SENT:
                # Another node delivered it after this one lost its claim (its connection went).
                log.warning("outbox %s: delivered by another node meanwhile; this attempt's %s not kept",
                            item.id, status)
                return
            row.status = status
            row.attempts += 1
            row.last_error = error
            row.response = response or row.response
            row.next_attempt_at = utcnow() + timedelta(seconds=delay)
            if status == OutboxStatus.SENT:
                row.sent_at = utcnow()
            session.add(row)


def search(session: Session, *, status: str | None = None, destination: str | None = None, limit: int = 50,
           offset: int = 0) -> tuple[int, list[OutboxItem]]:
    query = select(OutboxItem)
    if status:
        query = query.where(OutboxItem.status == status)
    if destination:
        query = query.where(OutboxItem.destination == destination)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(OutboxItem.id).desc()).offset(offset).limit(limit)).all()
    return total, list(rows)


def retry(session: Session, item_id: int) -> OutboxItem:
    """Send an item again (a DEAD one, or a RETRYING one without waiting for its backoff)."""
    item = session.get(OutboxItem, item_id)
    if item is None:
        raise LookupError(f"outbox item {item_id} does not exist")
    if item.status == OutboxStatus.SENT:
        raise ValueError(f"outbox item {item_id} was delivered at {item.sent_at}")
    item.status = OutboxStatus.RETRYING
    item.next_attempt_at = utcnow()
    session.add(item)
    return item


@dataclass
class Queue:
    """One destination's queue as the analysts' dashboard shows it."""

    destination: str
    waiting: int = 0  # PENDING and RETRYING
    dead: int = 0
    sent: int = 0
    oldest_waiting: datetime | None = None
    last_error: str = ""


def queues(session: Session) -> list[Queue]:
    """Each destination's depth, dead items, oldest waiting item and latest error."""
    found: dict[str, Queue] = {}
    rows = session.exec(select(OutboxItem.destination, OutboxItem.status, func.count(), func.min(OutboxItem.created_at))
                        .group_by(OutboxItem.destination, OutboxItem.status)).all()
    for destination, status, count, oldest in rows:
        queue = found.setdefault(destination, Queue(destination))
        if status in (OutboxStatus.PENDING, OutboxStatus.RETRYING):
            queue.waiting += int(count)
            if oldest is not None and (queue.oldest_waiting is None or oldest < queue.oldest_waiting):
                queue.oldest_waiting = oldest
        elif status == OutboxStatus.DEAD:
            queue.dead += int(count)
        else:
            queue.sent += int(count)
    for queue in found.values():
        error = session.exec(select(OutboxItem.last_error)
                             .where(OutboxItem.destination == queue.destination, OutboxItem.last_error != "",
                                    OutboxItem.status != OutboxStatus.SENT)
                             .order_by(col(OutboxItem.id).desc()).limit(1)).first()
        queue.last_error = error or ""
    return [found[name] for name in sorted(found)]

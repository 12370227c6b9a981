"""The intake worker: the one writer that runs inbound messages through the channel.

Front ends (the MLLP listener, the FHIR intake, ``reprocess``) submit messages and wait for the
outcome. The worker takes whatever is queued (up to ``hl7.batch_max``) as one batch:

1. store every raw message and **commit** (the raw content is durable before parsing);
2. process each through the channel under its own savepoint, write the batch's results and
   audit entries together, then **commit** again;
3. only then hand back the outcomes, so every ACK describes what is on disk.

The two commits are pipelined: the commit that makes one batch's effects durable also stores the
raw messages of the next batch (whatever arrived meanwhile), so under load each batch costs one
commit, not two, and a lone sender still gets its ACK after its own two commits.

On PostgreSQL two workers take batches from the one queue (:data:`WORKERS`), as two nodes of a
cluster would: a worker there spends most of a batch waiting on round trips to the database, and
the other's batch runs meanwhile. They keep order as nodes do: each batch takes transaction-scoped
advisory locks on its messages' sender + control ID and patients (:func:`take_cluster_locks`), so a
patient's messages are applied one after another, and a connection has one message in flight at a
time (its ACK comes after the commit). SQLite has one writer at a time: one worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from sqlalchemy import Connection
from sqlmodel import Session, col, select

from pacs import batching
from pacs.db import Database, utcnow
from pacs.integration.channel import Channel, Inbound, Outcome, take_cluster_locks
from pacs.integration.message_store import (
    AppliedIndex,
    MessageRow,
    Status,
    StoredMessage,
    load_row,
    store_raw,
)
from pacs.metrics import MessageCounts

log = logging.getLogger(__name__)


Batch = list[tuple[Inbound, Future[Outcome]]]


@dataclass
class Processed:
    """A batch run through the channel whose effects wait, in ``session``'s open transaction,
    for the next commit; its outcomes are handed back after that commit."""

    session: Session
    batch: Batch
    outcomes: list[Outcome]
    types: list[str]  # each message's type, for the metrics


WORKERS = {"postgresql": 2, "sqlite": 1}
"""Intake workers by database. HL7 over eight connections on PostgreSQL, the database on the same
two cores (bench/hl7_throughput.py, three rounds alternating): 316-320 msg/s with two workers,
274-291 with one. More would not help there: two keep the process's one core of Python busy."""


class Intake:
    """Batching workers around a :class:`Channel` (one on SQLite, :data:`WORKERS`)."""

    def __init__(self, db: Database, channel: Channel, *, batch_max: int = 256, workers: int | None = None) -> None:
        self.db = db
        self.channel = channel
        self.batch_max = batch_max
        self.workers = workers or WORKERS.get(db.engine.dialect.name, 1)
        self._queue: queue.Queue[object] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._accepting = False
        self.counts = MessageCounts()  # read by pacs.metrics at each scrape
        self._created = utcnow()  # what was stored before is another life's to recover (recover())

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    @property
    def accepting(self) -> bool:
        return self._accepting

    def start(self) -> None:
        self.recover()
        self._accepting = True
        self._threads = [threading.Thread(target=self._run, name="intake" if n == 0 else f"intake-{n + 1}", daemon=True)
                         for n in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop. Messages not yet stored are refused."""
        self._accepting = False
        for _ in self._threads:  # one each: a worker ends at the first it takes
            self._queue.put(batching.STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    def submit(self, inbound: Inbound) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        if not self._accepting:
            future.set_exception(RuntimeError("the interface engine is shutting down"))
            return future
        self._queue.put((inbound, future))
        return future

    def process_now(self, inbound: Inbound) -> Outcome:
        """Process one message on the calling thread (command-line reprocess, tests)."""
        return self._process_batch([(inbound, Future())])[0]

    # -- the worker -----------------------------------------------------------------------------
    def _run(self) -> None:
        processed: Processed | None = None
        stop = False
        # The worker keeps one connection from cycle to cycle rather than take one from the
        # pool for each commit; after a failure it starts again on a fresh one.
        connection: Connection | None = None
        try:
            while not stop or processed is not None:
                # With a batch's effects waiting, commit them now with whatever else has arrived.
                batch, stopping = (batching.take(self._queue, self.batch_max, wait=processed is None)
                                   if not stop else ([], True))
                stop = stop or stopping
                try:
                    if connection is None:
                        connection = self.db.engine.connect()
                    processed = self._cycle(batch, processed, connection)
                except Exception:
                    processed = None
                    log.exception("intake batch failed; no message in it was acknowledged")
                    if connection is not None:
                        connection.invalidate()  # whatever state it was left in goes with it
                        connection.close()
                        connection = None
        finally:
            if connection is not None:
                connection.close()

    def _cycle(self, batch: Batch, processed: Processed | None,
               bind: Connection | None = None) -> Processed | None:
        """One commit: the effects of ``processed`` and the raw content of ``batch``. Then hand
        back the outcomes of ``processed`` and run ``batch`` through the channel; its effects
        wait for the next cycle's commit."""
        session = processed.session if processed is not None else Session(
            bind if bind is not None else self.db.engine, expire_on_commit=False, autoflush=False)
        waiting = (processed.batch if processed is not None else []) + batch
        try:
            rows = [self._receive(inbound) for inbound, _ in batch]
            if rows:
                store_raw(session, rows)
            session.commit()  # the processed batch's effects and this batch's raw content are durable
        except Exception as exc:
            session.close()
            _fail(waiting, exc)
            raise
        if processed is not None:
            answered = time.perf_counter()
            for (inbound, future), outcome, message_type in zip(processed.batch, processed.outcomes,
                                                                processed.types, strict=True):
                future.set_result(outcome)
                self.counts.record(message_type, outcome.status, outcome.ack_code, answered - inbound.received)
        if not batch:
            session.close()
            return None
        try:
            outcomes: list[Outcome] = []
            take_cluster_locks(session, rows, [inbound for inbound, _ in batch])  # nodes sharing PostgreSQL
            applied = AppliedIndex(session, rows)
            finished: list[MessageRow] = []
            for (inbound, _), row in zip(batch, rows, strict=True):
                try:
                    outcome = self.channel.process(session, row, inbound, applied, finished)
                except Exception as exc:  # one message's fault is its own; the batch goes on
                    outcome = self.channel.fault(session, row, exc, finished)
                if outcome.status == Status.PROCESSED:
                    applied.add(row)
                outcomes.append(outcome)
            self.channel.save(session, finished)
        except Exception as exc:
            session.close()  # rolls back: the raw messages stay stored, RECEIVED, for recovery
            _fail(batch, exc)
            raise
        return Processed(session, batch, outcomes, [row.message_type for row in rows])

    def _receive(self, inbound: Inbound) -> MessageRow:
        """The message-store row for ``inbound``; a message whose header can't even be described
        is stored with its raw bytes alone (and answered once parsed), never failing its batch."""
        try:
            return self.channel.receive(inbound)
        except Exception:
            log.exception("message from %s not described before storing; stored as it came", inbound.peer)
            return MessageRow(raw=inbound.raw, source=inbound.source, peer=inbound.peer,
                              endpoint=inbound.endpoint, reprocess_of=inbound.reprocess_of)

    def _process_batch(self, batch: Batch) -> list[Outcome]:
        """Store, commit, process and commit ``batch`` on the calling thread; its outcomes."""
        self._cycle([], self._cycle(batch, None))
        return [future.result() for _, future in batch]

    def recover(self) -> int:
        """Process messages stored but never finished (a process stopped between the commits).

        With several nodes on one database such a message may be another node's, and its sender,
        never answered, may have sent it again to a node that applied it: the duplicate check
        looks at every message applied, whatever its id, under the batch's cluster locks
        (:func:`take_cluster_locks`), and a message another node finished meanwhile is left
        alone. Only messages stored before this process started are taken: a node alive takes
        its batch's locks right after storing it."""
        with Session(self.db.engine) as session:
            pending = session.exec(
                select(StoredMessage.id).where(StoredMessage.status == Status.RECEIVED,
                                               col(StoredMessage.received_at) < self._created)
                .order_by(col(StoredMessage.id))
            ).all()
        recovered = 0
        for message_id in pending:
            with Session(self.db.engine, expire_on_commit=False, autoflush=False) as session:
                row = load_row(session, message_id)
                inbound = Inbound(raw=row.raw, source=row.source, peer=row.peer, endpoint=row.endpoint)
                take_cluster_locks(session, [row], [inbound])
                status = session.exec(select(StoredMessage.status).where(StoredMessage.id == message_id)).one()
                if status != Status.RECEIVED:
                    continue  # another node finished it
                self.channel.process(session, row, inbound, AppliedIndex(session, [row]))
                session.commit()
                recovered += 1
        if recovered:
            log.warning("recovered %d message(s) stored before an interruption", recovered)
        return recovered


def reprocess(intake: Intake, db: Database, message_id: int) -> Outcome:
    """Run a stored message through the channel again, as a new message that points back."""
    with Session(db.engine) as session:
        original = session.get(StoredMessage, message_id)
        if original is None:
            raise LookupError(f"message {message_id} does not exist")
        inbound = Inbound(raw=original.raw, source="reprocess", peer=original.peer, reprocess_of=message_id,
                          endpoint=original.endpoint)
    return intake.process_now(inbound)


def _fail(batch: Batch, exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)

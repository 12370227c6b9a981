"""The intake worker: the one writer that runs inbound messages through the channel.

Front ends (the MLLP listener, the FHIR intake, ``reprocess``) submit messages and wait for the
outcome. The worker takes whatever is queued (up to ``hl7.batch_max``) as one batch:

1. store every raw message and **commit** (the raw content is durable before parsing);
2. process each through the channel under its own savepoint, then **commit** again;
3. only then hand back the outcomes, so every ACK describes what is on disk.

Batching gives group commit: eight connections sending at once share two fsyncs instead of
paying sixteen, while a lone sender still gets its ACK after its own two commits.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future

from sqlmodel import Session, col, select

from pacs.db import Database
from pacs.integration.channel import Channel, Inbound, Outcome
from pacs.integration.message_store import AppliedIndex, Status, StoredMessage, load_row, store_raw

log = logging.getLogger(__name__)

_STOP = object()


class Intake:
    """Single-writer batching worker around a :class:`Channel`."""

    def __init__(self, db: Database, channel: Channel, *, batch_max: int = 256) -> None:
        self.db = db
        self.channel = channel
        self.batch_max = batch_max
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._accepting = False

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def accepting(self) -> bool:
        return self._accepting

    def start(self) -> None:
        self.recover()
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop. Messages not yet stored are refused."""
        self._accepting = False
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

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
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while len(batch) < self.batch_max:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                batch.append(more)
            try:
                self._process_batch(batch)  # type: ignore[arg-type]
            except Exception:
                log.exception("intake batch of %d failed; no message in it was acknowledged", len(batch))
            if stop:
                return

    def _process_batch(self, batch: list[tuple[Inbound, Future[Outcome]]]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        try:
            with Session(self.db.engine, expire_on_commit=False, autoflush=False) as session:
                rows = [self.channel.receive(inbound) for inbound, _ in batch]
                store_raw(session, rows)
                session.commit()  # 1. raw content durable
                applied = AppliedIndex(session, rows)
                for (inbound, _), row in zip(batch, rows, strict=True):
                    outcome = self.channel.process(session, row, inbound, applied)
                    if outcome.status == Status.PROCESSED:
                        applied.add(row)
                    outcomes.append(outcome)
                session.commit()  # 2. effects durable
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            raise
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            future.set_result(outcome)
        return outcomes

    def recover(self) -> int:
        """Process messages stored but never finished (the process stopped between the commits)."""
        with Session(self.db.engine) as session:
            pending = session.exec(
                select(StoredMessage.id).where(StoredMessage.status == Status.RECEIVED)
                .order_by(col(StoredMessage.id))
            ).all()
        for message_id in pending:
            with Session(self.db.engine, expire_on_commit=False, autoflush=False) as session:
                row = load_row(session, message_id)
                self.channel.process(session, row, Inbound(raw=row.raw, source=row.source, peer=row.peer,
                                                           endpoint=row.endpoint))
                session.commit()
        if pending:
            log.warning("recovered %d message(s) stored before an interruption", len(pending))
        return len(pending)


def reprocess(intake: Intake, db: Database, message_id: int) -> Outcome:
    """Run a stored message through the channel again, as a new message that points back."""
    with Session(db.engine) as session:
        original = session.get(StoredMessage, message_id)
        if original is None:
            raise LookupError(f"message {message_id} does not exist")
        inbound = Inbound(raw=original.raw, source="reprocess", peer=original.peer, reprocess_of=message_id,
                          endpoint=original.endpoint)
    return intake.process_now(inbound)

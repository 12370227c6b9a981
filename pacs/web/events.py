"""Order status changes as they happen, for pages that show them live (server-sent events).

Every transition of an order, whoever makes it (an HL7 message, an MPPS from a modality served
by any process, images arriving, a registrar), is an ``order_event`` row: one poller per app
reads the rows added since the last look, once a second, and hands them to every page
listening; N open pages cost one indexed query a second, not N. A page that reconnects sends
the last event id it saw (``Last-Event-ID``, WHATWG HTML 9.2 server-sent events) and gets what
it missed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from pacs.registry.models import ImagingOrder, OrderEvent

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
HEARTBEAT_SECONDS = 15.0  # a comment line keeps proxies from closing a quiet stream
BATCH = 500  # rows read at most per look
QUEUE_MAX = 1000  # events held for a page that stopped reading, before it is let go
RETRY_MS = 2000  # how soon a browser reconnects (the stream's retry field)


@dataclass(frozen=True)
class Change:
    id: int
    order: int
    status: str
    accession: str
    by: str
    at: str

    def message(self) -> str:
        """The event as the stream sends it (``id``, ``event``, ``data`` lines)."""
        data = json.dumps({"order": self.order, "status": self.status, "accession": self.accession,
                           "by": self.by, "at": self.at}, ensure_ascii=False)
        return f"id: {self.id}\nevent: order\ndata: {data}\n\n"


class OrderEvents:
    """The app's poller of ``order_event`` and the pages listening to it."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self._listeners: set[asyncio.Queue[Change | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._last = 0

    def _read(self, after: int) -> list[Change]:
        statement = (select(OrderEvent.id, OrderEvent.order, OrderEvent.to_status, OrderEvent.by, OrderEvent.at,
                            ImagingOrder.accession_number)
                     .join(ImagingOrder, ImagingOrder.id == OrderEvent.order)
                     .where(OrderEvent.id > after).order_by(OrderEvent.id).limit(BATCH))
        with self.db.reader.connect() as connection:
            rows = connection.execute(statement).all()
        return [Change(row[0], row[1], row[2], row[5] or "", row[3] or "", row[4].isoformat() if row[4] else "")
                for row in rows]

    def _newest(self) -> int:
        with self.db.reader.connect() as connection:
            return int(connection.execute(select(func.max(OrderEvent.id))).scalar() or 0)

    async def _poll(self) -> None:
        self._last = await asyncio.to_thread(self._newest)
        while self._listeners:
            try:
                changes = await asyncio.to_thread(self._read, self._last)
            except Exception as exc:  # the database away for a moment: try again at the next look
                log.warning("order events not read: %s", exc)
                changes = []
            for change in changes:
                self._last = change.id
                for queue in list(self._listeners):
                    if queue.qsize() >= QUEUE_MAX:
                        self._listeners.discard(queue)
                        queue.put_nowait(None)  # it stopped reading: its stream ends
                    else:
                        queue.put_nowait(change)
            if len(changes) < BATCH:
                await asyncio.sleep(POLL_SECONDS)
        self._task = None

    async def stream(self, last_seen: int | None = None) -> AsyncIterator[str]:
        """The events for one page: those after ``last_seen`` first, then each as it comes."""
        queue: asyncio.Queue[Change | None] = asyncio.Queue()
        self._listeners.add(queue)
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="order-events")
        try:
            yield f"retry: {RETRY_MS}\n\n"
            if last_seen is not None:
                for change in await asyncio.to_thread(self._read, last_seen):
                    yield change.message()
            while True:
                try:
                    change = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    yield ": still here\n\n"
                    continue
                if change is None:
                    return
                if last_seen is not None and change.id <= last_seen:
                    continue
                yield change.message()
        finally:
            self._listeners.discard(queue)

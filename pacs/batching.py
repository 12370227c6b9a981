"""Group commit for the writer threads (HL7 intake, index writer, audit writer).

Each writer takes what has queued up while it was busy and commits it as one transaction, so
that one fsync serves many messages, instances or audit entries when they arrive together and
a lone one is not kept waiting.
"""

from __future__ import annotations

import queue
from typing import Any

STOP = object()
"""Put on a writer's queue to have it finish what is queued before it and return."""


def take(source: queue.Queue[Any], limit: int, *, wait: bool = True,
         timeout: float | None = None) -> tuple[list[Any], bool]:
    """Up to ``limit`` queued items — waiting for the first when ``wait`` (at most ``timeout``
    seconds if given), then whatever is there — and whether :data:`STOP` came after them."""
    batch: list[Any] = []
    while len(batch) < limit:
        try:
            item = source.get(timeout=timeout) if wait and not batch else source.get_nowait()
        except queue.Empty:
            break
        if item is STOP:
            return batch, True
        batch.append(item)
    return batch, False

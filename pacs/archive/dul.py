"""What the DICOM Upper Layer (PS3.8 9) needs while an SCP streams answers: hearing the peer.

pynetdicom's DUL thread does one thing per turn of its loop, and sending comes first: while
answers wait in its outgoing queue it never looks at the socket. A C-CANCEL (PS3.7 9.3.2.3) sent
during a long C-FIND answer therefore sits unread until every answer is out, and the handler
never learns of it. Two small measures make cancelling work:

- :func:`install` lets the DUL look at the socket every few sends during data transfer (state
  Sta6, PS3.8 9.2): a select() with no wait, a few microseconds;
- :func:`hold_back` keeps a handler from running far ahead of the DUL: with a few answers
  waiting it pauses, so a cancel is seen within a few answers and a large answer set is never
  all encoded in memory at once.
"""

from __future__ import annotations

import time
from typing import Any

from pynetdicom.dul import DULServiceProvider

DATA_TRANSFER = "Sta6"  # PS3.8 9.2.1: association established, ready for data transfer
LOOK_EVERY = 4  # sends between two looks at the socket
MAX_WAITING = 8  # answers queued for the DUL before a handler pauses
PAUSE = 0.0002  # seconds


def install() -> None:
    """Let every DUL read an incoming PDU between its sends (idempotent)."""
    original = DULServiceProvider._process_recv_primitive
    if getattr(original, "_pacs_fair", False):
        return

    def process_recv_primitive(self: DULServiceProvider) -> bool:
        if self.to_provider_queue.queue and self.state_machine.current_state == DATA_TRANSFER:
            turns = getattr(self, "_pacs_sends", 0) + 1
            self._pacs_sends = turns  # type: ignore[attr-defined]
            if turns % LOOK_EVERY == 0 and self.socket is not None and self.socket.ready:
                return False  # the loop goes on to read the PDU waiting on the socket
        return bool(original(self))

    process_recv_primitive._pacs_fair = True  # type: ignore[attr-defined]
    DULServiceProvider._process_recv_primitive = process_recv_primitive  # type: ignore[method-assign]


def hold_back(assoc: Any, timeout: float) -> None:
    """Wait while more than :data:`MAX_WAITING` messages are queued for the DUL to send (at most
    ``timeout`` seconds, and not at all once the association has ended)."""
    waiting = assoc.dul.to_provider_queue
    if waiting.qsize() <= MAX_WAITING:
        return
    deadline = time.monotonic() + timeout
    while waiting.qsize() > MAX_WAITING and assoc.is_established and time.monotonic() < deadline:
        time.sleep(PAUSE)

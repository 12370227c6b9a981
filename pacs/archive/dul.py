"""What the DICOM Upper Layer (PS3.8 9) needs: hearing the peer while an SCP streams answers,
and waking up when there is something to do.

pynetdicom's DUL thread does one thing per turn of its loop, and sending comes first: while
answers wait in its outgoing queue it never looks at the socket. A C-CANCEL (PS3.7 9.3.2.3) sent
during a long C-FIND answer therefore sits unread until every answer is out, and the handler
never learns of it. Two small measures make cancelling work:

- :func:`install` lets the DUL look at the socket every few sends during data transfer (state
  Sta6, PS3.8 9.2): a select() with no wait, a few microseconds;
- :func:`hold_back` keeps a handler from running far ahead of the DUL: with a few answers
  waiting it pauses, so a cancel is seen within a few answers and a large answer set is never
  all encoded in memory at once.

pynetdicom serves an association with two threads that poll: the DUL thread sleeps a millisecond
whenever it finds nothing to do, and so does the association thread that runs the handlers. A
request therefore waits up to a millisecond to be read, up to another to reach its handler, and
its response up to a third to be written: about 1.5 ms on average added to every DIMSE exchange
(a C-ECHO, each C-STORE of a study, each worklist query), whatever the machine. :func:`wake_up`
(for every association, on EVT_CONN_OPEN) keeps the polling as the fallback but ends each sleep
as soon as there is work: the DUL thread waits in select() on its socket and an eventfd that
:meth:`~pynetdicom.dul.DULServiceProvider.send_pdu` signals, and the association thread waits on
an event that every DUL state-machine action sets (a complete DIMSE message, a release or abort
request) unless a request of ours on that association is waiting for its response. The sleeps
keep their length as the longest wait, so timers (ARTIM, idle) behave as before.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import weakref
from typing import Any, cast

from pynetdicom import association as pn_association
from pynetdicom import dul as pn_dul
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import StateMachine
from pynetdicom.transport import AssociationSocket

DATA_TRANSFER = "Sta6"  # PS3.8 9.2.1: association established, ready for data transfer
LOOK_EVERY = 4  # sends between two looks at the socket
MAX_WAITING = 8  # answers queued for the DUL before a handler pauses
PAUSE = 0.0002  # seconds


def _recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``nr_bytes`` from the socket (fewer only if the peer closed it), read into one buffer.

    pynetdicom reads in 4 KB pieces and appends each to a growing bytearray: about 130 system
    calls and as many copies for each 512 KB object a modality sends. ``recv_into`` fills the
    buffer with as much as the socket holds at each call."""
    sock = cast(socket.socket, self.socket)
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    read = 0
    with view:
        while read < nr_bytes:
            got = sock.recv_into(view[read:], nr_bytes - read)
            if not got:  # the connection was closed: what arrived so far, as pynetdicom returns it
                return buffer[:read]
            read += got
    return buffer


class _Checkpoint(threading.Event):
    """An association's reactor checkpoint that knows whether the reactor is held at it."""

    held = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:  # type: ignore[attr-defined]
            if self._flag:  # type: ignore[attr-defined]
                return True
            self.held = True
            try:
                return self._cond.wait_for(lambda: self._flag, timeout)  # type: ignore[attr-defined]
            finally:
                self.held = False


def _is_paused(self: Any) -> bool:
    if threading.current_thread() is self:  # the reactor itself (a handler calling send_*)
        return bool(self.__dict__.get("_pacs_paused", False))
    checkpoint = self._reactor_checkpoint
    if not isinstance(checkpoint, _Checkpoint):  # made before close_pause_race()
        return bool(self.__dict__.get("_pacs_paused", False))
    return bool(self._kill) or checkpoint.held


def _set_paused(self: Any, value: bool) -> None:
    self.__dict__["_pacs_paused"] = value


def close_pause_race() -> None:
    """Let a thread that pauses an association's reactor to send a request (pynetdicom's
    ``send_*`` and ``release``) go on only once the reactor is held at its checkpoint
    (idempotent; associations made afterwards).

    pynetdicom's reactor sets ``_is_paused`` just before its checkpoint and clears it just after:
    a sender that pauses it in between reads the flag still set, sends, and the reactor, going
    on to its look at the incoming messages, can take the response as an unexpected message;
    the sender then waits out the DIMSE timeout for nothing (seen as a C-ECHO without a status
    after a series of N-SETs under load; pynetdicom issue #875). Here, for any other thread,
    paused means held at the checkpoint; the reactor's own thread (a handler sending) still
    reads the flag."""
    association = pn_association.Association
    if isinstance(association.__dict__.get("_is_paused"), property):
        return
    init = association.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._reactor_checkpoint = _Checkpoint()
        self._reactor_checkpoint.set()

    association.__init__ = __init__  # type: ignore[method-assign]
    association._is_paused = property(_is_paused, _set_paused)  # type: ignore[assignment]


def install() -> None:
    """Let every DUL read an incoming PDU between its sends, and read each PDU in as few system
    calls as the socket allows (:func:`_recv`) (idempotent)."""
    close_pause_race()
    original = DULServiceProvider._process_recv_primitive
    if getattr(original, "_pacs_fair", False):
        return
    AssociationSocket.recv = _recv  # type: ignore[method-assign]

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


class _Clock:
    """``time`` as pynetdicom's DUL and association modules see it: :func:`_sleep` for sleep."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        _sleep(seconds)


def _sleep(seconds: float) -> None:
    """Sleep at most ``seconds``; less when the calling reactor thread has work (see above)."""
    thread = threading.current_thread()
    wake = getattr(thread, "_pacs_wake", None)
    if isinstance(wake, threading.Event):  # an association thread
        wake.wait(seconds)
        wake.clear()
        return
    fd = getattr(thread, "_pacs_wake_fd", None)
    sock = getattr(getattr(thread, "socket", None), "socket", None)
    if fd is None or sock is None or seconds <= 0:
        time.sleep(seconds)
        return
    try:
        ready, _, _ = select.select([sock, fd], [], [], seconds)
    except (OSError, ValueError):  # the socket was closed meanwhile
        time.sleep(seconds)
        return
    if fd in ready:
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            pass


def wake_up(assoc: Any) -> None:
    """Let ``assoc``'s two reactor threads be woken instead of only polling (call before they
    start: pynetdicom's EVT_CONN_OPEN)."""
    install_wakeups()
    assoc._pacs_wake = threading.Event()
    dul = assoc.dul
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    dul._pacs_wake_fd = fd
    weakref.finalize(dul, os.close, fd)


def install_wakeups() -> None:
    """Wrap the DUL's send_pdu and the state machine's do_action to wake the reactors
    (idempotent)."""
    if isinstance(pn_dul.time, _Clock):
        return
    send_pdu, do_action = DULServiceProvider.send_pdu, StateMachine.do_action

    def send_pdu_waking(self: DULServiceProvider, primitive: Any) -> None:
        send_pdu(self, primitive)
        fd = getattr(self, "_pacs_wake_fd", None)
        if fd is not None:
            os.eventfd_write(fd, 1)

    def do_action_waking(self: StateMachine, event: str) -> None:
        try:
            do_action(self, event)
        finally:
            assoc = self.dul.assoc
            wake = getattr(assoc, "_pacs_wake", None)
            # Not while a thread of ours has paused the reactor to send a request and wait for
            # its response (pynetdicom's send_* methods): the reactor then polls as pynetdicom
            # has it, so waking it early cannot hand it the response in a narrow window of
            # its pause check (pynetdicom issue #875).
            if wake is not None and assoc._reactor_checkpoint.is_set():
                wake.set()

    DULServiceProvider.send_pdu = send_pdu_waking  # type: ignore[method-assign]
    StateMachine.do_action = do_action_waking  # type: ignore[method-assign]
    pn_dul.time = pn_association.time = _Clock()  # type: ignore[assignment]

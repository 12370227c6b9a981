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

pynetdicom turns every P-DATA-TF PDU (PS3.8 9.3.5) into a PDU object, a state-machine event, a
P-DATA primitive and a pass through the DIMSE message decoder before a data set fragment reaches
the file it is spooled to: most of the DUL thread's time for a 512 KB image. While a C-STORE
data set is being spooled, :func:`_read_pdu_data` reads each P-DATA-TF PDU into a buffer the DUL
keeps, and writes the fragments straight to the spool file when the PDU holds only data set
fragments that are not the last (message control header xxxxxx00, PS3.8 E.2), in the message's
presentation context. Anything else (the last fragment, a command, another PDU, a malformed
item) goes through pynetdicom's decoding as before, so the message still ends, and errors are
still answered, the way pynetdicom has it.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import association as pn_association
from pynetdicom import dul as pn_dul
from pynetdicom import events as pn_evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import StateMachine
from pynetdicom.transport import AssociationSocket

log = logging.getLogger(__name__)
_pynetdicom_read_pdu_data = DULServiceProvider._read_pdu_data

DATA_TRANSFER = "Sta6"  # PS3.8 9.2.1: association established, ready for data transfer
LOOK_EVERY = 4  # sends between two looks at the socket
MAX_WAITING = 8  # answers queued for the DUL before a handler pauses
PAUSE = 0.0002  # seconds
PDATA_TF = 0x04  # PDU type of a P-DATA-TF (PS3.8 Table 9-11)
PDU_HEADER = 6  # PDU type, reserved byte, PDU length (PS3.8 Table 9-22)
PDV_HEADER = 6  # item length (4), presentation context ID, message control header (PS3.8 Table 9-23, E.2)
KEEP_BUFFER = 4 << 20  # bytes: the largest PDU buffer a DUL keeps between PDUs
FRAGMENT_KIND = 0x03  # the control header's two significant bits: command (1) and last fragment (2)


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


def _fill(sock: socket.socket, view: memoryview) -> int:
    """Read into all of ``view``; fewer bytes only if the peer closed the connection."""
    read, size = 0, len(view)
    while read < size:
        got = sock.recv_into(view[read:], size - read)
        if not got:
            break
        read += got
    return read


def _read_pdu_data(self: DULServiceProvider) -> None:
    """Read the next PDU; the fragments of a data set being spooled go straight to its file."""
    message = self.assoc.dimse.message
    spool = getattr(message, "_data_set_file", None) if message is not None else None
    transport = self.socket
    sock = getattr(transport, "socket", None)
    if (spool is None or sock is None or self.state_machine.current_state != DATA_TRANSFER
            or self.assoc.get_handlers(pn_evt.EVT_PDU_RECV) or self.assoc.get_handlers(pn_evt.EVT_DATA_RECV)):
        _pynetdicom_read_pdu_data(self)
        return
    try:
        head = sock.recv(PDU_HEADER, socket.MSG_PEEK)
    except OSError:
        head = b""
    if len(head) < PDU_HEADER or head[0] != PDATA_TF:
        _pynetdicom_read_pdu_data(self)  # reads it, or finds the connection closed or broken
        return
    total = PDU_HEADER + int.from_bytes(head[2:6], "big")
    buffer = self.__dict__.get("_pacs_buffer")
    if buffer is None or len(buffer) < total:
        buffer = bytearray(total)
        if total <= KEEP_BUFFER:  # a peer's rare huge PDU is not kept for the association's life
            self.__dict__["_pacs_buffer"] = buffer
    view = memoryview(buffer)[:total]
    try:
        read = _fill(sock, view)
    except (OSError, TimeoutError) as exc:
        log.error("connection lost while a P-DATA-TF PDU was being received: %s", exc)
        read = -1
    if read < total:
        if read >= 0:
            log.error("the connection closed %d bytes into a P-DATA-TF PDU of %d", read, total)
        self.event_queue.put("Evt17")  # transport connection closed (PS3.8 9.2.3)
        return
    fragments = _bulk_fragments(view, cast(int, message.context_id))
    if fragments is None:  # not only bulk data of this message: pynetdicom decodes it
        try:
            pdu, event = self._decode_pdu(bytearray(view))
        except Exception as exc:
            log.error("unable to decode a received P-DATA-TF PDU: %s", exc)
            self.event_queue.put("Evt19")  # unrecognised or invalid PDU
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)
        return
    for fragment in fragments:
        spool.write(fragment)


def _bulk_fragments(pdu: memoryview, context_id: int) -> list[memoryview] | None:
    """The data of a P-DATA-TF's PDVs if every one is a data set fragment, not the last, of
    presentation context ``context_id``; else None."""
    fragments = []
    offset, end = PDU_HEADER, len(pdu)
    while offset < end:
        if end - offset < PDV_HEADER:
            return None
        length = int.from_bytes(pdu[offset:offset + 4], "big")
        stop = offset + 4 + length
        if length < 2 or stop > end or pdu[offset + 4] != context_id or pdu[offset + 5] & FRAGMENT_KIND:
            return None
        fragments.append(pdu[offset + PDV_HEADER:stop])
        offset = stop
    return fragments or None


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
    """Let every DUL read an incoming PDU between its sends, read each PDU in as few system calls
    as the socket allows (:func:`_recv`), and spool data set fragments directly
    (:func:`_read_pdu_data`) (idempotent)."""
    close_pause_race()
    original = DULServiceProvider._process_recv_primitive
    if getattr(original, "_pacs_fair", False):
        return
    AssociationSocket.recv = _recv  # type: ignore[method-assign]
    DULServiceProvider._read_pdu_data = _read_pdu_data  # type: ignore[method-assign]

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


def after_wake(provider: DULServiceProvider, action: Callable[[], object]) -> None:
    """Have ``provider``'s DUL thread run ``action`` once the state-machine action under way
    has woken the association thread: work of the DUL thread's own (an fsync of a received
    data set) that then runs beside the handler instead of before it. Never run if wake-ups
    are not installed: ``action`` must be something the handler would otherwise do itself."""
    provider.__dict__.setdefault("_pacs_after_wake", []).append(action)


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
            pending = self.dul.__dict__.pop("_pacs_after_wake", None)
            for action in pending or ():
                action()

    DULServiceProvider.send_pdu = send_pdu_waking  # type: ignore[method-assign]
    StateMachine.do_action = do_action_waking  # type: ignore[method-assign]
    pn_dul.time = pn_association.time = _Clock()  # type: ignore[assignment]

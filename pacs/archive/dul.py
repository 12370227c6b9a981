"""What the DICOM Upper Layer (PS3.8 9) needs: hearing the peer while an SCP streams answers,
waking up when there is something to do, and standing up to peers that send it wrong.

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
:meth:`~pynetdicom.dul.DULServiceProvider.send_pdu` (and a kill or a stop) signals, and the association thread waits on
an event that every DUL state-machine action sets (a complete DIMSE message, a release or abort
request) unless a request of ours on that association is waiting for its response. With nothing
to wake them, the two threads look again every :data:`DUL_POLL` and :data:`ASSOCIATION_POLL`
(50 ms) instead of every millisecond: what they have to do wakes them, and the timers (ARTIM,
idle) run in seconds.

pynetdicom turns every P-DATA-TF PDU (PS3.8 9.3.5) into a PDU object, a state-machine event, a
P-DATA primitive and a pass through the DIMSE message decoder before a data set fragment reaches
the file it is spooled to: most of the DUL thread's time for a 512 KB image. While a C-STORE
data set is being spooled, :func:`_read_pdu_data` reads each P-DATA-TF PDU into a buffer the DUL
keeps, and writes the fragments straight to the spool file when the PDU holds only data set
fragments that are not the last (message control header xxxxxx00, PS3.8 E.2), in the message's
presentation context. Anything else (the last fragment, a command, another PDU, a malformed
item) goes through pynetdicom's decoding as before, so the message still ends, and errors are
still answered, the way pynetdicom has it.

A C-FIND request goes further (:func:`serve_directly`): the DUL thread that reads it serves it.
On an association with nothing else under way it reads the request's command set and identifier
from their P-DATA-TF PDUs itself, makes the request primitive, and hands it to the association's
own ``_serve_request``, as the association thread would, with the same access check, service
class, audit and handler; the answers are written by the same thread as the handler gives them.
A study-level query answered this way skips the PDU objects, the state machine, the DIMSE
message assembly and the hand-over between the two threads (0.16 ms of the 1.09 ms a findscu
query took). A C-CANCEL or A-ABORT that arrives meanwhile is read and acted on between answers;
a request that comes any other way goes pynetdicom's way.

A C-STORE request is served by the DUL thread too, once its data set is spooled
(:func:`_serve_store`): the handler runs as soon as the last fragment has been read, and its
response is written before the next PDU is read. The association thread, which would have been
woken for the request and then have woken the DUL thread for the response, sleeps through a
modality's whole study: four associations storing made a quarter fewer context switches.

What a peer sends wrong ends its association as PS3.8 9.2 says, in one log line, never a
traceback nor a thread left blocked: every PDU is read here (:func:`_read_pdu`), in the state the
previous one led to, not ahead of it; a PDU type PS3.8 does not define, or bytes that do not
decode, are Evt19 (an A-ABORT); a DIMSE message whose command set cannot be read is too
(:func:`_data_indication`); nothing is read while the association is being answered (Sta3), and
what comes after it has ended (Sta13) is dropped unread. A peer that stops in the middle of a
PDU, or stops reading, is given up after the network timeout (:func:`limit_stalls`), and the
length a PDU announces costs memory only as its bytes arrive (:func:`_buffer`).

A connection becomes an association only once its whole A-ASSOCIATE-RQ has arrived: until then
it waits in the :class:`Gate` (Sta2), one thread for all of them, under the ARTIM timer and a
bound per remote address, so that connections that send nothing, or trickle bytes, neither hold
threads nor count against the AE's maximum number of associations. On the TLS port the gate
completes each connection's TLS handshake first, in the same thread and under the same timer
(:mod:`pacs.archive.transport`).
"""

from __future__ import annotations

import logging
import mmap
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import association as pn_association
from pynetdicom import dul as pn_dul
from pynetdicom import events as pn_evt
from pynetdicom import fsm as pn_fsm
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import InvalidEventError, StateMachine
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    A_P_ABORT,
    P_DATA,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.transport import AssociationSocket

from pacs.archive import dimse, transport

log = logging.getLogger(__name__)
_pynetdicom_dt_2 = pn_fsm.ACTIONS["DT-2"][1]
# pynetdicom's functions that log a traceback for a peer's bad bytes and go on (_PeerBytesFilter)
PEER_BYTES_SITES = {"decode_bytes", "receive_primitive"}
# Local events (PS3.8 Table 9-10): primitives of this AE's own user, sent to the peer
LOCAL_EVENTS = {"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"}
IDLE = "Sta1"
# PDU types (PS3.8 9.3.1) and what they are called in the log
PDU_KINDS = {bytes([kind]): name for kind, name in enumerate(
    ("A-ASSOCIATE-RQ", "A-ASSOCIATE-AC", "A-ASSOCIATE-RJ", "P-DATA-TF", "A-RELEASE-RQ", "A-RELEASE-RP", "A-ABORT"),
    start=1)}

DATA_RECEIVED = "Evt10"  # PS3.8 Table 9-10: P-DATA-TF PDU received
DATA_TRANSFER = "Sta6"  # PS3.8 9.2.1: association established, ready for data transfer
AWAITING_RESPONSE = "Sta3"  # an A-ASSOCIATE-RQ read, awaiting the local A-ASSOCIATE response
AWAITING_CLOSE = "Sta13"  # association over, awaiting the peer's close of the transport connection
DROP = 65536  # bytes read and dropped at a time in Sta13
ABORT_REASON_NOT_SPECIFIED = 0x00  # A-ABORT reason/diag. (PS3.8 Table 9-26)
DROPS_PER_LOOK = 16  # reads of DROP bytes at most, each time the gate looks at a connection it is closing
LOOK_EVERY = 4  # sends between two looks at the socket
MAX_WAITING = 8  # answers queued for the DUL before a handler pauses
PAUSE = 0.0002  # seconds
PDATA_TF = 0x04  # PDU type of a P-DATA-TF (PS3.8 Table 9-11)
PDU_HEADER = 6  # PDU type, reserved byte, PDU length (PS3.8 Table 9-22)
PDV_HEADER = 6  # item length (4), presentation context ID, message control header (PS3.8 Table 9-23, E.2)
KEEP_BUFFER = 4 << 20  # bytes: the largest PDU buffer a DUL keeps between PDUs
FRAGMENT_KIND = 0x03  # the control header's two significant bits: command (1) and last fragment (2)
COMMAND, LAST_FRAGMENT = 0x01, 0x02  # those bits (PS3.8 E.2)
PDATA_TF_BYTE, ABORT_BYTE = bytes([PDATA_TF]), b"\x07"  # a PDU's first byte, its type (PS3.8 9.3.1)
PEEK_NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)  # as an int: an enum's | costs microseconds
FIND_REQUEST_LIMIT = 64 << 10  # bytes: the most a C-FIND request served directly may take, PDUs and all
FIND_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
# Handlers that watch what a request served directly would leave out: it is then served the usual way
WATCHERS = (pn_evt.EVT_PDU_RECV, pn_evt.EVT_DATA_RECV, pn_evt.EVT_DIMSE_RECV, pn_evt.EVT_PDU_SENT,
            pn_evt.EVT_DATA_SENT, pn_evt.EVT_DIMSE_SENT, pn_evt.EVT_FSM_TRANSITION)


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


def _buffer(size: int) -> bytearray | mmap.mmap:
    """A buffer for a PDU of ``size`` bytes. Above :data:`KEEP_BUFFER`, an anonymous mapping
    whose pages the kernel provides as bytes are written to them: the length a PDU's header
    announces (up to 4 GiB, PS3.8 9.3.1) then costs memory only for the bytes that arrive."""
    return bytearray(size) if size <= KEEP_BUFFER else mmap.mmap(-1, size)


def _peer(provider: DULServiceProvider) -> str:
    assoc = provider.assoc
    remote = assoc.requestor if assoc.is_acceptor else assoc.acceptor
    return f"{remote.address}:{remote.port}"


def _why(exc: BaseException) -> str:
    """What an error reading from a peer means, in a few words."""
    if isinstance(exc, (BlockingIOError, TimeoutError)):  # SO_RCVTIMEO or a socket timeout ran out
        return "the peer stopped sending for the network timeout"
    return str(exc) or type(exc).__name__


def _read_pdu(self: DULServiceProvider) -> None:
    """Read the next PDU whole and queue its event, as pynetdicom's reader does (PS3.8 Table
    9-10), with each failure one log line and no traceback: a connection closed or silent part
    way through a PDU is Evt17 (transport connection closed); an unknown PDU type, a length no
    buffer can hold, or a PDU that does not decode is Evt19 (invalid PDU), which the state
    machine answers with an A-ABORT (AA-1 before an association, AA-8 during one)."""
    transport = self.socket
    sock = getattr(transport, "socket", None)
    if sock is None:
        self.event_queue.put("Evt17")
        return
    pdu_bytes = _read_whole(self, sock)
    if isinstance(pdu_bytes, str):
        self.event_queue.put(pdu_bytes)
        return
    _decode(self, pdu_bytes)


def _read_whole(self: DULServiceProvider, sock: socket.socket) -> bytearray | mmap.mmap | str:
    """The next PDU's bytes, read whole; or, logged, the event its failure is (:func:`_read_pdu`)."""
    head = bytearray(PDU_HEADER)
    try:
        read = _fill(sock, memoryview(head))
    except OSError as exc:
        log.warning("DICOM %s: connection lost before a PDU: %s", _peer(self), _why(exc))
        return "Evt17"
    if read < PDU_HEADER:
        if read:
            log.warning("DICOM %s closed the connection %d bytes into a PDU header", _peer(self), read)
        return "Evt17"
    kind = bytes(head[:1])
    if kind not in PDU_KINDS:
        log.warning("DICOM %s sent a PDU of unknown type 0x%02X; aborting", _peer(self), head[0])
        return "Evt19"
    total = PDU_HEADER + int.from_bytes(head[2:6], "big")
    try:
        pdu_bytes = _buffer(total)
    except (OSError, MemoryError):
        log.warning("DICOM %s announced a %s PDU of %d bytes, more than memory holds; aborting", _peer(self),
                    PDU_KINDS[kind], total)
        return "Evt19"
    pdu_bytes[:PDU_HEADER] = head
    try:
        read = PDU_HEADER + _fill(sock, memoryview(pdu_bytes)[PDU_HEADER:])
    except OSError as exc:
        log.warning("DICOM %s: connection lost in a %s PDU of %d bytes: %s", _peer(self), PDU_KINDS[kind], total,
                    _why(exc))
        return "Evt17"
    if read < total:
        log.warning("DICOM %s closed the connection %d bytes into a %s PDU of %d", _peer(self), read,
                    PDU_KINDS[kind], total)
        return "Evt17"
    return pdu_bytes


def _decode(self: DULServiceProvider, pdu_bytes: bytearray | mmap.mmap) -> bool:
    """Queue the event of a PDU read whole, and the PDU for the state machine's action; False
    (logged, Evt19 queued) when pynetdicom cannot decode it."""
    try:
        pdu, event = self._decode_pdu(pdu_bytes)
    except Exception as exc:  # noqa: BLE001 - whatever pynetdicom raises on bytes it cannot decode
        kind = PDU_KINDS.get(bytes(pdu_bytes[:1]), "PDU")
        log.warning("DICOM %s sent a %s PDU that cannot be read (%s); aborting", _peer(self), kind, _why(exc))
        self.event_queue.put("Evt19")
        return False
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)
    return True


def _await_response(self: DULServiceProvider) -> None:
    """In Sta3 (an A-ASSOCIATE-RQ read, the association not yet answered) leave what the peer
    sends next unread until the answer has gone (PS3.8 9.2.3): read then, a PDU that stalls part
    way would hold the DUL thread, and the A-ASSOCIATE-AC queued behind it, for the network
    timeout, and one that aborted the association (AA-8) before the answer went out would leave
    that answer an event the state machine has no transition for. Waits, instead of spinning,
    until there is something to send."""
    fd = getattr(self, "_pacs_wake_fd", None)
    if fd is None:
        time.sleep(PAUSE)
        return
    try:
        select.select([fd], [], [], self._run_loop_delay)
    except (OSError, ValueError):
        time.sleep(PAUSE)


def _abort_unanswered(self: DULServiceProvider) -> None:
    """The association's thread ended in Sta3 without answering the A-ASSOCIATE-RQ (a fault of
    ours): the peer is told at once, by the A-ABORT of a local abort (Evt15, AA-1), rather than
    left waiting with the DUL thread for good."""
    log.error("DICOM %s: the association ended before it was answered; aborting", _peer(self))
    abort = A_P_ABORT()
    abort.provider_reason = ABORT_REASON_NOT_SPECIFIED
    self.to_provider_queue.put(abort)


def _drop_unread(self: DULServiceProvider) -> None:
    """In Sta13 (the association over, waiting for the peer to close) drop what still arrives
    without reading it as PDUs (AA-6, PS3.8 Table 9-10), never waiting for the rest of one;
    the peer's close is Evt17, and the ARTIM timer closes the connection otherwise."""
    sock = getattr(self.socket, "socket", None)
    if sock is None:
        self.event_queue.put("Evt17")
        return
    try:  # the connection's bytes as they are: a TLS connection's records are dropped undecrypted
        if socket.socket.recv(sock, DROP, socket.MSG_DONTWAIT):
            return
    except BlockingIOError:
        return
    except OSError:
        pass
    self.event_queue.put("Evt17")


def _read_pdu_data(self: DULServiceProvider) -> None:
    """Read the next PDU; the fragments of a data set being spooled go straight to its file.

    Nothing is read while the state machine has an event still to act on (at the start, the
    transport connection's Evt5): each PDU is read in the state the previous one led to."""
    if self.event_queue.queue:
        return
    state = self.state_machine.current_state
    if state == AWAITING_RESPONSE:
        _await_response(self)
        return
    if state == AWAITING_CLOSE:
        _drop_unread(self)
        return
    message = self.assoc.dimse.message
    spool = getattr(message, "_data_set_file", None) if message is not None else None
    transport = self.socket
    sock = getattr(transport, "socket", None)
    if (message is None and sock is not None and state == DATA_TRANSFER
            and "_pacs_serving" in self.assoc.__dict__ and _serve_find(self, sock)):
        return
    if (spool is None or sock is None or state != DATA_TRANSFER
            or self.assoc.get_handlers(pn_evt.EVT_PDU_RECV) or self.assoc.get_handlers(pn_evt.EVT_DATA_RECV)):
        _read_pdu(self)
        return
    try:
        head = sock.recv(PDU_HEADER, socket.MSG_PEEK)
    except (OSError, ValueError):  # ValueError: a TLS socket that cannot peek (not a TLSConnection)
        head = b""
    if len(head) < PDU_HEADER or head[0] != PDATA_TF:
        _read_pdu(self)  # reads it, or finds the connection closed or broken
        return
    while _spool_pdata(self, sock, head, spool, cast(int, message.context_id)):
        head = _next_pdata(self, sock)
        if head is None:
            return


def _next_pdata(self: DULServiceProvider, sock: socket.socket) -> bytes | None:
    """The header of the next P-DATA-TF PDU if it has already begun to arrive and the DUL has
    nothing else to do; None sends the DUL back to its reactor, which looks at its timers, its
    outgoing primitives and the socket as usual. A data set streams in PDU after PDU: reading
    them back to back spares each one a turn of the reactor and its select() calls."""
    if self._kill_thread or self.to_provider_queue.queue or self.event_queue.queue:
        return None
    try:
        head = sock.recv(PDU_HEADER, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (OSError, ValueError):  # nothing yet (BlockingIOError), or anything the reactor should see
        return None
    return head if len(head) == PDU_HEADER and head[0] == PDATA_TF else None


def _spool_pdata(self: DULServiceProvider, sock: socket.socket, head: bytes, spool: Any, context_id: int) -> bool:
    """Read the P-DATA-TF PDU whose header is ``head``: its fragments go to ``spool`` when they
    are all bulk data of the message (True), anything else to pynetdicom's decoding (False)."""
    total = PDU_HEADER + int.from_bytes(head[2:6], "big")
    buffer = self.__dict__.get("_pacs_buffer")
    try:
        if buffer is None or len(buffer) < total:
            buffer = _buffer(total)
            if total <= KEEP_BUFFER:  # a peer's rare huge PDU is not kept for the association's life
                self.__dict__["_pacs_buffer"] = buffer
    except (OSError, MemoryError) as exc:
        log.warning("DICOM %s: no room for a P-DATA-TF PDU of %d bytes: %s", _peer(self), total, _why(exc))
        self.event_queue.put("Evt17")
        return False
    view = memoryview(buffer)[:total]
    if not _fill_pdata(self, sock, view):
        return False
    fragments = _bulk_fragments(view, context_id)
    if fragments is None:  # not only bulk data of this message: pynetdicom decodes it
        try:
            pdu, event = self._decode_pdu(bytearray(view))
        except Exception as exc:  # noqa: BLE001 - whatever pynetdicom raises on bytes it cannot decode
            log.warning("DICOM %s sent a P-DATA-TF PDU that cannot be read (%s); aborting", _peer(self), exc)
            self.event_queue.put("Evt19")  # unrecognised or invalid PDU
            return False
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)
        return False
    for fragment in fragments:
        spool.write(fragment)
    return True


def _fill_pdata(self: DULServiceProvider, sock: socket.socket, view: memoryview) -> bool:
    """Read a P-DATA-TF PDU whole into ``view``; False, logged and Evt17 (transport connection
    closed, PS3.8 9.2.3) queued, when the connection is lost or closed part way."""
    total = len(view)
    try:
        read = _fill(sock, view)
    except OSError as exc:
        log.warning("DICOM %s: connection lost in a P-DATA-TF PDU of %d bytes: %s", _peer(self), total, _why(exc))
        read = -1
    if read < total:
        if read >= 0:
            log.warning("DICOM %s closed the connection %d bytes into a P-DATA-TF PDU of %d", _peer(self), read,
                        total)
        self.event_queue.put("Evt17")
        return False
    return True


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


def serve_directly(assoc: Any) -> None:
    """Let ``assoc``'s DUL thread serve the C-FIND requests it reads itself (:func:`_serve_find`;
    call before its threads start: pynetdicom's EVT_CONN_OPEN)."""
    install_serving()
    assoc._pacs_serving = threading.RLock()


def install_serving() -> None:
    """One request at a time per association, whichever thread serves it: pynetdicom's
    ``_serve_request`` holds the association's serving lock when it has one (idempotent)."""
    association = pn_association.Association
    serve = association._serve_request
    if getattr(serve, "_pacs_locked", False):
        return

    def _serve_request(self: Any, msg: Any, context_id: int) -> None:
        lock = self.__dict__.get("_pacs_serving")
        if lock is None:
            serve(self, msg, context_id)
            return
        with lock:
            serve(self, msg, context_id)

    _serve_request._pacs_locked = True  # type: ignore[attr-defined]
    association._serve_request = _serve_request  # type: ignore[method-assign]


def _serve_find(self: DULServiceProvider, sock: socket.socket) -> bool:
    """Serve a C-FIND request (PS3.7 9.1.2) in the DUL thread if the next PDUs are one; True when
    PDUs were read (served, or handed to pynetdicom's decoding), False when nothing was.

    Taken only on an association with nothing else under way (no message being assembled or
    waiting to be served or sent, no request being served, no object of its own still being
    indexed, no handler watching PDUs, messages or the state machine) and over plain TCP. The
    request primitive goes to the association's own ``_serve_request``, as the association
    thread would hand it: the access check, the service class, the audit and the handler run
    as they do there, under the association's serving lock. Their answers are written as the
    handler gives them (:func:`hold_back`), and a P-DATA-TF (a C-CANCEL, PS3.7 9.3.2.3) or an
    A-ABORT that arrives meanwhile is read and acted on between answers (:func:`_pump`); any
    other PDU waits unread until the final response has gone, as it would behind the
    association thread. The idle timer is held meanwhile."""
    assoc = self.assoc
    # Not before the association's thread has run the EVT_ACCEPTED handlers (the access check
    # among them) and marked it established: pynetdicom's service class answers nothing on an
    # association not yet established, and the request would wait for good.
    if (not assoc.is_established or self.to_provider_queue.queue or assoc.dimse.msg_queue.queue
            or not _starts_find(assoc, sock) or _indexing(assoc) or _watched(assoc)):
        return False
    serving = assoc.__dict__["_pacs_serving"]
    if not serving.acquire(blocking=False):
        return False
    try:
        request = _take_find(self, sock)
        if isinstance(request, bool):
            return request
        primitive, context_id = request
        _serve_here(self, primitive, context_id)
        return True
    finally:
        serving.release()


def _serve_here(self: DULServiceProvider, request: Any, context_id: int) -> None:
    """Serve ``request`` in the DUL thread, under the association's serving lock, as the
    association's thread would, and write the answers it queued."""
    assoc = self.assoc
    # The association's thread is free meanwhile and checks the idle timer: a request that
    # takes longer than the network timeout to serve must not be taken for a silent peer.
    timer, timeout = self._idle_timer, self._idle_timer.timeout
    timer.timeout = None
    assoc.abort = assoc._abort_nonblocking  # as in a handler: an abort here cannot wait for this thread
    self.__dict__["_pacs_serving_here"] = True
    try:
        assoc._serve_request(request, context_id)
    finally:
        self.__dict__["_pacs_serving_here"] = False
        assoc.abort = assoc._abort_blocking
        _pump(self, read=False)
        timer.timeout = timeout
        timer.restart()


def _serve_store(self: DULServiceProvider) -> bool:
    """Serve the C-STORE request (PS3.4 B.2.2) the P-DATA-TF just read has completed in the DUL
    thread, as :func:`_serve_find` serves a C-FIND; True when it was served.

    pynetdicom hands each complete message to the association's thread, which runs the handler
    and queues its response for the DUL thread to send: for every object a modality sends, two
    hand-overs between threads that wait on each other, and their fights over the GIL, beside
    the work itself. Taken only on an association that has this one request waiting and
    nothing else under way: no request being served (by either thread: this one may be inside
    a C-FIND it serves, whose lock it holds), nothing to send, no handler watching PDUs,
    messages or the state machine. The request goes to the association's own
    ``_serve_request`` under its serving lock, as the association thread would hand it, and the
    response is written before the DUL thread reads on. Without an asynchronous operations
    window (PS3.7 10.3.3) a peer has one request outstanding at a time, so the association
    thread has none of its own under way."""
    assoc = self.assoc
    waiting = assoc.dimse.msg_queue
    if (len(waiting.queue) != 1 or self.__dict__.get("_pacs_serving_here") or not assoc.is_established
            or not assoc.is_acceptor or self.to_provider_queue.queue
            or self.state_machine.current_state != DATA_TRANSFER):
        return False
    context_id, request = waiting.queue[0]
    if not isinstance(request, C_STORE) or request.MessageIDBeingRespondedTo is not None or _watched(assoc):
        return False
    serving = assoc.__dict__.get("_pacs_serving")
    if serving is None or not serving.acquire(blocking=False):
        return False
    try:
        try:
            context_id, request = waiting.get_nowait()
        except queue.Empty:  # the association thread took it meanwhile: it serves it
            return False
        _serve_here(self, request, context_id)
        return True
    finally:
        serving.release()


def _starts_find(assoc: Any, sock: socket.socket) -> bool:
    """Whether the bytes waiting on ``sock`` begin a P-DATA-TF whose first PDV is a command
    fragment in a presentation context of a C-FIND SOP class (:data:`dimse.FIND_CLASSES`) in a
    little-endian uncompressed syntax: a look at its first 12 bytes, left unread, so that every
    other PDU (each C-STORE's among them) goes its way at the cost of one peek."""
    if isinstance(sock, ssl.SSLSocket):
        return False
    try:
        head = sock.recv(PDU_HEADER + PDV_HEADER, PEEK_NOW)
    except OSError:
        return False
    if len(head) < PDU_HEADER + PDV_HEADER or head[0] != PDATA_TF or not head[PDU_HEADER + 5] & COMMAND:
        return False
    contexts = assoc.__dict__.get("_pacs_find_contexts")
    if contexts is None:
        contexts = frozenset(context_id for context_id, context in assoc._accepted_cx.items()
                             if context.abstract_syntax in dimse.FIND_CLASSES
                             and context.transfer_syntax[0] in FIND_SYNTAXES)
        assoc.__dict__["_pacs_find_contexts"] = contexts
    return head[PDU_HEADER + 4] in contexts


def _watched(assoc: Any) -> bool:
    """Whether a handler watches ``assoc``'s PDUs, messages or state machine (:data:`WATCHERS`):
    those see only what goes pynetdicom's way, so nothing is served past them."""
    return any(assoc.get_handlers(watched) for watched in WATCHERS)


def _indexing(assoc: Any) -> bool:
    """Whether objects ``assoc`` sent are still being indexed (the handler settles them first)."""
    return any(not future.done() for future in assoc.__dict__.get("_pacs_indexing", ()))


def _pdvs(pdu: bytes | bytearray) -> list[tuple[int, int, bytes]] | None:
    """The (context ID, message control header, fragment) of each PDV of a P-DATA-TF (PS3.8
    9.3.5, E.2), or None if its items do not add up."""
    items, offset, end = [], PDU_HEADER, len(pdu)
    while offset < end:
        length = int.from_bytes(pdu[offset:offset + 4], "big")
        stop = offset + 4 + length
        if end - offset < PDV_HEADER or length < 2 or stop > end:
            return None
        items.append((pdu[offset + 4], pdu[offset + 5], bytes(pdu[offset + PDV_HEADER:stop])))
        offset = stop
    return items or None


def _take_find(self: DULServiceProvider, sock: socket.socket) -> tuple[C_FIND, int] | bool:
    """Read a whole C-FIND request (its command set, then its identifier, in P-DATA-TF PDUs of
    one presentation context) as its primitive and context ID; its first PDU is known to be a
    P-DATA-TF (:func:`_starts_find`). Anything else is left to pynetdicom: True, the PDUs read
    handed to its decoding in the order they came, the message then going on the usual way (and
    a failure to read one queued after them: Evt17 or Evt19)."""
    read: list[bytearray | mmap.mmap] = []
    command, identifier = bytearray(), bytearray()
    context_id: int | None = None
    parsed: Any = None
    done = False
    while not done:
        pdu = _read_whole(self, sock)  # the first is a P-DATA-TF (_starts_find); a later one may not be
        if isinstance(pdu, str):
            _hand_over(self, read)
            self.event_queue.put(pdu)
            return True
        read.append(pdu)
        if pdu[0] != PDATA_TF or sum(map(len, read)) > FIND_REQUEST_LIMIT:
            return _hand_over(self, read)
        items = _pdvs(pdu)
        if items is None:
            return _hand_over(self, read)
        for pdv_context, control, fragment in items:
            if done or (context_id is not None and pdv_context != context_id):
                return _hand_over(self, read)
            context_id = pdv_context
            if control & COMMAND:
                if parsed is not None:
                    return _hand_over(self, read)
                command += fragment
                if control & LAST_FRAGMENT:
                    parsed = _find_command(self.assoc, bytes(command), context_id)
                    if parsed is None:
                        return _hand_over(self, read)
            elif parsed is None:
                return _hand_over(self, read)
            else:
                identifier += fragment
                done = bool(control & LAST_FRAGMENT)
    primitive = C_FIND()
    primitive.MessageID = parsed.MessageID
    dimse.set_uids(primitive, parsed)
    primitive.Priority = parsed.Priority
    primitive.Identifier = BytesIO(bytes(identifier))
    primitive._context_id = context_id
    return primitive, cast(int, context_id)


def _find_command(assoc: Any, command: bytes, context_id: int) -> Any:
    """The command set of a C-FIND request with an identifier, of the SOP class of its
    presentation context (one :func:`_starts_find` found to be a C-FIND's); None otherwise."""
    parsed = dimse.request_command(command)
    if (parsed is None or parsed.CommandField != dimse.C_FIND_RQ or parsed.CommandDataSetType == dimse.NO_DATA_SET
            or assoc._accepted_cx[context_id].abstract_syntax != parsed.AffectedSOPClassUID):
        return None
    return parsed


def _hand_over(self: DULServiceProvider, read: list[bytearray | mmap.mmap]) -> bool:
    """PDUs read ahead by :func:`_take_find`, to pynetdicom's decoding in the order they came;
    whether there were any."""
    for pdu_bytes in read:
        if not _decode(self, pdu_bytes):
            break
    return bool(read)


def _pump(self: DULServiceProvider, *, read: bool = True) -> None:
    """In the DUL thread serving a request: write what the handler has queued (DT-1, PS3.8
    Table 9-7), while the association is in Sta6 and its connection has not failed (a failed
    send queues Evt17, acted on once the request is served); with ``read``, read a P-DATA-TF
    (a C-CANCEL) or A-ABORT the peer has sent meanwhile and act on it. An A-ABORT ends the
    association (AA-3): the handler's remaining answers are not written. Any other PDU waits."""
    waiting = self.to_provider_queue
    while (self.state_machine.current_state == DATA_TRANSFER and not self.event_queue.queue and waiting.queue
           and isinstance(waiting.queue[0], P_DATA)):
        dimse.send_data(self)
    if not read or self.event_queue.queue or self.state_machine.current_state != DATA_TRANSFER:
        return
    sock = getattr(self.socket, "socket", None)
    try:
        if sock is None or not select.select([sock], [], [], 0)[0]:
            return
        kind = sock.recv(1, socket.MSG_PEEK)
    except (OSError, ValueError):
        return
    if kind not in (PDATA_TF_BYTE, ABORT_BYTE):
        return
    _read_pdu(self)
    while self.event_queue.queue and self.state_machine.current_state == DATA_TRANSFER:
        self.state_machine.do_action(self.event_queue.get(False))
    if self.state_machine.current_state == IDLE:
        # An A-ABORT ended the association (AA-3), whose closing of the connection queued
        # Evt17: PS3.8 has no transition for it in Sta1, and nothing is left to close.
        with self.event_queue.mutex:
            remaining = [event for event in self.event_queue.queue if event != "Evt17"]
            self.event_queue.queue.clear()
            self.event_queue.queue.extend(remaining)



class _Checkpoint(threading.Event):
    """An association's reactor checkpoint that knows whether the reactor is held at it, and
    wakes the reactor (``wake``, set by :func:`wake_up`) when a thread pauses it: pynetdicom's
    ``send_*`` methods wait for the reactor to reach the checkpoint."""

    held = False
    wake: threading.Event | None = None

    def clear(self) -> None:
        super().clear()
        if self.wake is not None:
            self.wake.set()

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


def _data_indication(provider: DULServiceProvider) -> str:
    """DT-2 (PS3.8 Table 9-7), a P-DATA-TF received in Sta6: pynetdicom's, except that a DIMSE
    message whose command set cannot be read (no Command Field, one no service has, a broken
    element) is one log line and Evt19, which aborts the association (AA-8), as pynetdicom
    does for a command set it reads but cannot use; raised, it ended the DUL thread with a
    traceback and no A-ABORT."""
    try:
        return str(_pynetdicom_dt_2(provider))
    except Exception as exc:  # noqa: BLE001 - whatever pynetdicom and pydicom raise on bytes they cannot read
        log.warning("DICOM %s sent a DIMSE message that cannot be read (%s); aborting", _peer(provider), _why(exc))
        provider.event_queue.put("Evt19")
        return DATA_TRANSFER


class _PeerBytesFilter(logging.Filter):
    """pynetdicom logs a traceback where a peer's bytes are not what it expects and it goes on
    (a UID or AE title that is not ASCII; a DIMSE message it cannot use, answered with Evt19):
    expected events, one line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.funcName in PEER_BYTES_SITES:
            exc = record.exc_info[1]
            record.msg, record.args = "a peer's bytes could not be read as expected: %s", (_why(exc) if exc else "",)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install() -> None:
    """Let every DUL read an incoming PDU between its sends, read each PDU in as few system calls
    as the socket allows (:func:`_recv`), spool data set fragments directly
    (:func:`_read_pdu_data`), and take what a peer sends wrong without a traceback
    (:func:`_data_indication`, :class:`_PeerBytesFilter`) (idempotent)."""
    close_pause_race()
    description, _action, state = pn_fsm.ACTIONS["DT-2"]
    pn_fsm.ACTIONS["DT-2"] = (description, _data_indication, state)
    for name in ("pynetdicom.utils", "pynetdicom.dimse"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _PeerBytesFilter) for f in logger.filters):
            logger.addFilter(_PeerBytesFilter())
    original = DULServiceProvider._process_recv_primitive
    if getattr(original, "_pacs_fair", False):
        return
    AssociationSocket.recv = _recv  # type: ignore[method-assign]
    DULServiceProvider._read_pdu_data = _read_pdu_data  # type: ignore[method-assign]

    def process_recv_primitive(self: DULServiceProvider) -> bool:
        if self.to_provider_queue.queue:
            if self.state_machine.current_state == DATA_TRANSFER:
                turns = getattr(self, "_pacs_sends", 0) + 1
                self._pacs_sends = turns  # type: ignore[attr-defined]
                if turns % LOOK_EVERY == 0 and self.socket is not None and self.socket.ready:
                    return False  # the loop goes on to read the PDU waiting on the socket
        elif self.state_machine.current_state == AWAITING_RESPONSE and not self.assoc.is_alive():
            _abort_unanswered(self)
        return bool(original(self))

    process_recv_primitive._pacs_fair = True  # type: ignore[attr-defined]
    DULServiceProvider._process_recv_primitive = process_recv_primitive  # type: ignore[method-assign]


def hold_back(assoc: Any, timeout: float) -> None:
    """Wait while more than :data:`MAX_WAITING` messages are queued for the DUL to send (at most
    ``timeout`` seconds, and not at all once the association has ended)."""
    if threading.current_thread() is assoc.dul:  # the DUL thread itself serves the request
        _pump(assoc.dul)
        return
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
    if isinstance(wake, threading.Event):  # an association thread, woken when it has work
        checkpoint = getattr(thread, "_reactor_checkpoint", None)
        if isinstance(checkpoint, _Checkpoint) and checkpoint.wake is wake:  # a pause wakes it too
            seconds = max(seconds, ASSOCIATION_POLL)
        wake.wait(seconds)
        wake.clear()  # before the loop looks for work: a wake-up from here on is kept for the next wait
        return
    fd = getattr(thread, "_pacs_wake_fd", None)
    sock = getattr(getattr(thread, "socket", None), "socket", None)
    if fd is None or sock is None or seconds <= 0:
        time.sleep(seconds)
        return
    if getattr(thread, "_kill_thread", False):
        return
    try:
        ready, _, _ = select.select([sock, fd], [], [], max(seconds, DUL_POLL))
    except (OSError, ValueError):  # the socket was closed meanwhile
        time.sleep(seconds)
        return
    if fd in ready:
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            pass


DUL_POLL = 0.05
"""How long a DUL thread waits in select() when neither its socket nor its wake-up fd has
anything (pynetdicom polls every millisecond). While a modality sends, each association's DUL
thread sat idle during every C-STORE's handling and turned its loop a thousand times a second,
taking the GIL from the threads doing the work (about 45 context switches an object, four
associations storing). What it has to do comes by its socket, by its wake-up fd (a primitive to
send, a kill, a stop) or, for its ARTIM timer, within this."""

ASSOCIATION_POLL = 0.05
"""How long an association's thread waits between looks when nothing wakes it (pynetdicom
polls every millisecond: a thousand turns a second of an association doing nothing, a twentieth
of the CPU of a C-FIND served meanwhile by its DUL thread). It is woken by each action of the
state machine (a message, a release, an abort), a pause of its reactor (:class:`_Checkpoint`)
and a kill; what is left to its polling, a DUL thread that died or an idle timer that ran out,
is seen within this."""


def wake_up(assoc: Any) -> None:
    """Let ``assoc``'s two reactor threads be woken instead of only polling (call before they
    start: pynetdicom's EVT_CONN_OPEN)."""
    install_wakeups()
    assoc._pacs_wake = threading.Event()
    if isinstance(assoc._reactor_checkpoint, _Checkpoint):  # see close_pause_race()
        assoc._reactor_checkpoint.wake = assoc._pacs_wake
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


def _wake_dul(provider: DULServiceProvider) -> None:
    """End the DUL thread's wait in :func:`_sleep` (a no-op before :func:`wake_up`)."""
    fd = getattr(provider, "_pacs_wake_fd", None)
    if fd is not None:
        try:
            os.eventfd_write(fd, 1)
        except OSError:  # closed with the provider
            pass


def install_wakeups() -> None:
    """Wrap the DUL's send_pdu and the state machine's do_action to wake the reactors
    (idempotent)."""
    if isinstance(pn_dul.time, _Clock):
        return
    send_pdu, do_action = DULServiceProvider.send_pdu, StateMachine.do_action

    def send_pdu_waking(self: DULServiceProvider, primitive: Any) -> None:
        send_pdu(self, primitive)
        _wake_dul(self)

    def do_action_waking(self: StateMachine, event: str) -> None:
        acted = False
        try:
            do_action(self, event)
            acted = True
        except InvalidEventError:
            if event not in LOCAL_EVENTS or self.current_state not in (AWAITING_CLOSE, IDLE):
                raise
            # A handler's answer or a release that comes after the peer ended the association:
            # PS3.8 has no transition for it, and nobody left to take it. It goes.
            try:
                self.dul.to_provider_queue.get(False)
            except queue.Empty:
                pass
        finally:
            assoc = self.dul.assoc
            wake = getattr(assoc, "_pacs_wake", None)
            pending = self.dul.__dict__.pop("_pacs_after_wake", None)
            # Not while a thread of ours has paused the reactor to send a request and wait for
            # its response (pynetdicom's send_* methods): the reactor then polls as pynetdicom
            # has it, so waking it early cannot hand it the response in a narrow window of
            # its pause check (pynetdicom issue #875).
            if wake is not None and assoc._reactor_checkpoint.is_set():
                if event == DATA_RECEIVED and acted and _serve_store(self.dul):
                    pending = None  # the handler has done what they would (store() syncs its file)
                else:
                    wake.set()
            for action in pending or ():
                action()

    kill = pn_association.Association.kill

    def kill_waking(self: Any) -> None:
        self._kill = True  # the flag its thread stops on, which kill() sets too
        wake = getattr(self, "_pacs_wake", None)
        if wake is not None:
            wake.set()
        kill(self)

    def kill_dul_waking(self: DULServiceProvider) -> None:
        self._kill_thread = True
        _wake_dul(self)

    def stop_dul_waking(self: DULServiceProvider) -> bool:
        # pynetdicom's stop_dul(), with the DUL thread woken to see its flag
        if self.state_machine.current_state != IDLE:
            return False
        self._kill_thread = True
        _wake_dul(self)
        while self.is_alive():
            time.sleep(self._run_loop_delay)
        return True

    DULServiceProvider.send_pdu = send_pdu_waking  # type: ignore[method-assign]
    StateMachine.do_action = do_action_waking  # type: ignore[method-assign]
    pn_association.Association.kill = kill_waking  # type: ignore[method-assign]
    DULServiceProvider.kill_dul = kill_dul_waking  # type: ignore[method-assign]
    DULServiceProvider.stop_dul = stop_dul_waking  # type: ignore[method-assign]
    pn_dul.time = pn_association.time = _Clock()  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------
# Connections that are not associations yet (PS3.8 9.2, state Sta2)
# --------------------------------------------------------------------------------------------

ASSOCIATE_RQ = 0x01  # PDU types (PS3.8 9.3.1)
ASSOCIATE_RJ = 0x03
ABORT = 0x07
ASSOCIATE_RQ_FIXED = 68  # protocol version to the second reserved field (PS3.8 Table 9-11)
ITEM_HEADER = 4  # item type, reserved, item length (PS3.8 9.3.2)
CONTEXT_ITEM = 0x20  # presentation context item, its sub-items after CONTEXT_FIELDS (PS3.8 Table 9-13)
CONTEXT_FIELDS = 4  # presentation context ID and three reserved bytes
USER_ITEM = 0x50  # user information item, of sub-items (PS3.8 Table 9-16)
# The smallest maximum length (PS3.8 Annex D.1) a peer may ask for: a PDV item's header (6) and the
# 8 bytes of data pynetdicom fragments a message into at least (0 asks for no maximum)
SMALLEST_MAXIMUM_LENGTH = 14
PROTOCOL_VERSION_1 = 0x0001  # the bit of version 1 in the protocol-version field (PS3.8 9.3.2)
MAX_ASSOCIATE_RQ = 256 << 10  # bytes: the longest A-ASSOCIATE-RQ read (128 contexts of dozens of syntaxes)
PEEKABLE = 64 << 10  # bytes surely held unread by a new connection's receive buffer
MAX_PENDING = 512  # connections waiting for their A-ASSOCIATE-RQ, every address together
PENDING_GRACE = 1.0  # seconds a connection may wait for its A-ASSOCIATE-RQ before its address's limit applies
NOTE_INTERVAL = 1.0  # seconds: one log line per kind of refusal and address at most; the rest are counted
NOTES_KEPT = 1024  # (kind, address) pairs remembered before those of past intervals are dropped
# A-ASSOCIATE-RJ (PS3.8 Table 9-21): result, source, reason
REJECTED_PERMANENT = 0x01
SOURCE_ACSE = 0x02  # DICOM UL service-provider, ACSE related function
SOURCE_PRESENTATION = 0x03  # DICOM UL service-provider, presentation related function
NO_REASON_GIVEN = 0x01  # with SOURCE_ACSE
PROTOCOL_VERSION_NOT_SUPPORTED = 0x02  # with SOURCE_ACSE
LOCAL_LIMIT_EXCEEDED = 0x02  # with SOURCE_PRESENTATION
SERVICE_USER = 0x00  # A-ABORT source (PS3.8 Table 9-26); its reason is then not significant
TIMEVAL = struct.Struct("@ll")  # struct timeval (seconds, microseconds) for SO_RCVTIMEO/SO_SNDTIMEO


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4, Table 9-21)."""
    return struct.pack(">BBIBBBB", ASSOCIATE_RJ, 0, 4, 0, result, source, reason)


def abort_pdu(source: int, reason: int = 0) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8, Table 9-26)."""
    return struct.pack(">BBIBBBB", ABORT, 0, 4, 0, 0, source, reason)


def limit_stalls(sock: socket.socket, seconds: float | None) -> None:
    """Let a blocking read or write on ``sock`` wait at most ``seconds`` (SO_RCVTIMEO,
    SO_SNDTIMEO): a peer that stops in the middle of a PDU, or stops reading, ends its
    association (an OSError, Evt17) instead of holding its threads for good. Kernel timeouts
    cost nothing per read, unlike a Python socket timeout (a poll() before every recv)."""
    if not seconds or seconds <= 0:
        return
    whole = int(seconds)
    value = TIMEVAL.pack(whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class _Notes:
    """One log line per kind of refusal and remote address per :data:`NOTE_INTERVAL`; the others
    are counted into the next line, so that a flood of connections is not a flood of lines."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def __call__(self, level: int, kind: str, host: str, message: str, *args: Any) -> bool:
        """Log the line unless one of its kind and address was logged less than
        :data:`NOTE_INTERVAL` ago; whether it was."""
        now = time.monotonic()
        last, quiet = self._last.get((kind, host), (0.0, 0))
        if now - last < NOTE_INTERVAL:
            self._last[(kind, host)] = (last, quiet + 1)
            return False
        if len(self._last) > NOTES_KEPT:
            self._last = {key: seen for key, seen in self._last.items() if now - seen[0] < NOTE_INTERVAL}
        self._last[(kind, host)] = (now, 0)
        if quiet:
            message += f" (and {quiet} more like it before)"
        log.log(level, message, *args)
        return True


class _Waiting:
    """A connection in the gate: waiting for its A-ASSOCIATE-RQ (Sta2), or, once answered with
    an A-ABORT or A-ASSOCIATE-RJ, for the peer to close (Sta13)."""

    __slots__ = ("address", "closing", "deadline", "handshaking", "host", "read", "sock", "tls", "wanted",
                 "widened")

    def __init__(self, sock: socket.socket, address: Any, deadline: float, *, tls: bool = False) -> None:
        self.sock = sock
        self.address = address
        self.host = str(address[0]) if isinstance(address, tuple) else str(address)
        self.deadline = deadline
        self.wanted = PDU_HEADER  # bytes to look at: a PDU header, then the whole A-ASSOCIATE-RQ
        self.closing = False
        self.widened = False
        self.tls = tls  # on the TLS port: handshake first, then the A-ASSOCIATE-RQ read (not peeked)
        self.handshaking = tls
        self.read = bytearray()  # TLS: what was read of the A-ASSOCIATE-RQ, given back to pynetdicom

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.address[1]}" if isinstance(self.address, tuple) else self.host


class Gate:
    """Where a new DICOM connection waits until its A-ASSOCIATE-RQ is whole (PS3.8 9.2, state
    Sta2), in one thread for every such connection, before it becomes an association.

    pynetdicom starts an association (two threads, one polling every millisecond) for every
    connection it accepts, and counts it against the AE's maximum number of associations from
    then on: connections that send nothing filled that maximum and locked every modality out,
    and a few hundred of them kept the process too busy to accept more. Here a connection is
    handed to ``dispatch`` (pynetdicom, or a receiver process) only once its whole A-ASSOCIATE-RQ
    has arrived and decodes, still unread in the socket (looked at with MSG_PEEK, edge-triggered
    epoll: each arrival is looked at once), so that what takes it reads it at once. Until then:

    - the ARTIM timer (PS3.8 9.1.5) runs from the connection's opening: a connection without
      its whole A-ASSOCIATE-RQ when it runs out is closed (AA-2), whether it sent nothing,
      trickled bytes or announced a length it never sent;
    - a PDU other than an A-ASSOCIATE-RQ, an unknown PDU type (Evt19) or an A-ASSOCIATE-RQ that
      does not decode is answered with an A-ABORT (AA-1); one longer than
      :data:`MAX_ASSOCIATE_RQ`, with an A-ASSOCIATE-RJ (local limit exceeded), as is a protocol
      version without version 1 (AE-8, PS3.8 9.3.2); an A-ABORT is closed (AA-2). The gate then
      waits for the peer to close, at most the ARTIM time again (Sta13), reading and dropping
      what still comes;
    - at most ``per_address`` connections from one address wait at once, counting those that
      have waited :data:`PENDING_GRACE` or longer: one more closes the oldest of them, so that
      connections that linger make way for ones about to speak, and a burst of associations
      from one address goes through; :data:`MAX_PENDING` wait at most from all addresses, one
      more closing the oldest of the address with the most.

    With ``tls`` (the TLS port) each connection's TLS handshake is completed here first
    (:func:`pacs.archive.transport.handshake`), under the same timer and bounds; one that fails
    (no client certificate where one is required, one from another CA, a client that does not
    speak TLS) is closed, logged like a refusal and reported to ``on_tls_failure(address,
    reason)`` (at most once per :data:`NOTE_INTERVAL` for an address, as the log line).

    Each refusal is one log line (:class:`_Notes`), never a traceback.
    """

    def __init__(self, artim: float, per_address: int, dispatch: Callable[[socket.socket, Any], None],
                 *, limit: int = MAX_PENDING, name: str = "dicom-gate", tls: ssl.SSLContext | None = None,
                 on_tls_failure: Callable[[str, str], None] | None = None) -> None:
        self.artim = artim
        self.per_address = per_address
        self.limit = limit
        self.dispatch = dispatch
        self.tls = tls
        self.on_tls_failure = on_tls_failure
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._arriving: list[tuple[socket.socket, Any]] = []
        self._arriving_lock = threading.Lock()
        self._waiting: dict[int, _Waiting] = {}  # by descriptor, oldest deadline first
        self._by_host: Counter[str] = Counter()
        self._notes = _Notes()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """How many connections wait in the gate now."""
        return len(self._waiting)

    def admit(self, sock: socket.socket, address: Any) -> None:
        """Take a connection just accepted (from the accepting thread)."""
        with self._arriving_lock:
            self._arriving.append((sock, address))
        os.eventfd_write(self._wake, 1)

    def stop(self) -> None:
        """Close every waiting connection and end the gate's thread."""
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        self._thread.join(5)
        with self._arriving_lock:
            arriving, self._arriving = self._arriving, []
        for sock, _ in arriving:
            sock.close()
        for waiting in list(self._waiting.values()):
            self._close(waiting)
        self._epoll.close()
        os.close(self._wake)

    # -- the gate's thread -------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            timeout = -1.0
            if self._waiting:
                first = next(iter(self._waiting.values()))
                timeout = max(0.0, first.deadline - time.monotonic())
            try:
                events = self._epoll.poll(timeout)
            except InterruptedError:
                continue
            for fd, mask in events:
                if fd == self._wake:
                    self._take_arrivals()
                    continue
                waiting = self._waiting.get(fd)
                if waiting is None:
                    continue
                try:
                    self._look(waiting, mask)
                except Exception:  # a bug: the connection goes, the gate stays
                    log.exception("DICOM %s: unexpected error before its association", waiting.peer)
                    self._close(waiting)
            self._expire()

    def _take_arrivals(self) -> None:
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass
        with self._arriving_lock:
            arriving, self._arriving = self._arriving, []
        for sock, address in arriving:
            if self._stopping:
                sock.close()
                continue
            now = time.monotonic()
            if self.tls is not None:
                try:
                    sock = transport.accept(sock, self.tls)
                except OSError as exc:  # gone already
                    log.debug("DICOM %s: connection lost as it opened (%s)", address, exc)
                    sock.close()
                    continue
            waiting = _Waiting(sock, address, now + self.artim, tls=self.tls is not None)
            if self._by_host[waiting.host] >= self.per_address:
                self._make_way(waiting.host, now)
            if len(self._waiting) >= self.limit:
                busiest = max(self._by_host, key=self._by_host.__getitem__)
                oldest = next(w for w in self._waiting.values() if w.host == busiest)
                self._notes(logging.WARNING, "total", "",
                            "DICOM: more than %d connections waiting for their A-ASSOCIATE-RQ; the oldest of "
                            "the address with the most (%s) closed", self.limit, oldest.peer)
                self._close(oldest)
            fd = sock.fileno()
            self._waiting[fd] = waiting
            self._by_host[waiting.host] += 1
            # A TLS handshake may wait to write as well as to read (RFC 8446 4: the server's flight).
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
                                 | (select.EPOLLOUT if waiting.tls else 0))

    def _make_way(self, host: str, now: float) -> None:
        """Close the oldest of ``host``'s waiting connections until it has fewer than
        ``per_address`` (the newcomer being one more), of those that have waited at least
        :data:`PENDING_GRACE` or been refused already: a burst of associations from one address,
        each about to send its A-ASSOCIATE-RQ, is let through whole, bounded only by
        :data:`MAX_PENDING`."""
        opened_before = now + self.artim - PENDING_GRACE  # deadlines are opening time + ARTIM
        stale = [w for w in self._waiting.values()
                 if w.host == host and (w.closing or w.deadline <= opened_before)]  # refused, or lingering
        excess = self._by_host[host] + 1 - self.per_address
        if excess <= 0 or not stale:
            return
        self._notes(logging.WARNING, "per-address", host,
                    "DICOM %s: more than %d connections from this address waiting for their A-ASSOCIATE-RQ; "
                    "%d of the oldest closed", host, self.per_address, min(excess, len(stale)))
        for waiting in stale[:excess]:
            self._close(waiting)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._waiting:
            waiting = next(iter(self._waiting.values()))
            if waiting.deadline > now:
                return
            if not waiting.closing:
                self._notes(logging.INFO, "artim", waiting.host,
                            "DICOM %s: no whole A-ASSOCIATE-RQ within %g s (ARTIM, PS3.8 9.1.5); closed",
                            waiting.peer, self.artim)
            self._close(waiting)

    def _look(self, waiting: _Waiting, mask: int) -> None:
        sock = waiting.sock
        if waiting.closing:  # Sta13: what still comes is dropped (AA-6) until the peer closes
            for _ in range(DROPS_PER_LOOK):  # a peer streaming bytes does not keep the gate to itself
                try:  # the connection's bytes as they are: on the TLS port, records never decrypted
                    data = socket.socket.recv(sock, DROP, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not data:
                    self._close(waiting)
                    return
            return
        if waiting.tls:
            self._look_tls(waiting)
            return
        while True:
            wanted = waiting.wanted
            try:
                data = sock.recv(wanted, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                data = None
            except OSError as exc:  # reset
                self._notes(logging.INFO, "reset", waiting.host, "DICOM %s: connection lost before its "
                            "A-ASSOCIATE-RQ (%s)", waiting.peer, exc)
                self._close(waiting)
                return
            if data is None or len(data) < PDU_HEADER:
                break
            if self._judge(waiting, data):
                return
            if len(data) < wanted:  # the rest is still to come: the next arrival is an edge
                break
            # The header said how long the A-ASSOCIATE-RQ is: look at all of it that is there.
        hung_up = mask & (select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR)
        if hung_up or data == b"":  # closed before a whole A-ASSOCIATE-RQ (Evt17, AA-5)
            if data:
                self._notes(logging.WARNING, "cut", waiting.host, "DICOM %s closed the connection %d bytes into "
                            "its A-ASSOCIATE-RQ", waiting.peer, len(data))
            else:
                log.debug("DICOM %s closed the connection without a PDU", waiting.peer)
            self._close(waiting)

    def _look_tls(self, waiting: _Waiting) -> None:
        """A connection on the TLS port: advance its handshake, then read its A-ASSOCIATE-RQ
        out of the TLS stream, no more of it than the header says there is."""
        sock = cast(ssl.SSLSocket, waiting.sock)
        if waiting.handshaking:
            try:
                if not transport.handshake(sock):
                    return  # the next arrival is an edge
            except (ssl.SSLError, OSError) as exc:
                self._tls_failed(waiting, exc)
                return
            waiting.handshaking = False
            log.debug("DICOM %s: TLS %s", waiting.peer, transport.describe(sock))
        while True:
            try:
                data = transport.read_now(sock, waiting.wanted - len(waiting.read))
            except OSError as exc:  # reset, or a TLS record that does not decrypt
                self._notes(logging.INFO, "reset", waiting.host, "DICOM %s: connection lost before its "
                            "A-ASSOCIATE-RQ (%s)", waiting.peer, exc)
                self._close(waiting)
                return
            if data is None:
                return  # the rest is still to come
            if not data:  # closed before a whole A-ASSOCIATE-RQ (Evt17, AA-5)
                if waiting.read:
                    self._notes(logging.WARNING, "cut", waiting.host, "DICOM %s closed the connection %d bytes "
                                "into its A-ASSOCIATE-RQ", waiting.peer, len(waiting.read))
                self._close(waiting)
                return
            waiting.read += data
            if len(waiting.read) >= waiting.wanted and self._judge(waiting, bytes(waiting.read)):
                return

    def _tls_failed(self, waiting: _Waiting, exc: BaseException) -> None:
        """A TLS handshake that failed: the connection goes, in one log line (PS3.15 A.5.3.11:
        a node authentication failure, for the audit log)."""
        reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        reason = str(reason).replace("_", " ").lower()
        if self._notes(logging.WARNING, "tls", waiting.host, "DICOM %s: TLS handshake failed (%s); closed",
                       waiting.peer, reason) and self.on_tls_failure is not None:
            try:
                self.on_tls_failure(waiting.peer, reason)
            except Exception:
                log.exception("DICOM %s: the failed TLS handshake could not be reported", waiting.peer)
        self._close(waiting)

    def _judge(self, waiting: _Waiting, data: bytes) -> bool:
        """Act on what arrived of the first PDU; False while it is not whole."""
        kind, length = data[0], int.from_bytes(data[2:6], "big")
        if kind != ASSOCIATE_RQ:
            if kind == ABORT:  # Sta2 + Evt16: AA-2
                self._notes(logging.INFO, "abort", waiting.host, "DICOM %s sent an A-ABORT before "
                            "associating; closed", waiting.peer)
                self._close(waiting)
            else:  # Sta2 + Evt3, Evt4, Evt10, Evt12, Evt13 or Evt19: AA-1
                what = PDU_KINDS.get(bytes([kind]), f"a PDU of unknown type 0x{kind:02X}")
                self._refuse(waiting, abort_pdu(SERVICE_USER), "%s instead of an A-ASSOCIATE-RQ", what)
            return True
        if length < ASSOCIATE_RQ_FIXED:
            self._refuse(waiting, abort_pdu(SERVICE_USER), "an A-ASSOCIATE-RQ of %d bytes, shorter than its "
                         "fixed fields", length)
            return True
        if length > MAX_ASSOCIATE_RQ:
            self._refuse(waiting, associate_rj(REJECTED_PERMANENT, SOURCE_PRESENTATION, LOCAL_LIMIT_EXCEEDED),
                         "an A-ASSOCIATE-RQ of %d bytes, more than the %d read", length, MAX_ASSOCIATE_RQ)
            return True
        total = PDU_HEADER + length
        if len(data) < total:
            waiting.wanted = total
            if total > PEEKABLE and not waiting.widened:  # room for all of it in the receive buffer
                waiting.widened = True
                waiting.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * total)
            return False
        if not _items_fit(data, PDU_HEADER + ASSOCIATE_RQ_FIXED, total, nested=True):
            self._refuse(waiting, abort_pdu(SERVICE_USER), "an A-ASSOCIATE-RQ whose items overrun it")
            return True
        try:
            request = A_ASSOCIATE_RQ()
            request.decode(data[:total])
            primitive = request.to_primitive()
        except Exception as exc:  # noqa: BLE001 - whatever pynetdicom raises on bytes it cannot decode
            self._refuse(waiting, abort_pdu(SERVICE_USER), "an A-ASSOCIATE-RQ that cannot be read (%s)",
                         _why(exc))
            return True
        if not request.protocol_version & PROTOCOL_VERSION_1:
            self._refuse(waiting, associate_rj(REJECTED_PERMANENT, SOURCE_ACSE, PROTOCOL_VERSION_NOT_SUPPORTED),
                         "an A-ASSOCIATE-RQ of protocol version 0x%04X", request.protocol_version)
            return True
        missing = _missing_context_part(primitive)
        if missing:
            self._refuse(waiting, abort_pdu(SERVICE_USER), "an A-ASSOCIATE-RQ without %s", missing)
            return True
        fault = _user_information_fault(primitive)
        if fault:
            self._refuse(waiting, associate_rj(REJECTED_PERMANENT, SOURCE_ACSE, NO_REASON_GIVEN),
                         "an A-ASSOCIATE-RQ %s", fault)
            return True
        self._forget(waiting)
        if waiting.tls:
            transport.replay(cast(ssl.SSLSocket, waiting.sock), waiting.read)
        try:
            self.dispatch(waiting.sock, waiting.address)
        except Exception:  # a bug, or no thread to be had: the connection goes, the gate stays
            log.exception("DICOM %s: the association could not be started", waiting.peer)
            waiting.sock.close()
        return True

    def _refuse(self, waiting: _Waiting, answer: bytes, why: str, *args: Any) -> None:
        """Answer with ``answer`` (an A-ABORT or A-ASSOCIATE-RJ) and wait for the peer to close,
        for at most the ARTIM time (Sta13)."""
        refusal = "A-ASSOCIATE-RJ" if answer[0] == ASSOCIATE_RJ else "A-ABORT"
        self._notes(logging.WARNING, "refused", waiting.host, "DICOM %s sent " + why + "; answered " + refusal,
                    waiting.peer, *args)
        try:  # a TLS connection is non-blocking already, and takes no flags
            waiting.sock.send(answer, 0 if waiting.tls else socket.MSG_DONTWAIT)
        except OSError:
            self._close(waiting)
            return
        waiting.closing = True
        del self._waiting[waiting.sock.fileno()]  # to the end of the line, with its new deadline
        waiting.deadline = time.monotonic() + self.artim
        self._waiting[waiting.sock.fileno()] = waiting
        self._look(waiting, 0)  # what is already there is dropped now: no new edge will come for it

    def _forget(self, waiting: _Waiting) -> None:
        fd = waiting.sock.fileno()
        if self._waiting.pop(fd, None) is None:
            return
        self._by_host[waiting.host] -= 1
        if not self._by_host[waiting.host]:
            del self._by_host[waiting.host]
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def _close(self, waiting: _Waiting) -> None:
        self._forget(waiting)
        _discard_unread(waiting.sock)
        waiting.sock.close()


def _missing_context_part(primitive: A_ASSOCIATE) -> str:
    """What a presentation context of this A-ASSOCIATE-RQ lacks of what PS3.8 9.3.2.2 gives
    every one (one abstract syntax sub-item, one or more transfer syntax sub-items), or "";
    "presentation contexts" if it has none (PS3.8 Table 9-11). pynetdicom's negotiation
    assumes them and its association thread died without an answer."""
    contexts = primitive.presentation_context_definition_list
    if not contexts:
        return "presentation contexts"
    for context in contexts:
        if not context.abstract_syntax:
            return f"an abstract syntax in presentation context {context.context_id}"
        if not context.transfer_syntax:
            return f"a transfer syntax in presentation context {context.context_id}"
    return ""


def _user_information_fault(primitive: A_ASSOCIATE) -> str:
    """What is wrong with this A-ASSOCIATE-RQ's user information, or "": a sub-item every one
    carries missing (PS3.7 D.3.3.1, D.3.3.2; PS3.8 Annex D.1), or a maximum length too small to
    carry anything. pynetdicom fragments its answers by the peer's maximum length and, without
    one or with one below :data:`SMALLEST_MAXIMUM_LENGTH`, failed at the first response."""
    items = primitive.user_information
    lengths = [item.maximum_length_received for item in items if isinstance(item, MaximumLengthNotification)]
    if not lengths or lengths[0] is None:
        return "without its Maximum Length sub-item"
    if 0 < lengths[0] < SMALLEST_MAXIMUM_LENGTH:
        return f"whose Maximum Length, {lengths[0]}, leaves no room for data"
    if not any(isinstance(item, ImplementationClassUIDNotification) and item.implementation_class_uid
               for item in items):
        return "without its Implementation Class UID sub-item"
    return ""


def _items_fit(data: bytes, start: int, end: int, *, nested: bool) -> bool:
    """Whether the variable items in ``data[start:end]`` (type, reserved, 2-byte length: PS3.8
    9.3.2) fill it exactly, none running past it; with ``nested``, also the sub-items of each
    presentation context item (after its four fields, PS3.8 Table 9-13) and user information
    item (PS3.8 Table 9-16)."""
    at = start
    while at < end:
        if end - at < ITEM_HEADER:
            return False
        stop = at + ITEM_HEADER + int.from_bytes(data[at + 2:at + 4], "big")
        if stop > end:
            return False
        if nested and data[at] == CONTEXT_ITEM:
            first = at + ITEM_HEADER + CONTEXT_FIELDS
            if first > stop or not _items_fit(data, first, stop, nested=False):
                return False
        elif nested and data[at] == USER_ITEM and not _items_fit(data, at + ITEM_HEADER, stop, nested=False):
            return False
        at = stop
    return True


def _discard_unread(sock: socket.socket) -> None:
    """Drop what the peer sent that was never read: a socket closed with bytes unread resets the
    connection (RFC 2525 2.17), and the peer would see an error rather than the end of it. The
    connection's bytes as they are (a TLS connection's records too, undecrypted)."""
    for _ in range(DROPS_PER_LOOK):
        try:
            if not socket.socket.recv(sock, DROP, socket.MSG_DONTWAIT):
                return
        except OSError:  # nothing more now (BlockingIOError), or the connection is gone
            return

"""Connections on the DICOM port before they are associations, and raw PDU abuse (PS3.8 9).

A connection becomes an association only once its whole A-ASSOCIATE-RQ has arrived
(pacs.archive.dul.Gate): connections that send nothing, trickle bytes or announce a PDU they
never send are closed when the ARTIM timer runs out and never count against
``max_associations``; a flood from one address closes its own oldest connections, not another
address's; a burst of connections is accepted at once. Every malformed PDU is answered as PS3.8
says (an A-ABORT or A-ASSOCIATE-RJ, or a close), in one log line and no traceback, and the
server goes on answering C-ECHO. A seeded, bounded mutation run (``PACS_HOSTILE_INPUTS``
inputs) checks the same for bytes nobody wrote by hand.

Clients connect from 127.0.0.1 or, to be another address, 127.0.0.2 (all of 127/8 is loopback
on Linux)."""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.acse import ACSE
from pynetdicom.dimse_messages import C_ECHO_RQ
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification

from pacs.archive import dul
from tests.process import ServeProcess

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)  # PS3.8 9.3.1
ENDINGS = {ASSOCIATE_RJ, RELEASE_RP, ABORT}  # PDUs after which the server only waits for us to close
ARTIM = 1.0  # seconds: the tests' ARTIM timer (acse_timeout_seconds)
NETWORK = 1.5  # seconds: the tests' network timeout
OTHER_HOST = "127.0.0.2"
# A thread of the server's that dies of an exception is a fault, however the peer behaved.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """What happens to a connection before its association does not touch the database: SQLite
    only."""
    target = tmp_path / "db" / "pacs.db"
    target.parent.mkdir()
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def quick(start_server):  # type: ignore[no-untyped-def]
    """A server whose ARTIM and network timeouts are short enough for a test to wait them out."""
    return start_server(dicom={"acse_timeout_seconds": ARTIM, "network_timeout_seconds": NETWORK})


# -- PDUs, written by hand (PS3.8 9.3) --------------------------------------------------------

def item(kind: int, body: bytes) -> bytes:
    """A variable item or sub-item: type, reserved, 2-byte length (PS3.8 9.3.2.1 to 9.3.2.3)."""
    return struct.pack(">BBH", kind, 0, len(body)) + body


def associate_rq(*, calling: bytes = b"HOSTILE", called: bytes = b"PACS", version: int = 1,
                 contexts: tuple[tuple[bytes, tuple[bytes, ...]], ...] = ((VERIFICATION, (IMPLICIT_LE,)),),
                 maximum_length: int | None = 16384) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 Table 9-11); without its Maximum Length sub-item if
    ``maximum_length`` is None."""
    body = struct.pack(">HH", version, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
    body += item(0x10, APPLICATION_CONTEXT)
    for number, (abstract, syntaxes) in enumerate(contexts):
        body += item(0x20, struct.pack(">BBBB", 2 * number + 1, 0, 0, 0) + item(0x30, abstract)
                     + b"".join(item(0x40, syntax) for syntax in syntaxes))
    user = b"" if maximum_length is None else item(0x51, struct.pack(">I", maximum_length))
    body += item(0x50, user + item(0x52, b"1.2.826.0.1.3680043.9.7433.1"))
    return struct.pack(">BBI", ASSOCIATE_RQ, 0, len(body)) + body


def echo_rq() -> bytes:
    """A C-ECHO-RQ in one P-DATA-TF PDU, presentation context 1."""
    primitive = C_ECHO()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    encoded = b""
    for primitive in message.encode_msg(1, 16384):
        data_tf = P_DATA_TF()
        data_tf.from_primitive(primitive)
        encoded += data_tf.encode()
    return encoded


def pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


RELEASE = pdu(RELEASE_RQ, bytes(4))


def overrun(request: bytes, at: int) -> bytes:
    """``request`` with the length of the item at offset ``at`` made 0xFFFF."""
    assert request[at] in (0x10, 0x20, 0x30, 0x40, 0x50, 0x51, 0x52), request[at]
    return request[:at + 2] + b"\xff\xff" + request[at + 4:]


# -- the client's side ------------------------------------------------------------------------

def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    return data


def conversation(sock: socket.socket, timeout: float) -> list[int | str]:
    """The PDU types the server sends until it ends the conversation (an A-ASSOCIATE-RJ,
    A-RELEASE-RP or A-ABORT) or closes the connection ("closed"); "timeout" if it does neither
    within ``timeout`` seconds. Every PDU must be whole and of a type PS3.8 defines."""
    sock.settimeout(timeout)
    seen: list[int | str] = []
    try:
        while True:
            head = receive(sock, 6)
            if len(head) < 6:
                assert not head, f"the server sent {head!r}, not a PDU"
                return [*seen, "closed"]
            kind, length = head[0], int.from_bytes(head[2:6], "big")
            assert kind in (ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RP, ABORT), f"PDU type {kind:#x} sent"
            assert len(receive(sock, length)) == length, "a PDU cut short"
            seen.append(kind)
            if kind in ENDINGS:
                return seen
    except TimeoutError:
        return [*seen, "timeout"]


def ended(seen: list[int | str]) -> bool:
    return bool(seen) and (seen[-1] == "closed" or seen[-1] in ENDINGS)


def echo(port: int, calling: str = "MODALITY") -> int | None:
    """A C-ECHO over a new association from 127.0.0.1: its status, None if not associated."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info is not None]


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


# -- connections that are not associations ----------------------------------------------------

def test_a_burst_of_connections_is_accepted_at_once(server, sockets):
    # socketserver's backlog of 5 dropped the SYNs of a burst; each waited a second or more to
    # be tried again (200 connections took about 30 s)
    started = time.monotonic()
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", server.dicom_port), timeout=0.9)
        sockets.append(sock)
    assert time.monotonic() - started < 5
    assert echo(server.dicom_port) == 0


def test_idle_connections_are_not_associations(start_server, sockets):
    server = start_server(dicom={"max_associations": 4, "acse_timeout_seconds": 30.0})
    for _ in range(8):  # twice the maximum, from another address, sending nothing
        sockets.append(connect(server.dicom_port, OTHER_HOST))
    time.sleep(0.3)
    assert echo(server.dicom_port) == 0
    deadline = time.monotonic() + 5
    while server.server._dicom.load() and time.monotonic() < deadline:  # the echo's association ending
        time.sleep(0.05)
    assert server.server._dicom.load() == 0  # the idle connections never counted


@pytest.mark.parametrize("sent", [
    pytest.param(b"", id="nothing"),
    pytest.param(struct.pack(">BBI", ASSOCIATE_RQ, 0, 100_000), id="a header announcing bytes never sent"),
    pytest.param(associate_rq()[:40], id="part of an A-ASSOCIATE-RQ"),
])
def test_a_connection_without_a_whole_associate_rq_is_closed_when_artim_runs_out(quick, sockets, sent):
    sock = connect(quick.dicom_port)
    sockets.append(sock)
    sock.sendall(sent)
    started = time.monotonic()
    assert conversation(sock, 10 * ARTIM) == ["closed"]
    assert ARTIM * 0.8 < time.monotonic() - started < 4 * ARTIM
    assert echo(quick.dicom_port) == 0


def test_bytes_trickled_one_at_a_time_do_not_keep_a_connection_past_artim(quick, sockets):
    sock = connect(quick.dicom_port)
    sockets.append(sock)
    request = associate_rq()
    started = time.monotonic()
    closed = None
    for byte in request:  # 0.05 s a byte: the A-ASSOCIATE-RQ would take far longer than ARTIM
        try:
            sock.send(bytes([byte]))
        except OSError:
            closed = time.monotonic() - started
            break
        time.sleep(0.05)
        if time.monotonic() - started > 6 * ARTIM:
            break
    if closed is None:
        assert conversation(sock, ARTIM) == ["closed"]
        closed = time.monotonic() - started
    assert closed < 4 * ARTIM
    assert echo(quick.dicom_port) == 0


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def test_a_flood_from_one_address_does_not_keep_another_out(start_server, sockets):
    server = start_server(dicom={"acse_timeout_seconds": 30.0, "pending_per_address": 4})
    flood = [connect(server.dicom_port, OTHER_HOST) for _ in range(50)]  # more than max_associations (32)
    sockets.extend(flood)
    assert echo(server.dicom_port) == 0
    time.sleep(dul.PENDING_GRACE + 0.2)
    sockets.append(connect(server.dicom_port, OTHER_HOST))  # one more from the flooding address ...
    time.sleep(0.3)
    assert sum(still_open(sock) for sock in flood) == 3  # ... and it keeps only its newest (4 in all)
    assert echo(server.dicom_port) == 0


def test_a_burst_of_associations_from_one_address_all_go_through(server):
    with ThreadPoolExecutor(24) as pool:  # more at once than pending_per_address (16)
        assert list(pool.map(lambda _: echo(server.dicom_port), range(24))) == [0] * 24


# -- raw PDU abuse ----------------------------------------------------------------------------

GARBAGE = pdu(0x09, b"\xde\xad\xbe\xef")  # a PDU type PS3.8 does not define
ABUSE = [
    pytest.param(GARBAGE, [ABORT], id="unknown PDU type"),
    pytest.param(pdu(0xFF, bytes(20)), [ABORT], id="PDU type 0xFF"),
    pytest.param(echo_rq(), [ABORT], id="P-DATA-TF before associating"),
    pytest.param(RELEASE, [ABORT], id="A-RELEASE-RQ before associating"),
    pytest.param(pdu(ABORT, bytes(4)), ["closed"], id="A-ABORT before associating"),
    pytest.param(struct.pack(">BBI", ASSOCIATE_RQ, 0, 10) + bytes(10), [ABORT], id="A-ASSOCIATE-RQ shorter than its fields"),
    pytest.param(struct.pack(">BBI", ASSOCIATE_RQ, 0, 0xFFFFFFFF), [ASSOCIATE_RJ], id="A-ASSOCIATE-RQ of 4 GiB"),
    pytest.param(overrun(associate_rq(), 74), [ABORT], id="A-ASSOCIATE-RQ whose first item overruns it"),
    pytest.param(overrun(associate_rq(), len(associate_rq()) - 32), [ABORT],
                 id="A-ASSOCIATE-RQ whose last user information sub-item overruns it"),
    pytest.param(overrun(associate_rq(), 74 + 25), [ABORT], id="a presentation context item overrunning the next"),
    pytest.param(overrun(associate_rq(), 74 + 25 + 8), [ABORT], id="an abstract syntax sub-item overrunning its item"),
    pytest.param(associate_rq(version=2), [ASSOCIATE_RJ], id="protocol version 2 only"),
    pytest.param(associate_rq(maximum_length=None) + echo_rq(), [ASSOCIATE_RJ], id="no Maximum Length sub-item"),
    pytest.param(associate_rq(maximum_length=7) + echo_rq(), [ASSOCIATE_RJ], id="a Maximum Length of 7"),
    pytest.param(associate_rq(maximum_length=0) + echo_rq() + RELEASE, [ASSOCIATE_AC, P_DATA, RELEASE_RP],
                 id="a Maximum Length of 0, no limit"),
    pytest.param(associate_rq(contexts=((VERIFICATION, ()),)), [ABORT], id="a presentation context without syntaxes"),
    pytest.param(associate_rq(contexts=()), [ABORT], id="no presentation context"),
    pytest.param(associate_rq() + GARBAGE, [ASSOCIATE_AC, ABORT], id="garbage after the A-ASSOCIATE-RQ"),
    pytest.param(associate_rq() + struct.pack(">BBI", P_DATA, 0, 0xFFFFFFF0), [ASSOCIATE_AC, "closed"],
                 id="a P-DATA-TF announcing 4 GiB, then silence"),
    pytest.param(associate_rq() + echo_rq()[:9], [ASSOCIATE_AC, "closed"], id="silence in the middle of a P-DATA-TF"),
    pytest.param(associate_rq() + pdu(P_DATA, struct.pack(">IBB", 0xFFFF, 1, 3)), [ASSOCIATE_AC, ABORT],
                 id="a PDV longer than its P-DATA-TF"),
    pytest.param(associate_rq() + pdu(ASSOCIATE_RQ, bytes(4)), [ASSOCIATE_AC, ABORT], id="a second A-ASSOCIATE-RQ"),
    pytest.param(associate_rq() + echo_rq() + RELEASE, [ASSOCIATE_AC, P_DATA, RELEASE_RP], id="well behaved"),
]


@pytest.mark.parametrize(("sent", "answer"), ABUSE)
def test_raw_pdu_abuse_is_answered_as_ps3_8_says(quick, sockets, caplog, sent, answer):
    caplog.set_level(logging.INFO)
    sock = connect(quick.dicom_port)
    sockets.append(sock)
    sock.sendall(sent)
    assert conversation(sock, 4 * (ARTIM + NETWORK)) == answer
    assert echo(quick.dicom_port) == 0
    assert not tracebacks(caplog)


@pytest.mark.parametrize("cut", [3, 30, 200])
def test_a_close_in_the_middle_of_a_pdu_is_one_line(quick, caplog, cut):
    caplog.set_level(logging.INFO)
    for sent in (associate_rq(), associate_rq() + echo_rq()):
        with connect(quick.dicom_port) as sock:
            sock.sendall(sent[:len(sent) - cut] if cut < len(sent) else sent[:1])
            time.sleep(0.1)
    time.sleep(0.3)
    assert echo(quick.dicom_port) == 0
    assert not tracebacks(caplog)


def test_an_association_whose_thread_dies_before_answering_is_aborted(quick, sockets, monkeypatch):
    def fault(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("a fault in negotiation")  # the association's thread ends there

    monkeypatch.setattr(ACSE, "negotiate_association", fault)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the fault made here is no finding
    sock = connect(quick.dicom_port)
    sockets.append(sock)
    sock.sendall(associate_rq())
    assert conversation(sock, 5) == [ABORT]  # not left waiting for an answer that never comes


def test_a_long_associate_rq_is_read_whole(quick, sockets):
    # More than a new connection's receive buffer holds unread: the gate makes room for it.
    syntaxes = (IMPLICIT_LE, *(f"1.2.826.0.1.3680043.9.7433.2.{n}".encode() for n in range(40)))
    request = associate_rq(contexts=((VERIFICATION, syntaxes),) * 128)
    assert len(request) > 160 * 1024  # more than a socket's default receive buffer holds unread
    sock = connect(quick.dicom_port)
    sockets.append(sock)
    sock.sendall(request + RELEASE)
    assert conversation(sock, 15) == [ASSOCIATE_AC, RELEASE_RP]


# -- seeded mutations -------------------------------------------------------------------------

HOSTILE_INPUTS = int(os.environ.get("PACS_HOSTILE_INPUTS", "200"))
EXTREMES = [0, 1, 5, 6, 67, 68, 0x7F, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]


def mutate(stream: bytes, rng: random.Random) -> bytes:
    data = bytearray(stream)
    for _ in range(rng.randint(1, 4)):
        roll, at = rng.random(), rng.randrange(len(data) + 1)
        if roll < 0.25 and data:
            data[at % len(data)] = rng.randrange(256)
        elif roll < 0.5:  # a length field made extreme
            width = rng.choice((2, 4))
            data[at:at + width] = rng.choice(EXTREMES).to_bytes(8, "big")[-width:]
        elif roll < 0.65:
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        elif roll < 0.75:
            data[at:at] = struct.pack(">BBI", rng.randrange(256), 0, rng.choice(EXTREMES))
        elif roll < 0.9 and data:
            del data[at:at + rng.randint(1, 40)]
        else:
            start = rng.randrange(len(data) or 1)
            data[at:at] = data[start:start + rng.randint(1, 80)]
    return bytes(data)


def hostile_input(seed: int) -> tuple[bytes, str, int]:
    """The bytes of input ``seed``, how the client ends (``close``, ``half-close`` or ``silent``)
    and in how many pieces it sends them."""
    rng = random.Random(seed)
    base = rng.choice([
        associate_rq(),
        associate_rq() + echo_rq() + RELEASE,
        associate_rq(contexts=((VERIFICATION, (IMPLICIT_LE, b"1.2.840.10008.1.2.1")),) * 3) + echo_rq(),
    ])
    return mutate(base, rng), rng.choice(["close", "half-close", "silent"]), rng.choice([1, 1, 2, 5])


def converse(port: int, seed: int) -> tuple[int, list[int | str]]:
    sent, ending, pieces = hostile_input(seed)
    with connect(port) as sock:
        step = max(1, len(sent) // pieces)
        try:
            for start in range(0, len(sent), step):
                sock.sendall(sent[start:start + step])
                if pieces > 1:
                    time.sleep(0.01)
            if ending == "half-close":
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server already refused and closed
            return seed, ["closed"]
        if ending == "close":
            return seed, ["sent"]
        return seed, conversation(sock, 4 * (ARTIM + NETWORK))


def test_seeded_pdu_mutations_end_in_protocol_and_the_server_keeps_serving(quick, caplog):
    caplog.set_level(logging.INFO)
    with ThreadPoolExecutor(8) as pool:  # fewer at once than pending_per_address
        results = list(pool.map(lambda seed: converse(quick.dicom_port, seed), range(HOSTILE_INPUTS)))
    hung = [(seed, seen) for seed, seen in results if seen != ["sent"] and not ended(seen)]
    assert not hung, hung[:5]
    assert echo(quick.dicom_port) == 0
    assert not tracebacks(caplog)
    gate = quick.server._dicom._server.gate
    deadline = time.monotonic() + 4 * ARTIM
    while gate.waiting and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gate.waiting == 0


# -- the receiver processes' path (``[dicom] processes = 2``) ---------------------------------

def serve(tmp_path: Path, database_url: str, env: dict[str, str]) -> ServeProcess:
    """``pacs serve`` on free ports; tried again on other ports if one was taken meanwhile (the
    ports are found free, then bound by the server a moment later, and this module's clients
    take ephemeral ports by the hundred)."""
    for attempt in range(3):
        try:
            return ServeProcess(tmp_path / f"data-{attempt}", database_url, **env).start().wait_for_receivers()
        except RuntimeError as exc:
            if "address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def test_receivers_take_only_associations_and_refuse_as_the_main_process_does(tmp_path, database_url):
    env = {"PACS_DICOM__PROCESSES": "2", "PACS_ARCHIVE__MIN_FREE_BYTES": "0", "PACS_MLLP__FRONT_PROCESS": "false",
           "PACS_DICOM__MAX_ASSOCIATIONS": "4", "PACS_DICOM__ACSE_TIMEOUT_SECONDS": str(ARTIM),
           "PACS_DICOM__NETWORK_TIMEOUT_SECONDS": str(NETWORK)}
    server = serve(tmp_path, database_url, env)
    idle: list[socket.socket] = []
    try:
        idle.extend(connect(server.dicom_port, OTHER_HOST) for _ in range(12))  # 3 x max_associations
        stalled = connect(server.dicom_port)
        stalled.sendall(struct.pack(">BBI", ASSOCIATE_RQ, 0, 100_000))
        time.sleep(0.2)
        assert [echo(server.dicom_port) for _ in range(4)] == [0] * 4
        assert conversation(stalled, 10 * ARTIM) == ["closed"]
        for sent, answer in [(GARBAGE, [ABORT]), (associate_rq() + GARBAGE, [ASSOCIATE_AC, ABORT]),
                             (associate_rq() + echo_rq()[:9], [ASSOCIATE_AC, "closed"])]:
            with connect(server.dicom_port) as sock:
                sock.sendall(sent)
                assert conversation(sock, 4 * (ARTIM + NETWORK)) == answer
        assert echo(server.dicom_port) == 0
    finally:
        for sock in idle:
            sock.close()
        server.stop()
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]


def test_the_acceptor_collects_garbage_twice_a_minute_not_every_few_seconds(monkeypatch):
    """pynetdicom's server collects every 60th turn of its loop; with the archive's 50 ms turn
    that was every 3 s, each a pause of every thread. Once per COLLECT_SECONDS instead."""
    from types import SimpleNamespace

    from pacs.archive import ae

    collected: list[int] = []
    monkeypatch.setattr(ae, "gc", SimpleNamespace(collect=lambda: collected.append(1)))
    server = ae.CountingServer.__new__(ae.CountingServer)
    for _ in range(200):  # ten seconds of the acceptor's turns, done at once
        server.service_actions()
    assert len(collected) == 1
    server._collected = time.monotonic() - ae.COLLECT_SECONDS  # the interval has passed
    for _ in range(200):
        server.service_actions()
    assert len(collected) == 2

"""MLLP connections that hold the port without sending messages: a frame trickled a byte at a
time or begun and abandoned is dropped after ``[mllp] frame_timeout_seconds``, bytes outside
frames do not keep a connection past ``idle_timeout_seconds``, and one address holds at most
``max_connections_per_address`` connections while another sends as before. Served by the front
process, as ``pacs serve`` has it."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import front_process_settings
from tests.helpers import VT, MLLPClient, ack_fields, load

ADT = load("adt_a01_ihe.hl7")
TIMEOUT = 1.0  # seconds: the tests' frame and idle timeouts
OTHER_HOST = "127.0.0.2"  # another address on loopback


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """How connections are held does not touch the database: SQLite only."""
    target = tmp_path / "db" / "pacs.db"
    target.parent.mkdir()
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def settings(settings):
    return front_process_settings(settings)


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_within(sock: socket.socket, seconds: float, received: bytearray | None = None) -> float | None:
    """Seconds until the server closed ``sock`` (what it sends meanwhile added to ``received``),
    None if it is still open after ``seconds``."""
    started = time.monotonic()
    sock.settimeout(0.05)
    while time.monotonic() - started < seconds:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - started
        if not data:
            return time.monotonic() - started
        if received is not None:
            received += data
    return None


def still_serving(port: int) -> None:
    with MLLPClient(port) as client:
        assert ack_fields(client.send(ADT))["code"] == "AA"


def test_a_frame_trickled_a_byte_at_a_time_is_dropped_after_the_frame_timeout(start_server):
    server = start_server(mllp={"frame_timeout_seconds": TIMEOUT, "idle_timeout_seconds": 60.0})
    with connect(server.mllp_port) as sock:
        sock.sendall(VT)
        started = time.monotonic()
        answered = bytearray()
        closed = None
        for byte in ADT:  # each byte well within the idle timeout, the frame never whole in time
            try:
                sock.send(bytes([byte]))
            except OSError:
                closed = time.monotonic() - started
                break
            if closed_within(sock, 0.05, answered) is not None:
                closed = time.monotonic() - started
                break
            if time.monotonic() - started > 6 * TIMEOUT:
                break
        assert closed is not None and closed < 4 * TIMEOUT
        assert not answered  # nothing acknowledged
    still_serving(server.mllp_port)


def test_a_frame_begun_and_abandoned_is_dropped_after_the_frame_timeout(start_server):
    server = start_server(mllp={"frame_timeout_seconds": TIMEOUT, "idle_timeout_seconds": 60.0})
    with connect(server.mllp_port) as sock:
        sock.sendall(VT + ADT[:40])
        took = closed_within(sock, 6 * TIMEOUT)
        assert took is not None and TIMEOUT * 0.8 < took < 4 * TIMEOUT
    still_serving(server.mllp_port)


def test_bytes_outside_frames_do_not_keep_a_connection_open(start_server):
    server = start_server(mllp={"idle_timeout_seconds": TIMEOUT})
    with connect(server.mllp_port) as sock:
        started = time.monotonic()
        took = None
        while took is None and time.monotonic() - started < 6 * TIMEOUT:
            try:
                sock.send(b"\r")  # a keep-alive byte, a fifth of the idle timeout apart
            except OSError:
                took = time.monotonic() - started
                break
            took = closed_within(sock, TIMEOUT / 5)
            took = None if took is None else time.monotonic() - started
        assert took is not None and took < 4 * TIMEOUT
    still_serving(server.mllp_port)


def test_one_address_holds_at_most_its_connections_and_others_are_served(start_server):
    server = start_server(mllp={"max_connections_per_address": 4})
    held = [connect(server.mllp_port, OTHER_HOST) for _ in range(4)]
    try:
        with MLLPClient(server.mllp_port) as first:  # another address, while the four are open
            assert ack_fields(first.send(ADT))["code"] == "AA"
        extra = connect(server.mllp_port, OTHER_HOST)
        assert closed_within(extra, 5) is not None  # one more from that address: closed at once
        extra.close()
        still_serving(server.mllp_port)  # another address: served
        held.pop().close()
        time.sleep(0.3)
        again = connect(server.mllp_port, OTHER_HOST)
        held.append(again)
        assert closed_within(again, 0.5) is None  # a place was freed
    finally:
        for sock in held:
            sock.close()

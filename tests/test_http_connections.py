"""HTTP connections that hold the port without sending requests (pacs.server's guard around
uvicorn's protocol): one that sends nothing is closed after ``[http]
request_head_timeout_seconds``, one that trickles its request head is answered 408 and closed,
a head over the limit 431, and one address past ``max_connections_per_address`` 503, while
another address is served; kept-alive connections and request bodies are unaffected. At a stop
the port is freed at once when no connection is open, and a kept-alive one is closed."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer

HEAD_TIMEOUT = 1.0  # seconds: the tests' request head timeout
OTHER_HOST = "127.0.0.2"  # another address on loopback


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """How connections are held does not touch the database: SQLite only."""
    target = tmp_path / "db" / "pacs.db"
    target.parent.mkdir()
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def quick(start_server):  # type: ignore[no-untyped-def]
    return start_server(http={"request_head_timeout_seconds": HEAD_TIMEOUT})


def connect(server, source: str = "127.0.0.1") -> socket.socket:  # type: ignore[no-untyped-def]
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.server.http_port))
    return sock


def until_closed(sock: socket.socket, seconds: float) -> tuple[float | None, bytes]:
    """Seconds until the server closed ``sock`` (None: still open after ``seconds``), and what
    it sent."""
    started, received = time.monotonic(), b""
    sock.settimeout(0.05)
    while time.monotonic() - started < seconds:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            data = b""
        if not data:
            return time.monotonic() - started, received
        received += data
    return None, received


def healthy(server) -> bool:  # type: ignore[no-untyped-def]
    return httpx.get(server.http_url + "/healthz", timeout=10).status_code == 200


def test_a_connection_that_sends_nothing_is_closed(quick):
    with connect(quick) as sock:
        took, answer = until_closed(sock, 6 * HEAD_TIMEOUT)
    assert took is not None and HEAD_TIMEOUT * 0.8 < took < 4 * HEAD_TIMEOUT
    assert answer == b""  # an idle connection is closed in silence
    assert healthy(quick)


def test_a_trickled_request_head_is_answered_408(quick):
    with connect(quick) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: pacs\r\n")
        started, answer, took = time.monotonic(), b"", None
        while took is None and time.monotonic() - started < 6 * HEAD_TIMEOUT:
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # a header a fifth of the timeout apart, never the end
            except OSError:
                break
            took, more = until_closed(sock, HEAD_TIMEOUT / 5)
            answer += more
        took = time.monotonic() - started
    assert took < 4 * HEAD_TIMEOUT
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert healthy(quick)


def test_a_request_head_over_the_limit_is_answered_431(quick):
    with connect(quick) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: pacs\r\n")
        try:
            for _ in range(40):  # 160 KiB of headers, the head never ending
                sock.sendall(b"X-Big: " + b"a" * 4096 + b"\r\n")
        except OSError:
            pass
        took, answer = until_closed(sock, 10)
    assert took is not None
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert healthy(quick)


def test_one_address_holds_at_most_its_connections_and_others_are_served(start_server):
    server = start_server(http={"max_connections_per_address": 4, "request_head_timeout_seconds": 30.0})
    held = [connect(server, OTHER_HOST) for _ in range(4)]
    try:
        time.sleep(0.2)
        extra = connect(server, OTHER_HOST)
        took, answer = until_closed(extra, 5)
        extra.close()
        assert took is not None and answer.startswith(b"HTTP/1.1 503 ")
        assert healthy(server)  # another address
        held.pop().close()
        time.sleep(0.2)
        again = connect(server, OTHER_HOST)
        held.append(again)
        again.sendall(b"GET /healthz HTTP/1.1\r\nHost: pacs\r\n\r\n")
        again.settimeout(10)
        assert again.recv(65536).startswith(b"HTTP/1.1 200 ")  # a place was freed
    finally:
        for sock in held:
            sock.close()


def test_kept_alive_connections_and_bodies_are_served_as_before(quick):
    with httpx.Client(base_url=quick.http_url, timeout=10) as client:
        for _ in range(3):  # one connection, each request a while after the last response
            assert client.get("/healthz").status_code == 200
            time.sleep(HEAD_TIMEOUT / 2)
        # A body much larger than a request head is limited to, arriving with it: not a 431
        response = client.post("/fhir/Patient", content=b"{" + b" " * 300_000 + b"}",
                               headers={"content-type": "application/fhir+json"})
        assert response.status_code not in (408, 431, 503)
        assert client.get("/healthz").status_code == 200


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_at_stop_an_idle_server_frees_its_port(settings):  # type: ignore[no-untyped-def]
    running = RunningServer(settings).start()
    port = running.server.http_port
    assert healthy(running)  # its connection closed after the answer: none open at the stop
    running.stop()
    assert refused(port)


def test_at_stop_a_kept_alive_connection_is_closed_and_the_port_freed(settings):  # type: ignore[no-untyped-def]
    running = RunningServer(settings).start()
    port = running.server.http_port
    sock = connect(running)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: pacs\r\n\r\n")
    sock.settimeout(10)
    answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200")  # and the connection is kept alive, idle
    running.stop()  # with a connection open, uvicorn's own shutdown asks it to finish
    closed, _ = until_closed(sock, 5)
    assert closed is not None
    sock.close()
    assert refused(port)

"""MLLP over TLS on a port of its own (``[mllp] tls_port``), in the front process as in the main
one, and status messages to a HIS that takes MLLP over TLS only.

A Python ``ssl`` client with a certificate from the configured CA gets its AA; a client without
a certificate, one with another CA's, and one that does not speak TLS get no ACK and are closed
during the handshake, while the port goes on serving and the plain MLLP port is as it was."""

from __future__ import annotations

import shutil
import socket
import ssl
import time
from pathlib import Path

import pytest

from pacs.settings import HISDestination, OutboxSettings
from tests.helpers import CR, FS, VT, MLLPClient, ack_fields, load
from tests.integration.test_his_outbox import FakeHIS, run_procedure, wait_for
from tests.tls import PKI

QUICK = 10.0  # seconds a refused client may take to find out (none waits for a timeout)


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """TLS happens below the message store: SQLite only."""
    target = tmp_path / "db" / "pacs.db"
    target.parent.mkdir()
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"), client="HIS")


def send_over_tls(port: int, context: ssl.SSLContext, message: bytes) -> bytes:
    """One message over MLLP over TLS; its ACK (b"" if the server closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=QUICK) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(VT + message + FS + CR)
            buffer = b""
            while FS + CR not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    return b""
                buffer += chunk
    frame = buffer.partition(FS + CR)[0]
    return frame[frame.index(VT) + 1:]


def refused(port: int, context: ssl.SSLContext) -> bool:
    """Whether a client with ``context`` is refused: no ACK, an error or an end of stream at
    once (with TLS 1.3 a client learns that its certificate was refused at its first read)."""
    started = time.monotonic()
    try:
        ack = send_over_tls(port, context, load("adt_a01_ihe.hl7"))
    except (ssl.SSLError, ConnectionError):
        ack = b""
    return ack == b"" and time.monotonic() - started < QUICK


@pytest.mark.parametrize("front_process", [True, False], ids=["front-process", "in-process"])
def test_mllp_over_tls(start_server, pki, front_process):
    server = start_server(mllp={"front_process": front_process, **pki.server_settings()})
    port = server.server.mllp_tls_port
    assert port and port != server.mllp_port
    ack = send_over_tls(port, pki.client_context(), load("orm_o01_nw_ihe.hl7"))
    assert ack_fields(ack)["code"] == "AA"

    assert refused(port, pki.client_context(certificate=False))
    assert refused(port, pki.client_context(pki.rogue))
    with socket.create_connection(("127.0.0.1", port), timeout=QUICK) as plain:  # MLLP without TLS
        plain.sendall(VT + load("adt_a01_ihe.hl7") + FS + CR)
        started = time.monotonic()
        try:
            answer = plain.recv(65536)
        except ConnectionResetError:
            answer = b""
        assert VT not in answer and time.monotonic() - started < QUICK  # closed, without an ACK

    assert ack_fields(send_over_tls(port, pki.client_context(), load("adt_a08_ihe.hl7")))["code"] == "AA"
    with MLLPClient(server.mllp_port) as mllp:  # the plain port as it was
        assert ack_fields(mllp.send(load("adt_a01_ihe.hl7")))["code"] == "AA"


class TLSHIS(FakeHIS):
    """The fake HIS behind MLLP over TLS, requiring a client certificate from ``client_ca``."""

    def __init__(self, pki: PKI) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki.ca.server("his.test").cert, pki.ca.server("his.test").key)
        self.context.load_verify_locations(pki.ca.cert)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.peers: list[str] = []
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        try:
            secured = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
        self.peers.append(dict(part[0] for part in secured.getpeercert()["subject"])["commonName"])
        super()._handle(secured)  # type: ignore[arg-type]


def test_status_to_a_his_over_tls(start_server, pki):
    his = TLSHIS(pki)
    try:
        server = start_server(
            his=HISDestination(host="127.0.0.1", port=his.port, tls=True, tls_ca=pki.ca.cert,
                               tls_cert=pki.server.cert, tls_key=pki.server.key),
            outbox=OutboxSettings(base_delay_seconds=0.1, max_delay_seconds=0.5))
        run_procedure(server)
        wait_for(lambda: len(his.received) == 2)
        assert his.peers and set(his.peers) == {"pacs.test"}
    finally:
        his.close()

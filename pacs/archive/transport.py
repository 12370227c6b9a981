"""The connections under DICOM associations: TLS (PS3.15 Annex B, BCP 195) on the DICOM TLS port
and to ``[[peers]]`` with ``tls = true``, and TCP_NODELAY on every socket.

**The TLS port.** A new connection waits in the :class:`~pacs.archive.dul.Gate` until its
A-ASSOCIATE-RQ is whole, as on the plain port; on the TLS port it first completes its TLS
handshake there, in the same thread and under the same ARTIM timer (PS3.8 9.1.5), without
blocking it: :func:`accept` wraps the socket in a non-blocking :class:`TLSConnection` and
:func:`handshake` advances the handshake as bytes arrive. A client that offers no certificate
from ``[dicom] tls_client_ca`` when one is required, or that does not speak TLS, is refused
there, never becoming an association. The gate then reads the A-ASSOCIATE-RQ out of the TLS
stream (decrypted bytes cannot be looked at in place as the plain port's are, with MSG_PEEK),
and the :class:`TLSConnection` gives those bytes back first to pynetdicom's reader once the
association starts (:func:`replay`).

TLS associations are served by the main process alone: the state of a TLS session lives in this
process's OpenSSL, so the socket cannot be handed to a receiver process (:mod:`pacs.archive.receivers`)
the way a plain one is.

**Associations this AE opens** (C-MOVE sub-operations, storage commitment reports, IAN, ``pacs
doctor``'s C-ECHO) go over TLS to a peer with ``tls = true`` (:func:`association_options`,
:func:`associate`), presenting this AE's certificate and checking the peer's.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from pynetdicom import evt

from pacs.settings import Peer, Settings
from pacs.tls import peer_context, peer_identity, server_context


class TLSConnection(ssl.SSLSocket):
    """The socket of an association on the TLS port.

    What the gate read of the TLS stream before the association started (its A-ASSOCIATE-RQ) is
    read from it again first (:func:`replay`), and counted by :meth:`pending`, which pynetdicom
    asks whether there is something to read. A read with ``MSG_PEEK`` looks at decrypted bytes
    without taking them, as the DUL's reader does on a plain socket to find the P-DATA-TF PDUs
    it spools directly (:func:`pacs.archive.dul._read_pdu_data`)."""

    _replay: bytearray | None = None

    def pending(self) -> int:
        replay = self._replay
        return (len(replay) if replay else 0) + super().pending()

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if flags & socket.MSG_PEEK:
            return self._peek(buflen)
        replay = self._replay
        if replay and not flags:
            data = bytes(replay[:buflen])
            del replay[:buflen]
            return data
        return super().recv(buflen, flags)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        replay = self._replay
        if replay and not flags:
            view = memoryview(buffer).cast("B")
            size = min(len(replay), nbytes or len(view), len(view))
            view[:size] = replay[:size]
            del replay[:size]
            return size
        return super().recv_into(buffer, nbytes, flags)

    def _peek(self, buflen: int) -> bytes:
        if self._replay is None:
            self._replay = bytearray()
        if not self._replay:
            self._replay += super().recv(buflen)
        return bytes(self._replay[:buflen])


def tls_server_context(settings: Settings) -> ssl.SSLContext:
    """The context of the DICOM TLS port (``[dicom] tls_cert``, ``tls_key``, ``tls_client_ca``),
    making :class:`TLSConnection` sockets."""
    context = server_context("dicom", settings.dicom)
    context.sslsocket_class = TLSConnection
    return context


def accept(sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A connection just accepted on the TLS port, wrapped for a handshake driven by
    :func:`handshake` (non-blocking; nothing is read or sent yet)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the handshake's flights too (DESIGN.md)
    sock.setblocking(False)
    return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


def handshake(connection: ssl.SSLSocket) -> bool:
    """Advance the TLS handshake (RFC 8446 4, RFC 5246 7.3) with what has arrived: True once it
    is complete, False while it waits for the peer. Raises ``ssl.SSLError`` or ``OSError`` when
    it fails (no certificate, one from another CA, a client that does not speak TLS)."""
    try:
        connection.do_handshake()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    return True


def read_now(connection: ssl.SSLSocket, size: int) -> bytes | None:
    """Up to ``size`` decrypted bytes of a non-blocking connection; None when none are there
    yet, b"" once the peer has closed it."""
    try:
        return connection.recv(size)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return None


def replay(connection: ssl.SSLSocket, data: bytes | bytearray) -> None:
    """Make ``connection`` ready to be an association: blocking again, as pynetdicom reads, with
    ``data`` (what the gate read) to be read first."""
    if isinstance(connection, TLSConnection):
        connection._replay = bytearray(data)
    connection.setblocking(True)


def describe(connection: ssl.SSLSocket) -> str:
    """The protocol, cipher suite and client certificate of a connection, for the log."""
    cipher = connection.cipher()
    who = peer_identity(connection)
    return f"{connection.version()} {cipher[0] if cipher else ''}" + (f", certificate of {who}" if who else "")


# -- associations this AE opens -----------------------------------------------------------------
class _HandshakeTraceback(logging.Filter):
    """pynetdicom logs a TLS handshake that failed when it connects to a peer (a certificate not
    trusted, none presented) as an error line with the reason, then again with a traceback: the
    line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.funcName == "connect")


def quiet_handshake_tracebacks() -> None:
    """Install :class:`_HandshakeTraceback` (idempotent)."""
    logger = logging.getLogger("pynetdicom.transport")
    if not any(isinstance(f, _HandshakeTraceback) for f in logger.filters):
        logger.addFilter(_HandshakeTraceback())


def nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN of an association this AE opens: Nagle's algorithm off (DESIGN.md, ~40 ms
    per DIMSE exchange otherwise)."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def association_options(settings: Settings, peer: Peer, **options: Any) -> dict[str, Any]:
    """Keyword arguments for ``AE.associate`` to ``peer`` (``options`` added to them): TLS when
    the peer has ``tls = true`` (``tls_args``: this AE's context and the peer's host, whose
    certificate must name it unless ``tls_check_hostname`` is off), TCP_NODELAY always."""
    handlers = [*options.pop("evt_handlers", []), (evt.EVT_CONN_OPEN, nodelay)]
    out: dict[str, Any] = {"ae_title": peer.ae_title, "evt_handlers": handlers, **options}
    if peer.tls:
        quiet_handshake_tracebacks()
        context = peer_context(settings, peer)
        context.sslsocket_class = TLSConnection  # read as the DUL reads (pacs.archive.dul), peeking too
        out["tls_args"] = (context, peer.host)
    return out


def associate(ae: Any, settings: Settings, peer: Peer, **options: Any) -> Any:
    """``ae.associate`` to ``peer``, over TLS when it has ``tls = true``."""
    return ae.associate(peer.host, peer.port, **association_options(settings, peer, **options))

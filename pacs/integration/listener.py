"""The MLLP server: frame → message store → channel → ACK, many connections at once.

Each connection is served by one asyncio task that reads a frame, hands it to the intake worker
and writes the ACK the worker returns (after the message and its effect are committed). A bad
frame gets an AR and the connection keeps going; a connection that sends no message within the
idle timeout is closed, and so is one whose frame does not end within the frame timeout (a
sender trickling bytes); a frame cut off by a dropped connection or a timeout was never
acknowledged and is discarded (the sender resends it). One address holds at most ``[mllp]
max_connections_per_address`` connections: one more is closed as it opens, so that a sender
opening connections without end cannot use up the process's descriptors for every other.

With ``[mllp] tls_cert`` the same server also listens on ``[mllp] tls_port`` for MLLP over TLS
(:func:`pacs.tls.server_context`: TLS 1.2 or 1.3 as BCP 195 has it, client certificates from
``tls_client_ca`` required when it is set): the frames, limits and timeouts are those of the
plain port, and the TLS handshake must end within ``frame_timeout_seconds``. A client that does
not speak TLS, or offers no acceptable certificate, is closed during the handshake and never
reaches the frame reader.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import Counter
from concurrent.futures import Future
from typing import Protocol

from pacs.integration import mllp
from pacs.integration.ack import AckCode, ErrorCode, MessageError, build_ack, header_from_raw
from pacs.integration.channel import Inbound, Outcome
from pacs.settings import Settings
from pacs.tls import peer_identity, server_context

log = logging.getLogger(__name__)
REFUSAL_LOG_INTERVAL = 1.0  # seconds: one line per address for the connections refused in this
REFUSALS_KEPT = 1024  # addresses whose last refusal is remembered before the stale ones are dropped


class Submits(Protocol):
    """Where the listener hands messages: the intake worker in this process
    (:class:`pacs.integration.intake.Intake`), or, in the MLLP front process, the link to the
    main process's (:class:`pacs.integration.front.Link`)."""

    @property
    def accepting(self) -> bool: ...

    def submit(self, inbound: Inbound) -> Future[Outcome] | asyncio.Future[Outcome]: ...


class MLLPServer:
    def __init__(self, settings: Settings, intake: Submits) -> None:
        self.settings = settings
        self.intake = intake
        self._server: asyncio.base_events.Server | None = None
        self._tls_server: asyncio.base_events.Server | None = None
        self._connections: dict[asyncio.Task[None], mllp.FrameReader | None] = {}  # each one's reader, once made
        self._stopping = False
        self._by_host: Counter[str] = Counter()  # open connections per remote address
        self._refused: dict[str, tuple[float, int]] = {}  # per address: last line logged, refusals since

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def tls_port(self) -> int | None:
        """The MLLP over TLS port, when one is served."""
        return self._tls_server.sockets[0].getsockname()[1] if self._tls_server is not None else None

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> None:
        """Listen on ``host``:``port``, or on the listening socket ``sock`` made elsewhere."""
        self._server = await self._listen(host, port, sock)
        log.info("MLLP listening on %s", self._server.sockets[0].getsockname())

    async def start_tls(self, host: str, port: int, *, sock: socket.socket | None = None) -> None:
        """Listen for MLLP over TLS on ``host``:``port`` (or ``sock``), with ``[mllp] tls_cert``."""
        self._tls_server = await self._listen(host, port, sock, server_context("mllp", self.settings.mllp))
        log.info("MLLP listening on %s over TLS%s", self._tls_server.sockets[0].getsockname(),
                 ", client certificates required" if self.settings.mllp.tls_client_ca else "")

    async def _listen(self, host: str, port: int, sock: socket.socket | None,
                      tls: ssl.SSLContext | None = None) -> asyncio.base_events.Server:
        options: dict[str, object] = {"limit": mllp.READ_CHUNK, "backlog": mllp.LISTEN_BACKLOG}
        if tls is not None:
            options.update(ssl=tls, ssl_handshake_timeout=self.settings.mllp.frame_timeout_seconds)
        if sock is not None:
            # asyncio listens on the socket again, with its own backlog unless told
            return await asyncio.start_server(self._serve, sock=sock, **options)  # type: ignore[arg-type]
        return await asyncio.start_server(self._serve, host, port, reuse_address=True,  # type: ignore[arg-type]
                                          **options)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; close the connections between two messages at once, let the others
        finish the message they are on (``grace`` seconds at most), then close them."""
        servers = [server for server in (self._server, self._tls_server) if server is not None]
        if not servers:
            return
        self._stopping = True  # a connection that finishes its message closes
        for server in servers:
            server.close()
        tasks = list(self._connections)
        for task in tasks:
            frames = self._connections.get(task)
            if frames is not None and frames.between_frames:
                task.cancel()  # nothing of theirs is in flight: the sender sends its next message again
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for server in servers:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if self._by_host[host] >= self.settings.mllp.max_connections_per_address:
            self._refuse(host)
            writer.close()
            return
        self._by_host[host] += 1
        try:
            await self._converse(reader, writer, peer)
        finally:
            self._by_host[host] -= 1
            if not self._by_host[host]:
                del self._by_host[host]

    def _refuse(self, host: str) -> None:
        """Log a connection refused for its address's limit: one line per address per
        :data:`REFUSAL_LOG_INTERVAL`, with how many more were refused meanwhile."""
        now = time.monotonic()
        last, since = self._refused.get(host, (0.0, 0))
        if now - last < REFUSAL_LOG_INTERVAL:
            self._refused[host] = (last, since + 1)
            return
        if len(self._refused) > REFUSALS_KEPT:
            self._refused = {h: seen for h, seen in self._refused.items() if now - seen[0] < REFUSAL_LOG_INTERVAL}
        self._refused[host] = (now, 0)
        log.warning("MLLP %s already has %d connections open; another one closed%s", host,
                    self.settings.mllp.max_connections_per_address,
                    f" (and {since} more before)" if since else "")

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = None
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = writer.get_extra_info("ssl_object")
        if tls is not None:
            who = peer_identity(tls)
            log.debug("MLLP %s: %s %s%s", peer_text, tls.version(), (tls.cipher() or ("",))[0],
                      f", certificate of {who}" if who else "")
        frames = mllp.FrameReader(reader, self.settings.mllp.max_message_bytes,
                                  self.settings.mllp.idle_timeout_seconds, self.settings.mllp.frame_timeout_seconds)
        self._connections[task] = frames
        closing = False
        try:
            while not closing:
                try:
                    payload = await frames.next_frame()
                except mllp.FrameTimeout as exc:
                    log.warning("MLLP %s: %s; the partial message was not acknowledged and is discarded; closing",
                                peer_text, exc)
                    break
                except TimeoutError:
                    log.info("MLLP %s sent no message for %.0f s; closing", peer_text,
                             self.settings.mllp.idle_timeout_seconds)
                    break
                except asyncio.IncompleteReadError:
                    log.warning("MLLP %s closed in the middle of a frame; the partial message was not "
                                "acknowledged and is discarded", peer_text)
                    break
                except mllp.FrameTooLarge as exc:
                    log.warning("MLLP %s: %s", peer_text, exc)
                    writer.write(mllp.frame(self._reject(exc.head, str(exc))))
                    await writer.drain()
                    continue
                if payload is None:
                    break
                if not payload.strip():
                    continue
                try:
                    outcome = await asyncio.wrap_future(self.intake.submit(Inbound(payload, "mllp", peer_text)))
                except Exception as exc:  # noqa: BLE001 - whatever kept it from being stored
                    # Not stored: say nothing that could pass for an acknowledgement; the sender retries.
                    log.error("MLLP %s: message not stored (%s); closing the connection", peer_text, exc)
                    break
                writer.write(mllp.frame(outcome.response))
                await writer.drain()
                closing = self._stopping or not self.intake.accepting
        except (ConnectionResetError, BrokenPipeError):
            log.info("MLLP %s reset the connection", peer_text)
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionResetError, BrokenPipeError, asyncio.CancelledError):
                pass

    def _reject(self, head: bytes, reason: str) -> bytes:
        header = header_from_raw(head)
        error = MessageError.reject(ErrorCode.APPLICATION_INTERNAL_ERROR, reason)
        text = build_ack(header, AckCode.REJECT, application=self.settings.hl7.application,
                         facility=self.settings.hl7.facility, error=error)
        return mllp.encode(text, header.charset or "ASCII")

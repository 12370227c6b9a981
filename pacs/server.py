"""The composition root: builds the services once and runs every front end in one process.

``pacs serve`` runs the HTTP app and the DICOM AE on one asyncio loop; the intake worker is a
thread. The MLLP connections are served by a front process of their own that parses and maps
(:mod:`pacs.integration.front`; ``[mllp] front_process = false`` serves them on the loop here),
and ``[dicom] processes`` adds DICOM receiver processes (:mod:`pacs.archive.receivers`). Each of
HTTP, DICOM and MLLP also listens on a TLS port of its own once its section names a certificate
(``tls_cert``; :mod:`pacs.tls`), and ``[http] plain = false`` leaves HTTPS alone.
SIGTERM or SIGINT stops the listeners from accepting, lets the messages already received finish
(or leaves them stored as RECEIVED, to be processed at the next start), and exits.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pacs import housekeeping, systemd
from pacs.archive import commitment, ian
from pacs.archive.mpps import MPPSService
from pacs.archive.query_service import QueryService
from pacs.archive.receivers import Receivers
from pacs.archive.retention import Retention
from pacs.archive.storage.manager import StorageManager
from pacs.archive.store import Acknowledge, Archive, DuplicatePolicy, tidy_incoming
from pacs.audit import Auditor
from pacs.capture import service as capture
from pacs.capture.service import Capture
from pacs.db import Database
from pacs.housekeeping import Housekeeping
from pacs.integration import his, publisher
from pacs.integration.channel import Channel
from pacs.integration.front import Front
from pacs.integration.his import HISNotifier
from pacs.integration.intake import Intake
from pacs.integration.mapping import MappingHolder
from pacs.integration.outbox import OutboxWorker
from pacs.metrics import Metrics
from pacs.registry import lifecycle
from pacs.reporting.sending import ReportSender
from pacs.settings import Settings, service_manager
from pacs.tls import client_context, server_context

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything a front end may call, built once per process."""

    settings: Settings
    db: Database
    mappings: MappingHolder
    channel: Channel
    intake: Intake
    queries: QueryService
    mpps: MPPSService
    notify: lifecycle.Notify | None
    outbox: OutboxWorker
    archive: Archive
    publisher: publisher.Publisher | None
    storage: StorageManager | None = None
    audit: Auditor | None = None
    retention: Retention | None = None
    housekeeping: Housekeeping | None = None
    mllp_front: Front | None = None  # the MLLP front process, once the server has started it
    metrics: Metrics | None = None  # the Prometheus scrape, once the server has started
    capture: Capture | None = None  # non-DICOM files made DICOM (pacs.capture), and their hot folders

    @classmethod
    def build(cls, settings: Settings, *, migrate: bool = True, receiver: bool = False) -> Services:
        """The services of ``pacs serve``; with ``receiver``, those of a DICOM receiver process
        (:mod:`pacs.archive.receivers`), which leaves the incoming folder to the main process."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.effective_database_url, writer_lock=settings.dicom.processes > 1)
        if migrate:
            db.migrate()
        mappings = MappingHolder(settings.mappings_dir, poll_seconds=settings.mappings_poll_seconds)
        notify = None
        deliverers = {commitment.DESTINATION_PREFIX: commitment.commitment_deliverer(settings)}
        if settings.his.host and settings.his.port:
            notify = HISNotifier(settings)
            his_tls = (lambda: client_context("[his]", settings.his)) if settings.his.tls else None
            deliverers[his.DESTINATION] = his.mllp_deliverer(settings.his.host, settings.his.port, tls=his_tls)
        if settings.publish.fhir_base_url:
            deliverers[publisher.DESTINATION] = publisher.fhir_deliverer(settings.publish)
        if settings.publish.ian_peers:
            deliverers[ian.DESTINATION_PREFIX] = ian.ian_deliverer(settings)
        outbox = OutboxWorker(db, deliverers, base_delay=settings.outbox.base_delay_seconds,
                              max_delay=settings.outbox.max_delay_seconds)
        publishing = (publisher.Publisher(db, settings, outbox.wake)
                      if settings.publish.fhir_base_url or settings.publish.ian_peers else None)
        channel = Channel(settings, mappings, notify)
        intake = Intake(db, channel, batch_max=settings.hl7.batch_max)
        storage = StorageManager.from_settings(settings, db)
        storage.prepare_areas()
        area = storage.areas[storage.write[0]]
        if not receiver:
            tidy_incoming(area)  # a receiver starts while the main process receives into it
        archive = Archive(db, area, mappings, duplicates=DuplicatePolicy(settings.archive.duplicates), notify=notify,
                          min_free_bytes=settings.archive.min_free_bytes,
                          acknowledge=Acknowledge(settings.archive.acknowledge))
        storage.attach(archive)
        deliverers.update(ReportSender(settings, db, archive).deliverers())  # signed reports' outputs
        services = cls(settings=settings, db=db, mappings=mappings, channel=channel, intake=intake,
                       queries=QueryService(db, mappings, settings), mpps=MPPSService(db, notify),
                       notify=notify, outbox=outbox, archive=archive, publisher=publishing, storage=storage)
        housekeeping.wire(services)  # audit log, IOCM rejections, retention, scheduled jobs
        if not receiver:
            services.capture = capture.wire(settings, db, archive, mappings)
        return services

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()
        # Before the archive and the intake: a delivery in flight may store into the archive (a
        # report's SR and PDF). What the intake and the archive queue meanwhile waits, durable,
        # for the next start.
        self.outbox.stop()
        if self.storage is not None:
            self.storage.stop()
        self.intake.stop()
        if self.capture is not None:
            self.capture.stop()  # before the archive: a hot folder's file in flight is stored
        self.archive.stop()
        housekeeping.stop(self)
        self.db.dispose()


def configure_logging(settings: Settings | str) -> None:
    """The log of this process, from ``[log]`` (:func:`pacs.logs.configure`)."""
    from pacs import logs

    logs.configure(settings)


class Server:
    """Every front end of one process, started and stopped together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: Services | None = None
        self.mllp_port = 0
        self.http_port = 0  # 0 when [http] plain = false
        self.dicom_port = 0
        self.metrics_port = 0
        self.dicom_tls_port: int | None = None  # the TLS ports, when their section names a certificate
        self.mllp_tls_port: int | None = None
        self.https_port: int | None = None
        self._http: list[Any] = []  # uvicorn servers: plain HTTP, HTTPS
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        settings = self.settings
        # The MLLP front process starts (a Python start-up of its own) while the services are built.
        front = Front(settings) if settings.mllp.front_process else None
        if front is not None:
            await front.start(settings.host, settings.mllp_port)
        try:
            await self._start_services(front)
        except BaseException:
            if front is not None:
                await front.stop(0)
            raise

    async def _start_services(self, front: Front | None) -> None:
        from pacs.auth.accounts import first_administrator
        from pacs.http import create_app
        from pacs.integration.listener import MLLPServer

        settings = self.settings
        self.services = services = await asyncio.to_thread(Services.build, settings)
        await asyncio.to_thread(housekeeping.start, services)
        await asyncio.to_thread(services.intake.start)
        services.archive.start()
        await asyncio.to_thread(services.archive.recover)  # what was acknowledged before a crash
        if services.capture is not None:
            services.capture.start()  # the hot folders
        if services.storage is not None:
            services.storage.start()
        services.outbox.start()
        if services.publisher is not None:
            services.publisher.start()

        from pacs.archive.ae import DicomServer

        self._dicom = DicomServer(settings, services.queries, services.mpps, services.archive, audit=services.audit)
        self._receivers = Receivers(settings, services.archive)
        self._receivers.own_load = self._dicom.load
        services.archive.receiving = self._dicom.load
        await asyncio.to_thread(self._dicom.start, settings.host, settings.dicom_port,
                                hand_off=self._receivers.hand_off)
        self.dicom_port = self._dicom.port
        self.dicom_tls_port = self._dicom.tls_port
        receivers = self._receivers
        services.metrics = Metrics(services, associations=lambda: self._dicom.load() + receivers.serving(),
                                   reported=lambda: list(receivers.reported.values()))
        if settings.metrics.port:  # on 127.0.0.1 alone
            self.metrics_port = await asyncio.to_thread(services.metrics.serve, settings.metrics.port)

        if front is not None:
            self._mllp: MLLPServer | Front = front
            await front.serve(services.intake)
            services.mllp_front = front
        else:
            self._mllp = MLLPServer(settings, services.intake)
            await self._mllp.start(settings.host, settings.mllp_port)
            if settings.mllp.tls:
                await self._mllp.start_tls(settings.host, settings.mllp.tls_port)
        self.mllp_port = self._mllp.port
        self.mllp_tls_port = self._mllp.tls_port

        await asyncio.to_thread(first_administrator, services.db, settings)
        self.app = create_app(services)
        protocol = guarded_http_protocol(settings)  # one count of connections per address for both ports
        if settings.http.tls:
            https = await self._serve_http(settings.http.tls_port, protocol, server_context("http", settings.http))
            self.https_port = https.servers[0].sockets[0].getsockname()[1]
        if settings.http.plain:
            plain = await self._serve_http(settings.http_port, protocol)
            self.http_port = plain.servers[0].sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(_watch_mappings(services), name="mappings"))
        # The objects loaded at start-up (modules, mappings, code tables) live as long as the
        # process: move them out of the collector's generations, so that full collections stay
        # short instead of stalling every front end while they walk them all.
        gc.collect()
        gc.freeze()
        log.info("PACS ready: %s", self.ports())
        if settings.dicom.processes > 1:
            self._receivers.start_in_background()  # this process serves DICOM until they are up

    async def _serve_http(self, port: int, protocol: type[asyncio.Protocol],
                          tls: ssl.SSLContext | None = None) -> Any:
        """A uvicorn server of the app on ``port``, over TLS with ``tls`` (the context made by
        :func:`pacs.tls.server_context`, in place of uvicorn's own from file names)."""
        import uvicorn

        config = uvicorn.Config(self.app, host=self.settings.host, port=port, log_level="warning", lifespan="off",
                                access_log=False, http=protocol, h11_max_incomplete_event_size=MAX_REQUEST_HEAD)
        config.load()
        config.ssl = tls
        server = _prompt_uvicorn()(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        task = asyncio.create_task(server.serve(), name="https" if tls else "http")
        self._tasks.append(task)
        self._http.append(server)
        while not server.started:
            if task.done():
                task.result()  # raises why uvicorn could not start (port taken, ...)
                raise OSError(f"HTTP{'S' if tls else ''} server did not start on port {port}")
            await asyncio.sleep(0.01)
        return server

    def ports(self) -> str:
        """The ports served, for the log: "DICOM 11112 (TLS 2762), MLLP 2575, HTTP 8080"."""
        def tls(port: int | None) -> str:
            return f" (TLS {port})" if port is not None else ""

        web = [f"HTTP {self.http_port}"] if self.http_port else []
        web += [f"HTTPS {self.https_port}"] if self.https_port is not None else []
        return ", ".join([f"DICOM {self.dicom_port}{tls(self.dicom_tls_port)}",
                          f"MLLP {self.mllp_port}{tls(self.mllp_tls_port)}", *web])

    async def problem(self) -> str | None:
        """What keeps this server from doing its work, or None: the intake worker stopped, the
        database not answering (the systemd watchdog is answered only while there is none)."""
        services = self.services
        if services is None:
            return "not started"
        if not services.intake.running:
            return "the intake worker is not running"
        try:
            await asyncio.to_thread(_ping, services.db)
        except Exception as exc:
            return f"the database does not answer: {exc}"
        return None

    async def stop(self) -> None:
        """Stop accepting, finish the messages in flight, close the database."""
        log.info("stopping: no new connections; finishing messages in flight")
        await self._mllp.stop()
        await asyncio.to_thread(self._dicom.stop)  # no new connections, for us or the receivers
        await asyncio.to_thread(self._receivers.stop)
        if self.services is not None and self.services.metrics is not None:
            await asyncio.to_thread(self.services.metrics.stop)
        for http in self._http:
            http.stop_now()
        for task in self._tasks:
            if task.get_name() == "mappings":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.services is not None:
            await asyncio.to_thread(self.services.close)
        log.info("stopped")


UVICORN_TICK = 0.1  # seconds: uvicorn's main loop refreshes its Date header and limits this often


@functools.cache
def _prompt_uvicorn() -> type:
    """uvicorn's Server, stopped at once: uvicorn finds ``should_exit`` at its next tick (up to
    0.1 s later) and then, connections or none, waits 0.1 s more for them to finish; the server
    of every test and every stop paid 0.15 s. Told by :meth:`stop_now`, this one leaves its
    loop at once, and with no connection or request open it closes its listeners without the
    wait; with any, uvicorn's own shutdown runs as ever (they are asked to finish and awaited)."""
    import uvicorn

    class PromptServer(uvicorn.Server):
        _stopping: asyncio.Event | None = None

        def stop_now(self) -> None:
            """Stop serving (on the server's event loop)."""
            self.should_exit = True
            if self._stopping is not None:
                self._stopping.set()

        async def main_loop(self) -> None:
            self._stopping = asyncio.Event()
            if self.should_exit:
                self._stopping.set()
            counter = 0
            while not await self.on_tick(counter):
                counter = (counter + 1) % 864_000  # uvicorn's own wrap
                try:
                    await asyncio.wait_for(self._stopping.wait(), UVICORN_TICK)
                except TimeoutError:
                    pass

        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            if self.server_state.connections or self.server_state.tasks or sockets:
                await super().shutdown(sockets)
                return
            for server in self.servers:
                server.close()
            for server in self.servers:
                await server.wait_closed()

    return PromptServer


MAX_REQUEST_HEAD = 64 * 1024  # bytes: the longest request line and headers read (431 beyond)
HTTP_REFUSAL_LOG_INTERVAL = 1.0  # seconds: one line per address for the connections refused in this


def _plain_response(status: str, text: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, written before any request is read."""
    body = text.encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


TOO_MANY_CONNECTIONS = _plain_response("503 Service Unavailable", "too many connections from this address\n")
REQUEST_TIMEOUT = _plain_response("408 Request Timeout", "the request did not arrive in time\n")  # RFC 9110 15.5.9
HEAD_TOO_LARGE = _plain_response("431 Request Header Fields Too Large", "request head too large\n")  # RFC 6585 5


class _HTTPGuard:
    """What uvicorn's HTTP protocol leaves to the server in front of it, for one served directly:
    a connection must send a whole request line and headers within ``[http]
    request_head_timeout_seconds`` of its opening or of the previous response (uvicorn times only
    the wait between a response and the next request's first byte, so a connection that sends
    nothing, or trickles its headers, stayed open for good), in at most :data:`MAX_REQUEST_HEAD`
    bytes (httptools sets no limit; h11 is given the same one); one address holds at most
    ``[http] max_connections_per_address`` connections. A connection that breaks these is
    answered 408, 431 or 503 and closed (one that sent no byte of a request is closed in silence,
    as an idle keep-alive connection is). Mixed into uvicorn's protocol class by
    :func:`guarded_http_protocol`."""

    head_timeout: float
    per_address: int
    open_by_host: Counter[str]
    refused: dict[str, tuple[float, int]]
    # uvicorn's protocol provides these
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._host = self.client[0] if self.client else ""
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._counted = not self.per_address or self.open_by_host[self._host] < self.per_address
        if not self._counted:
            self._refuse()
            return
        self.open_by_host[self._host] += 1
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self.open_by_host[self._host] -= 1
            if not self.open_by_host[self._host]:
                del self.open_by_host[self._host]
            self._counted = False
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is self._head_cycle:
            self._head_bytes += len(data)
        if self._in_head and self._head_bytes > MAX_REQUEST_HEAD:
            self._end(HEAD_TOO_LARGE)

    # httptools' parser callbacks, between which a request head is being read
    def on_message_begin(self) -> None:
        super().on_message_begin()  # type: ignore[misc]
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._await_head()

    def _await_head(self) -> None:
        """Time the next request head from now."""
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_cycle = self.cycle  # replaced as soon as a whole request head is read
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        cycle = self.cycle
        waiting = cycle is self._head_cycle and (cycle is None or cycle.response_complete)
        if waiting and self.transport.get_protocol() is self:  # no new request, none being answered
            log.debug("HTTP %s: no whole request head within %g s; closed", self._host, self.head_timeout)
            self._end(REQUEST_TIMEOUT if self._head_bytes else b"")

    def _end(self, response: bytes) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._in_head = False
        if not self.transport.is_closing():
            if response:
                self.transport.write(response)
            self.transport.close()

    def _refuse(self) -> None:
        now = time.monotonic()
        last, since = self.refused.get(self._host, (0.0, 0))
        if now - last >= HTTP_REFUSAL_LOG_INTERVAL:
            self.refused[self._host] = (now, 0)
            log.warning("HTTP %s already has %d connections open; another one answered 503%s", self._host,
                        self.per_address, f" (and {since} more before)" if since else "")
        else:
            self.refused[self._host] = (last, since + 1)
        self._end(TOO_MANY_CONNECTIONS)


def guarded_http_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (httptools where installed, else h11) with
    :class:`_HTTPGuard`'s limits from ``settings.http``, sharing one count of connections per
    address."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return type("GuardedHTTPProtocol", (_HTTPGuard, AutoHTTPProtocol), {
        "head_timeout": settings.http.request_head_timeout_seconds,
        "per_address": settings.http.max_connections_per_address,
        "open_by_host": Counter(), "refused": {}})


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT."""
    server = Server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):  # a stop asked for while starting waits for the start
        loop.add_signal_handler(signum, stop.set)
    notifier = systemd.Notifier(service_manager())
    await server.start()
    notifier.ready(f"serving {server.ports()}")
    watchdog = asyncio.create_task(notifier.watch(server.problem), name="watchdog")
    print(f"pacs: serving {server.ports()} (AE title {settings.ae_title}); data in {settings.data_dir}", flush=True)
    await stop.wait()
    notifier.stopping()
    watchdog.cancel()
    await server.stop()


def _ping(db: Database) -> None:
    with db.engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")


async def _watch_mappings(services: Services) -> None:
    """Pick up mapping changes even when no message arrives to trigger the check."""
    while True:
        await asyncio.sleep(services.settings.mappings_poll_seconds)
        await asyncio.to_thread(services.mappings.reload_if_changed)

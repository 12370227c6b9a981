"""The composition root: builds the services once and runs every front end in one process.

``pacs serve`` runs the HTTP app and the DICOM AE on one asyncio loop; the intake worker is a
thread. The MLLP connections are served by a front process of their own that parses and maps
(:mod:`pacs.integration.front`; ``[mllp] front_process = false`` serves them on the loop here),
and ``[dicom] processes`` adds DICOM receiver processes (:mod:`pacs.archive.receivers`).
SIGTERM or SIGINT stops the listeners from accepting, lets the messages already received finish
(or leaves them stored as RECEIVED, to be processed at the next start), and exits.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from pacs import housekeeping
from pacs.archive import commitment, ian
from pacs.archive.retention import Retention
from pacs.archive.mpps import MPPSService
from pacs.archive.receivers import Receivers
from pacs.archive.storage.manager import StorageManager
from pacs.archive.store import Acknowledge, Archive, DuplicatePolicy, tidy_incoming
from pacs.archive.query_service import QueryService
from pacs.audit import Auditor
from pacs.db import Database
from pacs.integration import his, publisher
from pacs.integration.his import HISNotifier
from pacs.integration.outbox import OutboxWorker
from pacs.registry import lifecycle
from pacs.integration.channel import Channel
from pacs.integration.front import Front
from pacs.integration.intake import Intake
from pacs.integration.mapping import MappingHolder
from pacs.housekeeping import Housekeeping
from pacs.settings import Settings

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
            deliverers[his.DESTINATION] = his.mllp_deliverer(settings.his.host, settings.his.port)
        if settings.publish.fhir_base_url:
            deliverers[publisher.DESTINATION] = publisher.fhir_deliverer(settings.publish.fhir_base_url)
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
        services = cls(settings=settings, db=db, mappings=mappings, channel=channel, intake=intake,
                       queries=QueryService(db, mappings, settings), mpps=MPPSService(db, notify),
                       notify=notify, outbox=outbox, archive=archive, publisher=publishing, storage=storage)
        housekeeping.wire(services)  # audit log, IOCM rejections, retention, scheduled jobs
        return services

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()
        if self.storage is not None:
            self.storage.stop()
        self.intake.stop()
        self.archive.stop()
        self.outbox.stop()
        housekeeping.stop(self)
        self.db.dispose()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pynetdicom and uvicorn are chatty at INFO about every PDU and request.
    logging.getLogger("pynetdicom").setLevel(max(logging.getLevelName(level), logging.WARNING))
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


class Server:
    """Every front end of one process, started and stopped together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: Services | None = None
        self.mllp_port = 0
        self.http_port = 0
        self.dicom_port = 0
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
        import uvicorn

        from pacs.http import create_app
        from pacs.integration.listener import MLLPServer

        settings = self.settings
        self.services = services = await asyncio.to_thread(Services.build, settings)
        await asyncio.to_thread(housekeeping.start, services)
        await asyncio.to_thread(services.intake.start)
        services.archive.start()
        await asyncio.to_thread(services.archive.recover)  # what was acknowledged before a crash
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
        if settings.dicom.processes > 1:
            await asyncio.to_thread(self._receivers.start)
        await asyncio.to_thread(self._dicom.start, settings.host, settings.dicom_port,
                                hand_off=self._receivers.hand_off)
        self.dicom_port = self._dicom.port

        if front is not None:
            self._mllp: MLLPServer | Front = front
            await front.serve(services.intake)
            services.mllp_front = front
        else:
            self._mllp = MLLPServer(settings, services.intake)
            await self._mllp.start(settings.host, settings.mllp_port)
        self.mllp_port = self._mllp.port

        config = uvicorn.Config(create_app(services), host=settings.host, port=settings.http_port,
                                log_level="warning", lifespan="off", access_log=False)
        self._http = uvicorn.Server(config)
        self._http.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._tasks.append(asyncio.create_task(self._http.serve(), name="http"))
        while not self._http.started:
            if self._tasks[0].done():
                self._tasks[0].result()  # raises why uvicorn could not start (port taken, ...)
                raise OSError(f"HTTP server did not start on port {settings.http_port}")
            await asyncio.sleep(0.01)
        self.http_port = self._http.servers[0].sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(_watch_mappings(services), name="mappings"))
        # The objects loaded at start-up (modules, mappings, code tables) live as long as the
        # process: move them out of the collector's generations, so that full collections stay
        # short instead of stalling every front end while they walk them all.
        gc.collect()
        gc.freeze()
        log.info("PACS ready: DICOM %d, MLLP %d, HTTP %d", self.dicom_port, self.mllp_port, self.http_port)

    async def stop(self) -> None:
        """Stop accepting, finish the messages in flight, close the database."""
        log.info("stopping: no new connections; finishing messages in flight")
        await self._mllp.stop()
        await asyncio.to_thread(self._dicom.stop)  # no new connections, for us or the receivers
        await asyncio.to_thread(self._receivers.stop)
        self._http.should_exit = True
        for task in self._tasks:
            if task.get_name() == "mappings":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.services is not None:
            await asyncio.to_thread(self.services.close)
        log.info("stopped")


PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal a process gets when its parent dies


def die_with_parent() -> None:
    """Have the kernel SIGKILL this child process when the thread of ``pacs serve`` that started
    it ends, the whole process killed included (prctl(2) PR_SET_PDEATHSIG): a helper process
    must not outlive the main one, holding a port or writing on its own."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        log.warning("this platform cannot tie a helper process's life to the main process")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop every front end runs on: uvloop (libuv) where it is installed, as it is with
    uvicorn's standard extras on Linux; its sockets and thread hand-offs cost a fraction of the
    standard loop's, which shows on every HL7 message and every WADO-RS chunk."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop has no Windows build
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` on :func:`new_event_loop`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT."""
    server = Server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):  # a stop asked for while starting waits for the start
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    print(f"pacs: serving DICOM {settings.ae_title} on {server.dicom_port}, MLLP on {server.mllp_port}, "
          f"HTTP on {server.http_port}; "
          f"data in {settings.data_dir}", flush=True)
    await stop.wait()
    await server.stop()


async def _watch_mappings(services: Services) -> None:
    """Pick up mapping changes even when no message arrives to trigger the check."""
    while True:
        await asyncio.sleep(services.settings.mappings_poll_seconds)
        await asyncio.to_thread(services.mappings.reload_if_changed)

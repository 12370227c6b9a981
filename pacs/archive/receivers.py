"""More processes serving the DICOM port: ``[dicom] processes``.

One Python process runs one thread at a time (the GIL), and receiving an object is Python work
from end to end: pynetdicom reads and decodes every PDU (PS3.8 9.3.5), store() reads the header,
the index writer files it. Modalities sending at once therefore share one core however many the
machine has. With ``[dicom] processes = N`` (N > 1) ``pacs serve`` starts N - 1 receiver
processes that listen on the same DICOM port with ``SO_REUSEPORT``; the kernel hands each new
association to one of the N listeners, and that process serves the whole association (C-STORE,
C-FIND, C-MOVE, C-GET, MPPS, storage commitment alike: every one runs the same handlers over the
same database and storage area).

What each receiver runs: the DICOM AE, the archive's index writer and the audit writer. What
only the main process runs: MLLP, HTTP, the intake worker, the outbox, the storage manager's and
the scheduled jobs. Their work passes through the database (the outbox, replica and publication
queues are tables), so a study received by a receiver is published, replicated and reported like
any other, at the next turn of those loops. Index writers of several processes meet in the
database: a study or series two of them create at the same moment is a unique-key clash that the
loser retries (:meth:`pacs.archive.store.Archive._index_one`).

A receiver stops when the main process stops it (SIGTERM, after the main process has stopped
accepting) and dies with the main process if that is killed (``PR_SET_PDEATHSIG``): what it had
acknowledged is in the database and the storage area, and what it had not is the sender's to
send again.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
from typing import Any

from pacs.settings import Settings

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal a process gets when its parent dies
START_TIMEOUT = 60.0  # seconds a receiver may take to build its services and listen
STOP_TIMEOUT = 30.0  # seconds it may take to finish the associations in flight


class Receivers:
    """The extra receiver processes of a ``pacs serve`` (none when ``[dicom] processes`` is 1)."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.processes: list[multiprocessing.process.BaseProcess] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def start(self) -> None:
        """Start the receivers and wait until each listens (raises if one cannot)."""
        context = multiprocessing.get_context("spawn")  # a fresh interpreter, not a fork of threads
        ready = []
        for number in range(1, self.settings.dicom.processes):
            started = context.Event()
            process = context.Process(target=serve_receiver, args=(self.settings, self.port, started),
                                      name=f"pacs-dicom-{number}", daemon=False)
            process.start()
            self.processes.append(process)
            ready.append((process, started))
        for process, started in ready:
            if not started.wait(START_TIMEOUT):
                self.stop()
                raise RuntimeError(f"DICOM receiver {process.name} did not start (exit code {process.exitcode})")
        log.info("DICOM port %d shared with %d receiver process(es): %s", self.port, len(self.processes),
                 ", ".join(str(pid) for pid in self.pids))

    def stop(self) -> None:
        """SIGTERM every receiver and wait for it (SIGKILL after :data:`STOP_TIMEOUT`)."""
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes:
            process.join(STOP_TIMEOUT)
            if process.is_alive():
                log.error("DICOM receiver %s did not stop in %.0f s; killed", process.name, STOP_TIMEOUT)
                process.kill()
                process.join()
        self.processes = []


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the receiver outlives a killed parent
        log.warning("this platform cannot tie a DICOM receiver's life to the main process")


def serve_receiver(settings: Settings, port: int, started: Any) -> None:
    """A receiver process: the DICOM AE on the shared port, until SIGTERM."""
    _die_with_parent()
    from pacs.archive.ae import DicomServer
    from pacs.server import Services, configure_logging

    configure_logging(settings.log_level)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the main process, which stops us
    services = Services.build(settings, migrate=False, receiver=True)
    server = None
    try:
        if services.audit is not None:
            services.audit.start()
        services.archive.start()
        server = DicomServer(settings, services.queries, services.mpps, services.archive, audit=services.audit)
        server.start(settings.host, port, share_port=True)
        started.set()
        log.info("DICOM receiver %d serving port %d", os.getpid(), port)
        while not stopping.wait(settings.mappings_poll_seconds):
            services.mappings.reload_if_changed()  # device rules and names as the main process sees them
    finally:
        if server is not None:
            server.stop()
        services.archive.stop()
        if services.audit is not None:
            services.audit.stop()
        services.db.dispose()

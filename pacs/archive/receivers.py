"""More processes serving the DICOM port: ``[dicom] processes``.

One Python process runs one thread at a time (the GIL), and receiving an object is Python work
from end to end: pynetdicom reads and decodes every PDU (PS3.8 9.3.5), store() reads the header,
the index writer files it. Modalities sending at once therefore share one core however many the
machine has. With ``[dicom] processes = N`` (N > 1) ``pacs serve`` starts N - 1 receiver
processes; the main process still accepts every connection on the DICOM port, and hands each new
one, in turn, to itself or to a receiver (the socket goes over a Unix socket, SCM_RIGHTS). The
process that gets a connection serves the whole association (C-STORE, C-FIND, C-MOVE, C-GET,
MPPS, storage commitment alike: every one runs the same handlers over the same database and
storage area). Handing connections out in turn spreads even two or three associations over the
processes, which SO_REUSEPORT's hashing of the addresses does not.

What each receiver runs: the DICOM handlers, the archive's index writer and the audit writer.
What only the main process runs: the DICOM port itself, MLLP, HTTP, the intake worker, the
outbox, the storage manager's and the scheduled jobs. Their work passes through the database
(the outbox, replica and publication queues are tables), so a study received by a receiver is
published, replicated and reported like any other, at the next turn of those loops. Index
writers of several processes meet in the database: a study or series two of them create at the
same moment is a unique-key clash that the loser retries
(:meth:`pacs.archive.store.Archive._index_one`), and writers take turns on SQLite's write lock
(:class:`pacs.db.WriterConnection`).

A receiver stops when the main process stops it (SIGTERM, after the main process has stopped
accepting) and dies with the main process if that is killed (``PR_SET_PDEATHSIG``): what it had
acknowledged is in the database and the storage area, and what it had not is the sender's to
send again. If a receiver is gone, the main process serves its turns itself.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import signal
import socket
import threading
from typing import Any

from pacs.settings import Settings

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # seconds a receiver may take to build its services and report
STOP_TIMEOUT = 30.0  # seconds it may take to finish the associations in flight


class Receivers:
    """The extra receiver processes of a ``pacs serve`` (none when ``[dicom] processes`` is 1)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self._channels: list[socket.socket | None] = []
        self._turns: Any = None
        self._lock = threading.Lock()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def start(self) -> None:
        """Start the receivers and wait until each is ready for connections (raises if one
        is not)."""
        context = multiprocessing.get_context("spawn")  # a fresh interpreter, not a fork of threads
        address = f"\0pacs-dicom-{os.getpid()}-{id(self)}"  # Linux abstract namespace: no file
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(address)
            listener.listen()
            listener.settimeout(START_TIMEOUT)
            for number in range(1, self.settings.dicom.processes):
                process = context.Process(target=serve_receiver, args=(self.settings, address),
                                          name=f"pacs-dicom-{number}", daemon=False)
                process.start()
                self.processes.append(process)
            by_pid: dict[int, socket.socket] = {}
            try:
                while len(by_pid) < len(self.processes):
                    channel, _ = listener.accept()
                    channel.settimeout(START_TIMEOUT)
                    hello = channel.recv(64)  # the receiver's pid once it is ready
                    channel.settimeout(None)
                    by_pid[int(hello.decode())] = channel
            except (OSError, ValueError) as exc:
                self.stop()
                raise RuntimeError(f"a DICOM receiver did not start: {exc}") from exc
        self._channels = [by_pid.get(pid) for pid in self.pids]
        self._turns = itertools.cycle([None, *range(len(self._channels))])
        log.info("DICOM connections handed in turn to this process and %d receiver(s): %s",
                 len(self.processes), ", ".join(str(pid) for pid in self.pids))

    def hand_off(self, request: socket.socket, client_address: Any) -> bool:
        """Give the next receiver in turn this new connection (True), or leave it to the
        caller (False: its own turn, or that receiver is gone)."""
        if self._turns is None:
            return False
        with self._lock:
            turn = next(self._turns)
            channel = None if turn is None else self._channels[turn]
            if channel is None:
                return False
            try:
                socket.send_fds(channel, [json.dumps(list(client_address)).encode()], [request.fileno()])
            except OSError as exc:
                log.error("DICOM receiver %s is gone (%s); this process serves its turns",
                          self.processes[turn].pid, exc)
                channel.close()
                self._channels[turn] = None
                return False
        request.close()  # the receiver holds its own descriptor of the connection
        return True

    def stop(self) -> None:
        """SIGTERM every receiver and wait for it (SIGKILL after :data:`STOP_TIMEOUT`)."""
        self._turns = None
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes:
            process.join(STOP_TIMEOUT)
            if process.is_alive():
                log.error("DICOM receiver %s did not stop in %.0f s; killed", process.name, STOP_TIMEOUT)
                process.kill()
                process.join()
        for channel in self._channels:
            if channel is not None:
                channel.close()
        self.processes, self._channels = [], []


def serve_receiver(settings: Settings, address: str) -> None:
    """A receiver process: serves the connections the main process hands it, until SIGTERM."""
    from pacs.server import die_with_parent

    die_with_parent()
    from pacs.archive.ae import DicomServer
    from pacs.server import Services, configure_logging

    configure_logging(settings.log_level)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the main process, which stops us
    services = Services.build(settings, migrate=False, receiver=True)
    server = None
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if services.audit is not None:
            services.audit.start()
        services.archive.start()
        server = DicomServer(settings, services.queries, services.mpps, services.archive, audit=services.audit)
        server.start_handed_off()
        channel.connect(address)
        channel.sendall(str(os.getpid()).encode())
        threading.Thread(target=_take_connections, args=(channel, server, stopping), name="dicom-handed-off",
                         daemon=True).start()
        log.info("DICOM receiver %d ready", os.getpid())
        while not stopping.wait(settings.mappings_poll_seconds):
            services.mappings.reload_if_changed()  # device rules and names as the main process sees them
    finally:
        channel.close()
        if server is not None:
            server.stop()
        services.archive.stop()
        if services.audit is not None:
            services.audit.stop()
        services.db.dispose()


def _take_connections(channel: socket.socket, server: Any, stopping: threading.Event) -> None:
    while not stopping.is_set():
        try:
            message, fds, _, _ = socket.recv_fds(channel, 1024, 1)
        except OSError:
            break
        if not message and not fds:  # the main process closed the channel
            break
        for fd in fds:
            connection = socket.socket(fileno=fd)
            server.serve_connection(connection, tuple(json.loads(message.decode())))
    stopping.set()

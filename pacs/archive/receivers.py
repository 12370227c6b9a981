"""More processes serving the DICOM port: ``[dicom] processes``.

One Python process runs one thread at a time (the GIL), and receiving an object is Python work
from end to end: pynetdicom reads and decodes every PDU (PS3.8 9.3.5), store() reads the header,
the index writer files it. Modalities sending at once therefore share one core however many the
machine has. With ``[dicom] processes = N`` (N > 1) ``pacs serve`` starts N - 1 receiver
processes; the main process still accepts every connection on the DICOM port and hands each new
one to the least busy process, itself included (the socket goes over a Unix socket,
SCM_RIGHTS). The process that gets a connection serves the whole association (C-STORE, C-FIND,
C-MOVE, C-GET, MPPS, storage commitment alike: every one runs the same handlers over the same
database and storage area).

The main process indexes what the receivers store. A receiver stages an object, answers
(``[archive] acknowledge = "durable"``, :mod:`pacs.archive.store`) and sends the main process
the staged key and the few header values every instance is indexed by over its *index link* (a
second Unix socket, one JSON line per object, with the SHA-256 computed as it was spooled); the
main process's index writer (reading the staged file's whole header only for a new study or
series) files and indexes it with everything else arriving, and answers on the link once it is
committed, which is when the receiver's association may go on to a query, a storage commitment
or its release (:func:`pacs.archive.handlers.settle`). Receiving and indexing then run on different cores, with
one writer batching the index commits of all receivers.

"Least busy" counts the connections each process serves (the main process counts those it
handed to a receiver; the receiver reports on its index link how many it has finished serving)
and one more for the main process, whose indexing for everyone is worth about an association's
receiving: a lone association goes to a receiver, so that receiving and indexing it use two
cores, and with four at once and one receiver the main process takes one of them.

What each receiver runs: the DICOM handlers, an index writer of its own (for what must be
indexed before the answer: ``acknowledge = "indexed"``) and the audit writer. What only the main
process runs: the DICOM port itself, MLLP, HTTP, the intake worker, the outbox, the storage
manager's and the scheduled jobs. Their work passes through the database (the outbox, replica
and publication queues are tables), so a study received by a receiver is published, replicated
and reported like any other, at the next turn of those loops. Index writers of several processes
meet in the database: a study or series two of them create at the same moment is a unique-key
clash that the loser retries (:meth:`pacs.archive.store.Archive._index_one`), and writers take
turns on SQLite's write lock (:class:`pacs.db.WriterConnection`).

The receivers start once ``pacs serve`` is ready (:meth:`Receivers.start_in_background`): until
they report, and for good if one does not start, the main process serves every association.

A receiver stops when the main process stops it (SIGTERM, after the main process has stopped
accepting) and dies with the main process if that is killed (``PR_SET_PDEATHSIG``): what it had
acknowledged is in the storage area, staged or indexed (the main process indexes what is staged
when it starts again), and what it had not is the sender's to send again. If a receiver is gone,
the main process serves what would have gone to it.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
from concurrent.futures import Future
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pacs.settings import Settings

if TYPE_CHECKING:
    from pacs.archive.store import Archive, IndexJob, StoreResult

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # seconds a receiver may take to build its services and report
STOP_TIMEOUT = 30.0  # seconds it may take to finish the associations in flight
ACCEPT_POLL = 0.5  # seconds between looks at whether a start was called off


class Receivers:
    """The extra receiver processes of a ``pacs serve`` (none when ``[dicom] processes`` is 1)."""

    def __init__(self, settings: Settings, archive: Archive) -> None:
        self.settings = settings
        self.archive = archive  # indexes what the receivers stage
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self._channels: list[socket.socket | None] = []
        self._links: list[socket.socket] = []
        self._handed: list[int] = []  # connections handed to each receiver
        self._finished: list[int] = []  # ... and those it has finished serving (reported on its index link)
        self.own_load: Callable[[], int] = lambda: 0  # associations the main process serves
        self._lock = threading.Lock()
        self.reported: dict[int, dict[str, Any]] = {}  # each receiver's C-STORE counts, as it last sent them
        self._starter: threading.Thread | None = None
        self._stopping = False
        self._stopped = threading.Event()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def start_in_background(self) -> None:
        """Start the receivers in a thread of their own: ``pacs serve`` is ready and serves
        every association itself until they are (a receiver is a fresh interpreter, seconds of
        start-up on a busy machine); one that does not start leaves the work to this process."""
        def start() -> None:
            try:
                self.start()
            except Exception as exc:
                log.error("DICOM receivers did not start (%s); this process serves every association", exc)
                return
            # The thread that started a receiver stays until the receivers stop: a receiver's
            # PR_SET_PDEATHSIG fires when the *thread* that forked it exits, not only the process.
            self._stopped.wait()

        self._starter = threading.Thread(target=start, name="dicom-receivers-start", daemon=True)
        self._starter.start()

    def start(self) -> None:
        """Start the receivers and wait until each is ready for connections (raises if one
        is not, or if :meth:`stop` is called meanwhile)."""
        context = multiprocessing.get_context("spawn")  # a fresh interpreter, not a fork of threads
        address = f"\0pacs-dicom-{os.getpid()}-{id(self)}"  # Linux abstract namespace: no file
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(address)
            listener.listen()
            listener.settimeout(ACCEPT_POLL)
            with self._lock:
                if self._stopping:
                    return
                for number in range(1, self.settings.dicom.processes):
                    process = context.Process(target=serve_receiver, args=(self.settings, address),
                                              name=f"pacs-dicom-{number}", daemon=False)
                    process.start()
                    self.processes.append(process)
            by_pid: dict[int, socket.socket] = {}
            links: dict[int, socket.socket] = {}
            deadline = time.monotonic() + START_TIMEOUT
            try:
                while len(by_pid) + len(links) < 2 * len(self.processes):  # a channel and an index link each
                    if self._stopping:
                        raise OSError("stopped while starting")
                    if time.monotonic() > deadline:
                        raise OSError(f"not ready in {START_TIMEOUT:.0f} s")
                    try:
                        channel, _ = listener.accept()
                    except TimeoutError:
                        continue
                    channel.settimeout(START_TIMEOUT)
                    hello = channel.recv(64).decode()  # the receiver's pid once it is ready
                    channel.settimeout(None)
                    if hello.startswith(INDEX_LINK):
                        links[int(hello[len(INDEX_LINK):])] = channel
                    else:
                        by_pid[int(hello)] = channel
            except (OSError, ValueError) as exc:
                for channel in [*by_pid.values(), *links.values()]:
                    channel.close()
                self._stop_processes()
                raise RuntimeError(f"a DICOM receiver did not start: {exc}") from exc
        with self._lock:
            if self._stopping:
                for channel in [*by_pid.values(), *links.values()]:
                    channel.close()
                return
            self._handed = [0] * len(self.pids)
            self._finished = [0] * len(self.pids)
            for number, pid in enumerate(self.pids):
                link = links[pid]
                self._links.append(link)
                threading.Thread(target=self._index_for, args=(link, pid, number), name=f"index-link-{pid}",
                                 daemon=True).start()
            self._channels = [by_pid.get(pid) for pid in self.pids]  # from now on, hand_off hands out
        log.info("DICOM connections handed to the least busy of %d receiver(s) (%s) and this process",
                 len(self.processes), ", ".join(str(pid) for pid in self.pids))

    def hand_off(self, request: socket.socket, client_address: Any) -> bool:
        """Give the least busy receiver this new connection (True), or leave it to the caller
        (False: this process is the least busy, counting its indexing, or the receiver is gone)."""
        if not self._channels:
            return False
        with self._lock:
            running = [(self._handed[number] - self._finished[number], number)
                       for number in range(len(self._channels)) if self._channels[number]]
            if not running:
                return False
            load, turn = min(running)  # a tie goes to a receiver
            if self.own_load() + INDEXING_WEIGHT < load:
                return False
            self._handed[turn] += 1
            channel = self._channels[turn]
            assert channel is not None
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

    def serving(self) -> int:
        """Connections the receivers serve now (pacs.metrics)."""
        return sum(handed - finished for handed, finished in zip(self._handed, self._finished, strict=False))

    def _index_for(self, link: socket.socket, pid: int, number: int) -> None:
        """The main process's end of a receiver's index link: index what it staged, answer once
        indexed; note its association count."""
        archive = self.archive
        assert archive is not None
        lock = threading.Lock()

        def reply(sequence: int, future: Future[StoreResult]) -> None:
            try:
                result = future.result()
                answer: dict[str, Any] = {"n": sequence, "outcome": str(result.outcome),
                                          "status": int(result.status), "comment": result.comment,
                                          "instance": result.instance}
            except Exception as exc:
                answer = {"n": sequence, "error": str(exc)}
            try:
                with lock:
                    link.sendall(_line(answer))
            except OSError:
                pass  # the receiver is gone; what it staged is indexed all the same

        try:
            with link.makefile("rb") as stream:
                for raw in stream:
                    try:
                        request = json.loads(raw)
                    except ValueError:
                        log.error("receiver %d sent an unreadable line on its index link: %r", pid, raw[:120])
                        continue
                    if "finished" in request:
                        self._finished[number] = int(request["finished"])
                        continue
                    if "metrics" in request:
                        self.reported[pid] = request["metrics"]
                        continue
                    try:
                        future = archive.index_staged(request["key"], request["calling_ae"], request["values"],
                                                      request["syntax"], int(request["size"]), request["checksum"])
                    except Exception as exc:  # the staged file unreadable: left staged, reported
                        log.error("receiver %d: staged object %s cannot be indexed: %s", pid, request["key"], exc)
                        future = Future()
                        future.set_exception(exc)
                    future.add_done_callback(lambda done, sequence=request["n"]: reply(sequence, done))
        except (OSError, ValueError) as exc:  # the link closed under this reader
            if not self._stopping:
                log.error("index link of DICOM receiver %d broken: %s", pid, exc)
            return
        log.info("index link of DICOM receiver %d closed", pid)

    def stop(self) -> None:
        """SIGTERM every receiver and wait for it (SIGKILL after :data:`STOP_TIMEOUT`); one still
        starting is stopped too."""
        with self._lock:
            self._stopping = True
            channels, self._channels = self._channels, []
        self._stop_processes()
        self._stopped.set()
        if self._starter is not None:
            self._starter.join(START_TIMEOUT)
        self._stop_processes()  # any a start in progress made meanwhile
        for channel in [*channels, *self._links]:
            if channel is not None:
                channel.close()
        self._links = []

    def _stop_processes(self) -> None:
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


def serve_receiver(settings: Settings, address: str) -> None:
    """A receiver process: serves the connections the main process hands it, until SIGTERM;
    the objects it stages are indexed by the main process."""
    from pacs.runtime import die_with_parent

    die_with_parent()
    from pacs.archive.ae import DicomServer
    from pacs.server import Services, configure_logging

    configure_logging(settings)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the main process, which stops us
    services = Services.build(settings, migrate=False, receiver=True)
    server = None
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if services.audit is not None:
            services.audit.start()
        services.archive.start()
        link.connect(address)
        link.sendall(f"{INDEX_LINK}{os.getpid()}".encode())
        remote = RemoteIndex(link, services.archive)
        services.archive.remote = remote.submit
        server = DicomServer(settings, services.queries, services.mpps, services.archive, audit=services.audit)
        server.start_handed_off()
        channel.connect(address)
        channel.sendall(str(os.getpid()).encode())
        threading.Thread(target=_take_connections, args=(channel, server, stopping), name="dicom-handed-off",
                         daemon=True).start()
        log.info("DICOM receiver %d ready", os.getpid())
        gc.collect()  # what start-up loaded lives as long as the process: see pacs.server
        gc.freeze()
        threading.Thread(target=remote.report_load, args=(server, stopping), name="dicom-load", daemon=True).start()
        while not stopping.wait(settings.mappings_poll_seconds):
            services.mappings.reload_if_changed()  # device rules and names as the main process sees them
    finally:
        channel.close()
        if server is not None:
            server.stop()
        link.close()
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


def _line(value: dict[str, Any]) -> bytes:
    """One message on an index link: a JSON object and a newline."""
    return json.dumps(value).encode() + b"\n"


INDEX_LINK = "index:"  # a receiver's greeting on its index link, before its pid
INDEXING_WEIGHT = 1  # associations the main process's indexing for every receiver counts as
LOAD_POLL_SECONDS = 0.02  # how often a receiver looks at how many connections it has finished serving
METRICS_REPORT_SECONDS = 1.0  # how often a receiver sends its C-STORE counts (when they changed)


class RemoteIndex:
    """A receiver's end of its index link: staged objects go to the main process's index writer;
    each one's future resolves when the main process says it is indexed."""

    def __init__(self, link: socket.socket, archive: Archive) -> None:
        self.link = link
        self.archive = archive
        self._numbers = itertools.count(1)
        self._waiting: dict[int, IndexJob] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name="index-link", daemon=True).start()

    def report_load(self, server: Any, stopping: threading.Event) -> None:
        """Tell the main process how many of the connections it handed over this receiver has
        finished serving, as that changes (it counts those it handed over itself), and its C-STORE
        counts every :data:`METRICS_REPORT_SECONDS` when they changed (pacs.metrics)."""
        reported, counted, counted_at = 0, None, 0.0
        while not stopping.wait(LOAD_POLL_SECONDS):
            finished = server.finished()
            lines = [{"finished": finished}] if finished != reported else []
            if time.monotonic() - counted_at >= METRICS_REPORT_SECONDS:
                counts, counted_at = self.archive.c_stores.snapshot(), time.monotonic()
                if counts != counted:
                    lines.append({"metrics": counts})
                    counted = counts
            if lines:
                try:
                    with self._lock:
                        self.link.sendall(b"".join(_line(line) for line in lines))
                except OSError:
                    return
                reported = finished

    def submit(self, job: IndexJob) -> None:
        from pacs.archive.store import summary_of

        line = {"key": job.stored.key, "calling_ae": job.calling_ae, "syntax": job.transfer_syntax,
                "size": job.stored.size, "checksum": job.stored.checksum,
                "values": summary_of(job.header)}  # type: ignore[arg-type]
        with self._lock:
            number = line["n"] = next(self._numbers)
            self._waiting[number] = job
            self.link.sendall(_line(line))

    def _read(self) -> None:
        from pacs.archive.store import Outcome, StoreResult, _text

        try:
            with self.link.makefile("rb") as stream:
                for raw in stream:
                    answer = json.loads(raw)
                    with self._lock:
                        job = self._waiting.pop(answer["n"], None)
                    if job is None:
                        continue
                    self.archive.settle_pending(_text(job.header, "SOPInstanceUID"))
                    if answer.get("error"):
                        job.future.set_exception(RuntimeError(answer["error"]))
                    else:
                        job.future.set_result(StoreResult(Outcome(answer["outcome"]), answer["status"],
                                                          answer.get("comment", ""), answer.get("instance")))
        except (OSError, ValueError) as exc:  # the link closed under this reader, as the receiver stops
            log.info("index link closed under its reader: %s", exc)
        log.error("the main process closed the index link; %d object(s) staged and not confirmed indexed "
                  "(the main process indexes them when it starts)", len(self._waiting))



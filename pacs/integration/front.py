"""The MLLP front process: ``[mllp] front_process``.

One Python process runs one thread at a time (the GIL). With the MLLP listener, the parser and
the mappings in the same process as the intake worker, every message's work queues on one core
however many the machine has. With the front process, ``pacs serve`` splits an HL7 message's
work in two:

- **the front process** owns the MLLP connections: it reads the frames, decodes, parses and maps
  each message (:meth:`pacs.integration.channel.Channel.transform`, no database), and passes the
  raw bytes with what it made of them to the main process over a Unix socket; it writes the ACK
  it gets back to the sender's connection.
- **the main process** stores, applies and commits every message in its intake worker, exactly
  as for a message received in process (:mod:`pacs.integration.intake`): the raw bytes are
  stored before anything is applied, and the ACK leaves only after the commit. It uses the front's
  parse and map only if the mappings they were made with are the ones in force
  (:attr:`pacs.integration.mapping.MappingHolder.version`), else parses and maps again; a message
  that did not parse or map cleanly in the front is parsed and mapped in the main process, which
  gives it its AR or AE as always.

The main process binds the MLLP port itself (a port that is taken stops ``pacs serve`` at once)
and hands the listening socket to the front (SCM_RIGHTS); so with the MLLP over TLS port
(``[mllp] tls_cert``), whose TLS the front serves with a context it makes from the same settings. The front keeps nothing: if it dies,
its connections drop, the senders resend what was not acknowledged and the main process starts
another front on the same listening socket. If the main process dies, the front dies with it
(:func:`pacs.runtime.die_with_parent`, and the link's end of file).

The link carries length-prefixed pickles between the two processes of one ``pacs serve``: the
main process accepts it on an abstract Unix socket and checks that the peer is the process it
started (SO_PEERCRED) before reading anything from it.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import threading
import time
from concurrent.futures import Future
from functools import partial
from typing import Any

from pacs.integration import mllp
from pacs.integration.channel import Channel, Inbound, Outcome
from pacs.integration.intake import Intake
from pacs.integration.message_store import Status
from pacs.settings import Settings
from pacs.tls import server_context

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # seconds the front process may take to start and report ready
STOP_GRACE = 10.0  # seconds its connections get to finish the message they are on when stopping
RESTART_DELAY = 1.0  # seconds before a front that died is started again
ACCEPT_POLL = 0.2  # seconds between two looks at a starting front process while waiting for its link
LENGTH = struct.Struct(">I")  # the link's frame header: the pickle's length
STOP = ("stop",)  # main process to front: stop accepting, answer what is in flight, exit
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (SO_PEERCRED, unix(7))


def _frame(value: Any) -> bytes:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return LENGTH.pack(len(payload)) + payload


def _read_frame(stream: Any) -> Any:
    """The next value on a blocking link (a socket's binary file), or None at end of file."""
    head = stream.read(LENGTH.size)
    if len(head) < LENGTH.size:
        return None
    (size,) = LENGTH.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return pickle.loads(body)  # noqa: S301 - the peer is our own front process (SO_PEERCRED)


# --------------------------------------------------------------------------------------------
# The main process's side
# --------------------------------------------------------------------------------------------


class Front:
    """The MLLP port of a ``pacs serve`` whose connections a front process serves.

    :meth:`start` binds the port and starts the front process without waiting for it, so that
    it starts while the main process builds its services; :meth:`serve` hands it the intake
    worker once that runs, and waits until the front is ready. Messages that arrive in between
    wait in the link."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.intake: Intake | None = None
        self._serving = threading.Event()
        self.process: multiprocessing.process.BaseProcess | None = None
        self._listener: socket.socket | None = None
        self._tls_listener: socket.socket | None = None
        self._link: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._started: Future[None] = Future()
        self._spawned = itertools.count(1)

    @property
    def running(self) -> bool:
        """Whether a front process is serving the MLLP port now (not while one is restarted)."""
        return self.process is not None and self.process.is_alive() and not self._stopping.is_set()

    @property
    def port(self) -> int:
        assert self._listener is not None
        return self._listener.getsockname()[1]

    @property
    def tls_port(self) -> int | None:
        """The MLLP over TLS port, when one is served."""
        return self._tls_listener.getsockname()[1] if self._tls_listener is not None else None

    async def start(self, host: str, port: int) -> None:
        """Bind the MLLP port (and the MLLP over TLS port, with ``[mllp] tls_cert``) and start the
        front process (raises if a port is taken or the certificate cannot be used)."""
        if self.settings.mllp.tls:
            server_context("mllp", self.settings.mllp)  # a certificate that cannot be used stops the start here
        self._listener = await asyncio.to_thread(socket.create_server, (host, port), backlog=mllp.LISTEN_BACKLOG)
        if self.settings.mllp.tls:
            try:
                self._tls_listener = await asyncio.to_thread(socket.create_server, (host, self.settings.mllp.tls_port),
                                                             backlog=mllp.LISTEN_BACKLOG)
            except BaseException:
                self._listener.close()
                raise
        # The relay thread starts the front process: the kernel ties the child's life to the
        # thread that started it (PR_SET_PDEATHSIG), and this one lives as long as the port.
        self._thread = threading.Thread(target=self._run, name="mllp-front", daemon=True)
        self._thread.start()

    async def serve(self, intake: Intake) -> None:
        """Hand the front's messages to ``intake`` from now on; return once the front serves
        (raises if it did not start)."""
        self.intake = intake
        self._serving.set()
        try:
            await asyncio.to_thread(self._started.result, START_TIMEOUT + 5)
        except BaseException:
            await self.stop(0)
            raise
        log.info("MLLP listening on %s%s, served by front process %s", self._listener.getsockname()
                 if self._listener else "?", f" and on {self._tls_listener.getsockname()} over TLS"
                 if self._tls_listener else "", self.process.pid if self.process else "?")

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop accepting; the front lets its connections finish the message they are on
        (their ACKs come from the intake worker, which is still running), then exits."""
        await asyncio.to_thread(self._stop, grace)

    def _stop(self, grace: float) -> None:
        # The front is told over the link, not by a signal: a service manager that signals every
        # process of the service at once (systemd's default) must not make it exit on its own,
        # which would read here as a front that died.
        self._stopping.set()
        if self._link is not None:
            try:
                with self._send_lock:
                    self._link.sendall(_frame(STOP))
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(grace + 15)  # it ends once the front has exited (and reaps it)
        process = self.process
        if process is not None and process.is_alive():
            log.error("MLLP front process %s did not stop; killed", process.pid)
            process.kill()
        if self._link is not None:
            try:
                self._link.shutdown(socket.SHUT_RDWR)  # ends the relay thread's read
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(10)
        for listener in (self._listener, self._tls_listener):
            if listener is not None:
                listener.close()

    # -- the relay thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                link = self._spawn()
            except Exception as exc:
                if not self._started.done():
                    self._started.set_exception(exc)
                    return
                if self._stopping.is_set():
                    return
                log.exception("MLLP front process did not start; trying again")
                time.sleep(RESTART_DELAY)
                continue
            if not self._started.done():
                self._started.set_result(None)
            while not self._serving.wait(0.1):  # the intake worker is not running yet
                if self._stopping.is_set():
                    break
            if self._serving.is_set():
                self._relay(*link)
            # Only this thread waits for the front process, so that it is reaped once.
            if self.process is not None:
                self.process.join(STOP_GRACE + 5)
            if self._stopping.is_set():
                break
            code = self.process.exitcode if self.process is not None else None
            log.error("MLLP front process exited (code %s); its connections dropped without an ACK for "
                      "what they had in flight; starting another", code)
            time.sleep(RESTART_DELAY)

    def _spawn(self) -> tuple[socket.socket, Any]:
        assert self._listener is not None
        context = multiprocessing.get_context("spawn")  # a fresh interpreter, not a fork of threads
        address = f"\0pacs-mllp-{os.getpid()}-{id(self)}-{next(self._spawned)}"  # abstract: no file
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(address)
            server.listen(4)
            server.settimeout(ACCEPT_POLL)
            process = context.Process(target=serve_front, args=(self.settings, address), name="pacs-mllp",
                                      daemon=True)
            process.start()
            self.process = process
            deadline = time.monotonic() + START_TIMEOUT
            try:
                while True:
                    try:
                        link, _ = server.accept()
                    except TimeoutError:  # a front that died starting, or a stop meanwhile, ends the wait
                        if not process.is_alive():
                            raise RuntimeError(f"the MLLP front process exited (code {process.exitcode}) "
                                               "before it was ready") from None
                        if self._stopping.is_set() or time.monotonic() > deadline:
                            raise
                        continue
                    pid, _uid, _gid = PEERCRED.unpack(
                        link.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))
                    if pid == process.pid:
                        break
                    log.warning("MLLP front link: a connection from process %d refused", pid)
                    link.close()
                link.settimeout(START_TIMEOUT)
                listeners = [self._listener] + ([self._tls_listener] if self._tls_listener is not None else [])
                socket.send_fds(link, [b"listeners"], [listener.fileno() for listener in listeners])
                stream = link.makefile("rb", buffering=1 << 16)  # the link's one reader, from here on
                ready = _read_frame(stream)
                if ready != ("ready", process.pid):
                    raise RuntimeError(f"the MLLP front process did not start: {ready!r}")
                link.settimeout(None)
            except BaseException:
                process.kill()
                process.join()
                raise
        with self._send_lock:
            self._link = link
            if self._stopping.is_set():  # stopped while the front was starting (a refused start): tell it now
                try:
                    link.sendall(_frame(STOP))
                except OSError:
                    pass
        return link, stream

    def _relay(self, link: socket.socket, stream: Any) -> None:
        """Hand the front's messages to the intake worker until the link closes."""
        try:
            while True:
                try:
                    request = _read_frame(stream)
                except (OSError, ValueError):  # closed under us (stop), or a cut frame
                    request = None
                if request is None:
                    return
                seq, raw, peer, transformed = request
                assert self.intake is not None
                future = self.intake.submit(Inbound(raw, "mllp", peer, transformed=transformed))
                future.add_done_callback(partial(self._answer, link, seq))
        finally:
            stream.close()
            link.close()

    def _answer(self, link: socket.socket, seq: int, future: Future[Outcome]) -> None:
        """Send the front the outcome of message ``seq`` (runs on the intake worker's thread,
        right after the commit)."""
        accepting = self.intake is not None and self.intake.accepting
        try:
            outcome = future.result()
            reply: tuple[Any, ...] = (seq, outcome.message_id, outcome.status.value, outcome.ack_code,
                                      outcome.response, accepting)
        except Exception as exc:
            reply = (seq, None, None, None, str(exc), accepting)
        try:
            with self._send_lock:
                link.sendall(_frame(reply))
        except OSError:
            pass  # the front is gone: its sender never got an ACK and resends


# --------------------------------------------------------------------------------------------
# The front process
# --------------------------------------------------------------------------------------------


class Link:
    """The front's end of the link: what its :class:`~pacs.integration.listener.MLLPServer`
    submits messages to, in place of the intake worker."""

    def __init__(self, channel: Channel, writer: asyncio.StreamWriter) -> None:
        self.channel = channel
        self.accepting = True
        self._writer = writer
        self._waiting: dict[int, asyncio.Future[Outcome]] = {}
        self._seq = itertools.count(1)
        self.closed = asyncio.Event()
        self.stop_asked = asyncio.Event()

    def submit(self, inbound: Inbound) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        if not self.accepting:
            future.set_exception(RuntimeError("the interface engine is shutting down"))
            return future
        try:
            transformed = self.channel.transform(inbound)
        except Exception:  # the main process parses and maps it again, and answers for it
            log.exception("message from %s not parsed ahead of the intake worker", inbound.peer)
            transformed = None
        seq = next(self._seq)
        self._waiting[seq] = future
        self._writer.write(_frame((seq, inbound.raw, inbound.peer, transformed)))
        return future

    async def read(self, reader: asyncio.StreamReader) -> None:
        """Hand the main process's answers to the connections waiting for them, until the link
        closes; then every connection still waiting gets an error (no ACK: the sender resends)."""
        try:
            while True:
                head = await reader.readexactly(LENGTH.size)
                body = await reader.readexactly(LENGTH.unpack(head)[0])
                reply = pickle.loads(body)  # noqa: S301
                if reply == STOP:
                    self.accepting = False
                    self.stop_asked.set()
                    continue
                seq, message_id, status, ack_code, response, accepting = reply
                self.accepting = self.accepting and accepting
                future = self._waiting.pop(seq, None)
                if future is None or future.done():
                    continue
                if status is None:
                    future.set_exception(RuntimeError(response))
                else:
                    future.set_result(Outcome(message_id=message_id, status=Status(status), ack_code=ack_code,
                                              response=response))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.accepting = False
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(RuntimeError("the link to the main process closed"))
            self._waiting.clear()
            self.closed.set()


def serve_front(settings: Settings, address: str) -> None:
    """The front process: serves the MLLP connections on the listening socket the main process
    hands it, until the main process says stop or is gone."""
    from pacs import logs
    from pacs.runtime import die_with_parent, run

    die_with_parent()
    logs.configure(settings)
    # The main process stops it (STOP over the link) once it has stopped taking messages; a
    # SIGTERM sent to every process of the service at once is the main process's to act on.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from pacs.integration import ack

    ack.set_origin("F")  # the ACKs it builds ahead carry control IDs of their own
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the main process, which stops us
    from pacs.integration.mapping import MappingHolder

    channel = Channel(settings, MappingHolder(settings.mappings_dir, poll_seconds=settings.mappings_poll_seconds))
    link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    link.connect(address)
    _, fds, _, _ = socket.recv_fds(link, 64, 2)  # the MLLP port, and the MLLP over TLS port if any
    if not fds:
        raise RuntimeError("the main process sent no listening socket")
    listener = socket.socket(fileno=fds[0])
    tls_listener = socket.socket(fileno=fds[1]) if len(fds) > 1 else None
    run(_serve(settings, channel, link, listener, tls_listener))


async def _serve(settings: Settings, channel: Channel, link_socket: socket.socket,
                 listener: socket.socket, tls_listener: socket.socket | None = None) -> None:
    from pacs.integration.listener import MLLPServer

    link_socket.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=link_socket)
    link = Link(channel, writer)
    reading = asyncio.create_task(link.read(reader), name="link")
    server = MLLPServer(settings, link)
    await server.start(settings.host, 0, sock=listener)
    if tls_listener is not None:
        await server.start_tls(settings.host, 0, sock=tls_listener)
    writer.write(_frame(("ready", os.getpid())))
    gc.collect()
    gc.freeze()  # the modules and mappings live as long as the process (as in the main process)
    closed = asyncio.create_task(link.closed.wait())
    await asyncio.wait([asyncio.create_task(link.stop_asked.wait()), closed], return_when=asyncio.FIRST_COMPLETED)
    link.accepting = False  # each connection closes once the message it is on is answered
    await server.stop(STOP_GRACE)
    writer.close()
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)

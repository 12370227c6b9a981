"""Builds the DICOM application entity: presentation contexts, timeouts, handler binding.

Known peers come from the config file (``[[peers]]``); whether unknown calling AE titles are
accepted is ``[dicom] accept_unknown_peers``, and what each may ask is checked by
:mod:`pacs.archive.access`. Every association is logged with peer, AE titles and outcome.

With ``[dicom] tls_cert`` the same AE also listens on ``[dicom] tls_port`` for DICOM over TLS
(PS3.15 Annex B; :mod:`pacs.archive.transport`), served by the main process alone.
"""

from __future__ import annotations

import copy
import functools
import gc
import logging
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom import config as pydicom_config
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from pacs.archive import dimse, dul, encoding, handlers, spool, transport
from pacs.archive.access import PeerAccess
from pacs.archive.commitment import Commitment
from pacs.archive.mpps import MPPSService
from pacs.archive.query_service import QueryService
from pacs.archive.retrieve import ArchiveAE, Retriever
from pacs.archive.store import Archive, incoming_dir
from pacs.settings import Settings

log = logging.getLogger("pacs.dicom")

# Connections the kernel completes and queues for the DICOM port before it is accepting them
# (listen(2)'s backlog; socketserver's default of 5 dropped the SYNs of a burst of connections,
# and each dropped one waited a second or more to be tried again). As uvicorn's 2048 and
# asyncio's 100 for HTTP and MLLP; the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024
# seconds: how often the acceptor's loop looks whether it is asked to stop (socketserver's
# serve_forever polls; its default of 0.5 s made each stop wait up to half a second)
ACCEPT_POLL_SECONDS = 0.05
COLLECT_SECONDS = 30.0  # between two full garbage collections by the acceptor (CountingServer)
ABORT_WAIT_SECONDS = 10.0  # at stop: how long the aborted associations' threads are waited for
UNCOMPRESSED = ALL_TRANSFER_SYNTAXES[:4]
# What modalities send (PS3.5 Annex A): uncompressed, deflate, JPEG, JPEG-LS, JPEG 2000 and
# HTJ2K, RLE, MPEG-2, MPEG-4/H.264 and HEVC video. Listing these rather than every syntax
# pynetdicom knows keeps the per-association copy of the contexts small.
STORAGE_SYNTAXES = [s for s in ALL_TRANSFER_SYNTAXES if s in {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",
    "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107",
    "1.2.840.10008.1.2.4.108"}]
SERVICES = (
    Verification, ModalityWorklistInformationFind, ModalityPerformedProcedureStep,
    PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet,
    StorageCommitmentPushModel,
)


def make_ae(settings: Settings) -> ArchiveAE:
    # Received objects stream to a temporary file instead of memory (a 2 GB study never sits in
    # RAM) and are moved, not copied, into the storage area: pynetdicom writes them to the
    # process's temporary folder, which the DICOM server points at the area's incoming folder.
    # Objects sent from a file are streamed the same way.
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = settings.archive.accept_unknown_storage_classes
    # pynetdicom pretty-prints every request and answer for its log even when nothing is
    # logged; our handlers log what matters.
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # pydicom checks every value it decodes against its VR (a regular expression for each UID of
    # every command set) only to warn: the archive keeps what modalities send as they sent it,
    # and refuses by its own explicit checks (store.check_identity, part10.scan).
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    encoding.install()  # worklist answers skip pydicom's writer
    dul.install()  # a C-CANCEL is read while answers stream
    dimse.install()  # pending C-FIND responses without pydicom's command-set writer
    spool.install()  # received objects spooled around the page cache, hashed as they are written
    ae = ArchiveAE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.dicom.max_associations
    ae.network_timeout = settings.dicom.network_timeout_seconds
    ae.dimse_timeout = settings.dicom.dimse_timeout_seconds
    ae.acse_timeout = settings.dicom.acse_timeout_seconds
    ae.maximum_pdu_size = 0  # no limit on what we receive (DESIGN: fewer, larger PDUs)
    ae.require_called_aet = settings.dicom.require_called_ae_title
    if not settings.dicom.accept_unknown_peers:
        ae.require_calling_aet = [peer.ae_title for peer in settings.peers] or [""]
    ae._supported_contexts = {context.abstract_syntax: copy.copy(context) for context in _supported_contexts()}
    return ae


@functools.cache
def _supported_contexts() -> tuple[PresentationContext, ...]:
    """The archive's presentation contexts, built once a process: pynetdicom checks each of
    their 1,800 transfer syntax UIDs as it adds them (40 ms)."""
    ae = ArchiveAE()
    for abstract in SERVICES:
        ae.add_supported_context(abstract, UNCOMPRESSED)
    for context in AllStoragePresentationContexts:
        # SCU and SCP roles both: C-GET's sub-operations run in storage contexts the requestor
        # proposes with role selection (PS3.7 D.3.3.4).
        ae.add_supported_context(context.abstract_syntax, STORAGE_SYNTAXES, scu_role=True, scp_role=True)
    return tuple(ae._supported_contexts.values())


def bindings(queries: QueryService, mpps: MPPSService, archive: Archive, retriever: Retriever,
             commitment: Commitment, settings: Settings, access: PeerAccess | None = None) -> list[Any]:
    return [*(access.bindings() if access is not None else []),
        (evt.EVT_N_ACTION, handlers.handle_n_action, [commitment]),
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_C_STORE, handlers.handle_store, [archive]),
        (evt.EVT_C_FIND, handlers.handle_find, [queries]),
        (evt.EVT_C_MOVE, handlers.handle_move, [retriever, settings]),
        (evt.EVT_C_GET, handlers.handle_get, [retriever]),
        (evt.EVT_N_CREATE, handlers.handle_n_create, [mpps]),
        (evt.EVT_N_SET, handlers.handle_n_set, [mpps]),
        (evt.EVT_ACCEPTED, handlers.log_association, ["accepted"]),
        (evt.EVT_REJECTED, handlers.log_association, ["rejected"]),
        (evt.EVT_RELEASED, handlers.log_association, ["released"]),
        (evt.EVT_ABORTED, handlers.log_association, ["aborted"]),
        (evt.EVT_CONN_OPEN, _connection_opened),
        (evt.EVT_CONN_CLOSE, spool.discard_unfinished),
        (evt.EVT_ACSE_RECV, handlers.settle_on_release),
    ]


def _connection_opened(event: evt.Event) -> None:
    """Nagle's algorithm costs ~40 ms per DIMSE exchange on loopback (DESIGN.md); a peer that
    stalls in the middle of a PDU, or stops reading, is given up after the network timeout
    (:func:`pacs.archive.dul.limit_stalls`); the reactors wake when there is work instead of
    polling alone (:func:`pacs.archive.dul.wake_up`); C-FIND requests are served by the thread
    that reads them (:func:`pacs.archive.dul.serve_directly`)."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        dul.limit_stalls(sock, event.assoc.network_timeout)
    dul.wake_up(event.assoc)
    dul.serve_directly(event.assoc)


class SharedContexts(list):  # type: ignore[type-arg]
    """The server's presentation contexts, shared by its associations.

    pynetdicom deep-copies them for every association it accepts (about 25 ms for the archive's
    180 contexts and their transfer syntaxes, on every association a modality opens);
    negotiation (PS3.8 9.3.2.2) only reads them, so a new list of the same contexts will do."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


class CountingServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, counting the connections it took (and, through the
    :class:`DicomServer`'s EVT_CONN_CLOSE handler, those it has finished serving): what
    :mod:`pacs.archive.receivers` balances new connections by.

    pynetdicom runs a full garbage collection every 60th turn of the acceptor's loop, to free
    the reference cycles of finished associations: with the loop's turn shortened to
    :data:`ACCEPT_POLL_SECONDS`, every 3 s, each one holding every thread of the process for
    about 15 ms (py-spy, during an ingest). Here it runs every :data:`COLLECT_SECONDS`, as often
    as pynetdicom's own poll interval makes it."""

    taken = 0
    finished = 0
    _collected = 0.0

    def service_actions(self) -> None:
        now = time.monotonic()
        if now - self._collected >= COLLECT_SECONDS:
            self._collected = now
            gc.collect()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.taken += 1  # the acceptor thread only
        super().process_request(request, client_address)

    def connection_closed(self, event: evt.Event) -> None:
        with _finishing:
            self.finished += 1


_finishing = threading.Lock()


class HandingServer(CountingServer):
    """The server on the DICOM port. A new connection waits in its :class:`~pacs.archive.dul.Gate`
    until its A-ASSOCIATE-RQ is whole (PS3.8 9.2, Sta2), and only then becomes an association,
    here or in another process (:meth:`pacs.archive.receivers.Receivers.hand_off`)."""

    request_queue_size = LISTEN_BACKLOG
    hand_off: Callable[[socket.socket, Any], bool] | None = None
    gate: dul.Gate | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.gate is not None and isinstance(request, socket.socket):
            self.gate.admit(request, client_address)
        else:
            self.dispatch(request, client_address)

    def dispatch(self, request: Any, client_address: Any) -> None:
        """Serve a connection whose A-ASSOCIATE-RQ is waiting to be read, or hand it off."""
        if self.hand_off is not None and isinstance(request, socket.socket) and self.hand_off(request, client_address):
            return
        super().process_request(request, client_address)


class DicomServer:
    """The AE listening in its own threads (pynetdicom's threaded server)."""

    def __init__(self, settings: Settings, queries: QueryService, mpps: MPPSService, archive: Archive,
                 audit: Any = None) -> None:
        self.settings = settings
        self.audit = audit
        self.ae = make_ae(settings)
        self.retriever = Retriever(archive.db, archive.readable)  # online areas; recalls the rest
        self.commitment = Commitment(archive.db, archive.areas, settings)  # a good copy in any area
        self.access = PeerAccess(settings, audit)
        self._handlers = bindings(queries, mpps, archive, self.retriever, self.commitment, settings, self.access)
        if audit is not None:  # C-STORE, C-FIND, C-MOVE and C-GET audited around the thin handlers
            from pacs.audit.dicom import DicomAudit

            self._handlers = DicomAudit(audit).wrap(self._handlers)
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: ThreadedAssociationServer | None = None
        # pynetdicom spools each received dataset to a temporary file (STORE_RECV_CHUNKED_DATASET):
        # on the storage area's own file system it is renamed into place instead of copied.
        # tempfile.tempdir is the process's; stop() gives the previous value back.
        self._tempdir = tempfile.tempdir
        incoming = incoming_dir(archive.area)
        if incoming is not None:
            tempfile.tempdir = str(incoming)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        """The DICOM TLS port, when one is served."""
        return int(self._tls_server.server_address[1]) if self._tls_server is not None else None

    def start(self, host: str, port: int, *,
              hand_off: Callable[[socket.socket, Any], bool] | None = None) -> None:
        """Listen (in pynetdicom's acceptor thread); ``hand_off`` may give a new connection to
        another process (:mod:`pacs.archive.receivers`). With ``[dicom] tls_cert``, listen on
        ``[dicom] tls_port`` too, for associations this process serves itself."""
        context = transport.tls_server_context(self.settings) if self.settings.dicom.tls else None
        self._server = self._listen(host, port, hand_off)
        log.info("DICOM %s listening on %s:%d", self.settings.ae_title, host, self.port)
        if context is not None:
            self._tls_server = self._listen(host, self.settings.dicom.tls_port, None, context)
            log.info("DICOM %s listening on %s:%d over TLS%s", self.settings.ae_title, host, self.tls_port,
                     ", client certificates required" if self.settings.dicom.tls_client_ca else "")

    def _listen(self, host: str, port: int, hand_off: Callable[[socket.socket, Any], bool] | None,
                tls: ssl.SSLContext | None = None) -> HandingServer:
        """A server on ``port`` whose connections wait in a gate of their own (over TLS with ``tls``)."""
        server = self.ae.make_server((host, port), evt_handlers=self._handlers, server_class=HandingServer)
        server.bind(evt.EVT_CONN_CLOSE, server.connection_closed)
        server.hand_off = hand_off
        port = int(server.server_address[1])
        server.gate = dul.Gate(self.settings.dicom.acse_timeout_seconds, self.settings.dicom.pending_per_address,
                               server.dispatch, name=f"dicom-gate-{port}", tls=tls,
                               on_tls_failure=self.access.tls_refused if tls is not None else None)
        server.contexts = SharedContexts(server.contexts)
        threading.Thread(target=server.serve_forever, args=(ACCEPT_POLL_SECONDS,), name=f"dicom-acceptor-{port}",
                         daemon=True).start()
        self.ae._servers.append(server)
        return server

    def _counting(self) -> list[CountingServer]:
        return [server for server in (self._server, self._tls_server) if isinstance(server, CountingServer)]

    def load(self) -> int:
        """How many connections this process serves now."""
        return sum(server.taken - server.finished for server in self._counting())

    def finished(self) -> int:
        """How many connections this process has finished serving."""
        return sum(server.finished for server in self._counting())

    def start_handed_off(self) -> None:
        """Serve only connections handed over by :meth:`serve_connection` (a receiver process):
        the server listens on a loopback port of its own that nobody is told of."""
        server = self.ae.make_server(("127.0.0.1", 0), evt_handlers=self._handlers,
                                     server_class=CountingServer)
        server.bind(evt.EVT_CONN_CLOSE, server.connection_closed)
        server.contexts = SharedContexts(server.contexts)
        self._server = server

    def serve_connection(self, connection: socket.socket, client_address: Any) -> None:
        """Serve a connection another process accepted, as if this server had accepted it."""
        assert self._server is not None
        self._server.process_request(connection, client_address)

    def stop(self) -> None:
        for server in (self._server, self._tls_server):
            if server is None:
                continue
            if isinstance(server, HandingServer):
                server.shutdown()  # ends serve_forever and closes
                if server.gate is not None:
                    server.gate.stop()  # connections not yet associations are closed
            else:  # a server of handed-off connections runs no serve_forever
                server.server_close()
        self._server = self._tls_server = None
        self._abort_associations()
        tempfile.tempdir = self._tempdir

    def _abort_associations(self) -> None:
        """End the associations still open, with an A-ABORT (PS3.8 7.3.1), and wait for their
        threads, while the index writer still runs: what was answered Success is durable and
        indexed or staged for the next start, and the peer sends the rest again. Left open, a
        modality in the middle of a study went on sending to a server whose index writer had
        stopped, and the process waited out the index's 30 s before it could exit."""
        associations = self.ae.active_associations
        for association in associations:
            try:
                association.abort()
            except Exception:  # a peer gone meanwhile: its thread ends by itself
                log.debug("aborting an association at stop", exc_info=True)
        deadline = time.monotonic() + ABORT_WAIT_SECONDS
        for association in associations:
            association.join(max(0.0, deadline - time.monotonic()))
        if associations:
            log.info("stopping: %d association(s) still open aborted", len(associations))

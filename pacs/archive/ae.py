"""Builds the DICOM application entity: presentation contexts, timeouts, handler binding.

Known peers come from the config file (``[[peers]]``); whether unknown calling AE titles are
accepted is ``[dicom] accept_unknown_peers``. Every association is logged with peer, AE titles
and outcome.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep, ModalityWorklistInformationFind, Verification
from pynetdicom.transport import ThreadedAssociationServer

from pacs.archive import handlers
from pacs.archive.mpps import MPPSService
from pacs.archive.worklist_service import WorklistService
from pacs.settings import Settings

log = logging.getLogger("pacs.dicom")


def make_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.dicom.max_associations
    ae.network_timeout = settings.dicom.network_timeout_seconds
    ae.dimse_timeout = settings.dicom.dimse_timeout_seconds
    ae.acse_timeout = settings.dicom.acse_timeout_seconds
    ae.maximum_pdu_size = 0  # no limit on what we receive (DESIGN: fewer, larger PDUs)
    ae.require_called_aet = settings.dicom.require_called_ae_title
    if not settings.dicom.accept_unknown_peers:
        ae.require_calling_aet = [peer.ae_title for peer in settings.peers] or [""]
    for abstract in (Verification, ModalityWorklistInformationFind, ModalityPerformedProcedureStep):
        ae.add_supported_context(abstract, ALL_TRANSFER_SYNTAXES[:4])
    return ae


def bindings(worklist: WorklistService, mpps: MPPSService) -> list[Any]:
    return [
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_C_FIND, handlers.handle_find, [worklist]),
        (evt.EVT_N_CREATE, handlers.handle_n_create, [mpps]),
        (evt.EVT_N_SET, handlers.handle_n_set, [mpps]),
        (evt.EVT_ACCEPTED, handlers.log_association, ["accepted"]),
        (evt.EVT_REJECTED, handlers.log_association, ["rejected"]),
        (evt.EVT_RELEASED, handlers.log_association, ["released"]),
        (evt.EVT_ABORTED, handlers.log_association, ["aborted"]),
        (evt.EVT_CONN_OPEN, _nodelay),
    ]


def _nodelay(event: evt.Event) -> None:
    """Nagle's algorithm costs ~40 ms per DIMSE exchange on loopback (DESIGN.md)."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class DicomServer:
    """The AE listening in its own threads (pynetdicom's threaded server)."""

    def __init__(self, settings: Settings, worklist: WorklistService, mpps: MPPSService) -> None:
        self.settings = settings
        self.ae = make_ae(settings)
        self._handlers = bindings(worklist, mpps)
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self, host: str, port: int) -> None:
        self._server = self.ae.start_server((host, port), block=False, evt_handlers=self._handlers)
        log.info("DICOM %s listening on %s:%d", self.settings.ae_title, host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

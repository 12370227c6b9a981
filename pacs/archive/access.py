"""Which DICOM services each peer may use: ``[[peers]] services`` and ``retrieve_to``, and
``[dicom] unknown_peer_services`` for calling AE titles not listed (when ``[dicom]
accept_unknown_peers`` lets them in at all).

A request for a service the calling AE may not use is answered, without reaching its handler,
with status 0124H "Refused: Not Authorized" (PS3.7 C.5.21), with an Error Comment saying what is
refused; so is a C-MOVE to a destination outside the peer's ``retrieve_to`` (a destination
nobody knows stays 0xA801, Move Destination Unknown, PS3.4 C.4.2.1.5, the handler's answer). A
C-STORE's data set, already spooled when the request is read, is removed. Each refusal is one
log line and a Security Alert (110113) of type Use of Restricted Function (110132) in the audit
log (PS3.15 A.5.3.11); a TLS handshake the DICOM TLS port refused is one of type Node
Authentication (110126).

The check sits where pynetdicom hands a request to its service class, once per request: an
association of a calling AE that may use everything (the default) is not touched at all, so the
plain port's C-STOREs cost nothing more. It is the one place every DIMSE request passes,
including C-MOVE, whose handler cannot answer 0124H before pynetdicom opens the sub-association
to the destination.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE, N_ACTION, N_CREATE, N_SET
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    StorageCommitmentPushModel,
)

from pacs.audit import codes
from pacs.audit.codes import Action, Outcome
from pacs.audit.service import Event
from pacs.settings import DICOM_SERVICES, Settings

log = logging.getLogger("pacs.dicom")

NOT_AUTHORIZED = 0x0124  # PS3.7 C.5.21: Refused: Not Authorized
EVERYTHING = frozenset(DICOM_SERVICES)
ERROR_COMMENT_LENGTH = 64  # Error Comment (0000,0902) is LO (PS3.7 E.1)


def service_of(request: Any) -> str | None:
    """The service (``[[peers]] services``) a DIMSE request belongs to; None for one every peer
    may use (C-ECHO) or that no service of this AE answers."""
    if isinstance(request, C_STORE):
        return "store"
    if isinstance(request, C_FIND):
        return "worklist" if request.AffectedSOPClassUID == ModalityWorklistInformationFind else "query"
    if isinstance(request, (C_MOVE, C_GET)):
        return "retrieve"
    if isinstance(request, N_CREATE):
        return "mpps" if request.AffectedSOPClassUID == ModalityPerformedProcedureStep else None
    if isinstance(request, N_SET):
        return "mpps" if request.RequestedSOPClassUID == ModalityPerformedProcedureStep else None
    if isinstance(request, N_ACTION):
        return "commitment" if request.RequestedSOPClassUID == StorageCommitmentPushModel else None
    return None


def _destination(request: C_MOVE) -> str:
    value = request.MoveDestination
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")
    return text.strip()


class PeerAccess:
    """What each calling AE may ask of this AE, from the settings; refusals audited by ``audit``
    (a :class:`pacs.audit.Auditor`) when there is one."""

    def __init__(self, settings: Settings, audit: Any = None) -> None:
        self.audit = audit
        self.known = {peer.ae_title for peer in settings.peers}
        self._services = {peer.ae_title: frozenset(peer.services) if peer.services is not None else EVERYTHING
                          for peer in settings.peers}
        self._destinations = {peer.ae_title: frozenset(peer.retrieve_to) for peer in settings.peers
                              if peer.retrieve_to is not None}
        self._unknown = frozenset(settings.dicom.unknown_peer_services)

    @property
    def restricted(self) -> bool:
        """Whether any calling AE may use less than everything."""
        return (self._unknown != EVERYTHING or bool(self._destinations)
                or any(services != EVERYTHING for services in self._services.values()))

    def rules(self, calling: str) -> tuple[frozenset[str], frozenset[str] | None]:
        """The services ``calling`` may use, and the C-MOVE destinations (None: any)."""
        return self._services.get(calling, self._unknown), self._destinations.get(calling)

    def bindings(self) -> list[Any]:
        """The event handler that puts the check on each association that needs it."""
        return [(evt.EVT_ACCEPTED, self._accepted)] if self.restricted else []

    def refusal(self, request: Any, services: frozenset[str], destinations: frozenset[str] | None) -> str | None:
        """Why ``request`` is refused under these rules, or None when it may go on."""
        service = service_of(request)
        if service is None:
            return None
        if service not in services:
            return f"{service} is not allowed for this AE"
        if destinations is not None and isinstance(request, C_MOVE):
            destination = _destination(request)
            if destination in self.known and destination not in destinations:
                return f"retrieve to {destination} is not allowed for this AE"
        return None

    def _accepted(self, event: evt.Event) -> None:
        """EVT_ACCEPTED: before the association's first request, put the check between
        pynetdicom's reactor and its service classes (the association's own ``_serve_request``)."""
        assoc = event.assoc
        calling = assoc.requestor.ae_title.strip()
        services, destinations = self.rules(calling)
        if services == EVERYTHING and destinations is None:
            return
        serve: Callable[[Any, int], None] = assoc._serve_request

        def checked(request: Any, context_id: int) -> None:
            why = self.refusal(request, services, destinations)
            if why is None:
                serve(request, context_id)
            else:
                self._refuse(assoc, request, context_id, calling, why)

        assoc._serve_request = checked

    def _refuse(self, assoc: Any, request: Any, context_id: int, calling: str, why: str) -> None:
        response = type(request)()
        response.MessageIDBeingRespondedTo = request.MessageID
        response.Status = NOT_AUTHORIZED
        response.ErrorComment = why[:ERROR_COMMENT_LENGTH]
        if isinstance(request, (C_STORE, C_FIND, C_MOVE, C_GET, N_CREATE)):
            response.AffectedSOPClassUID = request.AffectedSOPClassUID
        if isinstance(request, (C_STORE, N_CREATE)) and request.AffectedSOPInstanceUID:
            response.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
        if isinstance(request, (N_SET, N_ACTION)):
            response.AffectedSOPClassUID = request.RequestedSOPClassUID
            response.AffectedSOPInstanceUID = request.RequestedSOPInstanceUID
        if isinstance(request, N_ACTION):
            response.ActionTypeID = request.ActionTypeID
        if isinstance(request, C_STORE):
            _discard(request)
        name = type(request).__name__.replace("_", "-")
        log.warning("DICOM %s (%s:%s): %s refused: %s", calling or "(no AE title)", assoc.requestor.address,
                    assoc.requestor.port, name, why)
        assoc.dimse.send_msg(response, context_id)
        self._audit(calling, str(assoc.requestor.address or ""), name, why)

    def _audit(self, calling: str, address: str, request: str, why: str) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(Event(
                codes.SECURITY_ALERT, Action.EXECUTE, Outcome.MINOR_FAILURE, types=(codes.USE_OF_RESTRICTED_FUNCTION,),
                user=calling, user_kind="dicom", address=address,
                description=f"{request} from {calling or '(no AE title)'} at {address} refused: {why}",
                details={"calling_ae": calling, "request": request, "status": f"0x{NOT_AUTHORIZED:04X}"}))
        except Exception:
            log.exception("a refused DICOM request was not audited")

    def tls_refused(self, peer: str, reason: str) -> None:
        """A TLS handshake the DICOM TLS port refused (:class:`pacs.archive.dul.Gate`): a Security
        Alert of type Node Authentication (PS3.15 A.5.3.11)."""
        if self.audit is None:
            return
        address = peer.rsplit(":", 1)[0]
        self.audit.record(Event(
            codes.SECURITY_ALERT, Action.EXECUTE, Outcome.MINOR_FAILURE, types=(codes.NODE_AUTHENTICATION,),
            user="", user_kind="dicom", address=address,
            description=f"TLS connection from {peer} to the DICOM TLS port refused: {reason}",
            details={"reason": reason}))


def _discard(request: C_STORE) -> None:
    """Remove the spooled data set of a refused C-STORE, as pynetdicom does after a handler."""
    spool = getattr(request, "_dataset_file", None)
    if spool is None:
        return
    spool.close()
    try:
        os.unlink(spool.name)
    except OSError:
        pass

"""Thin pynetdicom event handlers: decode the request, call a service, answer a named status.

Bound in :mod:`pacs.archive.ae` with their dependencies, as in pynetdicom's own apps:
``(evt.EVT_C_FIND, handle_find, [worklist])``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import ModalityWorklistInformationFind

from pacs.archive.mpps import MPPSService
from pacs.archive.query import QueryError
from pacs.archive.status import Status
from pacs.archive.worklist_service import WorklistService

log = logging.getLogger("pacs.dicom")


def _calling(event: evt.Event) -> str:
    return event.assoc.requestor.ae_title.strip()


def failure(status: Status, comment: str, tag: int | None = None) -> Dataset:
    """A failure status with Error Comment (0000,0902) and Offending Element (0000,0901)."""
    ds = Dataset()
    ds.Status = int(status)
    ds.ErrorComment = comment[:64]
    if tag is not None:
        ds.OffendingElement = [int(tag)]
    return ds


def handle_echo(event: evt.Event) -> int:  # PS3.4 A.4 Verification
    return Status.SUCCESS


def handle_find(event: evt.Event, worklist: WorklistService) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """C-FIND (PS3.4 C.4.1.3.1, K.4.1.3); checks for C-CANCEL between matches."""
    if event.request.AffectedSOPClassUID != ModalityWorklistInformationFind:
        yield failure(Status.SOP_CLASS_NOT_SUPPORTED, "only Modality Worklist queries are served"), None
        return
    seen = False

    def cancelled() -> bool:
        # pynetdicom forgets a C-CANCEL once it has been asked about it: remember it here.
        nonlocal seen
        seen = seen or event.is_cancelled
        return seen

    try:
        identifier = event.identifier
        matches = worklist.find(identifier, _calling(event), cancelled=cancelled)
        for match in matches:
            if cancelled():
                break
            yield Status.PENDING, match
        if cancelled():
            yield Status.CANCEL, None
    except QueryError as exc:
        log.info("worklist query from %s refused: %s", _calling(event), exc)
        yield failure(exc.status, exc.comment, exc.tag), None
    except Exception as exc:  # an identifier pydicom can't decode, a database fault
        log.exception("worklist query from %s failed", _calling(event))
        yield failure(Status.UNABLE_TO_PROCESS, f"unable to process: {exc}"), None


def handle_n_create(event: evt.Event, mpps: MPPSService) -> tuple[int | Dataset, Dataset | None]:
    """N-CREATE of a Modality Performed Procedure Step (PS3.4 F.7.2.1)."""
    try:
        attributes = event.attribute_list
    except Exception as exc:
        return failure(Status.PROCESSING_FAILURE, f"attribute list cannot be read: {exc}"), None
    result = mpps.create(event.request.AffectedSOPInstanceUID, attributes, _calling(event))
    log.info("MPPS N-CREATE %s from %s: 0x%04X %s", event.request.AffectedSOPInstanceUID, _calling(event),
             result.status, result.comment)
    return result.status_dataset(), result.attributes


def handle_n_set(event: evt.Event, mpps: MPPSService) -> tuple[int | Dataset, Dataset | None]:
    """N-SET of a Modality Performed Procedure Step (PS3.4 F.7.2.2)."""
    try:
        modifications = event.modification_list
    except Exception as exc:
        return failure(Status.PROCESSING_FAILURE, f"modification list cannot be read: {exc}"), None
    result = mpps.update(event.request.RequestedSOPInstanceUID, modifications, _calling(event))
    log.info("MPPS N-SET %s from %s: 0x%04X %s", event.request.RequestedSOPInstanceUID, _calling(event),
             result.status, result.comment)
    return result.status_dataset(), None


def log_association(event: evt.Event, outcome: str) -> None:
    """Every association, with peer, AE titles and outcome."""
    assoc = event.assoc
    log.info("association %s: %s (%s:%s) -> %s", outcome, assoc.requestor.ae_title.strip(),
             assoc.requestor.address, assoc.requestor.port, assoc.acceptor.ae_title.strip())

"""Thin pynetdicom event handlers: decode the request, call a service, answer a named status.

Bound in :mod:`pacs.archive.ae` with their dependencies, as in pynetdicom's own apps:
``(evt.EVT_C_FIND, handle_find, [queries])``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.sop_class import (
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs.archive import dimse, dul, spool, transport
from pacs.archive.commitment import Commitment
from pacs.archive.encoding import Encoded
from pacs.archive.mpps import MPPSService
from pacs.archive.query import QueryError
from pacs.archive.query_service import QueryService
from pacs.archive.retrieve import Retriever, accepted_syntaxes, last_sub_association
from pacs.archive.status import Status
from pacs.archive.store import Archive
from pacs.settings import Settings

log = logging.getLogger("pacs.dicom")

SETTLE_SECONDS = 30.0  # longest an association's request waits for its own objects to be indexed
SETTLED_KEPT = 256  # an association's indexing futures kept before the finished ones are dropped

MODEL = {
    PatientRootQueryRetrieveInformationModelFind: "PATIENT",
    PatientRootQueryRetrieveInformationModelMove: "PATIENT",
    PatientRootQueryRetrieveInformationModelGet: "PATIENT",
    StudyRootQueryRetrieveInformationModelFind: "STUDY",
    StudyRootQueryRetrieveInformationModelMove: "STUDY",
    StudyRootQueryRetrieveInformationModelGet: "STUDY",
}
MOVE_DESTINATION_UNKNOWN = 0xA801  # PS3.4 C.4.2.1.5
SUB_OPERATIONS_WARNING = 0xB000
DEFAULT_HOLD_BACK = 30.0  # seconds a C-FIND answer waits for the DUL to send earlier ones, without a DIMSE timeout


def _calling(event: evt.Event) -> str:
    return event.assoc.requestor.ae_title.strip()


def failure(status: int, comment: str, tag: int | None = None) -> Dataset:
    """A failure status with Error Comment (0000,0902) and Offending Element (0000,0901)."""
    ds = Dataset()
    ds.Status = int(status)
    ds.ErrorComment = comment[:64]
    if tag is not None:
        ds.OffendingElement = [int(tag)]
    return ds


def _cancel_watch(event: evt.Event) -> Callable[[], bool]:
    """pynetdicom forgets a C-CANCEL once it has been asked about it: remember it."""
    seen = False

    def cancelled() -> bool:
        nonlocal seen
        seen = seen or event.is_cancelled
        return seen

    return cancelled


def handle_echo(event: evt.Event) -> int:  # PS3.4 A.4 Verification
    return Status.SUCCESS


def handle_store(event: evt.Event, archive: Archive) -> int | Dataset:
    """C-STORE (PS3.4 B.2.2): the object pynetdicom wrote to a temporary file goes to store()."""
    started = time.perf_counter()
    spooled = spool.spooled(event.request)
    size = spooled.size if spooled is not None else _size(event.dataset_path)
    result = archive.store(
        event.dataset_path,
        calling_ae=_calling(event),
        sop_class=event.context.abstract_syntax,
        sop_instance=event.request.AffectedSOPInstanceUID,
        move=True,
        spooled=spooled,
        early=True,
    )
    archive.c_stores.record(result.outcome, size, time.perf_counter() - started)
    if result.pending is not None:  # answered once durable: the association's later requests wait for it
        indexing = event.assoc.__dict__.setdefault("_pacs_indexing", [])
        indexing.append(result.pending)
        if len(indexing) > SETTLED_KEPT:
            indexing[:] = [future for future in indexing if not future.done()]
    if result.status == Status.SUCCESS:
        return int(Status.SUCCESS)
    ds = Dataset()
    ds.Status = int(result.status)
    if result.comment:
        ds.ErrorComment = result.comment[:64]
    return ds


def _size(path: Any) -> int:
    try:
        return os.stat(path).st_size
    except (OSError, TypeError):  # not written to a file
        return 0


def settle(assoc: Any, timeout: float = SETTLE_SECONDS) -> None:
    """Wait until the objects ``assoc`` sent and had answered once durable are indexed (a C-STORE
    under ``[archive] acknowledge = "durable"``): its queries, retrieves, storage commitment
    requests and release see everything it stored. At most ``timeout`` seconds."""
    indexing = assoc.__dict__.get("_pacs_indexing")
    if not indexing:
        return
    deadline = time.monotonic() + timeout
    for future in list(indexing):
        try:
            future.result(max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            break
        except Exception:  # noqa: S110 - a failure is the index writer's to report and retry
            pass
    indexing[:] = [future for future in indexing if not future.done()]
    if indexing:
        log.warning("%d object(s) from %s not indexed after %.0f s; going on", len(indexing),
                    assoc.requestor.ae_title.strip(), timeout)


def settle_on_release(event: evt.Event) -> None:
    """EVT_ACSE_RECV: an A-RELEASE request (PS3.8 7.2, an orderly release) is answered once the
    association's objects are indexed, so that what a modality sent is queryable, from any
    association, by the time its release is confirmed."""
    primitive = event.primitive  # type: ignore[attr-defined]
    if isinstance(primitive, A_RELEASE) and primitive.result is None:
        settle(event.assoc)


def handle_find(event: evt.Event, queries: QueryService) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """C-FIND (PS3.4 C.4.1.3.1, K.4.1.3) for the worklist and both Q/R models; checks for
    C-CANCEL between matches. Answers written directly (:class:`dimse.PendingSender`) are not
    yielded: ``event.direct_answers`` counts those sent (the audit log reads it)."""
    settle(event.assoc)
    cancelled = _cancel_watch(event)
    event.direct_answers = 0
    sop_class = event.request.AffectedSOPClassUID
    try:
        identifier = event.identifier
        if sop_class == ModalityWorklistInformationFind:
            matches = queries.worklist(identifier, _calling(event), cancelled)
        elif sop_class in MODEL:
            matches = queries.archive(identifier, _calling(event), MODEL[sop_class], cancelled)
        else:
            yield failure(Status.SOP_CLASS_NOT_SUPPORTED, f"{sop_class} is not a query this AE serves"), None
            return
        direct = dimse.PendingSender.for_event(event)

        def flush() -> None:
            assert direct is not None
            direct.flush()
            event.direct_answers = direct.sent

        for match in matches:
            written = direct is not None and isinstance(match, Encoded)
            if written and not direct.add(match):
                continue  # its batch is not full yet
            if direct is not None and not written:
                flush()  # answers go out in order, whichever way each goes
            dul.hold_back(event.assoc, event.assoc.dimse_timeout or DEFAULT_HOLD_BACK)
            if cancelled():
                break
            if written:
                flush()
            else:
                yield Status.PENDING, match
        if direct is not None and not cancelled():
            direct.finish()  # out with the final response
            event.direct_answers = direct.sent
        if cancelled():
            yield Status.CANCEL, None
    except QueryError as exc:
        log.info("query from %s refused: %s", _calling(event), exc)
        yield failure(exc.status, exc.comment, exc.tag), None
    except Exception as exc:  # an identifier pydicom can't decode, a database fault
        log.exception("query from %s failed", _calling(event))
        yield failure(Status.UNABLE_TO_PROCESS, f"unable to process: {exc}"), None


def _sub_operations(event: evt.Event, retriever: Retriever, items: list[Any],
                    accepted: dict[str, set[str]]) -> Iterator[tuple[int | Dataset, Any]]:
    cancelled = _cancel_watch(event)
    truths: dict[int, tuple[dict[str, str], bool]] = {}
    for item in items:
        if cancelled():
            yield Status.CANCEL, None
            return
        if item.study not in truths:
            truths[item.study] = retriever.truth(item.study)
        truth, corrected = truths[item.study]
        try:
            payload = retriever.prepare(item, accepted, truth, corrected)
        except Exception:
            log.exception("cannot prepare %s for sending", item.sop_instance_uid)
            payload = None
        # None makes pynetdicom count a failed sub-operation and list the instance as failed.
        yield Status.PENDING, payload


def handle_move(event: evt.Event, retriever: Retriever, settings: Settings) -> Iterator[Any]:
    """C-MOVE (PS3.4 C.4.2): to a destination known from the config's [[peers]] (over TLS when
    it has ``tls = true``)."""
    destination = event.move_destination.decode() if isinstance(event.move_destination, bytes) \
        else str(event.move_destination)
    peer = settings.peer(destination.strip())
    if peer is None:
        log.warning("C-MOVE from %s to unknown destination %r", _calling(event), destination)
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    settle(event.assoc)
    try:
        items = retriever.select(event.identifier, MODEL[event.request.AffectedSOPClassUID])
    except QueryError as exc:
        # pynetdicom reads a failure only after the destination and a non-zero count.
        yield peer.host, peer.port, transport.association_options(settings, peer)
        yield 1
        yield failure(exc.status, exc.comment, exc.tag), None
        return
    # Over TLS to a peer with tls = true (PS3.15 Annex B), TCP_NODELAY always.
    options = {"contexts": retriever.contexts(items)} if items else {}
    yield peer.host, peer.port, transport.association_options(settings, peer, **options)
    yield len(items)
    association = last_sub_association()
    accepted = accepted_syntaxes(association.accepted_contexts) if association is not None else {}
    log.info("C-MOVE from %s: %d instance(s) to %s", _calling(event), len(items), peer.ae_title)
    yield from _sub_operations(event, retriever, items, accepted)


def handle_get(event: evt.Event, retriever: Retriever) -> Iterator[Any]:
    """C-GET (PS3.4 C.4.3): sub-operations on the requestor's own association, in the
    storage contexts it proposed with the SCP role."""
    settle(event.assoc)
    try:
        items = retriever.select(event.identifier, MODEL[event.request.AffectedSOPClassUID])
    except QueryError as exc:
        yield 1  # pynetdicom reads a failure only after a non-zero count
        yield failure(exc.status, exc.comment, exc.tag), None
        return
    yield len(items)
    accepted = accepted_syntaxes(event.assoc.accepted_contexts)
    log.info("C-GET from %s: %d instance(s)", _calling(event), len(items))
    yield from _sub_operations(event, retriever, items, accepted)


def handle_n_action(event: evt.Event, commitment: Commitment) -> tuple[int | Dataset, Dataset | None]:
    """N-ACTION Request Storage Commitment (PS3.4 J.3.2)."""
    settle(event.assoc)
    return commitment.request(event)


def handle_n_create(event: evt.Event, mpps: MPPSService) -> tuple[int | Dataset, Dataset | None]:
    """N-CREATE of a Modality Performed Procedure Step (PS3.4 F.7.2.1)."""
    try:
        attributes = event.attribute_list
    except Exception as exc:
        return failure(Status.INVALID_ATTRIBUTE_VALUE, f"attribute list cannot be read: {exc}"), None
    result = mpps.create(event.request.AffectedSOPInstanceUID, attributes, _calling(event))
    log.info("MPPS N-CREATE %s from %s: 0x%04X %s", event.request.AffectedSOPInstanceUID, _calling(event),
             result.status, result.comment)
    return result.status_dataset(), result.attributes


def handle_n_set(event: evt.Event, mpps: MPPSService) -> tuple[int | Dataset, Dataset | None]:
    """N-SET of a Modality Performed Procedure Step (PS3.4 F.7.2.2)."""
    try:
        modifications = event.modification_list
    except Exception as exc:
        return failure(Status.INVALID_ATTRIBUTE_VALUE, f"modification list cannot be read: {exc}"), None
    result = mpps.update(event.request.RequestedSOPInstanceUID, modifications, _calling(event))
    log.info("MPPS N-SET %s from %s: 0x%04X %s", event.request.RequestedSOPInstanceUID, _calling(event),
             result.status, result.comment)
    return result.status_dataset(), None


def log_association(event: evt.Event, outcome: str) -> None:
    """Every association, with peer, AE titles and outcome."""
    assoc = event.assoc
    log.info("association %s: %s (%s:%s) -> %s", outcome, assoc.requestor.ae_title.strip(),
             assoc.requestor.address, assoc.requestor.port, assoc.acceptor.ae_title.strip())

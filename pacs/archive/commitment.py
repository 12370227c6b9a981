"""Storage Commitment Push Model SCP (PS3.4 Annex J; IHE RAD-10).

An N-ACTION asks the archive to take responsibility for a list of instances. Each is checked:
indexed, and a copy on disk whose SHA-256 is the one recorded at storage. The answer, an
N-EVENT-REPORT (event type 1: all committed; 2: some failed, each with its reason), goes back on
the same association if the requestor keeps it open, otherwise on a new association to the
requestor's address from ``[[peers]]``, through the outbox, so it is retried until delivered.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel
from sqlmodel import Session, select

from pacs.archive import dimse, transport
from pacs.archive.index import Instance, InstanceFile
from pacs.archive.status import Status
from pacs.archive.storage import StorageArea
from pacs.db import Database
from pacs.integration.outbox import Delivered, DeliveryRefused, OutboxItem, enqueue
from pacs.settings import Settings

log = logging.getLogger("pacs.dicom")

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.5
REQUEST_COMMITMENT = 1  # Action Type ID
ALL_COMMITTED, SOME_FAILED = 1, 2  # Event Type ID
NO_SUCH_OBJECT_INSTANCE = 0x0112  # Failure Reason (0008,1197)
PROCESSING_FAILURE = 0x0110
CLASS_INSTANCE_CONFLICT = 0x0119
DESTINATION_PREFIX = "dicom:"
SAME_ASSOCIATION_GRACE = 2.0  # seconds to wait for our N-ACTION response to go out first


@dataclass
class Report:
    transaction_uid: str
    committed: list[tuple[str, str]]
    failed: list[tuple[str, str, int]]

    @property
    def event_type(self) -> int:
        return SOME_FAILED if self.failed else ALL_COMMITTED

    def dataset(self, retrieve_ae: str) -> Dataset:
        ds = Dataset()
        ds.TransactionUID = self.transaction_uid
        ds.RetrieveAETitle = retrieve_ae
        items = []
        for sop_class, sop_instance in self.committed:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        ds.ReferencedSOPSequence = items
        if self.failed:
            failed = []
            for sop_class, sop_instance, reason in self.failed:
                item = Dataset()
                item.ReferencedSOPClassUID = sop_class
                item.ReferencedSOPInstanceUID = sop_instance
                item.FailureReason = reason
                failed.append(item)
            ds.FailedSOPSequence = failed
        return ds

    def to_json(self) -> str:
        return json.dumps({"transaction_uid": self.transaction_uid, "committed": self.committed,
                           "failed": self.failed})

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        return cls(data["transaction_uid"], [tuple(c) for c in data["committed"]],  # type: ignore[misc]
                   [tuple(f) for f in data["failed"]])  # type: ignore[misc]


class Commitment:
    def __init__(self, db: Database, areas: dict[str, StorageArea], settings: Settings) -> None:
        self.db = db
        self.areas = areas
        self.settings = settings

    def verify(self, transaction_uid: str, references: list[tuple[str, str]]) -> Report:
        """Committed: indexed, and a copy whose bytes still have the recorded checksum."""
        committed, failed = [], []
        with Session(self.db.reader) as session:
            for sop_class, sop_instance in references:
                if not UID(sop_instance).is_valid:  # no instance is held under it (PS3.4 J.3.2.1.1)
                    failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
                    continue
                row = session.exec(select(Instance).where(Instance.sop_instance_uid == sop_instance)).first()
                if row is None:
                    failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
                    continue
                if row.sop_class_uid != sop_class:
                    failed.append((sop_class, sop_instance, CLASS_INSTANCE_CONFLICT))
                    continue
                copies = session.exec(select(InstanceFile).where(InstanceFile.instance == row.id)).all()
                if any(self._intact(copy) for copy in copies):
                    committed.append((sop_class, sop_instance))
                else:
                    log.error("storage commitment: no intact copy of %s", sop_instance)
                    failed.append((sop_class, sop_instance, PROCESSING_FAILURE))
        return Report(transaction_uid, committed, failed)

    def _intact(self, copy: InstanceFile) -> bool:
        area = self.areas.get(copy.area)
        if area is None:
            return False
        try:
            return area.checksum(copy.key) == copy.checksum
        except OSError:
            return False

    def request(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        """The N-ACTION handler's work: check the request, verify, arrange the report."""
        if event.request.ActionTypeID != REQUEST_COMMITMENT:
            return _failure(Status.PROCESSING_FAILURE, f"action type {event.request.ActionTypeID} is not 1"), None
        try:
            info = event.action_information
            transaction = str(info.TransactionUID)
            references = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                          for i in info.ReferencedSOPSequence]
        except Exception as exc:
            return _failure(Status.MISSING_ATTRIBUTE, f"action information incomplete: {exc}"), None
        if not transaction.strip():  # Type 1 (PS3.4 Table J.3-1): the report names the request by it
            return _failure(Status.MISSING_ATTRIBUTE_VALUE, "Transaction UID (0008,1195) is empty"), None
        calling = event.assoc.requestor.ae_title.strip()
        report = self.verify(transaction, references)
        log.info("storage commitment %s from %s: %d committed, %d failed", transaction, calling,
                 len(report.committed), len(report.failed))
        responded = threading.Event()
        dimse.after_response(event.assoc, int(event.request.MessageID), responded.set)
        threading.Thread(target=self._answer, args=(event.assoc, calling, report, responded), daemon=True,
                         name="commitment-report").start()
        return int(Status.SUCCESS), None

    def _answer(self, assoc, calling: str, report: Report,  # type: ignore[no-untyped-def]
                responded: threading.Event) -> None:
        """Report on the same association if the requestor keeps it open, once our N-ACTION
        response has gone out (PS3.4 J.3.3), else through the outbox."""
        deadline = time.monotonic() + SAME_ASSOCIATION_GRACE
        responded.wait(SAME_ASSOCIATION_GRACE)
        while (responded.is_set() and time.monotonic() < deadline and assoc.is_established
               and assoc.dul.state_machine.current_state == dimse.DATA_TRANSFER_STATE):  # no release asked
            try:
                status, _ = dimse.awaiting_response(assoc, lambda: assoc.send_n_event_report(
                    report.dataset(self.settings.ae_title), report.event_type, StorageCommitmentPushModel,
                    WELL_KNOWN_INSTANCE))
                if status is not None and "Status" in status and status.Status == 0:
                    log.info("storage commitment %s reported on the same association", report.transaction_uid)
                    return
                break
            except Exception as exc:  # the requestor released meanwhile
                log.info("same-association report failed (%s); sending on a new association", exc)
                break
        with self.db.session() as session:
            enqueue(session, destination=f"{DESTINATION_PREFIX}{calling}", kind="dicom-commitment",
                    payload=report.to_json(),
                    description=f"storage commitment report {report.transaction_uid} "
                                f"({len(report.committed)} committed, {len(report.failed)} failed)")


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    ds.ErrorComment = comment[:64]
    return ds


def commitment_deliverer(settings: Settings):  # type: ignore[no-untyped-def]
    """Outbox delivery of a report on a new association to the requestor (PS3.4 J.3.3.1)."""

    def deliver(item: OutboxItem) -> Delivered:
        ae_title = item.destination.removeprefix(DESTINATION_PREFIX)
        peer = settings.peer(ae_title)
        if peer is None:
            raise DeliveryRefused(f"{ae_title} is not under [[peers]]: no address to report to")
        report = Report.from_json(item.payload)
        ae = AE(ae_title=settings.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = transport.associate(ae, settings, peer,  # over TLS to a peer with tls = true
                                    ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
        if not assoc.is_established:
            raise ConnectionError(f"could not associate with {ae_title} at {peer.host}:{peer.port}")
        try:
            status, _ = assoc.send_n_event_report(report.dataset(settings.ae_title), report.event_type,
                                                  StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        finally:
            assoc.release()
        if status is None or "Status" not in status:
            raise ConnectionError(f"{ae_title} did not answer the N-EVENT-REPORT")
        if status.Status != 0:
            raise DeliveryRefused(f"{ae_title} answered 0x{status.Status:04X}")
        return Delivered(response=f"0x{status.Status:04X}")

    return deliver

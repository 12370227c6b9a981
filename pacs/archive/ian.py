"""Instance Availability Notification (PS3.4 Annex R; IHE RAD-49): telling DICOM peers (a RIS,
a reporting workstation) that a study's instances are online here."""

from __future__ import annotations

import json
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import InstanceAvailabilityNotification
from sqlmodel import Session, col, select

from pacs.archive import transport
from pacs.archive.index import NOT_REJECTED, Instance, Series, Study
from pacs.integration.outbox import Delivered, DeliveryRefused, OutboxItem, enqueue
from pacs.registry.models import PerformedProcedureStep
from pacs.settings import Settings

DESTINATION_PREFIX = "ian:"


def notification(session: Session, study: Study, retrieve_ae: str) -> dict[str, Any]:
    """The N-CREATE attribute list (PS3.3 C.4.23 Instance Availability Notification module), as JSON."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyInstanceUID = study.study_instance_uid
    performed = session.exec(select(PerformedProcedureStep.sop_instance_uid)
                             .where(PerformedProcedureStep.order == study.order)).all() if study.order else []
    refs = []
    for uid in performed:
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.3"  # Modality Performed Procedure Step
        ref.ReferencedSOPInstanceUID = uid
        ref.PerformedWorkitemCodeSequence = []
        refs.append(ref)
    ds.ReferencedPerformedProcedureStepSequence = refs
    series_items = []
    for series in session.exec(select(Series).where(Series.study == study.id, Series.number_of_instances > 0)
                               .order_by(col(Series.id))):
        item = Dataset()
        item.SeriesInstanceUID = series.series_instance_uid
        instances = []
        for instance in session.exec(select(Instance).where(Instance.series == series.id, NOT_REJECTED)
                                     .order_by(col(Instance.id))):
            sop = Dataset()
            sop.ReferencedSOPClassUID = instance.sop_class_uid
            sop.ReferencedSOPInstanceUID = instance.sop_instance_uid
            sop.InstanceAvailability = "ONLINE"
            sop.RetrieveAETitle = retrieve_ae
            instances.append(sop)
        item.ReferencedSOPSequence = instances
        series_items.append(item)
    ds.ReferencedSeriesSequence = series_items
    return ds.to_json_dict()


def enqueue_notifications(session: Session, study: Study, settings: Settings) -> int:
    payload = json.dumps(notification(session, study, settings.ae_title))
    for ae_title in settings.publish.ian_peers:
        enqueue(session, destination=f"{DESTINATION_PREFIX}{ae_title}", kind="dicom-ian", payload=payload,
                order=study.order, description=f"instance availability of {study.study_instance_uid} to {ae_title}")
    return len(settings.publish.ian_peers)


def ian_deliverer(settings: Settings):  # type: ignore[no-untyped-def]
    def deliver(item: OutboxItem) -> Delivered:
        ae_title = item.destination.removeprefix(DESTINATION_PREFIX)
        peer = settings.peer(ae_title)
        if peer is None:
            raise DeliveryRefused(f"{ae_title} is not under [[peers]]")
        ae = AE(ae_title=settings.ae_title)
        ae.add_requested_context(InstanceAvailabilityNotification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = transport.associate(ae, settings, peer)  # over TLS to a peer with tls = true
        if not assoc.is_established:
            raise ConnectionError(f"could not associate with {ae_title}")
        try:
            status, _ = assoc.send_n_create(Dataset.from_json(json.loads(item.payload)),
                                            InstanceAvailabilityNotification, generate_uid())
        finally:
            assoc.release()
        if status is None or "Status" not in status:
            raise ConnectionError(f"{ae_title} did not answer the N-CREATE")
        if status.Status not in (0x0000,) and not (0xB000 <= status.Status <= 0xBFFF):
            raise DeliveryRefused(f"{ae_title} answered 0x{status.Status:04X}")
        return Delivered(response=f"0x{status.Status:04X}")

    return deliver

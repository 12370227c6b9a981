"""What a signed report version becomes, enqueued in the signing transaction (the outbox).

``enqueue(session, order, report, version)`` is called by the report service inside the unit of
work that writes the version, so the version and its delivery commit together or not at all.
It writes one outbox item (destination ``report``) naming the version. Its deliverer,
:meth:`ReportSender.fan_out`, then makes the version's PDF (:mod:`pacs.reporting.pdf`) and, in
one transaction, queues what each receiver gets, each in its own destination's queue, retried
on its own:

- ``his``: HL7 ORU^R01 (:mod:`pacs.integration.oru`), when ``[his] host`` is set;
- ``platform``: FHIR DiagnosticReport with the PDF as presentedForm, a conditional update on
  the order's filler number (:mod:`pacs.fhir_server.diagnostic_report`), when ``[publish]
  fhir_base_url`` is set;
- ``archive``: the Basic Text SR, the Key Object Selection of the key images and the
  Encapsulated PDF (:mod:`pacs.reporting.sr`), stored through the archive's ``store()`` by
  :meth:`ReportSender.store`.

Both deliverers may run twice for one item (a crash between the work and the outbox's record
of it): the fan-out finds the items it queued before and queues nothing again; the objects'
SOP Instance UIDs derive from the version, so an object stored before is found and not stored
again.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlmodel import Session, col, select

from pacs import assets
from pacs.archive.index import Instance, Study
from pacs.archive.store import DUPLICATE_REFUSED, Archive, Outcome, incoming_dir
from pacs.db import Database
from pacs.fhir_server import diagnostic_report
from pacs.integration import his, oru, publisher
from pacs.integration.outbox import Delivered, DeliveryRefused, OutboxItem
from pacs.integration.outbox import enqueue as outbox_enqueue
from pacs.registry import service
from pacs.registry.models import ImagingOrder, Patient, ProcedureStep, Visit
from pacs.reporting import pdf as report_pdf
from pacs.reporting import sr
from pacs.reporting.models import Report, ReportVersion
from pacs.settings import Settings

log = logging.getLogger(__name__)

DESTINATION = "report"  # the fan-out of a signed version
ARCHIVE = "archive"  # its objects into the archive
STATUS_WORDS = {"P": "preliminary", "F": "final", "C": "corrected"}


def enqueue(session: Session, order: ImagingOrder, report: Report, version: ReportVersion) -> None:
    """Add the deliveries of ``version`` to the caller's unit of work."""
    session.flush()  # the version's id
    outbox_enqueue(session, destination=DESTINATION, kind="report", order=order.id,
                   payload=json.dumps({"report": report.id, "version": version.id, "number": version.number,
                                       "status": version.status}),
                   description=_described(order, version))


def _described(order: ImagingOrder, version: ReportVersion) -> str:
    return (f"report version {version.id} (no. {version.number}, {STATUS_WORDS.get(version.status, version.status)}) "
            f"for {order.accession_number}")


def wall_clock(moment: datetime | None, settings: Settings) -> datetime | None:
    """A recorded moment (aware UTC) as the hospital's wall-clock time, without zone."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(settings.zone) if settings.zone else moment.astimezone()
    return moment.replace(tzinfo=None)


def study_start(session: Session, order: ImagingOrder) -> datetime | None:
    """When the study was made: the archive's study date and time, else the step's start."""
    study = session.exec(select(Study).where(Study.study_instance_uid == order.study_instance_uid)).first()
    if study is not None and len(study.study_date) == 8:
        clock = (study.study_time.split(".")[0] + "000000")[:6]
        try:
            return datetime.strptime(study.study_date + clock, "%Y%m%d%H%M%S")
        except ValueError:
            pass
    step = session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id, col(ProcedureStep.start).is_not(None))
                        .order_by(col(ProcedureStep.id))).first()
    return step.start if step is not None else None


def _modality(session: Session, order: ImagingOrder) -> str:
    step = session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id)
                        .order_by(col(ProcedureStep.id))).first()
    return step.modality if step is not None else ""


def film_link(settings: Settings, session: Session, order: ImagingOrder, version: ReportVersion) -> str:
    """A cloud-film link (云胶片) for a final or corrected version, kept in ``session``; "" for a
    preliminary one, or where this server issues no links."""
    if version.status == "P":
        return ""
    try:
        from pacs.auth import links
    except ImportError:
        return ""
    return links.issue_link(settings, order.study_instance_uid, links.FILM,
                            timedelta(days=settings.report.film_link_days), session=session,
                            created_by=f"report:{version.author}")


class ReportSender:
    """The deliverers of the ``report`` and ``archive`` destinations of one process."""

    def __init__(self, settings: Settings, db: Database, archive: Archive) -> None:
        self.settings = settings
        self.db = db
        self.archive = archive

    def deliverers(self) -> dict[str, Any]:
        return {DESTINATION: self.fan_out, ARCHIVE: self.store}

    # -- the fan-out --------------------------------------------------------------------------
    def fan_out(self, item: OutboxItem) -> Delivered:
        """Make the version's PDF and queue the ORU^R01, the DiagnosticReport and the archive's
        objects, in one transaction; nothing again if that was done before."""
        request = json.loads(item.payload)
        with self.db.session() as session:
            version = session.get(ReportVersion, request["version"])
            if version is None:
                raise DeliveryRefused(f"report version {request['version']} does not exist")
            report = session.get_one(Report, version.report)
            order = session.get_one(ImagingOrder, report.order)
            marker = _described(order, version)
            queued = session.exec(select(OutboxItem.destination).where(
                OutboxItem.order == order.id, OutboxItem.destination == ARCHIVE,
                OutboxItem.description == marker)).first()
            if queued is not None:
                return Delivered(response="queued before")
            page = self.page(session, order, version, film_url=film_link(self.settings, session, order, version))
            document = report_pdf.report_pdf(page, font=assets.font_path(self.settings.assets_dir))
            sent = [ARCHIVE]
            outbox_enqueue(session, destination=ARCHIVE, kind="dicom", order=order.id, description=marker,
                           payload=json.dumps({"version": version.id, "pdf": base64.b64encode(document).decode()}))
            if self.settings.his.host and self.settings.his.port:
                patient = service._root(session, session.get_one(Patient, order.patient))
                visit = session.get(Visit, order.visit) if order.visit else None
                message = oru.report_message(order=order, patient=patient, visit=visit, version=version,
                                             modality=_modality(session, order),
                                             study_started=study_start(session, order), his=self.settings.his,
                                             settings=self.settings, zone=self.settings.zone)
                outbox_enqueue(session, destination=his.DESTINATION, kind="hl7v2", payload=message, order=order.id,
                               description=f"ORU^R01 {version.status} for {order.accession_number} "
                                           f"(report no. {version.number})")
                sent.append(his.DESTINATION)
            if self.settings.publish.fhir_base_url:
                resource = diagnostic_report.diagnostic_report_resource(
                    session, report, version, zone=self.settings.zone, logical=True, pdf=document,
                    pdf_title=f"{page.procedure} 诊断报告".strip())
                content = {k: v for k, v in resource.items() if k not in ("id", "meta")}
                outbox_enqueue(session, destination=publisher.DESTINATION, kind="fhir", order=order.id,
                               payload=json.dumps({"method": "PUT", "url": diagnostic_report.conditional_url(report),
                                                   "resource": content}, ensure_ascii=False),
                               description=f"DiagnosticReport {order.accession_number} ({content['status']}, "
                                           f"report no. {version.number})")
                sent.append(publisher.DESTINATION)
        log.info("report version %s of %s queued for %s", request["version"], order.accession_number, ", ".join(sent))
        return Delivered(response=f"queued for {', '.join(sent)}")

    def page(self, session: Session, order: ImagingOrder, version: ReportVersion, *,
             film_url: str = "") -> report_pdf.ReportPage:
        """What the PDF of ``version`` shows."""
        patient = service._root(session, session.get_one(Patient, order.patient))
        visit = session.get(Visit, order.visit) if order.visit else None
        config = self.settings.report
        signed = wall_clock(version.signed_at, self.settings)
        assert signed is not None
        ward = " ".join(p for p in (visit.ward, visit.room, visit.bed) if p) if visit is not None else ""
        return report_pdf.ReportPage(
            status=version.status, version=version.number, hospital=config.hospital, department=config.department,
            name_ideographic="".join(patient.name_ideographic.split("^")[:2]),
            name_alphabetic=" ".join(p for p in (patient.name_override or patient.name_alphabetic).split("^")[:2] if p),
            patient_id=patient.patient_id, sex=patient.sex, birth_date=patient.birth_date,
            accession_number=order.accession_number, procedure=order.procedure_text,
            modality=_modality(session, order), study_time=study_start(session, order),
            requesting_department=order.department, findings=version.findings, impression=version.impression,
            author_name=version.author_name or version.author, signed_at=signed,
            verifier_name=version.verifier_name or version.verifier,
            verified_at=wall_clock(version.verified_at, self.settings), critical=version.critical,
            critical_told=version.critical_told, critical_told_at=wall_clock(version.critical_told_at, self.settings),
            reason=version.reason, logo=config.logo, film_url=film_url, inpatient=ward)

    # -- the archive --------------------------------------------------------------------------
    def objects(self, session: Session, version: ReportVersion, document: bytes) -> list[Dataset]:
        """The version's SR, its key images' KOS (if any were marked) and its Encapsulated PDF."""
        report = session.get_one(Report, version.report)
        order = session.get_one(ImagingOrder, report.order)
        patient = service._root(session, session.get_one(Patient, order.patient))
        started = study_start(session, order)
        steps = service.steps_of(session, order)
        groups = [patient.name_override or patient.name_alphabetic, patient.name_ideographic]
        identity = sr.Identity(
            patient_name="=".join(groups).rstrip("="), patient_id=patient.patient_id, issuer=patient.issuer,
            birth_date=patient.birth_date.strftime("%Y%m%d") if patient.birth_date else "", sex=patient.sex,
            study_instance_uid=order.study_instance_uid, study_date=started.strftime("%Y%m%d") if started else "",
            study_time=started.strftime("%H%M%S") if started else "", accession_number=order.accession_number,
            referring_physician=order.referring_physician, study_id=order.requested_procedure_id or
            next((s.sps_id for s in steps if s.sps_id), ""), procedure_text=order.procedure_text,
            placer_number=order.placer_number, filler_number=order.filler_number or order.accession_number)
        signed = wall_clock(version.signed_at, self.settings)
        assert signed is not None
        made = sr.Version(
            report=report.id or 0, number=version.number, status=version.status, findings=version.findings,
            impression=version.impression, author=version.author, author_name=version.author_name,
            signed_at=signed, verifier=version.verifier, verifier_name=version.verifier_name,
            verified_at=wall_clock(version.verified_at, self.settings), key_images=list(version.key_images or []),
            uid_root=self.settings.uid_root)
        title = f"{report_pdf.STATUS_TITLE.get(version.status, '')} {order.procedure_text}".strip()
        found = [sr.basic_text_sr(made, identity), sr.key_object_selection(made, identity),
                 sr.encapsulated_pdf(made, identity, document, title)]
        return [ds for ds in found if ds is not None]

    def store(self, item: OutboxItem) -> Delivered:
        """Store the version's objects through ``store()``; those stored before are skipped."""
        request = json.loads(item.payload)
        document = base64.b64decode(request["pdf"])
        with self.db.session(read_only=True) as session:
            version = session.get(ReportVersion, request["version"])
            if version is None:
                raise DeliveryRefused(f"report version {request['version']} does not exist")
            objects = self.objects(session, version, document)
            held = set(session.exec(select(Instance.sop_instance_uid).where(
                col(Instance.sop_instance_uid).in_([str(ds.SOPInstanceUID) for ds in objects]))).all())
        said = []
        for ds in objects:
            uid = str(ds.SOPInstanceUID)
            if uid not in held:
                self._store(ds)
            said.append(f"{ds.Modality} {uid}")
        sr_uid = next(str(ds.SOPInstanceUID) for ds in objects if ds.Modality == "SR")
        pdf_uid = next(str(ds.SOPInstanceUID) for ds in objects if ds.Modality == "DOC")
        with self.db.session() as session:
            row = session.get_one(ReportVersion, request["version"])
            if (row.sr_sop_instance_uid, row.pdf_sop_instance_uid) != (sr_uid, pdf_uid):
                row.sr_sop_instance_uid, row.pdf_sop_instance_uid = sr_uid, pdf_uid
                session.add(row)
        return Delivered(response="stored " + ", ".join(said))

    def _store(self, ds: Dataset) -> None:
        folder = incoming_dir(self.archive.area) or self.settings.data_dir / "reports" / "tmp"
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="report-", suffix=".dcm", dir=folder)
        os.close(handle)
        path = Path(name)
        try:
            ds.save_as(path, enforce_file_format=True)
            result = self.archive.store(path, calling_ae=self.settings.ae_title, move=True)
        finally:
            path.unlink(missing_ok=True)
        if result.ok or result.status == DUPLICATE_REFUSED:
            return
        if result.outcome == Outcome.REFUSED:
            raise DeliveryRefused(f"the archive refused {ds.SOPInstanceUID}: {result.comment}")
        raise RuntimeError(f"the archive did not store {ds.SOPInstanceUID}: {result.comment or result.outcome}")

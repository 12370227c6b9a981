"""DiagnosticReport (FHIR R4 diagnosticreport.html) of a radiology report, as the HL7 FHIR
imaging report practice has it: category Radiology (LOINC LP29684-5, HL7 table 0074 RAD), code
LOINC 18748-4 "Diagnostic imaging study" beside the procedure's own code, the ServiceRequest it
answers (basedOn), the ImagingStudy it reads (imagingStudy), the impression as conclusion, the
findings and impression as narrative, and the signed PDF as presentedForm.

One resource per report (per order), at its latest signed version: status preliminary (OBR-25
P), final (F) or corrected (C). The same builder serves reads at /fhir and what is sent to the
platform; for the platform, references are logical (by identifier), as for ImagingStudy.
"""

from __future__ import annotations

import base64
import html
import io
import uuid
from datetime import UTC, tzinfo
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import false
from sqlmodel import Session, col, select

from pacs.archive.index import Instance, InstanceFile, Study
from pacs.fhir_server.imaging_study import DICOM_UID, V2_0203, _pn_display, _started
from pacs.registry.models import ImagingOrder, Patient
from pacs.reporting.models import Report, ReportVersion

LOINC = "http://loinc.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
STATUS = {"P": "preliminary", "F": "final", "C": "corrected"}  # HL7 table 0123 → DiagnosticReportStatus
FINAL_STATUSES = ("F", "C")  # what reports.read.final shows
XHTML = "http://www.w3.org/1999/xhtml"


def report_uid(report: Report) -> str:
    """The report's own UID, the same for all its versions: a UUID-derived UID (PS3.5 B.2) of a
    name-based UUID (RFC 9562 5.5) of its study and its number here."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{report.study_instance_uid}/report/{report.id}').int}"


def issued(version: ReportVersion, zone: tzinfo | None) -> str:
    """When this version was made available: its verification, else its signature (an instant)."""
    moment = version.verified_at or version.signed_at
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(zone).isoformat() if zone else moment.isoformat()


def _narrative(order: ImagingOrder, version: ReportVersion) -> dict[str, str]:
    def paragraphs(text: str) -> str:
        return "".join(f"<p>{html.escape(line)}</p>" for line in text.splitlines() if line.strip())

    body = (f"<h3>{html.escape(order.procedure_text or 'Diagnostic imaging study')}</h3>"
            f"<h4>检查所见</h4>{paragraphs(version.findings)}<h4>诊断意见</h4>{paragraphs(version.impression)}")
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{body}</div>'}


def diagnostic_report_resource(session: Session, report: Report, version: ReportVersion, *,
                               zone: tzinfo | None = None, logical: bool = False, pdf: bytes | None = None,
                               pdf_title: str = "") -> dict[str, Any]:
    """The DiagnosticReport of ``report`` at ``version``; ``pdf`` as its presentedForm."""
    order = session.get_one(ImagingOrder, report.order)
    patient = session.get_one(Patient, order.patient)
    study = session.exec(select(Study).where(Study.study_instance_uid == report.study_instance_uid)).first()
    filler = order.filler_number or order.accession_number
    identifiers: list[dict[str, Any]] = [{"system": DICOM_UID, "value": f"urn:oid:{report_uid(report)}"}]
    if filler:
        identifiers.append({"type": {"coding": [{"system": V2_0203, "code": "FILL"}]}, "value": filler})
    if order.accession_number:
        identifiers.append({"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                            "value": order.accession_number})
    name = "=".join(g for g in (patient.name_alphabetic, patient.name_ideographic) if g)
    if logical:
        subject: dict[str, Any] = {"identifier": {"value": patient.patient_id,
                                                  **({"system": patient.issuer} if patient.issuer else {})},
                                   "display": _pn_display(name)}
        based_on = ([{"identifier": {"type": {"coding": [{"system": V2_0203, "code": "PLAC"}]},
                                     "value": order.placer_number}}] if order.placer_number else [])
        imaging = [{"identifier": {"system": DICOM_UID, "value": f"urn:oid:{report.study_instance_uid}"}}]
    else:
        subject = {"reference": f"Patient/{patient.id}", "display": _pn_display(name)}
        based_on = [{"reference": f"ServiceRequest/{order.id}"}]
        imaging = ([{"reference": f"ImagingStudy/{study.id}"}] if study is not None else
                   [{"identifier": {"system": DICOM_UID, "value": f"urn:oid:{report.study_instance_uid}"}}])
    code: list[dict[str, Any]] = [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}]
    if order.procedure_code:
        code.append({**({"system": order.procedure_scheme} if order.procedure_scheme else {}),
                     "code": order.procedure_code,
                     **({"display": order.procedure_text} if order.procedure_text else {})})
    interpreters = [{"display": version.author_name or version.author}]
    if version.verifier:
        interpreters.insert(0, {"display": version.verifier_name or version.verifier})
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": str(report.id),
        "meta": {"versionId": str(version.number), "lastUpdated": issued(version, zone)},
        "text": _narrative(order, version),
        "identifier": identifiers,
        "basedOn": based_on,
        "status": STATUS[version.status],
        "category": [{"coding": [{"system": LOINC, "code": "LP29684-5", "display": "Radiology"},
                                 {"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": code, **({"text": order.procedure_text} if order.procedure_text else {})},
        "subject": subject,
        "issued": issued(version, zone),
        "resultsInterpreter": interpreters,
        "imagingStudy": imaging,
    }
    if not based_on:
        del resource["basedOn"]
    started = _started(study, zone) if study is not None else None
    if started:
        resource["effectiveDateTime"] = started
    if version.impression.strip():
        resource["conclusion"] = version.impression
    if pdf is not None:
        resource["presentedForm"] = [{"contentType": "application/pdf", "language": "zh-CN",
                                      "data": base64.b64encode(pdf).decode("ascii"),
                                      "title": pdf_title or f"{order.procedure_text} 诊断报告".strip(),
                                      "creation": issued(version, zone)}]
    return resource


def stored_pdf(session: Session, areas: dict[str, Any], sop_instance_uid: str) -> bytes | None:
    """The PDF of the Encapsulated PDF the archive holds under ``sop_instance_uid`` (PS3.3
    C.24.2), read from the first of its copies in ``areas``; None if there is none to read."""
    if not sop_instance_uid:
        return None
    instance = session.exec(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)).first()
    if instance is None:
        return None
    for copy in session.exec(select(InstanceFile).where(InstanceFile.instance == instance.id)):
        area = areas.get(copy.area)
        if area is None:
            continue
        try:
            ds = pydicom.dcmread(io.BytesIO(area.read(copy.key)))
        except (OSError, InvalidDicomError):
            continue
        document = bytes(ds.EncapsulatedDocument)
        return document[:int(ds.get("EncapsulatedDocumentLength") or len(document))]
    return None


def latest_version(session: Session, report: Report) -> ReportVersion | None:
    return session.exec(select(ReportVersion).where(ReportVersion.report == report.id,
                                                    ReportVersion.number == report.current_version)).first()


def conditional_url(report: Report) -> str:
    """The platform's DiagnosticReport of this report, by the report's UID (as ImagingStudy is by its study's)."""
    return f"DiagnosticReport?identifier={DICOM_UID}|urn:oid:{report_uid(report)}"


# -- search (diagnosticreport.html#search) -----------------------------------------------------

def _current(status_codes: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """Reports whose latest signed version has one of ``status_codes``."""
    return col(Report.id).in_(
        select(ReportVersion.report).join(Report, Report.id == ReportVersion.report)
        .where(ReportVersion.number == Report.current_version, col(ReportVersion.status).in_(status_codes)))


def signed():  # type: ignore[no-untyped-def]
    """Reports with a signed version (a draft is no DiagnosticReport)."""
    return Report.current_version > 0


def final_only():  # type: ignore[no-untyped-def]
    """What a reader allowed final reports alone (reports.read.final) may see."""
    return _current(FINAL_STATUSES)


def search_parameters():  # type: ignore[no-untyped-def]
    from pacs.db import row_id
    from pacs.fhir_server.search import (
        Param,
        SearchError,
        date_parameter,
        day_text,
        reference,
        shown,
    )

    def _id(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        return Report.id == key if (key := row_id(value)) is not None else false()

    patient_of = reference(ImagingOrder.patient, "Patient")

    def subject(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        return col(Report.order).in_(select(ImagingOrder.id).where(patient_of(value, modifier)))

    study_of = reference(Study.id, "ImagingStudy")

    def study(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        return col(Report.study_instance_uid).in_(select(Study.study_instance_uid).where(study_of(value, modifier)))

    def status(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        codes = [code for code, name in STATUS.items() if name == value.rpartition("|")[2]]
        if not codes:
            raise SearchError(f"status {shown(value)} is not preliminary, final or corrected", "status")
        return _current(tuple(codes))

    when = date_parameter(day_text, day_text, Study.study_date)

    def date(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        return col(Report.study_instance_uid).in_(select(Study.study_instance_uid).where(when(value, modifier)))

    def identifier(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        code = value.rpartition("|")[2]
        return col(Report.order).in_(select(ImagingOrder.id).where(
            (ImagingOrder.accession_number == code) | (ImagingOrder.filler_number == code)))

    return {
        "_id": Param("_id", "token", _id),
        "patient": Param("patient", "reference", subject),
        "subject": Param("subject", "reference", subject),
        "based-on": Param("based-on", "reference", reference(Report.order, "ServiceRequest")),
        "study": Param("study", "reference", study, "the ImagingStudy the report reads"),
        "imaging-study": Param("imaging-study", "reference", study),
        "status": Param("status", "token", status, "preliminary, final or corrected"),
        "date": Param("date", "date", date, "when the study was made (effectiveDateTime)"),
        "identifier": Param("identifier", "token", identifier, "the filler order or accession number"),
    }


SORTABLE = {"_id": Report.id, "issued": Report.updated_at}

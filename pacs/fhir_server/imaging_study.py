"""ImagingStudy (FHIR R4 imagingstudy.html) built from the archive index and the registry.

The same builder serves reads at /fhir and what is published to the hospital platform; for the
platform, references are logical (by identifier, with a display) because the platform does not
know this server's resource ids.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from sqlmodel import Session, col, select

from pacs.archive.index import NOT_REJECTED, Instance, Series, Study
from pacs.registry.models import ImagingOrder, OrderStatus, Patient
from pacs.settings import local_moment

DICOM_UID = "urn:dicom:uid"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LATERALITY = {"L": ("7771000", "Left"), "R": ("24028007", "Right"), "B": ("51440002", "Right and left")}
SNOMED = "http://snomed.info/sct"
ENDPOINT_ID = "dicomweb"


def status_of(study: Study, order: ImagingOrder | None) -> str:
    """available once it holds instances; cancelled when its order was (ImagingStudyStatus)."""
    if order is not None and order.status in (OrderStatus.CANCELLED,):
        return "cancelled"
    return "available" if study.number_of_instances > 0 else "registered"


def _started(study: Study, zone: tzinfo | None) -> str | None:
    if len(study.study_date) != 8:
        return None
    clock = (study.study_time.split(".")[0] + "000000")[:6]
    try:
        moment = datetime.strptime(study.study_date + clock, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return local_moment(moment, zone).isoformat()


def _pn_display(value: str) -> str:
    """"ZHANG^SAN=张^三" → "张三 (ZHANG SAN)"; a plain PN → "FAMILY GIVEN"."""
    groups = value.split("=")
    alphabetic = " ".join(p for p in groups[0].split("^")[:2] if p)
    ideographic = "".join(groups[1].split("^")[:2]) if len(groups) > 1 else ""
    if not ideographic and not alphabetic.isascii():  # a Han name stored without pinyin
        ideographic, alphabetic = "".join(groups[0].split("^")[:2]), ""
    if ideographic:
        return f"{ideographic} ({alphabetic})" if alphabetic else ideographic
    return alphabetic


def imaging_study_resource(session: Session, study: Study, *, zone: tzinfo | None = None,
                           logical: bool = False, dicomweb_url: str | None = None) -> dict[str, Any]:
    patient = session.get_one(Patient, study.patient)
    order = session.get(ImagingOrder, study.order) if study.order else None
    series_rows = session.exec(select(Series).where(Series.study == study.id, Series.number_of_instances > 0)
                               .order_by(col(Series.series_number), col(Series.id))).all()
    identifiers: list[dict[str, Any]] = [{"system": DICOM_UID, "value": f"urn:oid:{study.study_instance_uid}"}]
    if study.accession_number:
        identifiers.append({"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                            "value": study.accession_number})
    patient_name = "=".join(g for g in (patient.name_alphabetic, patient.name_ideographic) if g)
    if logical:
        subject: dict[str, Any] = {"identifier": {"value": patient.patient_id,
                                                  **({"system": patient.issuer} if patient.issuer else {})},
                                   "display": _pn_display(patient_name)}
    else:
        subject = {"reference": f"Patient/{patient.id}", "display": _pn_display(patient_name)}
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": str(study.id),
        "meta": {"versionId": version(study, patient, order), "lastUpdated": last_updated(study, patient, order)},
        "identifier": identifiers,
        "status": status_of(study, order),
        "subject": subject,
        "numberOfSeries": study.number_of_series,
        "numberOfInstances": study.number_of_instances,
    }
    started = _started(study, zone)
    if started:
        resource["started"] = started
    modalities = sorted({s.modality for s in series_rows if s.modality})
    if modalities:
        resource["modality"] = [{"system": DCM, "code": m} for m in modalities]
    if order is not None:
        if logical:
            resource["basedOn"] = [{"identifier": {"type": {"coding": [{"system": V2_0203, "code": "PLAC"}]},
                                                   "value": order.placer_number}}] if order.placer_number else []
            if not resource["basedOn"]:
                del resource["basedOn"]
        else:
            resource["basedOn"] = [{"reference": f"ServiceRequest/{order.id}"}]
        if order.procedure_code:
            resource["procedureCode"] = [{"coding": [{**({"system": order.procedure_scheme}
                                                         if order.procedure_scheme else {}),
                                                      "code": order.procedure_code,
                                                      **({"display": order.procedure_text}
                                                         if order.procedure_text else {})}],
                                          **({"text": order.procedure_text} if order.procedure_text else {})}]
        if order.reason:
            resource["reasonCode"] = [{"text": order.reason}]
    if study.referring_physician:
        resource["referrer"] = {"display": _pn_display(study.referring_physician)}
    if study.description:
        resource["description"] = study.description
    if dicomweb_url or not logical:
        resource["endpoint"] = [{"reference": f"Endpoint/{ENDPOINT_ID}"}] if not logical else [
            {"display": f"DICOMweb {dicomweb_url}"}]
    series_out = []
    for series in series_rows:
        instances = session.exec(select(Instance).where(Instance.series == series.id, NOT_REJECTED)
                                 .order_by(col(Instance.instance_number), col(Instance.id))).all()
        item: dict[str, Any] = {
            "uid": series.series_instance_uid,
            "modality": {"system": DCM, "code": series.modality or "OT"},
            "numberOfInstances": len(instances),
        }
        if series.series_number is not None:
            item["number"] = series.series_number
        if series.description:
            item["description"] = series.description
        if series.body_part:
            item["bodySite"] = {"display": series.body_part}
        if series.laterality in LATERALITY:
            code, display = LATERALITY[series.laterality]
            item["laterality"] = {"system": SNOMED, "code": code, "display": display}
        if len(series.series_date) == 8:
            item["started"] = _started(Study(study_instance_uid="", patient=0, study_date=series.series_date,
                                             study_time=series.series_time), zone)
        if series.performing_physician:
            item["performer"] = [{"actor": {"display": _pn_display(series.performing_physician)}}]
        if dicomweb_url or not logical:
            item["endpoint"] = resource["endpoint"]
        item["instance"] = [{
            "uid": i.sop_instance_uid,
            "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{i.sop_class_uid}"},
            **({"number": i.instance_number} if i.instance_number is not None else {}),
        } for i in instances]
        series_out.append(item)
    if series_out:
        resource["series"] = series_out
    return resource


def _stamp(*rows: Any) -> datetime:
    return max(row.updated_at for row in rows if row is not None)


def version(study: Study, patient: Patient, order: ImagingOrder | None) -> str:
    """Changes with the study, its patient (ADT) and its order: any of them makes a new version."""
    return str(int(_stamp(study, patient, order).timestamp() * 1000))


def last_updated(study: Study, patient: Patient, order: ImagingOrder | None) -> str:
    return _stamp(study, patient, order).isoformat()


def endpoint_resource(dicomweb_url: str) -> dict[str, Any]:
    """The DICOMweb endpoint every ImagingStudy points to (FHIR R4 endpoint.html)."""
    return {
        "resourceType": "Endpoint",
        "id": ENDPOINT_ID,
        "status": "active",
        "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                           "code": "dicom-wado-rs"},
        "name": "PACS DICOMweb (QIDO-RS, WADO-RS, STOW-RS)",
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": dicomweb_url,
    }


# -- search (imagingstudy.html#search) ---------------------------------------------------------


def search_parameters():  # type: ignore[no-untyped-def]
    from sqlalchemy import false, or_

    from pacs.db import row_id
    from pacs.fhir_server.search import (
        Param,
        SearchError,
        date_parameter,
        day_text,
        reference,
        shown,
        string,
    )

    def identifier(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        system, bar, code = value.rpartition("|")
        code = code if bar else value
        if code.startswith("urn:oid:"):
            return Study.study_instance_uid == code.removeprefix("urn:oid:")
        return or_(Study.study_instance_uid == code, Study.accession_number == code)

    def modality(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        code = value.rpartition("|")[2]
        return col(Study.id).in_(select(Series.study).where(Series.modality == code))

    def status(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        cancelled = select(ImagingOrder.id).where(ImagingOrder.status == OrderStatus.CANCELLED)
        if value == "cancelled":
            return col(Study.order).in_(cancelled)
        if value in ("available", "registered"):
            open_ = or_(col(Study.order).is_(None), col(Study.order).not_in(cancelled))
            return open_ & ((Study.number_of_instances > 0) if value == "available" else (Study.number_of_instances == 0))
        raise SearchError(f"status {shown(value)} is not registered, available or cancelled")

    def _id(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        return Study.id == key if (key := row_id(value)) is not None else false()

    subject = reference(Study.patient, "Patient")
    return {
        "_id": Param("_id", "token", _id),
        "patient": Param("patient", "reference", subject),
        "subject": Param("subject", "reference", subject),
        "identifier": Param("identifier", "token", identifier, "study instance UID (urn:oid:...) or accession"),
        "started": Param("started", "date", date_parameter(day_text, day_text, Study.study_date)),
        "modality": Param("modality", "token", modality),
        "status": Param("status", "token", status),
        "basedon": Param("basedon", "reference", reference(Study.order, "ServiceRequest")),
        "referrer": Param("referrer", "string", string(Study.referring_physician),
                          "the referring physician's name (the index keeps names, not Practitioner resources)"),
    }


SORTABLE = {"_id": Study.id, "started": Study.study_date}

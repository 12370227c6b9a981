"""Registry rows as FHIR R4 resources (validated with fhir.resources' R4B models)."""

from __future__ import annotations

from datetime import tzinfo
from typing import Any

from sqlmodel import Session, col, select

from pacs.registry.models import ImagingOrder, OrderStatus, Patient, PatientIdentifier, ProcedureStep

SYSTEM_DICOM_UID = "urn:dicom:uid"
SYSTEM_ACCESSION = "http://terminology.hl7.org/CodeSystem/v2-0203"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ADMINISTRATIVE_GENDER = {"M": "male", "F": "female", "O": "other"}
REQUEST_STATUS = {
    OrderStatus.SCHEDULED: "active",
    OrderStatus.ARRIVED: "active",
    OrderStatus.IN_PROGRESS: "active",
    OrderStatus.COMPLETED: "completed",
    OrderStatus.IMAGES_RECEIVED: "completed",
    OrderStatus.REPORTED: "completed",
    OrderStatus.CANCELLED: "revoked",
    OrderStatus.DISCONTINUED: "revoked",
}
REQUEST_PRIORITY = {"stat": "stat", "asap": "asap", "urgent": "urgent"}


def _type(code: str) -> dict[str, Any]:
    return {"coding": [{"system": SYSTEM_ACCESSION, "code": code}]}


def _meta(row: Any) -> dict[str, Any]:
    return {"versionId": str(int(row.updated_at.timestamp() * 1000)),
            "lastUpdated": row.updated_at.isoformat()}


def version_of(row: Any) -> str:
    return _meta(row)["versionId"]


def _human_name(pn: str, representation: str | None = None) -> dict[str, Any] | None:
    if not pn:
        return None
    parts = pn.split("^")
    name: dict[str, Any] = {"use": "official"}
    if parts[0]:
        name["family"] = parts[0]
    given = [p for p in parts[1:3] if p]
    if given:
        name["given"] = given
    name["text"] = "".join(parts[:2]) if representation == "IDE" else " ".join(p for p in parts[:2] if p)
    if representation:
        name["extension"] = [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation",
                              "valueCode": representation}]
    return name


def patient_resource(session: Session, patient: Patient) -> dict[str, Any]:
    identifiers = session.exec(
        select(PatientIdentifier).where(PatientIdentifier.patient == patient.id)
        .order_by(col(PatientIdentifier.active).desc(), col(PatientIdentifier.id))
    ).all()
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(patient.id),
        "meta": _meta(patient),
        "identifier": [
            {
                **({"use": "usual"} if i.active else {"use": "old"}),
                **({"type": _type(i.type_code)} if i.type_code else {}),
                **({"system": i.authority} if i.authority else {}),
                "value": i.value,
            }
            for i in identifiers
        ],
        "active": patient.merged_into is None,
    }
    names = [n for n in (_human_name(patient.name_ideographic, "IDE"),
                         _human_name(patient.name_alphabetic, "ABC" if patient.name_ideographic else None)) if n]
    if names:
        resource["name"] = names
    if patient.sex:
        resource["gender"] = ADMINISTRATIVE_GENDER.get(patient.sex, "unknown")
    if patient.birth_date:
        resource["birthDate"] = patient.birth_date.isoformat()
    if patient.phone:
        resource["telecom"] = [{"system": "phone", "value": patient.phone}]
    if patient.address:
        resource["address"] = [{"text": patient.address}]
    if patient.merged_into is not None:
        resource["link"] = [{"other": {"reference": f"Patient/{patient.merged_into}"}, "type": "replaced-by"}]
    return resource


def service_request_resource(session: Session, order: ImagingOrder, zone: tzinfo | None = None) -> dict[str, Any]:
    """``zone``: the hospital's time zone, in which scheduled times are kept (None: the system's)."""
    steps = session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id)
                         .order_by(col(ProcedureStep.id))).all()
    identifiers = []
    if order.placer_number:
        identifiers.append({"type": _type("PLAC"), **({"system": order.placer_authority}
                            if order.placer_authority else {}), "value": order.placer_number})
    if order.filler_number:
        identifiers.append({"type": _type("FILL"), "value": order.filler_number})
    if order.accession_number:
        identifiers.append({"type": _type("ACSN"), "value": order.accession_number})
    identifiers.append({"system": SYSTEM_DICOM_UID, "value": f"urn:oid:{order.study_instance_uid}"})
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": str(order.id),
        "meta": _meta(order),
        "identifier": identifiers,
        "status": REQUEST_STATUS[OrderStatus(order.status)],
        "intent": "order",
        "priority": REQUEST_PRIORITY.get(order.priority, "routine"),
        "subject": {"reference": f"Patient/{order.patient}"},
        "authoredOn": order.created_at.isoformat(),
    }
    code: dict[str, Any] = {}
    if order.procedure_code:
        code["coding"] = [{**({"system": order.procedure_scheme} if order.procedure_scheme else {}),
                           "code": order.procedure_code,
                           **({"display": order.procedure_text} if order.procedure_text else {})}]
    if order.procedure_text:
        code["text"] = order.procedure_text
    if code:
        resource["code"] = code
    modalities = sorted({s.modality for s in steps if s.modality})
    if modalities:
        resource["orderDetail"] = [{"coding": [{"system": DCM, "code": m}]} for m in modalities]
    starts = [s.start for s in steps if s.start]
    if starts:
        first = min(starts)
        resource["occurrenceDateTime"] = (first.replace(tzinfo=zone) if zone else first.astimezone()).isoformat()
    if order.reason:
        resource["reasonCode"] = [{"text": order.reason}]
    if order.requesting_physician:
        resource["requester"] = {"display": order.requesting_physician.replace("^", " ").strip()}
    if order.body_part:
        resource["bodySite"] = [{"text": order.body_part}]
    return resource

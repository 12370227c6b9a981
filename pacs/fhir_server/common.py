"""What the resource modules share: code systems, meta/versionId, HumanName from PN."""

from __future__ import annotations

from typing import Any

from pacs.registry.models import OrderStatus

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
    OrderStatus.VERIFIED: "completed",
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



"""ServiceRequest (FHIR R4 servicerequest.html): the registry's imaging orders."""

from __future__ import annotations

from datetime import tzinfo
from typing import Any

from sqlmodel import Session, col, select

from pacs.db import row_id
from pacs.fhir_server.common import (
    DCM,
    REQUEST_PRIORITY,
    REQUEST_STATUS,
    SYSTEM_DICOM_UID,
    _meta,
    _type,
)
from pacs.registry.models import ImagingOrder, OrderStatus, ProcedureStep
from pacs.settings import local_moment


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
        resource["occurrenceDateTime"] = local_moment(first, zone).isoformat()
    if order.reason:
        resource["reasonCode"] = [{"text": order.reason}]
    if order.requesting_physician:
        resource["requester"] = {"display": order.requesting_physician.replace("^", " ").strip()}
    if order.body_part:
        resource["bodySite"] = [{"text": order.body_part}]
    return resource

# -- search (servicerequest.html#search) ------------------------------------------------------


STATUS_IN = {"active": [OrderStatus.SCHEDULED, OrderStatus.ARRIVED, OrderStatus.IN_PROGRESS],
             "completed": [OrderStatus.COMPLETED, OrderStatus.IMAGES_RECEIVED, OrderStatus.REPORTED,
                           OrderStatus.VERIFIED],
             "revoked": [OrderStatus.CANCELLED, OrderStatus.DISCONTINUED]}


def search_parameters(zone: tzinfo | None):  # type: ignore[no-untyped-def]
    from datetime import UTC

    from sqlalchemy import false

    from pacs.fhir_server.search import Param, SearchError, date_parameter, reference, shown, token

    def status(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        wanted = STATUS_IN.get(value)
        if wanted is None:
            raise SearchError(f"status {shown(value)} is not one of {', '.join(STATUS_IN)}")
        return col(ImagingOrder.status).in_(wanted)

    def utc(moment):  # type: ignore[no-untyped-def]
        return local_moment(moment, zone).astimezone(UTC)

    def _id(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        return ImagingOrder.id == key if (key := row_id(value)) is not None else false()

    subject = reference(ImagingOrder.patient, "Patient")
    return {
        "_id": Param("_id", "token", _id),
        "identifier": Param("identifier", "token", token(ImagingOrder.placer_number, ImagingOrder.filler_number,
                                                         ImagingOrder.accession_number),
                            "placer, filler or accession number"),
        "patient": Param("patient", "reference", subject),
        "subject": Param("subject", "reference", subject),
        "status": Param("status", "token", status),
        "authored": Param("authored", "date", date_parameter(utc, utc, ImagingOrder.created_at)),
        "code": Param("code", "token", token(ImagingOrder.procedure_code)),
    }


SORTABLE = {"_id": ImagingOrder.id, "authored": ImagingOrder.created_at}

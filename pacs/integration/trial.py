"""``pacs mappings test FILE``: what one message would do, with nothing written anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pacs.integration.ack import AckCode, Header, MessageError, build_ack, header_from_raw
from pacs.integration.hl7v2 import Address
from pacs.integration.mapping import Filtered, Mappings, hl7_field_name, map_hl7
from pacs.integration.names import person_name
from pacs.registry.schemas import Mapped
from pacs.settings import Settings


def _describe_sources(sources: dict[str, Any], version: str) -> dict[str, str]:
    out = {}
    for target, address in sources.items():
        if isinstance(address, Address):
            name = hl7_field_name(address, version if version in ("2.3", "2.3.1", "2.4", "2.5", "2.5.1") else "2.5")
            out[target] = f"{address} {name}".strip()
        elif address:
            out[target] = str(address)
    return out


def _present(mapped: Mapped, mappings: Mappings) -> dict[str, Any]:
    patient = mapped.patient
    name = person_name(patient.family_name or "", patient.given_name or "", pinyin=patient.name_pinyin or None,
                       rules=mappings.names)
    orders = []
    for order in mapped.orders:
        items = [{
            "scheduled_procedure_step_id": step.sps_id or "(assigned at scheduling)",
            "modality": step.modality,
            "scheduled_station_ae_title": step.station_ae_title,
            "scheduled_station_name": step.station_name,
            "start": step.start,
            "duration_minutes": step.duration_minutes,
            "description": step.description,
            "patient_name": name.to_dicom(ascii_only=False),
            "patient_name_ascii": name.to_dicom(ascii_only=True),
            "patient_id": patient.patient_id.value if patient.patient_id else "",
            "accession_number": order.accession_number or "(assigned at scheduling)",
            "study_instance_uid": order.study_instance_uid or "(assigned at scheduling)",
        } for step in order.steps]
        orders.append({**order.model_dump(mode="json", exclude={"steps"}, exclude_none=True), "worklist_items": items})
    return {
        "event": mapped.event,
        "action": mapped.action.value,
        "patient": {**patient.model_dump(mode="json", exclude_none=True),
                    "name": {"alphabetic": name.alphabetic, "ideographic": name.ideographic,
                             "dicom": name.to_dicom(ascii_only=False)}},
        **({"prior_identifiers": [i.model_dump() for i in mapped.prior_identifiers]}
           if mapped.prior_identifiers else {}),
        **({"visit": mapped.visit.model_dump(mode="json", exclude_none=True)} if mapped.visit else {}),
        "orders": orders,
    }


def try_file(path: Path, mappings: Mappings, settings: Settings) -> tuple[dict[str, Any], bool]:
    return try_raw(path.read_bytes(), mappings, settings)


def try_raw(raw: bytes, mappings: Mappings, settings: Settings) -> tuple[dict[str, Any], bool]:
    """What one HL7 message or FHIR resource (its bytes) would make, and whether it would apply."""
    if raw.lstrip()[:1] == b"{":
        return _try_fhir(raw, mappings, settings)
    # Files edited by hand end segments with newlines; the wire uses carriage returns.
    raw = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    return _try_hl7(raw, mappings, settings)


def _try_hl7(raw: bytes, mappings: Mappings, settings: Settings) -> tuple[dict[str, Any], bool]:
    from pacs.integration.channel import Channel
    from pacs.integration.message_store import MessageRow

    header = header_from_raw(raw)
    sender = mappings.sender(header.sending_application, header.sending_facility)
    row = MessageRow(raw=raw, sending_application=header.sending_application,
                     sending_facility=header.sending_facility)
    channel = Channel(settings, mappings=None)  # type: ignore[arg-type]
    result: dict[str, Any] = {"sender": {"application": header.sending_application,
                                         "facility": header.sending_facility,
                                         "profile": sender.profile}}
    try:
        message = channel._parse(row, mappings)
        result["message"] = {"type": message.message_type, "control_id": message.control_id,
                             "version": message.version, "charset": row.charset}
        mapped, sources = map_hl7(message, mappings)
    except Filtered as exc:
        result["filtered"] = str(exc)
        return result, True
    except MessageError as exc:
        result["error"] = str(exc)
        result["ack"] = build_ack(header, exc.ack, application=settings.hl7.application,
                                  facility=settings.hl7.facility, error=exc).split("\r")
        return result, False
    result.update(_present(mapped, mappings))
    result["sources"] = _describe_sources(sources, message.version)
    result["ack"] = build_ack(Header.of(message), AckCode.ACCEPT, application=settings.hl7.application,
                              facility=settings.hl7.facility).split("\r")
    return result, True


def _try_fhir(raw: bytes, mappings: Mappings, settings: Settings) -> tuple[dict[str, Any], bool]:
    from sqlmodel import Session

    from pacs.db import make_engine
    from pacs.integration.fhir_intake import map_fhir

    try:
        data = json.loads(raw)
    except ValueError as exc:
        return {"error": f"not JSON: {exc}"}, False
    engine = make_engine(settings.effective_database_url)
    try:
        with Session(engine) as session:  # read only: rolled back when closed
            try:
                items, _plan = map_fhir(data, session, mappings, settings.zone)
            except MessageError as exc:
                return {"error": str(exc)}, False
            except Exception as exc:  # e.g. no database yet for a Patient/id reference
                return {"error": f"{type(exc).__name__}: {exc}"}, False
    finally:
        engine.dispose()
    return {"items": [_present(item, mappings) for item in items]}, True

"""The DICOM audit message (PS3.15 A.5.1, the schema that extends RFC 3881), built from a stored
audit event, for export and for syslog.

Each message has its EventIdentification (EventID, EventTypeCode, action, time, outcome), the
active participants (the requestor, this archive, and a destination where there is one, each with
its PS3.16 CID 402 role), the AuditSourceIdentification, and a ParticipantObjectIdentification
per patient, per study (with its SOP classes and counts) and per query, configuration or log.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

from pacs.audit import codes
from pacs.audit.codes import Code

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'


@dataclass(frozen=True)
class Source:
    """Who records: AuditSourceIdentification and the archive's own ActiveParticipant."""

    audit_source_id: str
    ae_title: str
    enterprise_site_id: str = ""
    host: str = ""


# (event ID, action) → roles of the requestor, this archive and the target (PS3.15 A.5.3)
ROLES: dict[tuple[str, str], tuple[Code | None, Code | None, Code | None]] = {
    ("110104", "C"): (codes.ROLE_SOURCE, codes.ROLE_DESTINATION, None),  # we received
    ("110104", "R"): (None, codes.ROLE_SOURCE, codes.ROLE_DESTINATION),  # we sent (C-MOVE, C-GET)
    ("110112", "E"): (codes.ROLE_SOURCE, codes.ROLE_DESTINATION, None),
    ("110106", "R"): (None, codes.ROLE_SOURCE, codes.ROLE_DESTINATION_MEDIA),
    ("110107", "C"): (None, codes.ROLE_DESTINATION, codes.ROLE_SOURCE_MEDIA),
    ("110100", "E"): (codes.ROLE_APPLICATION_LAUNCHER, codes.ROLE_APPLICATION, None),
}


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.value, "codeSystemName": code.scheme,
                                       "originalText": code.meaning})


def _access_point(address: str) -> dict[str, str]:
    """NetworkAccessPointID and its type code: 1 machine name, 2 IP address (RFC 3881 5.3)."""
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    if not host:
        return {}
    try:
        ipaddress.ip_address(host.strip("[]"))
        kind = "2"
    except ValueError:
        kind = "1"
    return {"NetworkAccessPointID": host, "NetworkAccessPointTypeCode": kind}


def _participant(root: ET.Element, user_id: str, requestor: bool, role: Code | None, *,
                 address: str = "", alternative: str = "", name: str = "") -> None:
    attrs = {"UserID": user_id or "unknown"}
    if alternative:
        attrs["AlternativeUserID"] = alternative
    if name:
        attrs["UserName"] = name
    attrs["UserIsRequestor"] = "true" if requestor else "false"
    attrs.update(_access_point(address))
    element = ET.SubElement(root, "ActiveParticipant", attrs)
    if role is not None:
        _code(element, "RoleIDCode", role)


def _b64(value: str | bytes) -> str:
    data = value.encode() if isinstance(value, str) else value
    return base64.b64encode(data).decode("ascii")


def _object(root: ET.Element, object_id: str, id_type: Code, type_code: int, role: int | None = None,
            *, name: str = "", query: str | None = None, details: dict[str, str] | None = None,
            description: str = "", sop_classes: dict[str, int] | None = None,
            accession: str = "") -> None:
    attrs = {"ParticipantObjectID": object_id, "ParticipantObjectTypeCode": str(type_code)}
    if role is not None:
        attrs["ParticipantObjectTypeCodeRole"] = str(role)
    element = ET.SubElement(root, "ParticipantObjectIdentification", attrs)
    _code(element, "ParticipantObjectIDTypeCode", id_type)
    if name:
        ET.SubElement(element, "ParticipantObjectName").text = name
    elif query is not None:
        ET.SubElement(element, "ParticipantObjectQuery").text = query
    for key, value in (details or {}).items():
        ET.SubElement(element, "ParticipantObjectDetail", {"type": key, "value": _b64(value)})
    if description:
        ET.SubElement(element, "ParticipantObjectDescription").text = description
    if accession:
        ET.SubElement(element, "Accession", {"Number": accession})
    for uid, count in (sop_classes or {}).items():
        ET.SubElement(element, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build(event: Any, objects: list[tuple[str, str]], source: Source) -> ET.Element:
    """The AuditMessage element for a stored event (an :class:`~pacs.audit.tables.AuditEvent` or
    a mapping with its fields) and its ``(kind, value)`` objects."""
    get = event.get if isinstance(event, dict) else lambda key, default=None: getattr(event, key, default)
    event_id: str = get("event_id")
    action: str = get("action")
    details: dict[str, Any] = get("details") or {}
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action,
        "EventDateTime": _time(get("recorded_at")),
        "EventOutcomeIndicator": str(get("outcome") or 0),
    })
    _code(ident, "EventID", codes.EVENT_IDS.get(event_id) or codes.dcm(event_id, event_id))
    for value in filter(None, (get("event_type") or "").split("\\")):
        _code(ident, "EventTypeCode", codes.EVENT_TYPES.get(value) or codes.dcm(value, value))
    if get("description") and get("outcome"):
        ET.SubElement(ident, "EventOutcomeDescription").text = get("description")

    requestor_role, own_role, target_role = ROLES.get((event_id, action), (None, None, None))
    user, kind = get("user_id") or "", get("user_kind") or ""
    pid = str(os.getpid())
    if kind == "system" and event_id == codes.APPLICATION_ACTIVITY.value:
        # Start and stop (PS3.15 A.5.3.1): the application, and who launched it, the requestor.
        _participant(root, source.ae_title, False, own_role, address=source.host, alternative=pid)
        _participant(root, user, True, requestor_role)
    elif kind == "system":
        # The archive acted on its own (a scheduled job, a configuration check): it is the requestor,
        # named after the part that acted (retention, backup, configuration, mappings).
        _participant(root, source.ae_title, True, own_role, address=source.host, alternative=pid, name=user)
    else:
        _participant(root, user, True, requestor_role, address=get("address") or "")
        _participant(root, source.ae_title, False, own_role, address=source.host, alternative=pid)
    if get("target"):
        _participant(root, get("target"), False, target_role or codes.ROLE_DESTINATION)

    audit_source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source.audit_source_id,
                                                                      **({"AuditEnterpriseSiteID": source.enterprise_site_id}
                                                                         if source.enterprise_site_id else {})})
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": codes.SOURCE_APPLICATION_SERVER,
                                                        "originalText": "Application Server Process"})

    names = details.get("patient_names") or {}
    for kind_, value in objects:
        if kind_ == "patient":
            _object(root, value, codes.ID_PATIENT_NUMBER, codes.OBJECT_PERSON, codes.ROLE_PATIENT,
                    name=names.get(value, ""))
    sop_classes = details.get("sop_classes") or {}
    accessions = details.get("accessions") or {}
    for kind_, value in objects:
        if kind_ == "study":
            _object(root, value, codes.ID_STUDY_INSTANCE_UID, codes.OBJECT_SYSTEM, codes.ROLE_REPORT,
                    sop_classes=sop_classes.get(value), accession=accessions.get(value, ""))
    if "query" in details:
        query = details["query"]
        if details.get("sop_class"):  # DICOM C-FIND: the identifier as sent (PS3.15 A.5.3.12)
            _object(root, details["sop_class"], codes.ID_SOP_CLASS_UID, codes.OBJECT_SYSTEM, codes.ROLE_REPORT,
                    query=query, details={"TransferSyntax": details.get("transfer_syntax", "1.2.840.10008.1.2")})
        else:  # HTTP search (QIDO-RS, FHIR): the request URI with its query string
            _object(root, details.get("path", ""), codes.ID_URI, codes.OBJECT_SYSTEM, codes.ROLE_QUERY,
                    query=_b64(query), details={"QueryEncoding": "UTF-8"})
    if event_id == codes.SECURITY_ALERT.value:
        alert = {k: v for k, v in details.items() if k in ("changes", "added", "removed", "problems", "kind")}
        _object(root, details.get("object") or source.audit_source_id, codes.ID_DEVICE_NAME, codes.OBJECT_SYSTEM,
                details={"Alert Description": json.dumps(alert, ensure_ascii=False, sort_keys=True, default=str)})
    elif event_id == codes.AUDIT_LOG_USED.value:
        _object(root, details.get("object") or "audit log", codes.ID_URI, codes.OBJECT_SYSTEM,
                codes.ROLE_SECURITY_RESOURCE, description=get("description") or "")
    elif event_id in (codes.EXPORT.value, codes.IMPORT.value) and details.get("object"):
        _object(root, details["object"], codes.ID_URI, codes.OBJECT_SYSTEM, codes.ROLE_JOB,
                description=get("description") or "")
    return root


def to_xml(event: Any, objects: list[tuple[str, str]], source: Source, *, declaration: bool = True) -> str:
    """One audit message as a UTF-8 XML document."""
    text = ET.tostring(build(event, objects, source), encoding="unicode")
    return f"{XML_DECLARATION}{text}" if declaration else text

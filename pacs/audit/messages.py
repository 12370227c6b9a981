"""Audit entries for what the interface engine applies: one per HL7 v2 message or FHIR request,
written in the channel's unit of work (a batch of messages at a time) so it commits with the
change it describes.

- patient created or updated (ADT A01/A04/A08 ...): Patient Record (110110), C or U;
- merge (A40) and identifier change (A47): Patient Record, U, naming the surviving and the prior
  identifiers;
- orders (ORM, OMI, ServiceRequest): Order Record (110109), C when an order was created, else U,
  with the accession numbers;
- a message that was refused (AE/AR, or a FHIR error) after naming a patient: the same event with
  outcome 4 (minor failure: nothing was changed) and the reason.

Filtered messages (duplicates, events this PACS does not act on) change nothing and are left to
the message store.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from pacs.audit import codes
from pacs.audit.codes import Action, Outcome
from pacs.audit.service import Event, record_all

PROCESSED, ERROR = "PROCESSED", "ERROR"


def _who(row: Any) -> tuple[str, str]:
    sender = "/".join(p for p in (row.sending_application, row.sending_facility) if p)
    if row.source in ("fhir", "http") or (row.endpoint or "").split(" ", 1)[0] in ("POST", "PUT"):
        return sender or _host(row.peer or "") or "fhir", "fhir"
    return sender or _host(row.peer or "") or row.source, "hl7"


def _host(peer: str) -> str:
    return peer.rsplit(":", 1)[0] if peer.count(":") == 1 else peer


def event_for(row: Any) -> Event | None:
    """The audit event for a message-store row once the channel is done with it."""
    if row.status not in (PROCESSED, ERROR):
        return None
    applied: dict[str, Any] = row.applied or {}
    items: list[dict[str, Any]] = applied.get("items", [applied]) if applied else []
    patients: list[str] = [i["patient_id"] for i in items if i.get("patient_id")]
    if row.patient_id and row.patient_id not in patients:
        patients.append(row.patient_id)
    if row.status == ERROR and not patients:
        return None  # refused before it named anyone: the message store says why
    orders = [o for i in items for o in i.get("orders", [])]
    actions = {i.get("action") for i in items}
    merged = [v for i in items for v in i.get("merged", [])]
    if orders or row.accession_number or "orders" in actions:
        event_id = codes.ORDER_RECORD
        action = Action.CREATE if any(o.get("created") for o in orders) else Action.UPDATE
    else:
        event_id = codes.PATIENT_RECORD
        action = Action.CREATE if any(i.get("patient_created") for i in items) else Action.UPDATE
    if row.status == ERROR:
        action = Action.CREATE if row.message_type.startswith(("ORM", "OMI")) else Action.UPDATE
    user, kind = _who(row)
    details: dict[str, Any] = {"message": row.id, "message_type": row.message_type, "control_id": row.control_id}
    if merged:
        details["merged"] = merged
        patients += merged
    accessions = [o.get("accession_number") for o in orders if o.get("accession_number")] or (
        [row.accession_number] if row.accession_number else [])
    if accessions:
        details["accession_numbers"] = accessions
    if orders:
        details["orders"] = [{k: o.get(k) for k in ("id", "control", "status", "created")} for o in orders]
    studies = [o["study_instance_uid"] for o in orders if o.get("study_instance_uid")]
    what = sorted(a for a in actions if a) or [row.message_type]
    description = (f"{row.message_type or 'message'} {row.control_id}: {', '.join(what)}" if row.status == PROCESSED
                   else f"{row.message_type or 'message'} {row.control_id} refused: {row.error or ''}")
    return Event(event_id, action, Outcome.SUCCESS if row.status == PROCESSED else Outcome.MINOR_FAILURE,
                 user=user, user_kind=kind, address=_host(row.peer or ""), patients=patients, studies=studies,
                 description=description[:2000], details=details)


def audit_message(session: Session, rows: list[Any]) -> None:
    """The channel's hook, called before the results of finished messages are saved (a batch
    at a time): never raises."""
    events = []
    for row in rows:
        try:
            event = event_for(row)
        except Exception:
            import logging

            logging.getLogger("pacs.audit").exception("message %s not audited", getattr(row, "id", "?"))
            continue
        if event is not None:
            events.append(event)
    if events:
        record_all(session, events)

"""The reconciliation list: what arrived and found no order, until a person says whose it is.

A new study whose images carry no order the archive finds directly, and for which the device
rules of ``mappings/devices.yaml`` find no order or more than one, is filed under the patient its
images name (as before) and put on this list with the reason, strategy by strategy, and the
orders that were in the running (:func:`file_study`). A person then attaches it (:func:`attach`):

- to an order: the study takes the order's patient and accession number in the index, as
  reconciliation at arrival does (IHE RAD TF-1 Patient Information Reconciliation, PIR; "worklist
  coercion"). The files stay as the modality sent them; queries and retrieves answer with the
  index's values, and ``Study.received`` keeps what was sent. The order moves to images received;
- or to a patient, without an order (an unscheduled exam, IHE RAD TF-1 "unscheduled case").

Each attach is audited in the name of whoever made it (DICOM Instances Accessed, 110103, U; PS3.15
A.5.3.2). An item also resolves by itself when the registry changes so that the device rules now
find exactly one order: a new order (:func:`on_new_order`; the order whose accession number was
typed, or the patient's only order of the day) or an ADT merge (A40, :func:`on_merge`); the
registry's writer runs them in its own transaction, in the name of the message or the user that
made the change.

The list holds more than studies: ``kind`` says what waits. ``study`` is images in the archive,
attached by re-pointing the index (:data:`ATTACHERS`). A non-DICOM file that matched nothing (a
photo, a video, a PDF from a device without a worklist) waits as ``file``: kept as received in a
storage area (``area``, ``key``, ``file_name``, ``media_type``), with the keys it was matched on
and the same reason and candidates; the capture service that makes DICOM of it registers how a
``file`` item is attached, and the same list, API, command and page serve both.

How the archive and the people use it::

    item = file_study(session, study, match, keys)          # the index writer, on arrival
    attach(session, item, order=order, by="wang", user_kind="user")   # /api/reconciliation
    # pacs reconcile list;  pacs reconcile attach 12 --accession A0017
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, and_, bindparam, or_
from sqlmodel import Field, Session, SQLModel, col, select

from pacs.archive.index import Study
from pacs.audit import Event, codes, record
from pacs.audit.codes import Action
from pacs.db import Prepared, UTCDateTime, utcnow
from pacs.registry import lifecycle, service
from pacs.registry.device_rules import ENDED_ORDERS, DeviceRules, ImageKeys, Match, match_order
from pacs.registry.models import ImagingOrder, OrderStatus, Patient

log = logging.getLogger(__name__)


class Kind(StrEnum):
    STUDY = "study"  # images in the archive
    FILE = "file"  # a non-DICOM file kept as received, made DICOM once attached


class Status(StrEnum):
    OPEN = "open"  # waits for a person
    ATTACHED = "attached"  # a person attached it
    RESOLVED = "resolved"  # resolved by itself: a new order or a merge made it unambiguous


class ReconciliationItem(SQLModel, table=True):
    """One thing on the reconciliation list."""

    __tablename__ = "reconciliation_item"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Kind.STUDY
    status: str = Field(default=Status.OPEN, index=True)
    study: int | None = Field(default=None, foreign_key="study.id", index=True)  # kind study
    area: str = ""  # kind file: the storage area that holds the file as received
    key: str = ""  # ... and its key there
    file_name: str = ""  # ... as the device or the person named it
    media_type: str = ""  # ... e.g. image/jpeg, video/mp4, application/pdf
    patient: int | None = Field(default=None, foreign_key="patient.id", index=True)  # filed under for now
    accession_number: str = Field(default="", index=True)  # (0008,0050) as received
    study_instance_uid: str = Field(default="", index=True)  # (0020,000D) as received
    keys: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # ImageKeys the rules are run with
    reason: str = ""  # why no order, strategy by strategy (device_rules.Match.reason)
    device: str = ""  # the devices.yaml entry that applied: devices.yaml:14 (DR_OLD)
    candidates: list[int] = Field(default_factory=list, sa_type=JSON)  # orders in the running
    order: int | None = Field(default=None, foreign_key="imaging_order.id")  # attached to
    resolved_by: str = ""  # the user, or what resolved it (hl7:HIS/..., user:desk)
    resolution: str = ""  # what was done, in words
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


RECONCILIATION = ReconciliationItem.__table__  # type: ignore[attr-defined]


class ReconcileError(Exception):
    """An attach that cannot be done; the message says why and what to do instead."""


# -- keys kept with an item, so the rules can be run again ------------------------------------

def keys_json(keys: ImageKeys, *, arrived: datetime | None = None) -> dict[str, Any]:
    """``keys`` as JSON; ``arrived`` (naive local time) stands in for a missing study time, as
    it did when the study arrived."""
    out: dict[str, Any] = asdict(keys)
    when = keys.acquired_at
    out["acquired_at"] = when.isoformat() if when is not None else None
    if when is None and arrived is not None:
        out["arrived_at"] = arrived.isoformat()
    return out


def keys_of(item: ReconciliationItem) -> tuple[ImageKeys, datetime | None]:
    """The :class:`ImageKeys` an item was filed with, and the time standing in for a missing one."""
    values = dict(item.keys or {})
    arrived = values.pop("arrived_at", None)
    when = values.get("acquired_at")
    if isinstance(when, str):
        values["acquired_at"] = datetime.fromisoformat(when) if "T" in when else date.fromisoformat(when)
    known = {k: v for k, v in values.items() if k in ImageKeys.__dataclass_fields__}
    return ImageKeys(**known), datetime.fromisoformat(arrived) if arrived else None


# -- filling the list -------------------------------------------------------------------------

def file_study(session: Session, study: Study, match: Match, keys: ImageKeys, *,
               arrived: datetime | None = None) -> ReconciliationItem:
    """Put a new study the device rules found no single order for on the list (the archive's
    index writer, in the transaction that files the study)."""
    item = ReconciliationItem(
        kind=Kind.STUDY, study=study.id, patient=study.patient, accession_number=keys.accession_number[:64],
        study_instance_uid=keys.study_instance_uid[:64], keys=keys_json(keys, arrived=arrived),
        reason=match.reason, device=match.device, candidates=list(match.candidates))
    session.add(item)
    log.info("study %s from %s is on the reconciliation list: %s", keys.study_instance_uid,
             keys.calling_ae or "import", match.reason)
    return item


# -- attaching --------------------------------------------------------------------------------

def attach(session: Session, item: ReconciliationItem, *, order: ImagingOrder | None = None,
           patient: Patient | None = None, by: str, user_kind: str = "user", address: str = "",
           resolution: str = "", notify: lifecycle.Notify | None = None) -> ReconciliationItem:
    """Attach an open item to ``order``, or to ``patient`` without an order, audited in the name
    of ``by``. Raises :class:`ReconcileError` for an item already attached, an ended order, or
    a kind nothing knows how to attach."""
    if item.status != Status.OPEN:
        raise ReconcileError(f"item {item.id} is {item.status} already ({item.resolution}); nothing was changed")
    if (order is None) == (patient is None):
        raise ReconcileError("attach to an order or to a patient, one of the two")
    if order is not None and order.status in ENDED_ORDERS:
        raise ReconcileError(f"order {order.id} (accession {order.accession_number}) is {order.status}; "
                             "attach to an order still to be done, or to the patient")
    attacher = ATTACHERS.get(item.kind)
    if attacher is None:
        raise ReconcileError(f"item {item.id} is a {item.kind}, which this server cannot attach yet")
    target = service._root(session, session.get_one(Patient, order.patient if order is not None else patient.id))  # type: ignore[union-attr]
    before, study_uid = attacher(session, item, order, target, by, notify)
    automatic = bool(resolution)
    item.status = Status.RESOLVED if automatic else Status.ATTACHED
    item.order = order.id if order is not None else None
    item.patient = target.id
    item.resolved_by = by
    item.resolved_at = utcnow()
    item.resolution = resolution or (f"attached to order {order.id} (accession {order.accession_number})"
                                     if order is not None else f"attached to patient {target.patient_id}")
    session.add(item)
    details: dict[str, Any] = {"reconciliation_item": item.id, "resolution": item.resolution,
                               "reason": item.reason, "from_patient": before}
    if order is not None:
        details |= {"order": order.id, "accession_number": order.accession_number}
    record(session, Event(codes.INSTANCES_ACCESSED, Action.UPDATE, user=by, user_kind=user_kind, address=address,
                          description=f"study reconciled: {item.resolution}",
                          patients=sorted({before, target.patient_id} - {""}),
                          studies=[study_uid] if study_uid else [], details=details))
    session.flush()
    log.info("reconciliation item %s %s by %s", item.id, item.resolution, by)
    return item


def _attach_study(session: Session, item: ReconciliationItem, order: ImagingOrder | None, patient: Patient,
                  by: str, notify: lifecycle.Notify | None) -> tuple[str, str]:
    """The study takes the order's (or the patient's) identity in the index; no file changes.
    Returns the Patient ID it was filed under before, and its Study Instance UID."""
    study = session.get_one(Study, item.study)
    before = session.get(Patient, study.patient)
    study.patient = patient.id  # type: ignore[assignment]
    study.order = order.id if order is not None else None
    if order is not None:
        study.accession_number = order.accession_number[:64]
        study.description = study.description or order.procedure_text
        study.referring_physician = order.referring_physician or study.referring_physician
        study.reconciled_by = f"reconciliation list ({by})"[:200]
        if order.status in (OrderStatus.SCHEDULED, OrderStatus.ARRIVED, OrderStatus.IN_PROGRESS,
                            OrderStatus.COMPLETED):
            lifecycle.transition(session, order, OrderStatus.IMAGES_RECEIVED, by=by,
                                 steps=service.steps_of(session, order), notify=notify,
                                 note=f"study {study.study_instance_uid} attached from the reconciliation list")
    else:
        study.reconciled_by = f"reconciliation list, patient only ({by})"[:200]
    study.updated_at = utcnow()
    session.add(study)
    return (before.patient_id if before is not None else ""), study.study_instance_uid


# How each kind of item is attached: (session, item, order or None, patient, by, notify) →
# (Patient ID filed under before, Study Instance UID). The capture service adds ``file``.
ATTACHERS: dict[str, Callable[..., tuple[str, str]]] = {Kind.STUDY: _attach_study}


# -- resolving by itself ----------------------------------------------------------------------

def retry(session: Session, items: Iterable[ReconciliationItem], rules: DeviceRules | None, *, by: str,
          notify: lifecycle.Notify | None = None) -> list[ReconciliationItem]:
    """Run the device rules again for open ``items``; attach those that now find exactly one
    order (in the name of ``by``, what changed the registry), and keep the latest reason and
    candidates on the rest. Returns the items resolved."""
    if rules is None:
        return []
    resolved = []
    for item in items:
        if item.status != Status.OPEN:
            continue
        keys, arrived = keys_of(item)
        found = match_order(session, rules, keys, now=arrived)
        if found.order_id is None:
            if (found.reason, list(found.candidates)) != (item.reason, list(item.candidates or [])):
                item.reason, item.candidates = found.reason, list(found.candidates)
                session.add(item)
            continue
        order = session.get_one(ImagingOrder, found.order_id)
        attach(session, item, order=order, by=by, user_kind="system", notify=notify,
               resolution=f"resolved by itself: {found.reason} (device rule {found.strategy}, {found.device})")
        resolved.append(item)
    return resolved


def _open(session: Session, *conditions: Any) -> list[ReconciliationItem]:
    return list(session.exec(select(ReconciliationItem).where(ReconciliationItem.status == Status.OPEN,
                                                              or_(*conditions))
                             .order_by(col(ReconciliationItem.id))).all())


# The open items a new order may resolve: its patient's, or those that typed its accession number
# or Study Instance UID (an empty one matches nothing). Asked for every order the HIS sends, and
# almost always none: a prepared statement (pacs.db.Prepared), the items themselves loaded only
# when there are some.
_OPEN_FOR_ORDER = Prepared(
    select(RECONCILIATION.c.id).where(
        RECONCILIATION.c.status == Status.OPEN.value,
        or_(RECONCILIATION.c.patient == bindparam("patient"),
            and_(bindparam("accession") != "", RECONCILIATION.c.accession_number == bindparam("accession")),
            and_(bindparam("uid") != "", RECONCILIATION.c.study_instance_uid == bindparam("uid")))))


def on_new_order(session: Session, order: Any, ctx: service.Context) -> None:
    """A new order (HL7 ORM/OMI, FHIR, the desk) may be the one an open item waited for: its
    accession number or Study Instance UID was typed, or its patient now has one order of the
    day. Those items are tried again (registry hook, in the order's transaction)."""
    found = _OPEN_FOR_ORDER.rows(session.connection(), {
        "patient": order.patient, "accession": order.accession_number or "",
        "uid": order.study_instance_uid or ""})
    if found:
        items = _open(session, col(ReconciliationItem.id).in_([row["id"] for row in found]))
        retry(session, items, ctx.devices, by=ctx.by, notify=ctx.notify)


def on_merge(session: Session, old: Patient, target: Patient, ctx: service.Context | None = None) -> None:
    """ADT A40: items filed under the merged patient follow it, and are tried again, since the
    surviving patient's orders may now be the one order of the day (registry hook)."""
    items = _open(session, ReconciliationItem.patient == old.id, ReconciliationItem.patient == target.id)
    for item in items:
        if item.patient == old.id:
            item.patient = target.id
            session.add(item)
    if items and ctx is not None:
        retry(session, items, ctx.devices, by=ctx.by, notify=ctx.notify)


service.ORDER_HOOKS.append(on_new_order)
service.MERGE_HOOKS.append(on_merge)


# -- reading the list -------------------------------------------------------------------------

def find_target(session: Session, *, order: int | None = None, accession_number: str | None = None,
                patient_id: str | None = None, issuer: str | None = None) -> tuple[ImagingOrder | None,
                                                                                  Patient | None]:
    """The order (by id or accession number) or the patient (by Patient ID, and issuer) a
    person attaches an item to. Raises LookupError when there is none, :class:`ReconcileError`
    when an accession number names more than one order still to be done."""
    if order is not None:
        found = session.get(ImagingOrder, order)
        if found is None:
            raise LookupError(f"order {order} does not exist")
        return found, None
    if accession_number:
        orders = session.exec(select(ImagingOrder).where(ImagingOrder.accession_number == accession_number)
                              .order_by(col(ImagingOrder.id))).all()
        live = [o for o in orders if o.status not in ENDED_ORDERS] or list(orders)
        if not live:
            raise LookupError(f"no order has accession number {accession_number}")
        if len(live) > 1:
            raise ReconcileError(f"accession number {accession_number} belongs to {len(live)} orders "
                                 f"({', '.join(str(o.id) for o in live)}); give the order's id")
        return live[0], None
    patient = service.patient_by_id(session, patient_id or "", issuer)
    if patient is None:
        under = f" under issuer {issuer}" if issuer is not None else ""
        raise LookupError(f"no patient has Patient ID {patient_id}{under}")
    return None, patient


def find_item(session: Session, item_id: int) -> ReconciliationItem:
    item = session.get(ReconciliationItem, item_id)
    if item is None:
        raise LookupError(f"reconciliation item {item_id} does not exist (`pacs reconcile list` shows them)")
    return item


def items(session: Session, *, status: str | None = Status.OPEN, limit: int = 100,
          offset: int = 0) -> tuple[int, list[ReconciliationItem]]:
    """The list, oldest first (open items by default; ``status=None`` for every item)."""
    from sqlalchemy import func

    query = select(ReconciliationItem)
    if status:
        query = query.where(ReconciliationItem.status == status)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(ReconciliationItem.id)).offset(offset).limit(limit)).all()
    return total, list(rows)


def describe(session: Session, item: ReconciliationItem) -> dict[str, Any]:
    """An item as the API, the command and the page show it: what arrived (as sent), who it is
    filed under now, why it waits, and the candidate orders."""
    study = session.get(Study, item.study) if item.study is not None else None
    patient = session.get(Patient, item.patient) if item.patient is not None else None
    received = (study.received if study is not None else {}) or {}
    keys = item.keys or {}
    candidates = []
    for order_id in item.candidates or []:
        order = session.get(ImagingOrder, order_id)
        if order is None:
            continue
        owner = session.get(Patient, order.patient)
        steps = service.steps_of(session, order)
        start = min((s.start for s in steps if s.start is not None), default=None)
        candidates.append({"order": order.id, "accession_number": order.accession_number,
                           "status": order.status, "procedure": order.procedure_text,
                           "patient_id": owner.patient_id if owner else "", "patient_name": _name(owner),
                           "shown_name": shown_name(owner),
                           "modalities": sorted({s.modality for s in steps if s.modality}),
                           "station": next((s.station_ae_title for s in steps if s.station_ae_title), ""),
                           "start": start.isoformat() if start else None})
    return {
        "id": item.id, "kind": item.kind, "status": item.status, "reason": item.reason, "device": item.device,
        "created_at": item.created_at.isoformat(), "calling_ae": keys.get("calling_ae", ""),
        "modality": keys.get("modality", ""), "acquired_at": keys.get("acquired_at"),
        "received": {"patient_id": received.get("PatientID", keys.get("patient_id", "")),
                     "patient_name": received.get("PatientName", ""),
                     "accession_number": item.accession_number},
        "study": None if study is None else {
            "study_instance_uid": study.study_instance_uid, "study_date": study.study_date,
            "study_time": study.study_time, "description": study.description, "modalities": study.modalities,
            "number_of_series": study.number_of_series, "number_of_instances": study.number_of_instances,
            "accession_number": study.accession_number},
        "file": None if item.kind != Kind.FILE else {"file_name": item.file_name, "media_type": item.media_type},
        "patient": None if patient is None else {"id": patient.id, "patient_id": patient.patient_id,
                                                 "name": _name(patient), "shown_name": shown_name(patient)},
        "candidates": candidates,
        "order": item.order, "resolved_by": item.resolved_by, "resolution": item.resolution,
        "resolved_at": item.resolved_at.isoformat() if item.resolved_at else None,
    }


def _name(patient: Patient | None) -> str:
    if patient is None:
        return ""
    return "=".join(g for g in (patient.name_alphabetic, patient.name_ideographic) if g)


def shown_name(patient: Patient | None) -> str:
    """A patient's name as people read it: 赵丽 (ZHAO LI); the PN groups without their carets."""
    if patient is None:
        return ""
    hanzi = patient.name_ideographic.replace("^", "")
    pinyin = " ".join(part for part in patient.name_alphabetic.split("^") if part)
    return f"{hanzi} ({pinyin})" if hanzi and pinyin else hanzi or pinyin

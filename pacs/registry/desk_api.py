"""The registration desk's API: rooms and slots, bookings, requisitions, the day's lists, labels.

| route | permission | what |
|---|---|---|
| ``GET /api/desk/rooms`` | worklist.read or orders.read | the rooms of ``rooms.yaml`` |
| ``GET /api/desk/slots?room=&date=&procedure=`` | worklist.read or orders.read | a room's slots that day |
| ``POST /api/orders`` | orders.write | book the exams of one registration, all or none |
| ``PATCH /api/orders/{id}`` | orders.write | move a booking to another room or time |
| ``POST /api/orders/{id}/confirm`` | orders.write | the patient agreed to the time |
| ``POST /api/orders/{id}/cancel`` | orders.write | cancel, with a reason the HIS is told |
| ``GET /api/desk/requisitions?date=&source=&department=`` | orders.read | electronic orders waiting |
| ``GET /api/desk/today?date=&format=csv`` | orders.read | registered, examined, completed |
| ``GET /api/orders/{id}/label.pdf?kind=label|slip`` | orders.read | the label or the slip |

An exam booked at the desk is an order the desk fills (IHE RAD TF-2 4.3, RAD-3 filler order
management; HL7 v2.5 ch. 4): a new order with a Scheduled Procedure Step on the room's station
(its modality, station AE title, name and location, PS3.4 K.6.1.2.2), the accession number
assigned as for any order that arrives without one, and, when ``[his]`` names the HIS, an
ORM^O01/OMI^O23 with ORC-1 SN through the outbox asking the HIS for its placer number. A
booking is checked before anything is written (:func:`pacs.registry.scheduling.check`): a start
in the past or an unknown room or procedure is 400, a closed room, a full slot or the patient
booked elsewhere at that time is 409, each with the reason. The registry services write
(:mod:`pacs.registry.service`), the lifecycle moves statuses, and every action is audited with
the user's name (PS3.15 A.5.3: Order Record 110109, Query 110112).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import date, datetime, timedelta, tzinfo
from http import HTTPStatus
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlmodel import Session, col, or_, select

from pacs import assets
from pacs.audit import codes
from pacs.audit.codes import Action
from pacs.audit.service import Event, record
from pacs.auth import links
from pacs.auth.access import Principal, PrincipalDep, forbidden, require
from pacs.auth.roles import Permission
from pacs.http import RowId, ServicesDep, SessionDep
from pacs.integration.his import HISNotifier
from pacs.registry import labels, scheduling, service
from pacs.registry.models import (
    ImagingOrder,
    OrderEvent,
    OrderStatus,
    Patient,
    PatientClass,
    ProcedureStep,
    Visit,
    VisitStatus,
)
from pacs.registry.rooms import NO_ROOMS, WEEKDAYS, Room, Rooms
from pacs.registry.schemas import OrderIn, StepIn, VisitIn
from pacs.settings import local_moment

desk = APIRouter(prefix="/api/desk", tags=["desk"])
orders = APIRouter(prefix="/api/orders", tags=["desk"])

MAX_EXAMS = 20  # exams in one registration
CSV_BOM = "\ufeff"  # UTF-8 byte order mark: Excel then reads the file as UTF-8 (Chinese names)
Priority = Literal["stat", "urgent", "asap", "routine", "preop", "callback"]


class Source:
    """Where an order comes from, by its visit's patient class (HL7 table 0004, PV1-2)."""

    OUTPATIENT = "outpatient"
    EMERGENCY = "emergency"
    WARD = "ward"
    OTHER = "other"


SOURCE_OF_CLASS = {
    PatientClass.OUTPATIENT: Source.OUTPATIENT,
    PatientClass.PREADMIT: Source.OUTPATIENT,
    PatientClass.EMERGENCY: Source.EMERGENCY,
    PatientClass.INPATIENT: Source.WARD,
}
SOURCES = (Source.OUTPATIENT, Source.EMERGENCY, Source.WARD, Source.OTHER)

# The day's lists: which statuses each holds
STAGES: dict[str, tuple[OrderStatus, ...]] = {
    "registered": (OrderStatus.SCHEDULED, OrderStatus.ARRIVED),
    "examined": (OrderStatus.IN_PROGRESS, OrderStatus.COMPLETED, OrderStatus.IMAGES_RECEIVED),
    "completed": (OrderStatus.REPORTED, OrderStatus.VERIFIED),
}


def require_any(*permissions: Permission):  # type: ignore[no-untyped-def]
    """The dependency of a route that any one of ``permissions`` opens (403 without any)."""

    def dependency(principal: PrincipalDep) -> Principal:
        if not any(principal.may(p) for p in permissions):
            raise forbidden(f"{principal.name} may not do this: it needs {' or '.join(p.value for p in permissions)}")
        return principal

    dependency.permission = permissions  # type: ignore[attr-defined]  (read by the test that walks the routes)
    return dependency


ReadSchedule = Annotated[Principal, Depends(require_any(Permission.WORKLIST_READ, Permission.ORDERS_READ))]
ReadOrders = Annotated[Principal, Depends(require(Permission.ORDERS_READ))]
WriteOrders = Annotated[Principal, Depends(require(Permission.ORDERS_WRITE))]


# -- shapes -----------------------------------------------------------------------------------


class RoomPublic(BaseModel):
    room: str
    name: str
    modality: str
    station_ae_title: str
    station_name: str
    location: str
    capacity: int
    slot_minutes: int  # the room's modality's length; a procedure may have its own
    hours: dict[str, list[str]]  # weekday (mon … sun) → open periods, breaks left out
    closures: list[dict[str, str]]


class SlotPublic(BaseModel):
    start: datetime
    end: datetime
    capacity: int
    booked: int
    free: int


class SlotsPublic(BaseModel):
    room: str
    date: date
    procedure_code: str
    minutes: int
    hours: list[str]
    closed: str  # why the room is closed all that day, else ""
    slots: list[SlotPublic]


class DeskOrder(BaseModel):
    """One exam as the desk lists it."""

    id: int
    status: str
    accession_number: str
    placer_number: str
    filler_number: str
    requisition_number: str
    patient_id: str
    name: str  # Hanzi (the PN ideographic group), else the alphabetic one
    name_pinyin: str
    sex: str
    birth_date: date | None
    procedure_code: str
    procedure_text: str
    modality: str
    room: str  # rooms.yaml's name for the step's station, else the station AE title
    station_ae_title: str
    location: str
    start: datetime | None
    end: datetime | None
    priority: str
    reason: str
    department: str
    requesting_physician: str
    source: str  # outpatient, emergency, ward, other
    confirmed: bool
    label: str  # the label's URL


class ExamIn(BaseModel):
    """One exam of a registration; what it leaves out, the registration gives."""

    procedure_code: str = Field(min_length=1, max_length=64)
    room: str = Field(min_length=1, max_length=64)
    start: datetime
    priority: Priority | None = None
    reason: str | None = Field(default=None, max_length=1024)
    department: str | None = Field(default=None, max_length=64)
    requesting_physician: str | None = Field(default=None, max_length=64)
    referring_physician: str | None = Field(default=None, max_length=64)
    requisition_number: str | None = Field(default=None, max_length=64)


class RegistrationIn(BaseModel):
    """The exams booked for one patient at one registration: all of them, or none."""

    patient_id: str = Field(min_length=1, max_length=64)
    issuer: str | None = Field(default=None, max_length=64)
    patient_class: Literal["outpatient", "emergency", "inpatient"] = "outpatient"
    """The visit's class, for a patient who has no active visit (a walk-in: outpatient)."""
    priority: Priority = "routine"
    reason: str = Field(default="", max_length=1024)
    department: str = Field(default="", max_length=64)  # (0032,1033) Requesting Service
    requesting_physician: str = Field(default="", max_length=64)  # (0032,1032)
    referring_physician: str = Field(default="", max_length=64)  # (0008,0090)
    requisition_number: str = Field(default="", max_length=64)  # the paper requisition's number
    exams: list[ExamIn] = Field(min_length=1, max_length=MAX_EXAMS)


class Booked(BaseModel):
    orders: list[DeskOrder]


class MoveIn(BaseModel):
    room: str | None = Field(default=None, min_length=1, max_length=64)
    start: datetime | None = None
    note: str = Field(default="", max_length=1024)


class NoteIn(BaseModel):
    note: str = Field(default="", max_length=1024)


class CancelIn(BaseModel):
    reason: str = Field(default="", max_length=1024)


class RequisitionGroup(BaseModel):
    source: str
    department: str
    count: int
    items: list[DeskOrder]


class Requisitions(BaseModel):
    date: date
    total: int
    groups: list[RequisitionGroup]


class Stage(BaseModel):
    total: int
    by_modality: dict[str, int]
    by_room: dict[str, int]
    by_source: dict[str, int]
    items: list[DeskOrder]


class Today(BaseModel):
    date: date
    stages: dict[str, Stage]


# -- helpers ----------------------------------------------------------------------------------


def _rooms(services: Any) -> Rooms:
    return services.mappings.current().rooms or NO_ROOMS


def hospital_now(zone: tzinfo | None) -> datetime:
    """The hospital's wall-clock time now, naive (as step starts are kept)."""
    return datetime.now(zone).replace(tzinfo=None) if zone else datetime.now()


def wall_clock(moment: datetime, zone: tzinfo | None) -> datetime:
    """A time the client sent, as the hospital's wall-clock time (naive): one with an offset is
    converted to the hospital's zone, one without is taken as the hospital's already."""
    try:
        if moment.tzinfo is None:
            return moment.replace(second=0, microsecond=0)
        local = moment.astimezone(zone) if zone else moment.astimezone()
    except (OverflowError, ValueError):  # year 1 or 9999 moved across an offset
        raise HTTPException(400, f"{moment.isoformat()} is no time the desk books") from None
    return local.replace(tzinfo=None, second=0, microsecond=0)


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def _audit(request: Request, session: Session | None, services: Any, principal: Principal, event_id: codes.Code,
           action: Action, *, description: str, patients: list[str], target: str = "",
           details: dict[str, Any] | None = None) -> None:
    """One audit entry in the user's name: in the unit of work (a change, committed with it), or
    queued (a read). The HTTP audit middleware then records nothing for the request."""
    event = Event(event_id, action, user=principal.name, user_kind=principal.kind, address=_address(request),
                  target=target, description=description, patients=patients, details=details or {})
    request.state.audited = True
    if session is not None:
        record(session, event)
    elif services.audit is not None:
        services.audit.record(event)


def _by(principal: Principal) -> str:
    return f"user:{principal.name or 'desk'}"


def _context(services: Any, principal: Principal) -> service.Context:
    settings = services.settings
    mappings = services.mappings.current()
    return service.Context(by=_by(principal), names=mappings.names, uid_root=settings.uid_root,
                           accession_prefix=settings.accession_prefix, notify=services.notify,
                           devices=mappings.devices)


def _his(services: Any) -> HISNotifier | None:
    return services.notify if isinstance(services.notify, HISNotifier) else None


def _refused(refusals: list[scheduling.Refusal]) -> HTTPException:
    """400 for a request that can never be booked (past, unknown), else 409; every reason listed."""
    bad_request = any(r.problem in (scheduling.Refused.PAST, scheduling.Refused.FAR, scheduling.Refused.UNKNOWN)
                      for r in refusals)
    return HTTPException(HTTPStatus.BAD_REQUEST if bad_request else HTTPStatus.CONFLICT, {
        "problem": refusals[0].problem.value,
        "message": "; ".join(r.message for r in refusals),
        "refusals": [{"problem": r.problem.value, "message": r.message, "exam": r.exam} for r in refusals],
    })


def _unknown(message: str, exam: int = 0) -> scheduling.Refusal:
    return scheduling.Refusal(scheduling.Refused.UNKNOWN, message, exam)


def _room_for(rooms: Rooms, name: str, modality: str, code: str, label: str, index: int
              ) -> tuple[Room | None, scheduling.Refusal | None]:
    room = rooms.get(name)
    if room is None:
        known = ", ".join(r.room for r in rooms.rooms.values()) or "none: mappings/ has no rooms.yaml"
        return None, _unknown(f"{label}: room {name!r} is not in rooms.yaml (rooms: {known})", index)
    if modality and room.modality != modality:
        return None, _unknown(f"{label}: {code} is a {modality} exam; room {room.room} does {room.modality}", index)
    return room, None


def _source(visit_class: str | None) -> str:
    return SOURCE_OF_CLASS.get(visit_class or "", Source.OTHER)  # type: ignore[call-overload,no-any-return]


def _rows(session: Session, query: Any, rooms: Rooms, zone: tzinfo | None) -> list[DeskOrder]:
    """DeskOrder rows for the orders ``query`` selects (ImagingOrder, Patient, Visit or None)."""
    found = session.exec(query).all()
    ids = [o.id for o, _, _ in found]
    steps: dict[int, ProcedureStep] = {}
    confirmed: set[int] = set()
    if ids:
        for step in session.exec(select(ProcedureStep).where(col(ProcedureStep.order).in_(ids))
                                 .order_by(col(ProcedureStep.id))):
            steps.setdefault(step.order, step)
        confirmed = set(session.exec(select(OrderEvent.order).where(
            col(OrderEvent.order).in_(ids), col(OrderEvent.note).startswith(service.CONFIRMED))).all())
    out = []
    for order, patient, visit in found:
        step = steps.get(order.id)
        room = rooms.by_station(step.station_ae_title) if step else None
        start = step.start if step else None
        minutes = scheduling._minutes_of(step, rooms) if step and start else 0
        out.append(DeskOrder(
            id=order.id, status=order.status, accession_number=order.accession_number,
            placer_number=order.placer_number, filler_number=order.filler_number,
            requisition_number=order.requisition_number, patient_id=patient.patient_id,
            name=(patient.name_ideographic or patient.name_alphabetic).replace("^", ""),
            name_pinyin=patient.name_alphabetic.replace("^", " ").strip(), sex=patient.sex,
            birth_date=patient.birth_date, procedure_code=order.procedure_code, procedure_text=order.procedure_text,
            modality=step.modality if step else "", room=room.room if room else (step.station_ae_title if step else ""),
            station_ae_title=step.station_ae_title if step else "", location=step.location if step else "",
            start=local_moment(start, zone) if start else None,
            end=local_moment(start + timedelta(minutes=minutes), zone) if start else None,
            priority=order.priority, reason=order.reason, department=order.department,
            requesting_physician=order.requesting_physician, source=_source(visit.patient_class if visit else None),
            confirmed=order.id in confirmed, label=f"/api/orders/{order.id}/label.pdf"))
    return out


def _orders_query() -> Any:
    return (select(ImagingOrder, Patient, Visit)
            .join(Patient, col(Patient.id) == ImagingOrder.patient)
            .join(Visit, col(Visit.id) == ImagingOrder.visit, isouter=True))


def _row(session: Session, order_id: int, services: Any) -> DeskOrder:
    rows = _rows(session, _orders_query().where(ImagingOrder.id == order_id), _rooms(services),
                 services.settings.zone)
    if not rows:
        raise HTTPException(404, f"order {order_id} does not exist")
    return rows[0]


def _registry_error(exc: service.RegistryError) -> HTTPException:
    status = {service.Problem.UNKNOWN: 404, service.Problem.CONFLICT: 409}.get(exc.problem, 400)
    return HTTPException(status, str(exc))


# -- rooms and slots --------------------------------------------------------------------------


@desk.get("/rooms", response_model=list[RoomPublic])
def list_rooms(services: ServicesDep, principal: ReadSchedule) -> list[RoomPublic]:
    """The rooms the desk books into (``mappings/rooms.yaml``), with their hours and closures."""
    rooms = _rooms(services)
    return [RoomPublic(room=r.room, name=r.name or r.room, modality=r.modality, station_ae_title=r.station_ae_title,
                       station_name=r.station_name, location=r.location, capacity=r.capacity,
                       slot_minutes=rooms.by_modality.get(r.modality, scheduling.DEFAULT_MINUTES),
                       hours={WEEKDAYS[d]: [str(p) for p in periods] for d, periods in sorted(r.hours.items())},
                       closures=[{"from": str(c.first), "to": str(c.last), "time": str(c.period or ""),
                                  "reason": c.reason} for c in r.closures])
            for r in rooms.rooms.values()]


@desk.get("/slots", response_model=SlotsPublic)
def list_slots(session: SessionDep, services: ServicesDep, principal: ReadSchedule,
               room: Annotated[str, Query(min_length=1, max_length=64, description="a room of rooms.yaml")],
               day: Annotated[date, Query(alias="date")],
               procedure: Annotated[str | None, Query(max_length=64, description="procedure code")] = None,
               ) -> SlotsPublic:
    """A room's slots on a day, for an exam of ``procedure`` (its length; without one, the
    room's modality's): each with its capacity, how many it holds, and how many are free."""
    rooms = _rooms(services)
    mappings = services.mappings.current()
    found = rooms.get(room)
    if found is None:
        raise HTTPException(404, f"room {room!r} is not in rooms.yaml (rooms: "
                                 f"{', '.join(r.room for r in rooms.rooms.values()) or 'none'})")
    code = (procedure or "").strip().upper()
    if code:
        known = mappings.procedures.get(code)
        if known is None:
            raise HTTPException(400, f"procedure {procedure!r} is not in codes/procedures.csv")
        if known.modality != found.modality:
            raise HTTPException(400, f"{code} is a {known.modality} exam; room {found.room} does {found.modality}")
    zone = services.settings.zone
    minutes = rooms.slot_minutes(found, code)
    closure = next((c for c in found.closures if c.period is None and c.first <= day <= c.last), None)
    slots = scheduling.slots(session, rooms, found, day, code, hospital_now(zone))
    return SlotsPublic(room=found.room, date=day, procedure_code=code, minutes=minutes,
                       hours=[str(p) for p in found.open_periods(day)],
                       closed=(closure.reason or "closed") if closure else ("" if found.open_periods(day) else "closed"),
                       slots=[SlotPublic(start=local_moment(s.start, zone), end=local_moment(s.end, zone),
                                         capacity=s.capacity, booked=s.booked, free=s.free) for s in slots])


# -- booking ----------------------------------------------------------------------------------


@orders.post("", response_model=Booked, status_code=201)
def book(body: RegistrationIn, request: Request, session: SessionDep, services: ServicesDep,
         principal: WriteOrders) -> Booked:
    """Book the exams of one registration: every one, or (with the reasons) none."""
    rooms = _rooms(services)
    mappings = services.mappings.current()
    zone = services.settings.zone
    patient = service.patient_by_id(session, body.patient_id.strip(), body.issuer)
    if patient is None:
        raise HTTPException(400, {"problem": "unknown", "message": f"patient {body.patient_id} is not known; "
                                  "find them (or register them) first", "refusals": []})
    scheduling.hold_schedule(session)
    wanted: list[scheduling.Wanted] = []
    refusals: list[scheduling.Refusal] = []
    for index, exam in enumerate(body.exams):
        label = f"exam {index + 1}"
        code = exam.procedure_code.strip().upper()
        procedure = mappings.procedures.get(code)
        if procedure is None:
            refusals.append(_unknown(f"{label}: procedure {exam.procedure_code!r} is not in codes/procedures.csv",
                                     index))
            continue
        room, problem = _room_for(rooms, exam.room, procedure.modality, code, label, index)
        if room is None:
            refusals.append(problem)  # type: ignore[arg-type]
            continue
        wanted.append(scheduling.Wanted(patient=patient.id or 0, room=room, procedure_code=code,
                                        start=wall_clock(exam.start, zone), minutes=rooms.slot_minutes(room, code),
                                        label=label))
    if not refusals:  # every exam named a known room and procedure: wanted[i] is exam i
        refusals = scheduling.check(session, rooms, wanted, hospital_now(zone))
    if refusals:
        raise _refused(refusals)

    visit = session.exec(select(Visit).where(Visit.patient == patient.id, Visit.status == VisitStatus.ACTIVE)
                         .order_by(col(Visit.id).desc())).first()
    if visit is None:
        visit = service.upsert_visit(session, patient, VisitIn(patient_class=body.patient_class))
    ctx = _context(services, principal)
    requests = []
    for exam, w in zip(body.exams, wanted, strict=True):
        procedure = mappings.procedures[w.procedure_code]
        requests.append(OrderIn(
            procedure_code=procedure.code, procedure_text=procedure.description, body_part=procedure.body_part,
            priority=exam.priority or body.priority, reason=exam.reason if exam.reason is not None else body.reason,
            department=exam.department if exam.department is not None else body.department,
            requesting_physician=exam.requesting_physician if exam.requesting_physician is not None
            else body.requesting_physician,
            referring_physician=exam.referring_physician if exam.referring_physician is not None
            else body.referring_physician,
            requisition_number=exam.requisition_number if exam.requisition_number is not None
            else body.requisition_number,
            steps=[StepIn(modality=w.room.modality, station_ae_title=w.room.station_ae_title,
                          station_name=w.room.station_name or None, location=w.room.location or None,
                          start=w.start, duration_minutes=w.minutes, description=procedure.description)]))
    made = service.book_orders(session, patient, visit, requests, ctx)
    his = _his(services)
    for order, data, w in zip(made, requests, wanted, strict=True):
        if his is not None:
            notes = (f"requisition {data.requisition_number}",) if data.requisition_number else ()
            his.filler_order(session, order, notes)  # type: ignore[arg-type]
        _audit(request, session, services, principal, codes.ORDER_RECORD, Action.CREATE,
               description=f"booked at the desk: {w.procedure_code} in {w.room.room} {w.start:%Y-%m-%d %H:%M}",
               patients=[patient.patient_id], target=order.accession_number,
               details={"order": order.id, "accession_number": order.accession_number,
                        "requisition_number": data.requisition_number or ""})
    session.flush()
    result = _rows(session, _orders_query().where(col(ImagingOrder.id).in_([o.id for o in made]))
                   .order_by(col(ImagingOrder.id)), rooms, zone)
    services.outbox.wake()
    return Booked(orders=result)


@orders.patch("/{order_id}", response_model=DeskOrder)
def move(order_id: RowId, body: MoveIn, request: Request, session: SessionDep, services: ServicesDep,
         principal: WriteOrders) -> DeskOrder:
    """Move a booking to another room or time, with the same checks as booking it."""
    rooms = _rooms(services)
    zone = services.settings.zone
    order = session.get(ImagingOrder, order_id)
    if order is None:
        raise HTTPException(404, f"order {order_id} does not exist")
    if body.room is None and body.start is None:
        raise HTTPException(400, "say what changes: room, start or both")
    scheduling.hold_schedule(session)
    step = service.open_step(session, order)
    if step is None:
        raise HTTPException(409, f"order {order.accession_number} is {order.status}; it has no step left to move")
    current_room = rooms.by_station(step.station_ae_title)
    name = body.room or (current_room.room if current_room else step.station_ae_title)
    code = order.procedure_code.strip().upper()
    modality = step.modality or (current_room.modality if current_room else "")
    room, problem = _room_for(rooms, name, modality, code or "the order", "the move", 0)
    if room is None:
        raise _refused([problem])  # type: ignore[list-item]
    start = wall_clock(body.start, zone) if body.start is not None else step.start
    if start is None:
        raise HTTPException(400, "the order has no start yet: give one")
    minutes = rooms.slot_minutes(room, code)
    wanted = scheduling.Wanted(patient=order.patient, room=room, procedure_code=code, start=start,
                               minutes=minutes, order_id=order.id, label="the move")
    refusals = scheduling.check(session, rooms, [wanted], hospital_now(zone))
    if refusals:
        raise _refused(refusals)
    ctx = _context(services, principal)
    try:
        service.reschedule_order(session, order.id or 0, StepIn(
            modality=room.modality, station_ae_title=room.station_ae_title, station_name=room.station_name or None,
            location=room.location or None, start=start, duration_minutes=minutes), ctx)
    except service.RegistryError as exc:
        raise _registry_error(exc) from None
    his = _his(services)
    if his is not None:
        his.scheduled(session, order, body.note)
    patient = session.get_one(Patient, order.patient)
    _audit(request, session, services, principal, codes.ORDER_RECORD, Action.UPDATE,
           description=f"moved at the desk to {room.room} {start:%Y-%m-%d %H:%M}"
                       + (f": {body.note}" if body.note else ""),
           patients=[patient.patient_id], target=order.accession_number,
           details={"order": order.id, "accession_number": order.accession_number})
    services.outbox.wake()
    return _row(session, order.id or 0, services)


@orders.post("/{order_id}/confirm", response_model=DeskOrder)
def confirm(order_id: RowId, body: NoteIn, request: Request, session: SessionDep, services: ServicesDep,
            principal: WriteOrders) -> DeskOrder:
    """The patient agreed to the booked time: recorded on the order, told to the HIS (ORC-5 SC)."""
    try:
        order = service.confirm_order(session, order_id, _context(services, principal), body.note)
    except service.RegistryError as exc:
        raise _registry_error(exc) from None
    his = _his(services)
    if his is not None:
        his.scheduled(session, order, body.note)
    patient = session.get_one(Patient, order.patient)
    _audit(request, session, services, principal, codes.ORDER_RECORD, Action.UPDATE,
           description="booking confirmed at the desk" + (f": {body.note}" if body.note else ""),
           patients=[patient.patient_id], target=order.accession_number,
           details={"order": order.id, "accession_number": order.accession_number})
    services.outbox.wake()
    return _row(session, order_id, services)


@orders.post("/{order_id}/cancel", response_model=DeskOrder)
def cancel(order_id: RowId, body: CancelIn, request: Request, session: SessionDep, services: ServicesDep,
           principal: WriteOrders) -> DeskOrder:
    """Cancel the order, with a reason (required): the lifecycle moves it, and the HIS hears of
    it through the outbox (ORC-1 OC, ORC-5 CA, the reason in ORC-16 and an NTE)."""
    if not body.reason.strip():
        raise HTTPException(400, "a cancellation needs a reason: send {\"reason\": \"...\"}")
    try:
        order = service.cancel_order(session, order_id, body.reason, _context(services, principal))
    except service.RegistryError as exc:
        raise _registry_error(exc) from None
    patient = session.get_one(Patient, order.patient)
    _audit(request, session, services, principal, codes.ORDER_RECORD, Action.UPDATE,
           description=f"cancelled at the desk: {body.reason.strip()}", patients=[patient.patient_id],
           target=order.accession_number, details={"order": order.id, "accession_number": order.accession_number})
    services.outbox.wake()
    return _row(session, order_id, services)


# -- lists ------------------------------------------------------------------------------------


def _on(day: date) -> Any:
    """Orders with a step scheduled on ``day``."""
    return col(ImagingOrder.id).in_(select(ProcedureStep.order).where(ProcedureStep.start_date == day.strftime("%Y%m%d")))


@desk.get("/requisitions", response_model=Requisitions)
def requisitions(request: Request, session: SessionDep, services: ServicesDep, principal: ReadOrders,
                 day: Annotated[date | None, Query(alias="date", description="default: today")] = None,
                 source: Annotated[Literal["outpatient", "emergency", "ward", "other"] | None, Query()] = None,
                 department: Annotated[str | None, Query(max_length=64)] = None) -> Requisitions:
    """Electronic requisitions (orders from the HIS, by HL7 or FHIR) still waiting for the
    patient: scheduled that day, or not given a time yet; by source and requesting department.
    Checking one in is ``POST /api/orders/{id}/arrive``."""
    zone = services.settings.zone
    day = day or hospital_now(zone).date()
    unscheduled = ~col(ImagingOrder.id).in_(select(ProcedureStep.order).where(col(ProcedureStep.start).is_not(None)))
    query = (_orders_query().where(ImagingOrder.status == OrderStatus.SCHEDULED,
                                   col(ImagingOrder.source_message).is_not(None), or_(_on(day), unscheduled))
             .order_by(col(ImagingOrder.id)))
    if department:
        query = query.where(ImagingOrder.department == department)
    rows = [r for r in _rows(session, query, _rooms(services), zone) if source is None or r.source == source]
    rows.sort(key=lambda r: (SOURCES.index(r.source), r.department,
                             r.start.replace(tzinfo=None) if r.start else datetime.max, r.id))
    groups: dict[tuple[str, str], list[DeskOrder]] = {}
    for row in rows:
        groups.setdefault((row.source, row.department), []).append(row)
    _audit(request, None, services, principal, codes.QUERY, Action.EXECUTE,
           description=f"desk requisitions {day}", patients=sorted({r.patient_id for r in rows}),
           details={"query": str(request.url.query)})
    return Requisitions(date=day, total=len(rows), groups=[
        RequisitionGroup(source=s, department=d, count=len(items), items=items) for (s, d), items in groups.items()])


CSV_COLUMNS = ("stage", "status", "accession_number", "patient_id", "name", "name_pinyin", "sex", "birth_date",
               "procedure_code", "procedure_text", "modality", "room", "start", "source", "department", "priority",
               "requisition_number")


def _csv(day: date, stages: dict[str, Stage]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow(CSV_COLUMNS)
    for name, stage in stages.items():
        for row in stage.items:
            values = row.model_dump()
            values["stage"] = name
            values["start"] = f"{row.start:%Y-%m-%d %H:%M}" if row.start else ""
            writer.writerow(["" if values.get(c) is None else values[c] for c in CSV_COLUMNS])
    writer.writerow([])
    writer.writerow(["totals", str(day)])
    for name, stage in stages.items():
        writer.writerow([name, "total", stage.total])
        for kind, counts in (("modality", stage.by_modality), ("room", stage.by_room), ("source", stage.by_source)):
            for key, count in counts.items():
                writer.writerow([name, kind, key, count])
    return CSV_BOM + out.getvalue()


@desk.get("/today", response_model=Today)
def today(request: Request, session: SessionDep, services: ServicesDep, principal: ReadOrders,
          day: Annotated[date | None, Query(alias="date", description="default: today")] = None,
          format: Annotated[Literal["json", "csv"], Query()] = "json") -> Any:
    """The day's lists: registered (scheduled, checked in), examined (in progress, completed,
    images received) and completed (reported), each with totals by modality, room and source;
    ``format=csv`` for a spreadsheet (UTF-8 with a byte order mark, so Excel reads the Hanzi)."""
    zone = services.settings.zone
    day = day or hospital_now(zone).date()
    rows = _rows(session, _orders_query().where(_on(day)).order_by(col(ImagingOrder.id)), _rooms(services), zone)
    rows.sort(key=lambda r: (r.start.replace(tzinfo=None) if r.start else datetime.max, r.id))
    stages = {}
    for name, statuses in STAGES.items():
        items = [r for r in rows if r.status in statuses]
        stages[name] = Stage(total=len(items), by_modality=dict(Counter(r.modality for r in items)),
                             by_room=dict(Counter(r.room for r in items)),
                             by_source=dict(Counter(r.source for r in items)), items=items)
    _audit(request, None, services, principal, codes.QUERY if format == "json" else codes.EXPORT,
           Action.EXECUTE if format == "json" else Action.READ, description=f"desk lists {day} ({format})",
           patients=sorted({r.patient_id for r in rows}), details={"query": str(request.url.query)})
    if format == "csv":
        return Response(_csv(day, stages).encode("utf-8"), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="desk-{day}.csv"'})
    return Today(date=day, stages=stages)


# -- the label --------------------------------------------------------------------------------


def _film_url(session: Session, order_id: int, services: Any, principal: Principal, request: Request) -> str:
    """The exam's cloud-film page (云胶片) for the slip's QR code: signed, lasting ``[report]
    film_link_days`` from printing; the page shows the exam until a report is final."""
    order = session.get(ImagingOrder, order_id)
    if order is None:
        return ""
    try:
        return links.issue_link(services.settings, order.study_instance_uid, links.FILM,
                                timedelta(days=services.settings.report.film_link_days), created_by=principal.name,
                                base_url=str(request.base_url))
    except links.LinkError:
        return ""  # a study UID the HIS sent that no link can name: the slip goes without


@orders.get("/{order_id}/label.pdf", response_class=Response,
            responses={200: {"content": {"application/pdf": {}}}, 503: {"description": "run pacs assets install"}})
def label(order_id: RowId, request: Request, session: SessionDep, services: ServicesDep, principal: ReadOrders,
          kind: Annotated[Literal["label", "slip"], Query()] = "label",
          lang: Annotated[Literal["zh-CN", "en"] | None, Query()] = None) -> Response:
    """The exam's label (``[desk] label_mm``) or the patient's slip (``[desk] slip_mm``) as PDF:
    Code 128 of the accession number (ISO/IEC 15417), the name in Hanzi and pinyin, ID, sex and
    age, exam, room and time; the slip adds where to go, the preparation and a QR code of the
    exam's cloud-film page."""
    settings = services.settings
    font = assets.font_path(settings.assets_dir)
    if font is None:
        raise HTTPException(HTTPStatus.SERVICE_UNAVAILABLE,
                            f"the labels' CJK font is not installed in {settings.assets_dir}: run `pacs assets install`")
    row = _row(session, order_id, services)
    mappings = services.mappings.current()
    room = _rooms(services).get(row.room)
    patient = session.exec(select(Patient).where(Patient.patient_id == row.patient_id)).first()
    ideographic = (patient.name_ideographic if patient else "").replace("^", "")
    data = labels.LabelData(
        accession_number=row.accession_number, patient_id=row.patient_id, name_ideographic=ideographic,
        name_alphabetic=row.name_pinyin, sex=row.sex, birth_date=row.birth_date, procedure_text=row.procedure_text,
        room=(room.name or room.room) if room else row.room, location=row.location,
        start=row.start.replace(tzinfo=None) if row.start else None,
        preparation=mappings.preparations.text(row.procedure_code, row.modality) if mappings.preparations else "",
        department=row.department, priority=row.priority, requisition_number=row.requisition_number,
        film_url=_film_url(session, order_id, services, principal, request) if kind == "slip" else "")
    language = lang or principal.language or settings.auth.default_language
    make = labels.label_pdf if kind == "label" else labels.slip_pdf
    size = settings.desk.label_mm if kind == "label" else settings.desk.slip_mm
    try:
        pdf = make(data, font=font, size_mm=size, language=language)
    except labels.NotEncodable as exc:
        raise HTTPException(409, str(exc)) from None
    _audit(request, None, services, principal, codes.ORDER_RECORD, Action.READ,
           description=f"{kind} printed for {row.accession_number}", patients=[row.patient_id],
           target=row.accession_number, details={"order": order_id, "kind": kind})
    return Response(pdf, media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="{kind}-{row.accession_number}.pdf"'})

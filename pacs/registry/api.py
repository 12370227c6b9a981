"""/api/orders: where each procedure stands, with every transition (timestamped, attributed)."""

from __future__ import annotations

from datetime import date, datetime, tzinfo
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel
from sqlmodel import Session, col, func, select

from pacs.http import Offset, RowId, ServicesDep, SessionDep
from pacs.registry import lifecycle
from pacs.registry.models import ImagingOrder, OrderEvent, OrderStatus, Patient, ProcedureStep, StepStatus
from pacs.settings import local_moment
from pacs.auth.access import Principal, require
from pacs.auth.roles import Permission

router = APIRouter(prefix="/api/orders", tags=["orders"])


class StepPublic(BaseModel):
    id: int
    sps_id: str
    modality: str
    station_ae_title: str
    station_name: str
    start: datetime | None
    duration_minutes: int | None
    description: str
    status: str


class EventPublic(BaseModel):
    at: datetime
    from_status: str
    to_status: str
    by: str
    note: str
    step: int | None


class OrderPublic(BaseModel):
    id: int
    status: str
    patient_id: str
    patient_name: str
    accession_number: str
    placer_number: str
    filler_number: str
    requested_procedure_id: str
    procedure_code: str
    procedure_text: str
    priority: str
    study_instance_uid: str
    created_at: datetime
    updated_at: datetime
    steps: list[StepPublic]
    events: list[EventPublic]


class OrderPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[OrderPublic]


class Transition(BaseModel):
    by: str = "user:desk"  # who, when the request carries no user (the transition names the user otherwise)
    note: str = ""


def public(session: Session, order: ImagingOrder, zone: tzinfo | None) -> OrderPublic:
    """The order as the API shows it; a step's start, a wall-clock time of the hospital, with
    the offset of its zone (RFC 3339)."""
    patient = session.get_one(Patient, order.patient)
    steps = session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id).order_by(col(ProcedureStep.id)))
    events = session.exec(select(OrderEvent).where(OrderEvent.order == order.id).order_by(col(OrderEvent.id)))
    return OrderPublic(
        **order.model_dump(include={"id", "status", "accession_number", "placer_number", "filler_number",
                                    "requested_procedure_id", "procedure_code", "procedure_text", "priority",
                                    "study_instance_uid", "created_at", "updated_at"}),
        patient_id=patient.patient_id,
        patient_name="=".join(g for g in (patient.name_alphabetic, patient.name_ideographic) if g),
        steps=[StepPublic(**(s.model_dump() | {"start": local_moment(s.start, zone) if s.start else None}))
               for s in steps],
        events=[EventPublic(at=e.at, from_status=e.from_status, to_status=e.to_status, by=e.by, note=e.note,
                            step=e.step) for e in events],
    )


@router.get("", response_model=OrderPage, dependencies=[Depends(require(Permission.ORDERS_READ))])
def list_orders(
    session: SessionDep,
    services: ServicesDep,
    status: Annotated[OrderStatus | None, Query()] = None,
    patient_id: Annotated[str | None, Query()] = None,
    accession_number: Annotated[str | None, Query()] = None,
    modality: Annotated[str | None, Query()] = None,
    station: Annotated[str | None, Query(description="scheduled station AE title")] = None,
    scheduled: Annotated[date | None, Query(description="scheduled on this day")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> OrderPage:
    query = select(ImagingOrder).join(Patient, Patient.id == ImagingOrder.patient)
    if status:
        query = query.where(ImagingOrder.status == status)
    if patient_id:
        query = query.where(Patient.patient_id == patient_id)
    if accession_number:
        query = query.where(ImagingOrder.accession_number == accession_number)
    if modality or station or scheduled:
        steps = select(ProcedureStep.order)
        if modality:
            steps = steps.where(ProcedureStep.modality == modality.upper())
        if station:
            steps = steps.where(ProcedureStep.station_ae_title == station)
        if scheduled:
            steps = steps.where(ProcedureStep.start_date == scheduled.strftime("%Y%m%d"))
        query = query.where(col(ImagingOrder.id).in_(steps))
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(ImagingOrder.id).desc()).offset(offset).limit(limit)).all()
    zone = services.settings.zone
    return OrderPage(total=total, offset=offset, limit=limit, items=[public(session, o, zone) for o in rows])


@router.get("/{order_id}", response_model=OrderPublic, dependencies=[Depends(require(Permission.ORDERS_READ))])
def show_order(order_id: RowId, session: SessionDep, services: ServicesDep) -> OrderPublic:
    order = session.get(ImagingOrder, order_id)
    if order is None:
        raise HTTPException(404, f"order {order_id} does not exist")
    return public(session, order, services.settings.zone)


@router.post("/{order_id}/arrive", response_model=OrderPublic)
def arrive(order_id: RowId, body: Transition, session: SessionDep, services: ServicesDep,
           principal: Annotated[Principal, Depends(require(Permission.ORDERS_CHECKIN))]) -> OrderPublic:
    """Check the patient in for this procedure: scheduled → arrived, in the name of who asked."""
    order = session.get(ImagingOrder, order_id)
    if order is None:
        raise HTTPException(404, f"order {order_id} does not exist")
    steps = list(session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id)))
    try:
        by = f"user:{principal.name}" if principal.name else body.by
        lifecycle.transition(session, order, OrderStatus.ARRIVED, by=by, steps=steps,
                             note=body.note or "checked in", notify=services.notify)
    except lifecycle.InvalidTransition as exc:
        raise HTTPException(409, str(exc)) from None
    for step in steps:
        if step.status == StepStatus.SCHEDULED:
            step.status = StepStatus.ARRIVED
            session.add(step)
    session.flush()
    return public(session, order, services.settings.zone)

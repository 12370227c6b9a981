"""The registry's services: the only code that writes patients, visits, orders and steps.

Every function takes the session of the caller's unit of work and never commits: the interface
engine commits a message's effect together with its status, so an ACK always reflects what is
on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydicom.uid import generate_uid
from sqlmodel import Session, col, select

from pacs.db import utcnow
from pacs.integration.names import NameRules, person_name
from pacs.registry import lifecycle
from pacs.registry.models import (
    ImagingOrder,
    OrderEvent,
    OrderStatus,
    Patient,
    PatientIdentifier,
    ProcedureStep,
    StepStatus,
    Visit,
    VisitStatus,
)
from pacs.registry.schemas import IdentifierIn, OrderAction, OrderIn, PatientIn, StepIn, VisitIn


class Problem(StrEnum):
    UNKNOWN = "unknown"  # the message refers to something the registry doesn't have
    DUPLICATE = "duplicate"  # the message would give two things one identity
    CONFLICT = "conflict"  # the change isn't allowed in the current state


@dataclass
class RegistryError(Exception):
    """A request the registry can't carry out; ``target`` names the input field at fault."""

    problem: Problem
    target: str
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class Context:
    """Who is acting and with what rules."""

    by: str
    names: NameRules
    uid_root: str | None = None
    accession_prefix: str = ""
    source_message: int | None = None
    notify: lifecycle.Notify | None = None


# --------------------------------------------------------------------------------------------
# Patients
# --------------------------------------------------------------------------------------------


def _root(session: Session, patient: Patient) -> Patient:
    seen = set()
    while patient.merged_into is not None and patient.id not in seen:
        seen.add(patient.id)
        patient = session.get_one(Patient, patient.merged_into)
    return patient


def find_identifier(session: Session, identifier: IdentifierIn) -> PatientIdentifier | None:
    return session.exec(
        select(PatientIdentifier).where(
            PatientIdentifier.value == identifier.value,
            PatientIdentifier.authority == identifier.authority,
        )
    ).first()


def resolve_patient(session: Session, identifiers: list[IdentifierIn]) -> Patient | None:
    """The current patient any of ``identifiers`` belongs to (following merges).

    Raises :class:`RegistryError` when they point at different patients.
    """
    found: dict[int, Patient] = {}
    for identifier in identifiers:
        row = find_identifier(session, identifier)
        if row is not None:
            patient = _root(session, session.get_one(Patient, row.patient))
            assert patient.id is not None
            found[patient.id] = patient
    if len(found) > 1:
        ids = ", ".join(sorted(p.patient_id for p in found.values()))
        raise RegistryError(
            Problem.DUPLICATE, "patient.identifiers",
            f"the identifiers sent belong to different patients ({ids}); merge them first (ADT A40)",
        )
    return next(iter(found.values()), None)


def patient_by_id(session: Session, value: str, authority: str | None = None) -> Patient | None:
    """Look a patient up by an identifier value (and authority, if given), following merges."""
    query = select(PatientIdentifier).where(PatientIdentifier.value == value)
    if authority is not None:
        query = query.where(PatientIdentifier.authority == authority)
    row = session.exec(query.order_by(col(PatientIdentifier.active).desc())).first()
    return None if row is None else _root(session, session.get_one(Patient, row.patient))


def _set(obj: object, attribute: str, value: object) -> bool:
    if value is None or getattr(obj, attribute) == value:
        return False
    setattr(obj, attribute, value)
    return True


def _apply_name(patient: Patient, data: PatientIn, names: NameRules) -> None:
    family = data.family_name if data.family_name is not None else patient.family_name
    given = data.given_name if data.given_name is not None else patient.given_name
    if data.family_name is None and data.given_name is None and data.name_pinyin is None:
        if patient.name_alphabetic or patient.name_ideographic or not (family or given):
            return
    name = person_name(family, given, pinyin=data.name_pinyin or None,
                       override=patient.name_override, rules=names)
    patient.family_name = name.family
    patient.given_name = name.given
    patient.name_alphabetic = name.alphabetic
    patient.name_ideographic = name.ideographic
    patient.name_phonetic = name.phonetic


def upsert_patient(session: Session, data: PatientIn, ctx: Context) -> tuple[Patient, bool]:
    """Create the patient or update what the message sent. Returns (patient, created)."""
    patient = resolve_patient(session, data.identifiers)
    created = patient is None
    chosen = data.patient_id or (data.identifiers[0] if data.identifiers else None)
    if patient is None:
        if chosen is None:
            raise RegistryError(Problem.UNKNOWN, "patient.identifiers", "no patient identifier was sent")
        patient = Patient(patient_id=chosen.value, issuer=chosen.authority)
    elif chosen is not None and data.patient_id is not None:
        _set(patient, "patient_id", chosen.value)
        _set(patient, "issuer", chosen.authority)
    for attribute in ("sex", "birth_date", "address", "phone", "national_id"):
        _set(patient, attribute, getattr(data, attribute))
    if data.national_id is None:
        for identifier in data.identifiers:
            if identifier.type_code == "NI" and not patient.national_id:
                patient.national_id = identifier.value
    _apply_name(patient, data, ctx.names)
    patient.updated_at = utcnow()
    session.add(patient)
    session.flush()
    _add_identifiers(session, patient, data.identifiers)
    return patient, created


def _add_identifiers(session: Session, patient: Patient, identifiers: list[IdentifierIn]) -> None:
    assert patient.id is not None
    for identifier in identifiers:
        row = find_identifier(session, identifier)
        if row is None:
            session.add(PatientIdentifier(patient=patient.id, value=identifier.value,
                                          authority=identifier.authority, type_code=identifier.type_code))
        elif row.patient == patient.id and identifier.type_code and row.type_code != identifier.type_code:
            row.type_code = identifier.type_code
            session.add(row)


def merge_patients(session: Session, surviving: PatientIn, prior: list[IdentifierIn], ctx: Context) -> Patient:
    """ADT A40 (IHE PIR, RAD-12): the prior patient's orders, visits and identifiers move to the
    surviving patient; the prior record stays, pointing onward, so old identifiers resolve."""
    target, _ = upsert_patient(session, surviving, ctx)
    assert target.id is not None
    for identifier in prior:
        row = find_identifier(session, identifier)
        if row is None:
            session.add(PatientIdentifier(patient=target.id, value=identifier.value,
                                          authority=identifier.authority, type_code=identifier.type_code,
                                          active=False))
            continue
        old = _root(session, session.get_one(Patient, row.patient))
        if old.id == target.id:
            continue
        move_patient_records(session, old, target, ctx)
    return target


def move_patient_records(session: Session, old: Patient, target: Patient, ctx: Context) -> None:
    """Point everything of ``old`` at ``target`` and mark ``old`` merged."""
    for row in session.exec(select(PatientIdentifier).where(PatientIdentifier.patient == old.id)):
        row.patient = target.id  # type: ignore[assignment]
        row.active = False
        session.add(row)
    for order in session.exec(select(ImagingOrder).where(ImagingOrder.patient == old.id)):
        order.patient = target.id  # type: ignore[assignment]
        order.updated_at = utcnow()
        session.add(order)
        session.add(OrderEvent(order=order.id, from_status=order.status, to_status=order.status,
                               by=ctx.by, note=f"patient {old.patient_id} merged into {target.patient_id}"))
    for visit in session.exec(select(Visit).where(Visit.patient == old.id)):
        visit.patient = target.id  # type: ignore[assignment]
        session.add(visit)
    old.merged_into = target.id
    old.updated_at = utcnow()
    session.add(old)
    for hook in MERGE_HOOKS:
        hook(session, old, target)


# Other parts of the system (the archive's study index) register here to follow merges.
MERGE_HOOKS: list = []


def change_identifier(session: Session, data: PatientIn, prior: list[IdentifierIn], ctx: Context) -> Patient:
    """ADT A47: replace an identifier (MRG-1, the incorrect one) with the one in PID-3."""
    if not prior:
        raise RegistryError(Problem.UNKNOWN, "merge.prior_identifiers", "A47 needs the identifier to change in MRG-1")
    new = data.patient_id or (data.identifiers[0] if data.identifiers else None)
    if new is None:
        raise RegistryError(Problem.UNKNOWN, "patient.identifiers", "A47 needs the new identifier in PID-3")
    old_row = find_identifier(session, prior[0])
    if old_row is None:
        raise RegistryError(Problem.UNKNOWN, "merge.prior_identifiers",
                            f"identifier {prior[0].value} ({prior[0].authority or 'no authority'}) is not known")
    existing = find_identifier(session, new)
    if existing is not None and existing.patient != old_row.patient:
        raise RegistryError(Problem.DUPLICATE, "patient.identifiers",
                            f"identifier {new.value} already belongs to another patient; merge them (A40)")
    patient = _root(session, session.get_one(Patient, old_row.patient))
    if existing is None:
        old_row.value = new.value
        old_row.authority = new.authority
        old_row.type_code = new.type_code or old_row.type_code
        session.add(old_row)
    if patient.patient_id == prior[0].value:
        patient.patient_id = new.value
        patient.issuer = new.authority
    update = data.model_copy(update={"identifiers": [], "patient_id": None})
    for attribute in ("sex", "birth_date", "address", "phone", "national_id"):
        _set(patient, attribute, getattr(update, attribute))
    _apply_name(patient, update, ctx.names)
    patient.updated_at = utcnow()
    session.add(patient)
    return patient


# --------------------------------------------------------------------------------------------
# Visits
# --------------------------------------------------------------------------------------------


def _find_visit(session: Session, patient: Patient, visit_number: str | None) -> Visit | None:
    query = select(Visit).where(Visit.patient == patient.id)
    if visit_number:
        query = query.where(Visit.visit_number == visit_number)
    else:
        query = query.where(Visit.status == VisitStatus.ACTIVE)
    return session.exec(query.order_by(col(Visit.id).desc())).first()


def upsert_visit(session: Session, patient: Patient, data: VisitIn) -> Visit:
    visit = _find_visit(session, patient, data.visit_number)
    if visit is None:
        visit = Visit(patient=patient.id)  # type: ignore[arg-type]
    for attribute, value in data.model_dump(exclude_none=True).items():
        setattr(visit, attribute, value)
    visit.updated_at = utcnow()
    session.add(visit)
    session.flush()
    return visit


def end_visit(session: Session, patient: Patient, data: VisitIn | None, status: VisitStatus) -> Visit:
    """A03 (discharge), A11 (cancel admit) and A13 (cancel discharge)."""
    number = data.visit_number if data else None
    visit = _find_visit(session, patient, number)
    if visit is None and not number:
        visit = session.exec(select(Visit).where(Visit.patient == patient.id).order_by(col(Visit.id).desc())).first()
    if visit is None:
        raise RegistryError(Problem.UNKNOWN, "visit.visit_number",
                            f"no visit {number or ''} for patient {patient.patient_id}".replace("  ", " "))
    if data is not None:
        for attribute, value in data.model_dump(exclude_none=True).items():
            setattr(visit, attribute, value)
    visit.status = status
    if status == VisitStatus.ACTIVE:
        visit.discharged_at = None
    visit.updated_at = utcnow()
    session.add(visit)
    return visit


# --------------------------------------------------------------------------------------------
# Orders
# --------------------------------------------------------------------------------------------


def find_order(session: Session, data: OrderIn) -> ImagingOrder | None:
    """By placer number (and namespace), else filler number, else accession number."""
    if data.placer_number:
        query = select(ImagingOrder).where(ImagingOrder.placer_number == data.placer_number)
        if data.placer_authority:
            query = query.where(ImagingOrder.placer_authority == data.placer_authority)
        found = session.exec(query.order_by(col(ImagingOrder.id).desc())).first()
        if found is not None:
            return found
    if data.filler_number:
        found = session.exec(select(ImagingOrder).where(ImagingOrder.filler_number == data.filler_number)).first()
        if found is not None:
            return found
    if data.accession_number:
        return session.exec(
            select(ImagingOrder).where(ImagingOrder.accession_number == data.accession_number)
        ).first()
    return None


def steps_of(session: Session, order: ImagingOrder) -> list[ProcedureStep]:
    return list(session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id)
                             .order_by(col(ProcedureStep.id))))


ORDER_FIELDS = (
    "placer_number", "placer_authority", "filler_number", "accession_number", "requested_procedure_id",
    "procedure_code", "procedure_scheme", "procedure_text", "body_part", "reason", "priority",
    "referring_physician", "requesting_physician", "department",
)
STEP_FIELDS = tuple(StepIn.model_fields)


def apply_order(session: Session, patient: Patient, visit: Visit | None, data: OrderIn,
                ctx: Context) -> tuple[ImagingOrder, bool]:
    """Carry out one order group's control code (NW, XO, CA, DC, SC, ...).

    Returns the order and whether it was created."""
    existing = find_order(session, data)
    if data.action == OrderAction.NEW:
        if existing is None:
            return _new_order(session, patient, visit, data, ctx), True
        if existing.patient != patient.id:
            raise RegistryError(Problem.DUPLICATE, "order.placer_number",
                                f"order {data.placer_number or data.accession_number} already exists for "
                                "another patient")
        # A new order we already hold: the sender is resending; apply it as a change.
        return _change_order(session, existing, patient, visit, data, ctx), False
    if existing is None:
        what = data.placer_number or data.filler_number or data.accession_number or "(no number)"
        raise RegistryError(Problem.UNKNOWN, "order.placer_number", f"order {what} is not known")
    if data.action == OrderAction.CHANGE:
        return _change_order(session, existing, patient, visit, data, ctx), False
    if data.action == OrderAction.CANCEL:
        _move(session, existing, OrderStatus.CANCELLED, ctx, note=f"order control {data.control}")
    elif data.action == OrderAction.DISCONTINUE:
        _move(session, existing, OrderStatus.DISCONTINUED, ctx, note=f"order control {data.control}")
    elif data.action == OrderAction.STATUS:
        if data.status:
            _move(session, existing, OrderStatus(data.status), ctx, note=f"order status {data.status}")
    return existing, False


def _move(session: Session, order: ImagingOrder, to: OrderStatus, ctx: Context, note: str = "") -> None:
    try:
        lifecycle.transition(session, order, to, by=ctx.by, steps=steps_of(session, order), note=note,
                             notify=ctx.notify)
    except lifecycle.InvalidTransition as exc:
        raise RegistryError(Problem.CONFLICT, "order.control", str(exc)) from None


def _new_order(session: Session, patient: Patient, visit: Visit | None, data: OrderIn, ctx: Context) -> ImagingOrder:
    if data.study_instance_uid:
        clash = session.exec(select(ImagingOrder.id).where(
            ImagingOrder.study_instance_uid == data.study_instance_uid)).first()
        if clash is not None:
            raise RegistryError(Problem.DUPLICATE, "order.study_instance_uid",
                                f"study instance UID {data.study_instance_uid} belongs to another order")
    order = ImagingOrder(
        patient=patient.id,  # type: ignore[arg-type]
        visit=visit.id if visit else None,
        study_instance_uid=data.study_instance_uid or generate_uid(prefix=ctx.uid_root),
        source_message=ctx.source_message,
        **{f: getattr(data, f) for f in ORDER_FIELDS if getattr(data, f) is not None},
    )
    session.add(order)
    session.flush()
    if not order.accession_number:
        order.accession_number = f"{ctx.accession_prefix}{order.id:08d}"
    if not order.requested_procedure_id:
        order.requested_procedure_id = order.accession_number
    _write_steps(session, order, data.steps, [])
    session.add(OrderEvent(order=order.id, from_status="", to_status=OrderStatus.SCHEDULED, by=ctx.by,
                           note=f"order control {data.control}"))
    return order


def _change_order(session: Session, order: ImagingOrder, patient: Patient, visit: Visit | None,
                  data: OrderIn, ctx: Context) -> ImagingOrder:
    if order.status not in (OrderStatus.SCHEDULED, OrderStatus.ARRIVED):
        raise RegistryError(Problem.CONFLICT, "order.control",
                            f"order {order.accession_number} is {order.status} and can no longer be changed")
    if order.patient != patient.id:
        raise RegistryError(Problem.CONFLICT, "patient.identifiers",
                            f"order {order.accession_number} belongs to another patient; send A40/A47 to move it")
    changed = [f for f in ORDER_FIELDS if _set(order, f, getattr(data, f))]
    if visit is not None and order.visit != visit.id:
        order.visit = visit.id
    if data.study_instance_uid and data.study_instance_uid != order.study_instance_uid:
        raise RegistryError(Problem.CONFLICT, "order.study_instance_uid",
                            "the study instance UID of a scheduled order can't change")
    order.updated_at = utcnow()
    session.add(order)
    _write_steps(session, order, data.steps, steps_of(session, order))
    session.add(OrderEvent(order=order.id, from_status=order.status, to_status=order.status, by=ctx.by,
                           note=f"order control {data.control}: " + (", ".join(changed) or "no change")))
    return order


def _write_steps(session: Session, order: ImagingOrder, wanted: list[StepIn], current: list[ProcedureStep]) -> None:
    """Make the order's open steps match ``wanted`` (matched by SPS ID, else by position)."""
    by_id = {s.sps_id: s for s in current if s.sps_id}
    unused = [s for s in current if s.status == StepStatus.SCHEDULED]
    for number, data in enumerate(wanted, 1):
        step = by_id.get(data.sps_id or "") or (unused[0] if unused and not data.sps_id else None)
        if step is None:
            step = ProcedureStep(order=order.id)  # type: ignore[arg-type]
        if step in unused:
            unused.remove(step)
        for attribute in STEP_FIELDS:
            _set(step, attribute, getattr(data, attribute))
        step.start_date = step.start.strftime("%Y%m%d") if step.start else ""
        step.start_time = step.start.strftime("%H%M%S") if step.start else ""
        if not step.sps_id:
            step.sps_id = f"{order.requested_procedure_id}-{number}" if len(wanted) > 1 else order.requested_procedure_id
        session.add(step)
    for step in unused:
        if current and wanted:
            step.status = StepStatus.CANCELLED
            session.add(step)

"""The registry's services: the only code that writes patients, visits, orders and steps.

Every function takes the session of the caller's unit of work and never commits: the interface
engine commits a message's effect together with its status, so an ACK always reflects what is
on disk.

The paths every message takes (patient, visit and order upserts, steps, order events) are
written with Core statements compiled once (:class:`pacs.db.Prepared`) and run on the session's
connection: they read only the columns they need, write only what changed and return
:class:`Record` objects rather than ORM instances. The rare paths (merge, identifier change,
status transitions, which call the lifecycle's notify hook) use the ORM and flush before
returning, so the statements that follow in the same message see their effect.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import SimpleNamespace
from typing import Any

from pydantic_core import PydanticUndefined
from sqlalchemy import Connection, Table, and_, bindparam, case, insert, or_, update
from sqlalchemy import select as core_select
from sqlmodel import Session, SQLModel, col, select

from pacs.db import Prepared, utcnow
from pacs.integration.names import NameRules, person_name
from pacs.registry import lifecycle, search
from pacs.registry.models import (
    ImagingOrder,
    OrderEvent,
    OrderStatus,
    Patient,
    PatientIdentifier,
    ProcedureStep,
    RegistrySequence,
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
    devices: Any = None  # pacs.registry.device_rules.DeviceRules: what a new order or a merge is matched by


# --------------------------------------------------------------------------------------------
# Rows as plain records
# --------------------------------------------------------------------------------------------


class Record(SimpleNamespace):
    """One registry row, its columns as attributes (``patient.id``, ``order.accession_number``):
    what the per-message paths read and return instead of ORM instances."""


def _table(model: type[SQLModel]) -> Table:
    return model.__table__  # type: ignore[attr-defined,no-any-return]


PATIENT = _table(Patient)
IDENTIFIER = _table(PatientIdentifier)
VISIT = _table(Visit)
ORDER = _table(ImagingOrder)
STEP = _table(ProcedureStep)
EVENT = _table(OrderEvent)


def _defaults(model: type[SQLModel]) -> dict[str, Any]:
    """The value each column of ``model`` takes when not given (as the model's constructor would
    set it; timestamps are set by the code that writes the row)."""
    out: dict[str, Any] = {}
    for column in _table(model).columns:
        info = model.model_fields.get(column.name)
        default = None if info is None else info.default
        out[column.name] = None if default is PydanticUndefined else default  # a default_factory's
    return out


PATIENT_DEFAULTS = _defaults(Patient)
VISIT_DEFAULTS = _defaults(Visit)
ORDER_DEFAULTS = _defaults(ImagingOrder)
STEP_DEFAULTS = _defaults(ProcedureStep)


def _record(row: dict[str, Any] | None) -> Record | None:
    return None if row is None else Record(**row)


_INSERTS = {table.name: Prepared(insert(table)) for table in (IDENTIFIER, STEP, EVENT)}
_INSERTS_RETURNING = {table.name: Prepared(insert(table).returning(table.c.id)) for table in (PATIENT, VISIT, ORDER)}
_UPDATES = {table.name: Prepared(update(table).where(table.c.id == bindparam("row_id")))
            for table in (PATIENT, IDENTIFIER, VISIT, ORDER, STEP)}


def _insert(conn: Connection, table: Table, record: Record) -> int:
    """INSERT every column of ``record`` but its id; sets and returns the new id."""
    values = vars(record).copy()
    del values["id"]
    record.id = _INSERTS_RETURNING[table.name].rows(conn, values)[0]["id"]
    return record.id  # type: ignore[no-any-return]


def _update(conn: Connection, table: Table, row_id: int, changes: dict[str, Any]) -> None:
    """UPDATE the columns in ``changes`` of one row."""
    _UPDATES[table.name].execute(conn, {**changes, "row_id": row_id})


def _changes(record: Record, before: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in vars(record).items() if before.get(name) != value}


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


_IDENTIFIERS_WITH_PATIENTS: dict[int, Prepared] = {}
_PATIENT_BY_ID = Prepared(core_select(PATIENT).where(PATIENT.c.id == bindparam("pk")))


def _identifiers_with_patients(count: int) -> Prepared:
    """The stored identifiers with any of ``count`` values (``value_0`` …), each with its
    patient's columns: one statement per number of values, as a message sends one to three."""
    statement = _IDENTIFIERS_WITH_PATIENTS.get(count)
    if statement is None:
        statement = _IDENTIFIERS_WITH_PATIENTS[count] = Prepared(
            core_select(IDENTIFIER.c.id.label("identifier_id"), IDENTIFIER.c.value.label("identifier_value"),
                        IDENTIFIER.c.authority.label("identifier_authority"),
                        IDENTIFIER.c.type_code.label("identifier_type_code"), PATIENT)
            .join(PATIENT, PATIENT.c.id == IDENTIFIER.c.patient)
            .where(IDENTIFIER.c.value.in_([bindparam(f"value_{i}") for i in range(count)])))
    return statement


@dataclass
class KnownIdentifier:
    """A stored identifier that matched one sent in a message."""

    id: int
    patient: Record  # the row the identifier points at (perhaps merged into another)
    type_code: str


def _known_identifiers(conn: Connection,
                       identifiers: Sequence[IdentifierIn]) -> dict[tuple[str, str], KnownIdentifier]:
    """The stored identifiers among ``identifiers``, by (value, authority), with their patients:
    one query for all of them."""
    if not identifiers:
        return {}
    wanted = {(i.value, i.authority) for i in identifiers}
    known: dict[tuple[str, str], KnownIdentifier] = {}
    patients: dict[int, Record] = {}
    values_sent = sorted({v for v, _ in wanted})
    for values in _identifiers_with_patients(len(values_sent)).rows(
            conn, {f"value_{i}": value for i, value in enumerate(values_sent)}):
        key = (values["identifier_value"], values["identifier_authority"])
        if key not in wanted:
            continue
        identifier_id = values.pop("identifier_id")
        type_code = values.pop("identifier_type_code")
        del values["identifier_value"], values["identifier_authority"]
        patient = patients.setdefault(values["id"], Record(**values))
        known[key] = KnownIdentifier(identifier_id, patient, type_code)
    return known


def _root_record(conn: Connection, patient: Record) -> Record:
    """The patient ``patient`` was merged into, following merges (as :func:`_root`)."""
    seen = set()
    while patient.merged_into is not None and patient.id not in seen:
        seen.add(patient.id)
        patient = Record(**_PATIENT_BY_ID.rows(conn, {"pk": patient.merged_into})[0])
    return patient


def _resolve(conn: Connection, identifiers: Iterable[IdentifierIn],
             known: dict[tuple[str, str], KnownIdentifier]) -> Record | None:
    found: dict[int, Record] = {}
    for identifier in identifiers:
        match = known.get((identifier.value, identifier.authority))
        if match is not None:
            patient = _root_record(conn, match.patient)
            found[patient.id] = patient
    if len(found) > 1:
        ids = ", ".join(sorted(p.patient_id for p in found.values()))
        raise RegistryError(
            Problem.DUPLICATE, "patient.identifiers",
            f"the identifiers sent belong to different patients ({ids}); merge them first (ADT A40)",
        )
    return next(iter(found.values()), None)


def resolve_patient(session: Session, identifiers: list[IdentifierIn]) -> Record | None:
    """The current patient any of ``identifiers`` belongs to (following merges).

    Raises :class:`RegistryError` when they point at different patients.
    """
    conn = session.connection()
    return _resolve(conn, identifiers, _known_identifiers(conn, identifiers))


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


def _apply_name(patient: Any, data: PatientIn, names: NameRules) -> None:
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


PATIENT_DETAILS = ("sex", "birth_date", "address", "phone", "national_id")


def upsert_patient(session: Session, data: PatientIn, ctx: Context) -> tuple[Record, bool]:
    """Create the patient or update what the message sent. Returns (patient, created)."""
    conn = session.connection()
    known = _known_identifiers(conn, data.identifiers)
    patient = _resolve(conn, data.identifiers, known)
    created = patient is None
    chosen = data.patient_id or (data.identifiers[0] if data.identifiers else None)
    if patient is None:
        if chosen is None:
            raise RegistryError(Problem.UNKNOWN, "patient.identifiers", "no patient identifier was sent")
        patient = Record(**PATIENT_DEFAULTS)
        patient.patient_id, patient.issuer = chosen.value, chosen.authority
        before: dict[str, Any] = {}
    else:
        before = vars(patient).copy()
        if chosen is not None and data.patient_id is not None:
            _set(patient, "patient_id", chosen.value)
            _set(patient, "issuer", chosen.authority)
    for attribute in PATIENT_DETAILS:
        _set(patient, attribute, getattr(data, attribute))
    if data.national_id is None:
        for identifier in data.identifiers:
            if identifier.type_code == "NI" and not patient.national_id:
                patient.national_id = identifier.value
    _apply_name(patient, data, ctx.names)
    search.fill_keys(patient)
    if created:
        patient.created_at = patient.updated_at = utcnow()
        _insert(conn, PATIENT, patient)
    else:
        changes = _changes(patient, before)
        if changes:  # a message that repeats what is stored writes nothing
            patient.updated_at = changes["updated_at"] = utcnow()
            _update(conn, PATIENT, patient.id, changes)
    _add_identifiers(session, patient, data.identifiers, known)
    return patient, created


def create_patient(session: Session, data: PatientIn, ctx: Context) -> Record:
    """A patient registered here rather than sent by the HIS (a walk-in at the desk): refused when
    one of its identifiers or its national ID already belongs to a patient, whom the error names."""
    conn = session.connection()
    values = sorted({i.value for i in data.identifiers})
    known = _identifiers_with_patients(len(values)).rows(conn, {f"value_{i}": v for i, v in enumerate(values)}) \
        if values else []
    if known:  # by value alone: a card typed at the desk names no assigning authority
        taken = _root_record(conn, Record(**{k: v for k, v in known[0].items() if not k.startswith("identifier_")}))
        raise RegistryError(Problem.DUPLICATE, "patient.identifiers",
                            f"identifier {known[0]['identifier_value']} belongs to patient {taken.patient_id}")
    if data.national_id:
        holder = session.exec(select(Patient).where(Patient.national_id == data.national_id)).first()
        if holder is not None:
            holder = _root(session, holder)
            name = holder.name_ideographic.replace("^", "") or holder.name_alphabetic.replace("^", " ")
            raise RegistryError(Problem.DUPLICATE, "patient.national_id",
                                f"national ID {data.national_id} belongs to patient {holder.patient_id} ({name})")
    patient, _ = upsert_patient(session, data, ctx)
    return patient


def next_number(session: Session, name: str) -> int:
    """The next number of the counter ``name`` (1 the first time): one transaction's row lock,
    so two processes never get the same number (an upsert with RETURNING on either database)."""
    table = _table(RegistrySequence)
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
    statement = upsert(table).values(name=name, value=1)
    statement = statement.on_conflict_do_update(index_elements=[table.c.name],
                                                set_={"value": table.c.value + 1}).returning(table.c.value)
    return int(conn.execute(statement).scalar_one())


def _add_identifiers(session: Session, patient: Any, identifiers: list[IdentifierIn],
                     known: dict[tuple[str, str], KnownIdentifier] | None = None) -> None:
    """Store the identifiers the patient doesn't have yet; take a new identifier type for those
    it has. ``known`` is what :func:`_known_identifiers` found for them, if already looked up."""
    conn = session.connection()
    if known is None:
        known = _known_identifiers(conn, identifiers)
    added: dict[tuple[str, str], dict[str, Any]] = {}
    types: dict[tuple[str, str], str] = {}  # the type sent last, per stored identifier of this patient
    for identifier in identifiers:
        key = (identifier.value, identifier.authority)
        if key in added:  # sent twice: stored once, with the type sent last
            if identifier.type_code:
                added[key]["type_code"] = identifier.type_code
            continue
        row = known.get(key)
        if row is None:
            added[key] = {"patient": patient.id, "value": identifier.value, "authority": identifier.authority,
                          "type_code": identifier.type_code, "active": True}
        elif row.patient.id == patient.id and identifier.type_code and row.type_code != identifier.type_code:
            row.type_code = types[key] = identifier.type_code
    if added:
        _INSERTS[IDENTIFIER.name].execute_many(conn, list(added.values()))
    for key, type_code in types.items():
        _update(conn, IDENTIFIER, known[key].id, {"type_code": type_code})


def merge_patients(session: Session, surviving: PatientIn, prior: list[IdentifierIn], ctx: Context) -> Patient:
    """ADT A40 (IHE PIR, RAD-12): the prior patient's orders, visits and identifiers move to the
    surviving patient; the prior record stays, pointing onward, so old identifiers resolve."""
    found, _ = upsert_patient(session, surviving, ctx)
    target = session.get_one(Patient, found.id, populate_existing=True)
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
    session.flush()
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
        hook(session, old, target, ctx)


# Other parts of the system register here to follow merges (the archive's study index, the
# reconciliation list): ``hook(session, old, target, ctx)`` in the merge's transaction.
MERGE_HOOKS: list = []
# ... and to learn of new orders (the reconciliation list): ``hook(session, order, ctx)``, once
# the order and its steps are written.
ORDER_HOOKS: list = []


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
    details = data.model_copy(update={"identifiers": [], "patient_id": None})
    for attribute in PATIENT_DETAILS:
        _set(patient, attribute, getattr(details, attribute))
    _apply_name(patient, details, ctx.names)
    patient.updated_at = utcnow()
    session.add(patient)
    session.flush()
    return patient


# --------------------------------------------------------------------------------------------
# Visits
# --------------------------------------------------------------------------------------------

_VISIT_BY_NUMBER = Prepared(core_select(VISIT).where(VISIT.c.patient == bindparam("patient"),
                                                      VISIT.c.visit_number == bindparam("number"))
                             .order_by(VISIT.c.id.desc()).limit(1))
_ACTIVE_VISIT = Prepared(core_select(VISIT).where(VISIT.c.patient == bindparam("patient"),
                                                   VISIT.c.status == VisitStatus.ACTIVE.value)
                          .order_by(VISIT.c.id.desc()).limit(1))
_LATEST_VISIT = Prepared(core_select(VISIT).where(VISIT.c.patient == bindparam("patient"))
                         .order_by(VISIT.c.id.desc()).limit(1))


def _find_visit(conn: Connection, patient_id: int, visit_number: str | None) -> Record | None:
    if visit_number:
        return _record(_VISIT_BY_NUMBER.first(conn, {"patient": patient_id, "number": visit_number}))
    return _record(_ACTIVE_VISIT.first(conn, {"patient": patient_id}))


def upsert_visit(session: Session, patient: Any, data: VisitIn, *, new_patient: bool = False) -> Record:
    """Create the visit or update what the message sent (``new_patient``: the patient was just
    created, so it has no visit to look for)."""
    conn = session.connection()
    visit = None if new_patient else _find_visit(conn, patient.id, data.visit_number)
    sent = data.model_dump(exclude_none=True)
    if visit is None:
        visit = Record(**VISIT_DEFAULTS)
        visit.patient = patient.id
        visit.__dict__.update(sent)
        visit.updated_at = utcnow()
        _insert(conn, VISIT, visit)
        return visit
    changes = {name: value for name, value in sent.items() if getattr(visit, name) != value}
    if changes:  # a message that repeats what is stored writes nothing
        changes["updated_at"] = utcnow()
        visit.__dict__.update(changes)
        _update(conn, VISIT, visit.id, changes)
    return visit


def end_visit(session: Session, patient: Any, data: VisitIn | None, status: VisitStatus) -> Record:
    """A03 (discharge), A11 (cancel admit) and A13 (cancel discharge)."""
    conn = session.connection()
    number = data.visit_number if data else None
    visit = _find_visit(conn, patient.id, number)
    if visit is None and not number:
        visit = _record(_LATEST_VISIT.first(conn, {"patient": patient.id}))
    if visit is None:
        raise RegistryError(Problem.UNKNOWN, "visit.visit_number",
                            f"no visit {number or ''} for patient {patient.patient_id}".replace("  ", " "))
    before = vars(visit).copy()
    if data is not None:
        visit.__dict__.update(data.model_dump(exclude_none=True))
    visit.status = status
    if status == VisitStatus.ACTIVE:
        visit.discharged_at = None
    changes = _changes(visit, before)
    if changes:
        visit.updated_at = changes["updated_at"] = utcnow()
        _update(conn, VISIT, visit.id, changes)
    return visit


# --------------------------------------------------------------------------------------------
# Orders
# --------------------------------------------------------------------------------------------

_ORDER_QUERIES: dict[tuple[bool, bool, bool, bool], Prepared] = {}


def _order_query(placer: bool, authority: bool, filler: bool, accession: bool) -> Prepared:
    """One SELECT for :func:`find_order`: every order any of the numbers sent names, ranked
    placer number first (newest), then filler number, then accession number (oldest first)."""
    key = (placer, authority, filler, accession)
    query = _ORDER_QUERIES.get(key)
    if query is not None:
        return query
    ranked = []
    if placer:
        condition = ORDER.c.placer_number == bindparam("placer")
        if authority:
            condition = and_(condition, ORDER.c.placer_authority == bindparam("authority"))
        ranked.append((condition, 0))
    if filler:
        ranked.append((ORDER.c.filler_number == bindparam("filler"), 1))
    if accession:
        ranked.append((ORDER.c.accession_number == bindparam("accession"), 2))
    if len(ranked) == 1:
        condition, rank = ranked[0]
        query = core_select(ORDER).where(condition).order_by(ORDER.c.id.desc() if rank == 0 else ORDER.c.id)
    else:
        rank_of = case(*ranked, else_=3)
        query = (core_select(ORDER).where(or_(*(c for c, _ in ranked)))
                 .order_by(rank_of, case((rank_of == 0, -ORDER.c.id), else_=ORDER.c.id)))
    prepared = _ORDER_QUERIES[key] = Prepared(query.limit(1))
    return prepared


def find_order(session: Session, data: OrderIn) -> Record | None:
    """By placer number (and namespace), else filler number, else accession number."""
    placer, filler, accession = bool(data.placer_number), bool(data.filler_number), bool(data.accession_number)
    if not (placer or filler or accession):
        return None
    authority = placer and bool(data.placer_authority)
    params = {"placer": data.placer_number, "authority": data.placer_authority, "filler": data.filler_number,
              "accession": data.accession_number}
    return _record(_order_query(placer, authority, filler, accession).first(session.connection(), params))


def steps_of(session: Session, order: ImagingOrder) -> list[ProcedureStep]:
    return list(session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id)
                             .order_by(col(ProcedureStep.id))))


_STEPS = Prepared(core_select(STEP).where(STEP.c.order == bindparam("order")).order_by(STEP.c.id))


def _step_records(conn: Connection, order_id: int) -> list[Record]:
    return [Record(**row) for row in _STEPS.rows(conn, {"order": order_id})]


ORDER_FIELDS = (
    "placer_number", "placer_authority", "filler_number", "accession_number", "requested_procedure_id",
    "procedure_code", "procedure_scheme", "procedure_text", "body_part", "reason", "priority",
    "referring_physician", "requesting_physician", "department", "requisition_number",
)
STEP_FIELDS = tuple(StepIn.model_fields)


def apply_order(session: Session, patient: Any, visit: Any, data: OrderIn,
                ctx: Context) -> tuple[Record | ImagingOrder, bool]:
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
        return _move(session, existing, OrderStatus.CANCELLED, ctx, note=f"order control {data.control}"), False
    if data.action == OrderAction.DISCONTINUE:
        return _move(session, existing, OrderStatus.DISCONTINUED, ctx, note=f"order control {data.control}"), False
    if data.action == OrderAction.NUMBER_ASSIGNED:
        return _number_assigned(session, existing, data, ctx), False
    if data.action == OrderAction.STATUS and data.status:
        return _move(session, existing, OrderStatus(data.status), ctx, note=f"order status {data.status}"), False
    return existing, False


def _move(session: Session, found: Record, to: OrderStatus, ctx: Context, note: str = "") -> ImagingOrder:
    """A status transition through the lifecycle (which writes the OrderEvent and tells the
    notify hook), on ORM instances read fresh, flushed before returning."""
    order = session.get_one(ImagingOrder, found.id, populate_existing=True)
    steps = list(session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id)
                              .order_by(col(ProcedureStep.id)).execution_options(populate_existing=True)))
    try:
        lifecycle.transition(session, order, to, by=ctx.by, steps=steps, note=note, notify=ctx.notify)
    except lifecycle.InvalidTransition as exc:
        raise RegistryError(Problem.CONFLICT, "order.control", str(exc)) from None
    session.flush()
    return order


_STUDY_UID_TAKEN = Prepared(core_select(ORDER.c.id).where(ORDER.c.study_instance_uid == bindparam("uid")).limit(1))


def _event(conn: Connection, order_id: int, before: str, after: str, by: str, note: str) -> None:
    _INSERTS[EVENT.name].execute(conn, {"order": order_id, "step": None, "from_status": before, "to_status": after,
                                        "at": utcnow(), "by": by, "note": note})


def _new_order(session: Session, patient: Any, visit: Any, data: OrderIn, ctx: Context) -> Record:
    conn = session.connection()
    if data.study_instance_uid:
        clash = _STUDY_UID_TAKEN.first(conn, {"uid": data.study_instance_uid})
        if clash is not None:
            raise RegistryError(Problem.DUPLICATE, "order.study_instance_uid",
                                f"study instance UID {data.study_instance_uid} belongs to another order")
    order = Record(**ORDER_DEFAULTS)
    order.patient = patient.id
    order.visit = visit.id if visit else None
    if data.study_instance_uid:
        order.study_instance_uid = data.study_instance_uid
    else:
        # imported here: pydicom is a fifth of the MLLP front process's start, which never gets here
        from pydicom.uid import generate_uid

        order.study_instance_uid = generate_uid(prefix=ctx.uid_root)
    order.source_message = ctx.source_message
    for name in ORDER_FIELDS:
        value = getattr(data, name)
        if value is not None:
            setattr(order, name, value)
    if order.accession_number and not order.requested_procedure_id:
        order.requested_procedure_id = order.accession_number
    order.created_at = order.updated_at = utcnow()
    _insert(conn, ORDER, order)
    if not order.accession_number:  # assigned from the new row's id
        order.accession_number = f"{ctx.accession_prefix}{order.id:08d}"
        changes = {"accession_number": order.accession_number}
        if not order.requested_procedure_id:
            order.requested_procedure_id = changes["requested_procedure_id"] = order.accession_number
        _update(conn, ORDER, order.id, changes)
    _write_steps(session, order, data.steps, [])
    _event(conn, order.id, "", OrderStatus.SCHEDULED, ctx.by, f"order control {data.control}")
    for hook in ORDER_HOOKS:
        hook(session, order, ctx)
    return order


def _change_order(session: Session, order: Record, patient: Any, visit: Any,
                  data: OrderIn, ctx: Context) -> Record:
    if order.status not in (OrderStatus.SCHEDULED, OrderStatus.ARRIVED):
        raise RegistryError(Problem.CONFLICT, "order.control",
                            f"order {order.accession_number} is {order.status} and can no longer be changed")
    if order.patient != patient.id:
        raise RegistryError(Problem.CONFLICT, "patient.identifiers",
                            f"order {order.accession_number} belongs to another patient; send A40/A47 to move it")
    conn = session.connection()
    before = vars(order).copy()
    changed = [f for f in ORDER_FIELDS if _set(order, f, getattr(data, f))]
    if visit is not None and order.visit != visit.id:
        order.visit = visit.id
    if data.study_instance_uid and data.study_instance_uid != order.study_instance_uid:
        raise RegistryError(Problem.CONFLICT, "order.study_instance_uid",
                            "the study instance UID of a scheduled order can't change")
    order.updated_at = utcnow()
    _update(conn, ORDER, order.id, _changes(order, before))
    _write_steps(session, order, data.steps, _step_records(conn, order.id))
    _event(conn, order.id, order.status, order.status, ctx.by,
           f"order control {data.control}: " + (", ".join(changed) or "no change"))
    return order


def _write_steps(session: Session, order: Any, wanted: list[StepIn], current: list[Any]) -> None:
    """Make the order's open steps match ``wanted`` (matched by SPS ID, else by position)."""
    conn = session.connection()
    by_id = {s.sps_id: s for s in current if s.sps_id}
    unused = [s for s in current if s.status == StepStatus.SCHEDULED]
    added: list[dict[str, Any]] = []
    for number, data in enumerate(wanted, 1):
        step = by_id.get(data.sps_id or "") or (unused[0] if unused and not data.sps_id else None)
        if step is None:
            step = Record(**STEP_DEFAULTS)
            step.order = order.id
        unused = [s for s in unused if s is not step]
        before = vars(step).copy()
        for attribute in STEP_FIELDS:
            _set(step, attribute, getattr(data, attribute))
        step.start_date = step.start.strftime("%Y%m%d") if step.start else ""
        step.start_time = step.start.strftime("%H%M%S") if step.start else ""
        if not step.sps_id:
            step.sps_id = f"{order.requested_procedure_id}-{number}" if len(wanted) > 1 else order.requested_procedure_id
        if step.id is None:
            values = vars(step).copy()
            del values["id"]
            added.append(values)
        else:
            changes = _changes(step, before)
            if changes:
                _update(conn, STEP, step.id, changes)
    if added:
        _INSERTS[STEP.name].execute_many(conn, added)
    for step in unused:
        if current and wanted:
            step.status = StepStatus.CANCELLED
            _update(conn, STEP, step.id, {"status": step.status})


def _number_assigned(session: Session, found: Record, data: OrderIn, ctx: Context) -> Record:
    """NA (HL7 table 0119, number assigned): the HIS's placer order number for an order this
    system filled and sent as SN (IHE RAD-3 filler order management); nothing else changes."""
    if not data.placer_number:
        raise RegistryError(Problem.UNKNOWN, "order.placer_number", "order control NA names no placer order number")
    changes = {"placer_number": data.placer_number, "placer_authority": data.placer_authority or found.placer_authority}
    changes = {name: value for name, value in changes.items() if getattr(found, name) != value}
    if changes:
        found.__dict__.update(changes)
        found.updated_at = changes["updated_at"] = utcnow()
        _update(session.connection(), ORDER, found.id, changes)
    _event(session.connection(), found.id, found.status, found.status, ctx.by,
           f"order control NA: placer number {data.placer_number} assigned")
    return found


# --------------------------------------------------------------------------------------------
# Bookings at the registration desk (pacs.registry.desk_api)
# --------------------------------------------------------------------------------------------

FILLER_ORDER = "SN"  # HL7 table 0119: send order number, a new order from the filler (IHE RAD-3)
BOOKABLE = (OrderStatus.SCHEDULED, OrderStatus.ARRIVED)


def book_orders(session: Session, patient: Any, visit: Any, orders: list[OrderIn], ctx: Context) -> list[Record]:
    """The orders of one registration at the desk, all created in the caller's unit of work.

    The desk fills them: each is a filler order (ORC-1 SN, IHE RAD-3) whose filler order number
    is its accession number, assigned as for any order that arrives without one. The caller
    has checked the schedule (:func:`pacs.registry.scheduling.check`) first."""
    conn = session.connection()
    created = []
    for data in orders:
        order = _new_order(session, patient, visit, data.model_copy(update={"control": FILLER_ORDER}), ctx)
        if not order.filler_number:
            order.filler_number = order.accession_number
            _update(conn, ORDER, order.id, {"filler_number": order.filler_number})
        created.append(order)
    return created


def _bookable(session: Session, order_id: int, what: str) -> ImagingOrder:
    order = session.get(ImagingOrder, order_id, populate_existing=True)
    if order is None:
        raise RegistryError(Problem.UNKNOWN, "order.id", f"order {order_id} does not exist")
    if order.status not in BOOKABLE:
        raise RegistryError(Problem.CONFLICT, "order.status",
                            f"order {order.accession_number} is {order.status}; only a scheduled or arrived "
                            f"order can be {what}")
    return order


def open_step(session: Session, order: ImagingOrder) -> ProcedureStep | None:
    """The step a desk booking moves: the order's first one not yet performed or ended."""
    return session.exec(select(ProcedureStep).where(
        ProcedureStep.order == order.id,
        col(ProcedureStep.status).in_([StepStatus.SCHEDULED, StepStatus.ARRIVED]))
        .order_by(col(ProcedureStep.id)).execution_options(populate_existing=True)).first()


def reschedule_order(session: Session, order_id: int, step: StepIn, ctx: Context) -> ImagingOrder:
    """Move an order's open step to another room or time (the caller checked the schedule):
    its station, location, start and duration become ``step``'s; an order event says from where."""
    order = _bookable(session, order_id, "moved")
    current = open_step(session, order)
    if current is None:
        raise RegistryError(Problem.CONFLICT, "order.steps",
                            f"order {order.accession_number} has no step left to move")
    before = f"{current.station_ae_title} {current.start:%Y-%m-%d %H:%M}" if current.start else current.station_ae_title
    for attribute in STEP_FIELDS:
        _set(current, attribute, getattr(step, attribute))
    current.start_date = current.start.strftime("%Y%m%d") if current.start else ""
    current.start_time = current.start.strftime("%H%M%S") if current.start else ""
    session.add(current)
    order.updated_at = utcnow()
    session.add(order)
    after = f"{current.station_ae_title} {current.start:%Y-%m-%d %H:%M}" if current.start else current.station_ae_title
    session.add(OrderEvent(order=order.id, step=current.id, from_status=order.status, to_status=order.status,
                           by=ctx.by, note=f"moved from {before} to {after}"))
    session.flush()
    return order


CONFIRMED = "booking confirmed"  # the note of the order event a confirmation writes


def confirm_order(session: Session, order_id: int, ctx: Context, note: str = "") -> ImagingOrder:
    """The patient agreed to the booked time: an order event records it (the status stays)."""
    order = _bookable(session, order_id, "confirmed")
    session.add(OrderEvent(order=order.id, from_status=order.status, to_status=order.status, by=ctx.by,
                           note=f"{CONFIRMED}: {note}" if note else CONFIRMED))
    session.flush()
    return order


def cancel_order(session: Session, order_id: int, reason: str, ctx: Context) -> ImagingOrder:
    """Cancel an order at the desk, through the lifecycle (which tells the HIS, ``ctx.notify``);
    the reason is the order event's note, and what the HIS is told (ORC-16)."""
    if not reason.strip():
        raise RegistryError(Problem.CONFLICT, "reason", "a cancellation needs a reason")
    order = session.get(ImagingOrder, order_id)
    if order is None:
        raise RegistryError(Problem.UNKNOWN, "order.id", f"order {order_id} does not exist")
    if order.status in lifecycle.ENDED:
        raise RegistryError(Problem.CONFLICT, "order.status", f"order {order.accession_number} is {order.status} already")
    return _move(session, Record(id=order_id), OrderStatus.CANCELLED, ctx, note=reason.strip())

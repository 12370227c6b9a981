"""The desk's schedule: slots of a room on a day, and the checks a booking must pass.

Nothing here writes. A room's day is cut into slots of the exam's length from each of its open
periods (``rooms.yaml``: hours less breaks and closures); an exam holds its room from its
Scheduled Procedure Step Start Date/Time (0040,0002)+(0040,0003) for its duration, and counts
against the room whose Scheduled Station AE Title (0040,0001) it carries, whoever booked it (the
desk, or the HIS through the interface engine, IHE RAD-2/RAD-4). Cancelled and discontinued
orders hold nothing.

A booking (:func:`check`) is refused, with a reason, when:

- ``past``: it starts before now (the hospital's wall clock); ``far``: more than
  :data:`HORIZON_DAYS` ahead;
- ``closed``: the room is closed then (outside its hours, in a break, on a closure);
- ``clash``: the same patient is already booked at an overlapping time, in any room;
- ``full``: the room already holds ``capacity`` exams at some moment of it.

The exams of one registration are checked together, against what is booked and against each
other, so a registration is booked whole or not at all. Bookings are serialised (one at a time,
:func:`hold_schedule`), so two desks cannot both take a room's last place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from sqlalchemy import text
from sqlmodel import Session, col, or_, select

from pacs.registry.models import ImagingOrder, OrderStatus, ProcedureStep, StepStatus
from pacs.registry.rooms import Room, Rooms

ENDED_ORDERS = (OrderStatus.CANCELLED.value, OrderStatus.DISCONTINUED.value)
ENDED_STEPS = (StepStatus.CANCELLED.value, StepStatus.DISCONTINUED.value)
DEFAULT_MINUTES = 15  # an exam in a room rooms.yaml does not list, with no duration of its own
HORIZON_DAYS = 731  # how far ahead the desk books: two years
# Desk bookings take this transaction-scoped lock on PostgreSQL (SQLite has one writer at a time
# already): what one desk checks stays true until it has written. "PACSDESK" in ASCII.
BOOKING_LOCK = 0x5041435344455344


class Refused(StrEnum):
    """Why a booking is refused (the desk's API answers 409 with it, 400 for the first three)."""

    PAST = "past"
    FAR = "far"  # beyond HORIZON_DAYS
    UNKNOWN = "unknown"  # room or procedure not known, or the procedure is not done in the room
    CLOSED = "closed"
    CLASH = "clash"
    FULL = "full"


@dataclass(frozen=True)
class Held:
    """An exam already booked: it holds its room and its patient from ``start`` to ``end``."""

    order_id: int
    step_id: int
    patient: int
    station_ae_title: str
    start: datetime
    end: datetime
    accession_number: str


@dataclass(frozen=True)
class Wanted:
    """An exam the desk wants to book (``order_id`` None) or to move (the order it moves)."""

    patient: int
    room: Room
    procedure_code: str
    start: datetime
    minutes: int
    order_id: int | None = None
    label: str = ""  # how a refusal names it ("exam 2")

    @property
    def end(self) -> datetime:
        return self.start + timedelta(minutes=self.minutes)


@dataclass(frozen=True)
class Refusal:
    problem: Refused
    message: str
    exam: int  # index of the exam in the request


@dataclass(frozen=True)
class Slot:
    start: datetime
    end: datetime
    capacity: int
    booked: int
    past: bool

    @property
    def free(self) -> int:
        return 0 if self.past else max(0, self.capacity - self.booked)


def hold_schedule(session: Session) -> None:
    """Serialise desk bookings until the unit of work ends (PostgreSQL; on SQLite a writer
    holds the database's write lock from its first statement)."""
    if session.connection().dialect.name == "postgresql":
        session.connection().execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": BOOKING_LOCK})


def _minutes_of(step: ProcedureStep, rooms: Rooms) -> int:
    if step.duration_minutes:
        return step.duration_minutes
    room = rooms.by_station(step.station_ae_title)
    if room is not None:
        return rooms.by_modality.get(room.modality, DEFAULT_MINUTES)
    return rooms.by_modality.get(step.modality, DEFAULT_MINUTES)


def held(session: Session, rooms: Rooms, *, days: Iterable[date], stations: Iterable[str] = (),
         patients: Iterable[int] = ()) -> list[Held]:
    """The exams booked on ``days`` in the rooms of ``stations`` or for ``patients``."""
    stations, patients = sorted(set(stations)), sorted(set(patients))
    if not stations and not patients:
        return []
    wanted_days = sorted({d.strftime("%Y%m%d") for d in days})
    who = []
    if stations:
        who.append(col(ProcedureStep.station_ae_title).in_(stations))
    if patients:
        who.append(col(ImagingOrder.patient).in_(patients))
    rows = session.exec(
        select(ProcedureStep, ImagingOrder.patient, ImagingOrder.accession_number)
        .join(ImagingOrder, col(ImagingOrder.id) == ProcedureStep.order)
        .where(col(ProcedureStep.start_date).in_(wanted_days), or_(*who),
               col(ImagingOrder.status).not_in(ENDED_ORDERS), col(ProcedureStep.status).not_in(ENDED_STEPS))
    ).all()
    out = []
    for step, patient, accession in rows:
        if step.start is None:
            continue
        out.append(Held(order_id=step.order, step_id=step.id or 0, patient=patient,
                        station_ae_title=step.station_ae_title, start=step.start,
                        end=step.start + timedelta(minutes=_minutes_of(step, rooms)),
                        accession_number=accession))
    return out


def most_at_once(intervals: Sequence[tuple[datetime, datetime]], start: datetime, end: datetime) -> int:
    """How many of ``intervals`` run at once, at most, at some moment from ``start`` to ``end``."""
    inside = [(a, b) for a, b in intervals if a < end and start < b]
    moments = {start} | {a for a, _ in inside if a > start}
    return max((sum(1 for a, b in inside if a <= t < b) for t in moments), default=0)


def slots(session: Session, rooms: Rooms, room: Room, day: date, procedure_code: str, now: datetime) -> list[Slot]:
    """The day's slots of ``room`` for an exam of ``procedure_code``, each with what it holds."""
    minutes = rooms.slot_minutes(room, procedure_code)
    step = timedelta(minutes=minutes)
    booked = [(h.start, h.end) for h in held(session, rooms, days=[day], stations=[room.station_ae_title])]
    out = []
    for period in room.open_periods(day):
        start = datetime.combine(day, period.start)
        last = datetime.combine(day, period.end)
        while start + step <= last:
            end = start + step
            if room.closure_at(start, end) is None:
                out.append(Slot(start=start, end=end, capacity=room.capacity,
                                booked=most_at_once(booked, start, end), past=start < now))
            start = end
    return out


def _fits(room: Room, start: datetime, end: datetime) -> bool:
    if start.date() != end.date() and end.time() != datetime.min.time():
        return False
    return any(datetime.combine(start.date(), p.start) <= start and end <= datetime.combine(start.date(), p.end)
               for p in room.open_periods(start.date()))


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M}"


def check(session: Session, rooms: Rooms, wanted: Sequence[Wanted], now: datetime) -> list[Refusal]:
    """Every reason the exams of one registration (or one move) cannot be booked as asked."""
    refusals: list[Refusal] = []
    moving = {w.order_id for w in wanted if w.order_id is not None}
    booked = [h for h in held(session, rooms, days={w.start.date() for w in wanted},
                              stations={w.room.station_ae_title for w in wanted},
                              patients={w.patient for w in wanted})
              if h.order_id not in moving]
    for index, w in enumerate(wanted):
        name = w.label or f"exam {index + 1}"
        if w.start < now:
            refusals.append(Refusal(Refused.PAST, f"{name}: {_when(w.start)} has passed (now {_when(now)})", index))
            continue
        if w.start > now + timedelta(days=HORIZON_DAYS):
            refusals.append(Refusal(Refused.FAR, f"{name}: {_when(w.start)} is more than {HORIZON_DAYS} days ahead",
                                    index))
            continue
        closure = w.room.closure_at(w.start, w.end)
        if closure is not None:
            refusals.append(Refusal(Refused.CLOSED, f"{name}: room {w.room.room} is closed "
                                                    f"{closure.first}{'' if closure.last == closure.first else ' to ' + str(closure.last)}"
                                                    f"{' ' + str(closure.period) if closure.period else ''}"
                                                    f"{': ' + closure.reason if closure.reason else ''}", index))
            continue
        if not _fits(w.room, w.start, w.end):
            refusals.append(Refusal(Refused.CLOSED, f"{name}: {_when(w.start)}-{w.end:%H:%M} is outside room "
                                                    f"{w.room.room}'s hours that day "
                                                    f"({w.room.opening_hours_text(w.start.date())})", index))
            continue
        earlier = [o for o in wanted[:index] if now <= o.start <= now + timedelta(days=HORIZON_DAYS)]
        same_patient = [h for h in booked if h.patient == w.patient and h.start < w.end and w.start < h.end]
        same_patient_here = [o for o in earlier if o.patient == w.patient and o.start < w.end and w.start < o.end]
        if same_patient:
            other = same_patient[0]
            where = rooms.by_station(other.station_ae_title)
            refusals.append(Refusal(Refused.CLASH, f"{name}: the patient is already booked "
                                                   f"{_when(other.start)}-{other.end:%H:%M} in "
                                                   f"{where.room if where else other.station_ae_title} "
                                                   f"(accession {other.accession_number})", index))
            continue
        if same_patient_here:
            other_w = same_patient_here[0]
            refusals.append(Refusal(Refused.CLASH, f"{name} overlaps {other_w.label or 'an exam'} of this "
                                                   f"registration ({_when(other_w.start)}-{other_w.end:%H:%M})", index))
            continue
        in_room = [(h.start, h.end) for h in booked if h.station_ae_title == w.room.station_ae_title]
        in_room += [(o.start, o.end) for o in earlier if o.room.station_ae_title == w.room.station_ae_title]
        taken = most_at_once(in_room, w.start, w.end)
        if taken >= w.room.capacity:
            refusals.append(Refusal(Refused.FULL, f"{name}: room {w.room.room} is full "
                                                  f"{_when(w.start)}-{w.end:%H:%M} ({taken} of {w.room.capacity} "
                                                  "booked)", index))
    return refusals

"""Device rules: how images from a device that cannot query the worklist find their order.

A modality that queries the worklist (IHE RAD-5) copies the order's Study Instance UID and
Accession Number into its images, and the archive finds the order directly. Older devices
cannot; their images carry what the technologist typed, or nothing. ``mappings/devices.yaml``
says, per device, how such images are tied to a patient and an order (what IHE and dcm4chee call
reconciliation). The archive calls :func:`match_order` for every new study whose images carry no
order it can find directly, and files the study under the order it answers, or puts it on the
reconciliation worklist with the reason.

The file, in short (its header explains every key)::

    default:
      match: [accession, study_uid]
    devices:
      - {calling_ae: DR_OLD, modality: DX, room: DR1, match: [accession, room]}

The first device entry whose ``calling_ae``, ``station_name`` and ``modality`` (those it gives)
all fit the images wins; ``default`` takes the rest. Its ``match`` strategies are tried in turn
until one gives exactly one order:

- ``study_uid``: the order whose Study Instance UID is the images' (0020,000D);
- ``accession``: the order whose Accession Number is the images' (0008,0050);
- ``patient_id``: the images' Patient ID (0010,0020) names one patient (merges followed) who has
  exactly one open order with a step of the device's modality scheduled on the day of the images
  (or within ``patient_id_window_hours``);
- ``room``: the day's steps on the device's room (Scheduled Station AE Title, or Scheduled Station
  Name): the one in progress, else the one checked in, else the one scheduled step starting within
  ``window_minutes`` of the images. More than one in any tier is left to a person.

Cancelled and discontinued orders never match. How the archive uses it::

    rules, problems = load_device_rules(settings.mappings_dir)
    keys = keys_from_dataset(first_image, calling_ae=assoc.requestor.ae_title)
    with db.session() as session:
        found = match_order(session, rules, keys, now=local_now)
    # found.order_id, found.step_id, found.strategy == 17, 41, "room"
    # found.reason == "room DR1: order 17 (accession A0017) is in progress there"
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlmodel import Session, col, select

from pacs.integration.mapping import Problems, read_yaml
from pacs.registry import service
from pacs.registry.models import (
    ImagingOrder,
    OrderStatus,
    PatientIdentifier,
    ProcedureStep,
    StepStatus,
)

FILE_NAME = "devices.yaml"

STUDY_UID, ACCESSION, PATIENT_ID, ROOM = "study_uid", "accession", "patient_id", "room"
STRATEGIES: dict[str, str] = {
    STUDY_UID: "the order whose Study Instance UID is the images' (0020,000D)",
    ACCESSION: "the order whose Accession Number is the images' (0008,0050)",
    PATIENT_ID: "the one open order of the patient named by the images' Patient ID (0010,0020) "
                "with a step of the device's modality on that day",
    ROOM: "the step in progress, else checked in, else scheduled within window_minutes, "
          "in the device's room",
}
DEFAULT_MATCH = (ACCESSION, STUDY_UID)

SELECTORS = ("calling_ae", "station_name", "modality")
# Keys that only one strategy reads: naming them without the strategy is almost always a slip.
STRATEGY_KEYS = {
    "room": ROOM,
    "window_minutes": ROOM,
    "patient_id_window_hours": PATIENT_ID,
    "patient_id_issuer": PATIENT_ID,
}
ENTRY_KEYS = {*SELECTORS, "match", "comment", *STRATEGY_KEYS}
TOP_KEYS = {"default", "devices"}

DEFAULT_WINDOW_MINUTES = 30
MAX_WINDOW_MINUTES = 12 * 60  # half a day; beyond that, a "scheduled nearby" pick means nothing
MAX_PATIENT_WINDOW_HOURS = 7 * 24
AE_TITLE_MAX = 16  # PS3.5 6.2, value representation AE

# Orders that ended never match; the patient and room picks want orders still to be done.
ENDED_ORDERS = (OrderStatus.CANCELLED.value, OrderStatus.DISCONTINUED.value)
OPEN_ORDERS = (OrderStatus.SCHEDULED.value, OrderStatus.ARRIVED.value, OrderStatus.IN_PROGRESS.value)
OPEN_STEPS = (StepStatus.SCHEDULED.value, StepStatus.ARRIVED.value, StepStatus.STARTED.value)
ENDED_STEPS = (StepStatus.CANCELLED.value, StepStatus.DISCONTINUED.value)


# --------------------------------------------------------------------------------------------
# What the archive reads from the first image of a study
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageKeys:
    """The attributes of a new study that reconciliation looks at.

    ``acquired_at`` is a naive local datetime, or a :class:`~datetime.date` when the images carry
    a date but no time, or ``None`` when they carry neither.
    """

    calling_ae: str = ""  # A-ASSOCIATE-RQ Calling AE Title, or the STOW-RS client's
    accession_number: str = ""  # (0008,0050) SH
    study_instance_uid: str = ""  # (0020,000D) UI
    patient_id: str = ""  # (0010,0020) LO
    issuer_of_patient_id: str = ""  # (0010,0021) LO
    modality: str = ""  # (0008,0060) CS
    station_name: str = ""  # (0008,1010) SH
    acquired_at: datetime | date | None = None  # (0008,0020)+(0008,0030), else acquisition/content


# Where a study's date and time may be, in order of preference: (date, time) keyword pairs, or a
# single DT keyword.
_WHEN_SOURCES: tuple[tuple[str, str | None], ...] = (
    ("StudyDate", "StudyTime"),  # (0008,0020) DA, (0008,0030) TM
    ("AcquisitionDateTime", None),  # (0008,002A) DT
    ("AcquisitionDate", "AcquisitionTime"),  # (0008,0022) DA, (0008,0032) TM
    ("ContentDate", "ContentTime"),  # (0008,0023) DA, (0008,0033) TM
    ("SeriesDate", "SeriesTime"),  # (0008,0021) DA, (0008,0031) TM
)


def keys_from_dataset(ds: Any, calling_ae: str) -> ImageKeys:
    """The :class:`ImageKeys` of a pydicom ``Dataset`` received from ``calling_ae``.

    The study's time is StudyDate+StudyTime, else AcquisitionDateTime, else AcquisitionDate+Time,
    ContentDate+Time, SeriesDate+Time: the first source with both a date and a time, else the
    first date found. A UTC offset in a DT value is dropped (the wall-clock time is kept).

    >>> from pydicom import Dataset
    >>> ds = Dataset()
    >>> ds.StudyDate, ds.StudyTime, ds.Modality = "20240506", "091200", "DX"
    >>> keys_from_dataset(ds, "DR_OLD").acquired_at
    datetime.datetime(2024, 5, 6, 9, 12)
    """

    def text(keyword: str) -> str:
        value = ds.get(keyword)
        return "" if value is None else str(value).strip()

    return ImageKeys(
        calling_ae=calling_ae.strip(),
        accession_number=text("AccessionNumber"),
        study_instance_uid=text("StudyInstanceUID"),
        patient_id=text("PatientID"),
        issuer_of_patient_id=text("IssuerOfPatientID"),
        modality=text("Modality").upper(),
        station_name=text("StationName"),
        acquired_at=_when(ds),
    )


def _when(ds: Any) -> datetime | date | None:
    first_date: date | None = None
    for date_keyword, time_keyword in _WHEN_SOURCES:
        if time_keyword is None:
            found = parse_dt(ds.get(date_keyword))
            if isinstance(found, datetime):
                return found
        else:
            day = parse_da(ds.get(date_keyword))
            clock = parse_tm(ds.get(time_keyword)) if day is not None else None
            if day is not None and clock is not None:
                return datetime.combine(day, clock)
            found = day
        if found is not None and first_date is None:
            first_date = found
    return first_date


def parse_da(value: Any) -> date | None:
    """A DA value (PS3.5 6.2: ``YYYYMMDD``; also the ACR-NEMA ``YYYY.MM.DD``), else None."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    digits = str(value or "").strip().replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def parse_tm(value: Any) -> time | None:
    """A TM value (PS3.5 6.2: ``HH[MM[SS[.FFFFFF]]]``; also ``HH:MM:SS``), else None."""
    if isinstance(value, time):
        return value.replace(tzinfo=None)
    text = str(value or "").strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        return None
    hour, minute = int(whole[:2]), int(whole[2:4] or 0)
    second = min(int(whole[4:6] or 0), 59)  # TM allows a leap second (60); datetime does not
    try:
        return time(hour, minute, second, int(fraction[:6].ljust(6, "0")) if fraction else 0)
    except ValueError:
        return None


def parse_dt(value: Any) -> datetime | date | None:
    """A DT value (PS3.5 6.2: ``YYYYMMDD[HH[MM[SS[.F]]]][&ZZXX]``) as naive wall-clock time; a
    date when it stops at the day, None when it says less or is not a DT."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    text = str(value or "").strip()
    for sign in "+-":
        text = text.split(sign, 1)[0]
    day = parse_da(text[:8])
    if day is None:
        return None
    if len(text) == 8:
        return day
    clock = parse_tm(text[8:])
    return None if clock is None else datetime.combine(day, clock)


# --------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """One entry of devices.yaml: which images it is for, and how their order is found."""

    match: tuple[str, ...]
    calling_ae: frozenset[str] = frozenset()  # upper case
    station_name: frozenset[str] = frozenset()  # upper case
    modality: frozenset[str] = frozenset()  # upper case
    room: str = ""  # Scheduled Station AE Title (0040,0001) of the room's steps
    window_minutes: int = DEFAULT_WINDOW_MINUTES
    patient_id_window_hours: int | None = None  # None: the same day
    patient_id_issuer: str | None = None
    comment: str = ""
    line: int = 0
    is_default: bool = False

    @property
    def label(self) -> str:
        """How logs and the reconciliation worklist name the entry: ``devices.yaml:14 (DR_OLD)``."""
        if self.is_default:
            return f"{FILE_NAME}:{self.line} (default)" if self.line else f"{FILE_NAME} (default)"
        names = sorted(self.calling_ae) or sorted(self.station_name) or sorted(self.modality)
        return f"{FILE_NAME}:{self.line} ({', '.join(names)})"

    def fits(self, keys: ImageKeys) -> bool:
        """Whether every selector the entry gives accepts the images (the default takes all)."""
        return (_accepts(self.calling_ae, keys.calling_ae)
                and _accepts(self.station_name, keys.station_name)
                and _accepts(self.modality, keys.modality))

    def covers(self, other: Device) -> bool:
        """Whether every image ``other`` would take reaches this entry first."""
        return all(
            not mine or (bool(theirs) and theirs <= mine)
            for mine, theirs in ((self.calling_ae, other.calling_ae),
                                 (self.station_name, other.station_name),
                                 (self.modality, other.modality))
        )

    def modalities(self, keys: ImageKeys) -> frozenset[str]:
        """The step modalities this device's images can belong to (empty: any)."""
        if self.modality:
            return self.modality
        return frozenset({keys.modality.upper()}) if keys.modality else frozenset()


def _accepts(allowed: frozenset[str], value: str) -> bool:
    return not allowed or value.strip().upper() in allowed


@dataclass(frozen=True)
class DeviceRules:
    """The checked contents of devices.yaml."""

    path: Path
    devices: tuple[Device, ...]
    default: Device

    def device_for(self, keys: ImageKeys) -> Device:
        """The first entry that fits the images, else the default."""
        return next((d for d in self.devices if d.fits(keys)), self.default)


def load_device_rules(mappings_dir: Path) -> tuple[DeviceRules | None, list[str]]:
    """Read and check ``devices.yaml`` in ``mappings_dir``.

    Returns the rules and no problems, or None and every problem as ``file:line: what``.
    """
    path = Path(mappings_dir) / FILE_NAME
    problems = Problems()
    if not path.exists():
        problems.add(path, 0, f"{FILE_NAME} is missing (it may hold just `default: {{match: [accession]}}`)")
        return None, problems
    try:
        data = read_yaml(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problems.add(path, (mark.line + 1) if mark else 1, f"not valid YAML: {getattr(exc, 'problem', exc)}")
        return None, problems
    except OSError as exc:
        problems.add(path, 1, f"cannot read: {exc.strerror}")
        return None, problems
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add(path, 1, "devices.yaml is a mapping with `default` and a `devices` list")
        return None, problems
    unknown = set(data) - TOP_KEYS
    if unknown:
        problems.add(path, getattr(data, "line", 1),
                     f"unknown key(s) {', '.join(sorted(unknown))}; the file holds default and devices")

    default = Device(match=DEFAULT_MATCH, is_default=True)
    if "default" in data:
        default = _read_device(data["default"], path, problems, is_default=True) or default
    entries = data.get("devices") or []
    if not isinstance(entries, list):
        problems.add(path, getattr(entries, "line", getattr(data, "line", 1)),
                     "devices must be a list of entries, each starting with `- `")
        entries = []
    devices: list[Device] = []
    for entry in entries:
        device = _read_device(entry, path, problems, is_default=False)
        if device is None or not (device.calling_ae or device.station_name or device.modality):
            continue  # an entry without selectors has been reported; it must not hide the rest
        earlier = next((d for d in devices if d.covers(device)), None)
        if earlier is not None:
            shared = sorted(earlier.calling_ae & device.calling_ae)
            what = f"calling_ae {', '.join(shared)} is already taken by" if shared else "already covered by"
            problems.add(path, device.line,
                         f"{what} the entry at line {earlier.line}, which gets every image this entry "
                         "would: this entry is never used (remove it, or narrow the earlier one)")
        devices.append(device)
    if problems:
        return None, list(dict.fromkeys(problems))
    return DeviceRules(path=path, devices=tuple(devices), default=default), problems


def _read_device(entry: Any, path: Path, problems: Problems, *, is_default: bool) -> Device | None:
    line = getattr(entry, "line", 0)
    where = "default" if is_default else "each device entry"
    if not isinstance(entry, dict):
        problems.add(path, line, f"{where} is a mapping of keys such as calling_ae and match")
        return None
    for key in sorted(set(entry) - ENTRY_KEYS):
        close = difflib.get_close_matches(key, sorted(ENTRY_KEYS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.add(path, line, f"unknown key {key!r}{hint}")

    selectors = {key: _texts(entry, key, path, line, problems) for key in SELECTORS}
    given = [key for key in SELECTORS if selectors[key]]
    if is_default and given:
        problems.add(path, line, f"default takes every device no entry matches; move {', '.join(given)} "
                                 "to an entry under devices")
    if not is_default and not given and all(key not in entry for key in SELECTORS):
        problems.add(path, line, "give calling_ae, station_name or modality: an entry without any "
                                 "would take every device (that is what default is for)")
    for title in selectors["calling_ae"]:
        if len(title) > AE_TITLE_MAX:
            problems.add(path, line, f"calling_ae {title!r} is longer than an AE title can be "
                                     f"({AE_TITLE_MAX} characters)")

    match_node = entry.get("match")
    match_line = getattr(match_node, "line", line) or line
    strategies = _texts(entry, "match", path, line, problems)
    if not strategies:
        problems.add(path, line, "match: list the strategies to try in order, e.g. [accession, room] "
                                 f"(one of {', '.join(sorted(STRATEGIES))})")
    seen: set[str] = set()
    for name in strategies:
        if name not in STRATEGIES:
            close = difflib.get_close_matches(name, sorted(STRATEGIES), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            problems.add(path, match_line, f"unknown strategy {name!r}; {hint}strategies are "
                                           + ", ".join(sorted(STRATEGIES)))
        elif name in seen:
            problems.add(path, match_line, f"strategy {name} is listed twice")
        seen.add(name)
    for key, strategy in STRATEGY_KEYS.items():
        if key in entry and strategy not in strategies:
            problems.add(path, line, f"{key} is read only by the {strategy} strategy, which match "
                                     "does not list")

    room = _text(entry, "room", path, line, problems)
    if ROOM in strategies and not room and not selectors["station_name"]:
        problems.add(path, line, "match lists room but the entry names no room: give room (the "
                                 "Scheduled Station AE Title of its steps, e.g. DR1) or station_name")
    window = _whole(entry, "window_minutes", 0, MAX_WINDOW_MINUTES, path, line, problems)
    hours = _whole(entry, "patient_id_window_hours", 1, MAX_PATIENT_WINDOW_HOURS, path, line, problems)
    issuer = _text(entry, "patient_id_issuer", path, line, problems) if "patient_id_issuer" in entry else None
    return Device(
        match=tuple(dict.fromkeys(s for s in strategies if s in STRATEGIES)),
        calling_ae=frozenset(v.upper() for v in selectors["calling_ae"]),
        station_name=frozenset(v.upper() for v in selectors["station_name"]),
        modality=frozenset(v.upper() for v in selectors["modality"]),
        room=room,
        window_minutes=DEFAULT_WINDOW_MINUTES if window is None else window,
        patient_id_window_hours=hours,
        patient_id_issuer=issuer,
        comment=_text(entry, "comment", path, line, problems),
        line=line,
        is_default=is_default,
    )


def _texts(entry: dict[str, Any], key: str, path: Path, line: int, problems: Problems) -> list[str]:
    """A key that takes one value or a list of them."""
    raw = entry.get(key)
    if raw is None:
        return []
    values = raw if isinstance(raw, list) else [raw]
    out = []
    for value in values:
        if isinstance(value, (dict, list)):
            problems.add(path, line, f"{key} takes a value or a list of values, e.g. {key}: [A, B]")
            return []
        text = str(value).strip()
        if not text:
            problems.add(path, line, f"{key} has an empty value")
            continue
        out.append(text)
    return out


def _text(entry: dict[str, Any], key: str, path: Path, line: int, problems: Problems) -> str:
    raw = entry.get(key)
    if raw is None:
        return ""
    if isinstance(raw, (dict, list)):
        problems.add(path, line, f"{key} takes a single value")
        return ""
    return str(raw).strip()


def _whole(entry: dict[str, Any], key: str, lowest: int, highest: int, path: Path, line: int,
           problems: Problems) -> int | None:
    raw = entry.get(key)
    if raw is None:
        return None
    text = str(raw).strip()
    if isinstance(raw, (dict, list)) or not text.isdigit() or not lowest <= int(text) <= highest:
        problems.add(path, line, f"{key} {raw!r} must be a whole number from {lowest} to {highest}")
        return None
    return int(text)


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """What reconciliation found for a study.

    ``order_id`` and ``strategy`` are None when nothing matched; ``reason`` then says, strategy by
    strategy, why (for the log and the reconciliation worklist), and ``candidates`` lists the
    orders that were in the running when a pick was ambiguous. ``patient`` is the registry
    patient of the order, or the patient the images' Patient ID named when their orders were
    ambiguous. ``device`` names the devices.yaml entry that applied.
    """

    order_id: int | None
    step_id: int | None
    strategy: str | None
    reason: str
    device: str = ""
    patient: int | None = None
    candidates: tuple[int, ...] = ()

    @property
    def matched(self) -> bool:
        return self.order_id is not None


@dataclass
class _Found:
    order: ImagingOrder
    step: ProcedureStep | None
    why: str


@dataclass
class _Missed:
    why: str
    candidates: tuple[int, ...] = ()
    patient: int | None = None


@dataclass
class _Attempt:
    session: Session
    device: Device
    keys: ImageKeys
    when: datetime | date  # the images' time, or the time of receipt
    when_is_receipt: bool

    @property
    def day(self) -> date:
        return self.when.date() if isinstance(self.when, datetime) else self.when


def match_order(session: Session, rules: DeviceRules, keys: ImageKeys, *,
                now: datetime | None = None) -> Match:
    """The order (and step) a new study belongs to, by the rules of the device that sent it.

    Read-only: it never adds, changes or flushes anything in ``session``. ``now`` (naive local
    time, default the machine's clock) stands in for the images' time when they carry none;
    the archive passes the hospital's local time.
    """
    device = rules.device_for(keys)
    when: datetime | date | None = keys.acquired_at
    attempt = _Attempt(session, device, keys, when if when is not None else (now or datetime.now()),
                       when_is_receipt=when is None)
    missed: list[tuple[str, _Missed]] = []
    with session.no_autoflush:
        for strategy in device.match:
            outcome = _STRATEGY_FUNCTIONS[strategy](attempt)
            if isinstance(outcome, _Found):
                return Match(order_id=outcome.order.id, step_id=outcome.step.id if outcome.step else None,
                             strategy=strategy, reason=outcome.why, device=device.label,
                             patient=outcome.order.patient)
            missed.append((strategy, outcome))
    reasons = "; ".join(f"{strategy}: {outcome.why}" for strategy, outcome in missed)
    if not missed:
        reasons = "no strategy is listed"
    if attempt.when_is_receipt and any(s in (PATIENT_ID, ROOM) for s, _ in missed):
        reasons += "; the images carry no date, so the time they arrived stood in"
    candidates = tuple(dict.fromkeys(c for _, outcome in missed for c in outcome.candidates))
    patient = next((outcome.patient for _, outcome in missed if outcome.patient is not None), None)
    return Match(order_id=None, step_id=None, strategy=None, reason=f"no order found: {reasons}",
                 device=device.label, patient=patient, candidates=candidates)


def _describe(orders: Iterable[ImagingOrder]) -> str:
    return ", ".join(f"order {o.id} (accession {o.accession_number or '-'})" for o in orders)


def _pick_step(session: Session, order: ImagingOrder, modalities: frozenset[str]) -> ProcedureStep | None:
    """The order's step the images belong to, when that is clear: the one live step of the
    device's modality, else the order's only live step."""
    steps = [s for s in service.steps_of(session, order) if s.status not in ENDED_STEPS]
    if modalities:
        fitting = [s for s in steps if s.modality.upper() in modalities]
        if len(fitting) == 1:
            return fitting[0]
    return steps[0] if len(steps) == 1 else None


def _single(orders: Sequence[ImagingOrder], attempt: _Attempt, what: str) -> _Found | _Missed:
    """The order named by a number that should identify one (study UID, accession)."""
    live = [o for o in orders if o.status not in ENDED_ORDERS]
    if len(live) == 1:
        order = live[0]
        return _Found(order, _pick_step(attempt.session, order, attempt.device.modalities(attempt.keys)),
                      f"{what} is {_describe([order])}")
    if len(live) > 1:
        return _Missed(f"{what} belongs to {len(live)} orders ({_describe(live)}); left for a person to "
                       "reconcile", tuple(o.id for o in live if o.id is not None))
    if orders:
        return _Missed(f"{what} is {_describe(orders)}, which is {orders[0].status}")
    return _Missed(f"no order has {what}")


def match_study_uid(attempt: _Attempt) -> _Found | _Missed:
    """The order whose Study Instance UID (0020,000D) the images carry."""
    uid = attempt.keys.study_instance_uid
    if not uid:
        return _Missed("the images carry no Study Instance UID")
    orders = attempt.session.exec(
        select(ImagingOrder).where(ImagingOrder.study_instance_uid == uid)).all()
    return _single(orders, attempt, f"Study Instance UID {uid}")


def match_accession(attempt: _Attempt) -> _Found | _Missed:
    """The order whose Accession Number (0008,0050) the images carry."""
    accession = attempt.keys.accession_number
    if not accession:
        return _Missed("the images carry no Accession Number")
    orders = attempt.session.exec(
        select(ImagingOrder).where(ImagingOrder.accession_number == accession)
        .order_by(col(ImagingOrder.id))).all()
    return _single(orders, attempt, f"accession number {accession}")


def _patients_by_id(attempt: _Attempt) -> tuple[list[int], str]:
    """The registry patients (merges followed) the images' Patient ID can name, and the
    authority wording for messages."""
    session, value = attempt.session, attempt.keys.patient_id
    authorities = sorted(set(session.exec(
        select(PatientIdentifier.authority).where(PatientIdentifier.value == value)).all()))
    wanted = attempt.device.patient_id_issuer
    if wanted is not None:
        authorities = [a for a in authorities if a == wanted]
        wording = f" (issuer {wanted or 'none'})"
    elif attempt.keys.issuer_of_patient_id in authorities:
        # Devices often fill Issuer of Patient ID with something of their own; use it only
        # when the registry knows the value under that issuer.
        authorities = [attempt.keys.issuer_of_patient_id]
        wording = f" (issuer {attempt.keys.issuer_of_patient_id})"
    else:
        wording = ""
    found: list[int] = []
    for authority in authorities:
        patient = service.patient_by_id(session, value, authority)
        if patient is not None and patient.id is not None and patient.id not in found:
            found.append(patient.id)
    return found, wording


def match_patient_id(attempt: _Attempt) -> _Found | _Missed:
    """The one open order, with a step of the device's modality near the images' time, of the
    patient the images' Patient ID (0010,0020) names (IHE RAD TF-1 "unscheduled" and "patient
    information reconciliation" cases)."""
    keys, session, device = attempt.keys, attempt.session, attempt.device
    if not keys.patient_id:
        return _Missed("the images carry no Patient ID")
    patients, issuer = _patients_by_id(attempt)
    if not patients:
        return _Missed(f"Patient ID {keys.patient_id}{issuer} is not known")
    if len(patients) > 1:
        return _Missed(f"Patient ID {keys.patient_id} belongs to {len(patients)} patients under different "
                       "issuers; set patient_id_issuer for this device")
    patient = patients[0]
    hours = device.patient_id_window_hours
    if hours is not None and isinstance(attempt.when, datetime):
        low, high = attempt.when - timedelta(hours=hours), attempt.when + timedelta(hours=hours)
        span = f"within {hours} h of {attempt.when:%Y-%m-%d %H:%M}"
    else:
        low = datetime.combine(attempt.day, time())
        high = low + timedelta(days=1) - timedelta(microseconds=1)
        span = f"on {attempt.day:%Y-%m-%d}"
    rows = session.exec(
        select(ImagingOrder, ProcedureStep)
        .join(ProcedureStep, col(ProcedureStep.order) == col(ImagingOrder.id))
        .where(ImagingOrder.patient == patient,
               col(ImagingOrder.status).in_(OPEN_ORDERS),
               col(ProcedureStep.status).in_(OPEN_STEPS),
               col(ProcedureStep.start) >= low, col(ProcedureStep.start) <= high)
        .order_by(col(ImagingOrder.id), col(ProcedureStep.id))).all()
    modalities = device.modalities(keys)
    if modalities:
        rows = [(o, s) for o, s in rows if s.modality.upper() in modalities]
    kind = f"{'/'.join(sorted(modalities))} " if modalities else ""
    orders = {o.id: o for o, _ in rows}
    if len(orders) == 1:
        order = next(iter(orders.values()))
        steps = [s for _, s in rows]
        return _Found(order, steps[0] if len(steps) == 1 else None,
                      f"Patient ID {keys.patient_id} has one open {kind}order {span}: {_describe([order])}")
    if not orders:
        return _Missed(f"Patient ID {keys.patient_id} has no open {kind}order {span}", patient=patient)
    return _Missed(f"Patient ID {keys.patient_id} has {len(orders)} open {kind}orders {span} "
                   f"({_describe(orders.values())}); left for a person to reconcile",
                   tuple(i for i in orders if i is not None), patient=patient)


def _state(step: ProcedureStep, order: ImagingOrder) -> str:
    """Where a step stands at the desk: the step's own status, or the order's when the desk
    recorded it there (an HL7 status change moves the order and leaves its steps)."""
    if step.status == StepStatus.STARTED or order.status == OrderStatus.IN_PROGRESS:
        return StepStatus.STARTED
    if step.status == StepStatus.ARRIVED or order.status == OrderStatus.ARRIVED:
        return StepStatus.ARRIVED
    return StepStatus.SCHEDULED


def match_room(attempt: _Attempt) -> _Found | _Missed:
    """The day's list of the device's room: the one step in progress, else the one checked in,
    else the one scheduled step whose start lies within ``window_minutes`` of the images."""
    device, session = attempt.device, attempt.session
    if device.room:
        room, wanted = device.room, device.room.upper()

        def in_room(step: ProcedureStep) -> bool:
            return step.station_ae_title.strip().upper() == wanted
    else:
        room = "/".join(sorted(device.station_name))

        def in_room(step: ProcedureStep) -> bool:
            return step.station_name.strip().upper() in device.station_name
    window = timedelta(minutes=device.window_minutes)
    day_start = datetime.combine(attempt.day, time())
    day_end = day_start + timedelta(days=1) - timedelta(microseconds=1)
    low, high = day_start, day_end
    if isinstance(attempt.when, datetime):
        low, high = min(low, attempt.when - window), max(high, attempt.when + window)
    rows = session.exec(
        select(ProcedureStep, ImagingOrder)
        .join(ImagingOrder, col(ProcedureStep.order) == col(ImagingOrder.id))
        .where(col(ProcedureStep.status).in_(OPEN_STEPS),
               col(ProcedureStep.start) >= low, col(ProcedureStep.start) <= high,
               col(ImagingOrder.status).in_(OPEN_ORDERS))
        .order_by(col(ProcedureStep.start), col(ProcedureStep.id))).all()
    rows = [(s, o) for s, o in rows if in_room(s)]
    today = [(s, o) for s, o in rows if s.start is not None and s.start.date() == attempt.day]

    for state, wording in ((StepStatus.STARTED, "in progress"), (StepStatus.ARRIVED, "checked in")):
        tier = [(s, o) for s, o in today if _state(s, o) == state]
        orders = {o.id: o for _, o in tier}
        if len(orders) == 1:
            order = next(iter(orders.values()))
            return _Found(order, tier[0][0] if len(tier) == 1 else None,
                          f"room {room}: {_describe([order])} is {wording} there")
        if len(orders) > 1:
            return _Missed(f"room {room}: {len(orders)} orders are {wording} there ({_describe(orders.values())}); "
                           "left for a person to reconcile", tuple(i for i in orders if i is not None))

    if not isinstance(attempt.when, datetime):
        return _Missed(f"room {room}: nothing is in progress or checked in on {attempt.day:%Y-%m-%d}, and "
                       "the images carry a date but no time to compare with the schedule")
    when = attempt.when
    scheduled = [(s, o) for s, o in rows if _state(s, o) == StepStatus.SCHEDULED]
    near = [(s, o) for s, o in scheduled if s.start is not None and abs(s.start - when) <= window]
    orders = {o.id: o for _, o in near}
    if len(orders) == 1:
        order = next(iter(orders.values()))
        return _Found(order, near[0][0] if len(near) == 1 else None,
                      f"room {room}: {_describe([order])} is the one scheduled within "
                      f"{device.window_minutes} min of {when:%H:%M}")
    if len(orders) > 1:
        return _Missed(f"room {room}: {len(orders)} orders are scheduled within {device.window_minutes} min "
                       f"of {when:%H:%M} ({_describe(orders.values())}); left for a person to reconcile",
                       tuple(i for i in orders if i is not None))
    nearest = min(scheduled, key=lambda so: abs(so[0].start - when), default=None)  # type: ignore[operator]
    hint = (f" (nearest: {_describe([nearest[1]])} at {nearest[0].start:%H:%M})"
            if nearest is not None and nearest[0].start is not None else "")
    return _Missed(f"room {room}: nothing in progress or checked in, and no step scheduled within "
                   f"{device.window_minutes} min of {when:%Y-%m-%d %H:%M}{hint}")


_STRATEGY_FUNCTIONS = {
    STUDY_UID: match_study_uid,
    ACCESSION: match_accession,
    PATIENT_ID: match_patient_id,
    ROOM: match_room,
}

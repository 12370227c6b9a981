"""Rooms the registration desk books exams into: ``mappings/rooms.yaml``.

An interface analyst (or the department's scheduler) lists each examination room with its
modality, the Scheduled Station AE Title its worklist entries carry (DICOM PS3.4 K.6.1.2.2,
(0040,0001)), where it is, when it is open (per weekday, with breaks), how long one exam holds
it (per procedure code, by default per modality) and how many patients one slot takes; and the
days or hours it is closed. The desk's slots and its checks for a full slot or a clash are
computed from this (:mod:`pacs.registry.scheduling`). The file, in short (its header explains
every key)::

    slot_minutes:
      by_modality: {CT: 15, MR: 30}
      by_procedure: {CT0002: 20}
    rooms:
      - room: CT1
        modality: CT
        station_ae_title: CT1
        hours: {mon-fri: [08:00-12:00, 13:30-17:30], sat: [08:00-12:00]}
        closures:
          - {date: 2026-12-25, reason: 设备年检}

Checked like every mapping file: problems as ``file:line: what`` (``pacs mappings check``), and
a set with a problem is refused while the last good one stays in force. A mappings folder
without the file has no rooms: the desk can then book nothing (its API says why).
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import yaml

from pacs.integration.mapping import Problems, Procedure, read_yaml

FILE_NAME = "rooms.yaml"
AE_TITLE_MAX = 16  # PS3.5 6.2, value representation AE
SH_MAX = 16  # PS3.5 6.2, value representation SH: the station name (0040,0010)
LO_MAX = 64  # PS3.5 6.2, value representation LO: the location (0040,0011)
MAX_SLOT_MINUTES = 24 * 60
MAX_CAPACITY = 100

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # date.weekday() 0..6
EVERY_DAY = "daily"
TOP_KEYS = {"slot_minutes", "rooms"}
SLOT_KEYS = {"by_modality", "by_procedure"}
ROOM_KEYS = {"room", "name", "modality", "station_ae_title", "station_name", "location", "capacity",
             "hours", "breaks", "slot_minutes", "closures", "comment"}
CLOSURE_KEYS = {"date", "from", "to", "time", "reason"}
RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Period:
    """A stretch of one day, ``start`` to ``end`` (local wall-clock times)."""

    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class Closure:
    """Days (``first`` to ``last``, inclusive) the room is closed, all day or for ``period``."""

    first: date
    last: date
    period: Period | None = None
    reason: str = ""
    line: int = 0

    def covers(self, start: datetime, end: datetime) -> bool:
        """Whether an exam from ``start`` to ``end`` (on one day) falls into this closure."""
        if not self.first <= start.date() <= self.last:
            return False
        if self.period is None:
            return True
        return start.time() < self.period.end and self.period.start < end.time()


@dataclass(frozen=True)
class Room:
    """One examination room: what the desk books, and what its worklist entries carry."""

    room: str  # what the desk calls it (CT2)
    modality: str  # (0008,0060) of its steps
    station_ae_title: str  # (0040,0001) Scheduled Station AE Title
    name: str = ""  # what the patient's slip calls it (CT 2室)
    station_name: str = ""  # (0040,0010) Scheduled Station Name
    location: str = ""  # (0040,0011) Scheduled Procedure Step Location
    capacity: int = 1  # patients one slot takes (two DR stands in one room: 2)
    hours: dict[int, tuple[Period, ...]] = field(default_factory=dict)  # weekday → open periods
    slot_minutes: dict[str, int] = field(default_factory=dict)  # this room's own lengths by procedure code
    closures: tuple[Closure, ...] = ()
    line: int = 0

    def open_periods(self, day: date) -> tuple[Period, ...]:
        """When the room is open on ``day``: its weekday's hours (breaks already left out);
        nothing on a day a whole-day closure covers."""
        if any(c.period is None and c.first <= day <= c.last for c in self.closures):
            return ()
        return self.hours.get(day.weekday(), ())

    def closure_at(self, start: datetime, end: datetime) -> Closure | None:
        return next((c for c in self.closures if c.covers(start, end)), None)

    def opening_hours_text(self, day: date) -> str:
        return ", ".join(str(p) for p in self.open_periods(day)) or "closed"


@dataclass
class Rooms:
    """Every room of ``rooms.yaml`` and the slot lengths, checked."""

    path: Path | None
    rooms: dict[str, Room]  # by room name, upper case
    by_modality: dict[str, int]
    by_procedure: dict[str, int]

    def get(self, name: str) -> Room | None:
        return self.rooms.get(name.strip().upper())

    def by_station(self, station_ae_title: str) -> Room | None:
        return next((r for r in self.rooms.values() if r.station_ae_title == station_ae_title), None)

    def slot_minutes(self, room: Room, procedure_code: str) -> int:
        """How long one exam of ``procedure_code`` holds ``room``: the room's own length for the
        code, else the code's (``by_procedure``), else the room's modality's (``by_modality``)."""
        code = procedure_code.strip().upper()
        return room.slot_minutes.get(code) or self.by_procedure.get(code) or self.by_modality[room.modality]


NO_ROOMS = Rooms(path=None, rooms={}, by_modality={}, by_procedure={})


def load_rooms(mappings_dir: Path, procedures: dict[str, Procedure]) -> tuple[Rooms | None, list[str]]:
    """Read and check ``rooms.yaml`` in ``mappings_dir`` against the procedure table.

    Returns the rooms and no problems, or None and every problem as ``file:line: what``. A
    folder without the file has no rooms (:data:`NO_ROOMS`), which is no problem.
    """
    path = Path(mappings_dir) / FILE_NAME
    problems = Problems()
    if not path.exists():
        return NO_ROOMS, []
    try:
        data = read_yaml(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problems.add(path, (mark.line + 1) if mark else 1, f"not valid YAML: {getattr(exc, 'problem', exc)}")
        return None, problems
    except OSError as exc:
        problems.add(path, 1, f"cannot read: {exc.strerror}")
        return None, problems
    data = data or {}
    if not isinstance(data, dict):
        problems.add(path, 1, "rooms.yaml is a mapping with slot_minutes and a rooms list")
        return None, problems
    _unknown(data, TOP_KEYS, path, getattr(data, "line", 1), problems, "the file holds slot_minutes and rooms")

    slots = data.get("slot_minutes") or {}
    slots_line = getattr(slots, "line", 1)
    if not isinstance(slots, dict):
        problems.add(path, slots_line, "slot_minutes is a mapping with by_modality and by_procedure")
        slots = {}
    _unknown(slots, SLOT_KEYS, path, slots_line, problems, "slot_minutes holds by_modality and by_procedure")
    by_modality = {k.upper(): v for k, v in _minutes_map(slots.get("by_modality"), "by_modality", path,
                                                          slots_line, problems).items()}
    by_procedure = _minutes_map(slots.get("by_procedure"), "by_procedure", path, slots_line, problems)
    for code in by_procedure:
        if code not in procedures:
            problems.add(path, getattr(slots.get("by_procedure"), "line", slots_line),
                         f"by_procedure: procedure {code!r} is not in codes/procedures.csv")

    entries = data.get("rooms") or []
    if not isinstance(entries, list):
        problems.add(path, getattr(entries, "line", 1), "rooms must be a list of entries, each starting with `- `")
        entries = []
    rooms: dict[str, Room] = {}
    for entry in entries:
        room = _read_room(entry, path, problems, procedures)
        if room is None:
            continue
        key = room.room.upper()
        if key in rooms:
            problems.add(path, room.line, f"room {room.room} is already listed at line {rooms[key].line}")
            continue
        same_station = next((r for r in rooms.values() if r.station_ae_title == room.station_ae_title), None)
        if same_station is not None:
            problems.add(path, room.line, f"station_ae_title {room.station_ae_title} is already room "
                                          f"{same_station.room}'s (line {same_station.line}): each room's "
                                          "worklist entries need a station of their own")
        if room.modality not in by_modality:
            problems.add(path, room.line, f"no slot length for modality {room.modality}: add it under "
                                          "slot_minutes: by_modality")
        rooms[key] = room
    if problems:
        return None, list(dict.fromkeys(problems))
    return Rooms(path=path, rooms=rooms, by_modality=by_modality, by_procedure=by_procedure), []


def _unknown(entry: dict[str, Any], known: set[str], path: Path, line: int, problems: Problems,
             what: str) -> None:
    for key in sorted(set(entry) - known):
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; {what}"
        problems.add(path, line, f"unknown key {key!r}{hint}")


def _minutes(value: Any, what: str, path: Path, line: int, problems: Problems) -> int | None:
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_SLOT_MINUTES:
        problems.add(path, line, f"{what} {value!r} is not a whole number of minutes from 1 to {MAX_SLOT_MINUTES}")
        return None
    return int(text)


def _minutes_map(node: Any, what: str, path: Path, line: int, problems: Problems) -> dict[str, int]:
    if node is None:
        return {}
    line = getattr(node, "line", line)
    if not isinstance(node, dict):
        problems.add(path, line, f"{what} maps a code to minutes, e.g. {{CT0002: 20}}")
        return {}
    out: dict[str, int] = {}
    for code, value in node.items():
        minutes = _minutes(value, f"{what} {code}:", path, line, problems)
        if minutes is not None:
            out[code.strip().upper()] = minutes
    return out


def _text(entry: dict[str, Any], key: str, path: Path, line: int, problems: Problems, *, required: bool = False,
          limit: int | None = None) -> str:
    value = entry.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            problems.add(path, line, f"{key} is required")
        return ""
    if not isinstance(value, str):
        problems.add(path, line, f"{key} takes one value")
        return ""
    value = value.strip()
    if limit is not None and len(value) > limit:
        problems.add(path, line, f"{key} {value!r} is longer than its DICOM attribute can be ({limit} characters)")
    return value


def parse_period(text: str) -> Period | None:
    """``08:00-12:00`` as a :class:`Period`, or None if it is not one (or ends before it starts)."""
    match = RANGE.match(text)
    if match is None:
        return None
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        return None
    start, end = time(h1, m1), time(23, 59, 59) if h2 == 24 else time(h2, m2)
    return Period(start, end) if start < end else None


def _periods(node: Any, what: str, path: Path, line: int, problems: Problems) -> list[Period]:
    values = node if isinstance(node, list) else [node]
    out = []
    for value in values:
        period = parse_period(str(value)) if isinstance(value, str) else None
        if period is None:
            problems.add(path, getattr(node, "line", line),
                         f"{what}: {value!r} is not a time range such as 08:00-12:00 (24-hour clock, start before end)")
        else:
            out.append(period)
    return sorted(out, key=lambda p: p.start)


def _weekdays(key: str) -> list[int] | None:
    """``mon``, ``mon-fri``, ``sat,sun`` or ``daily`` as weekday numbers (Monday 0)."""
    key = key.strip().lower()
    if key == EVERY_DAY:
        return list(range(7))
    days: list[int] = []
    for part in key.split(","):
        first, _, last = part.strip().partition("-")
        if first not in WEEKDAYS or (last and last not in WEEKDAYS):
            return None
        a, b = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
        if b < a:
            return None
        days.extend(range(a, b + 1))
    return days


def _without(periods: list[Period], breaks: list[Period]) -> tuple[Period, ...]:
    """``periods`` with every break cut out of them."""
    out = list(periods)
    for gap in breaks:
        cut = []
        for p in out:
            if gap.end <= p.start or p.end <= gap.start:
                cut.append(p)
                continue
            if p.start < gap.start:
                cut.append(Period(p.start, gap.start))
            if gap.end < p.end:
                cut.append(Period(gap.end, p.end))
        out = cut
    return tuple(out)


def _read_room(entry: Any, path: Path, problems: Problems, procedures: dict[str, Procedure]) -> Room | None:
    line = getattr(entry, "line", 0)
    if not isinstance(entry, dict):
        problems.add(path, line, "each room is a mapping of keys such as room, modality and hours")
        return None
    _unknown(entry, ROOM_KEYS, path, line, problems, f"a room takes {', '.join(sorted(ROOM_KEYS))}")
    name = _text(entry, "room", path, line, problems, required=True)
    modality = _text(entry, "modality", path, line, problems, required=True).upper()
    station = _text(entry, "station_ae_title", path, line, problems, required=True, limit=AE_TITLE_MAX)
    capacity = 1
    if "capacity" in entry:
        text = str(entry["capacity"]).strip()
        if not text.isdigit() or not 1 <= int(text) <= MAX_CAPACITY:
            problems.add(path, line, f"capacity {entry['capacity']!r} is not a whole number from 1 to {MAX_CAPACITY}")
        else:
            capacity = int(text)

    breaks = _periods(entry.get("breaks") or [], "breaks", path, line, problems)
    hours: dict[int, tuple[Period, ...]] = {}
    node = entry.get("hours")
    if not isinstance(node, dict) or not node:
        problems.add(path, getattr(node, "line", line),
                     "hours: give the opening hours per weekday, e.g. {mon-fri: [08:00-12:00, 13:30-17:30]}")
        node = {}
    for key, value in node.items():
        days = _weekdays(key)
        if days is None:
            problems.add(path, getattr(node, "line", line),
                         f"hours: {key!r} is not a weekday or a range of them (mon … sun, mon-fri, sat,sun, daily)")
            continue
        periods = _periods(value, f"hours {key}", path, getattr(node, "line", line), problems)
        for earlier, later in itertools.pairwise(periods):
            if later.start < earlier.end:
                problems.add(path, getattr(value, "line", line), f"hours {key}: {earlier} and {later} overlap")
        for day in days:
            if day in hours:
                problems.add(path, getattr(node, "line", line),
                             f"hours: {WEEKDAYS[day]} is given twice (in {key!r} and before)")
            hours[day] = _without(periods, breaks)

    own = _minutes_map(entry.get("slot_minutes"), "slot_minutes", path, line, problems)
    for code in own:
        procedure = procedures.get(code)
        if procedure is None:
            problems.add(path, line, f"slot_minutes: procedure {code!r} is not in codes/procedures.csv")
        elif procedure.modality and modality and procedure.modality != modality:
            problems.add(path, line, f"slot_minutes: procedure {code} is {procedure.modality}, "
                                     f"room {name} is {modality}")

    closures = []
    for item in entry.get("closures") or []:
        closure = _read_closure(item, path, line, problems)
        if closure is not None:
            closures.append(closure)
    if not (name and modality and station):
        return None
    return Room(room=name, modality=modality, station_ae_title=station,
                name=_text(entry, "name", path, line, problems),
                station_name=_text(entry, "station_name", path, line, problems, limit=SH_MAX),
                location=_text(entry, "location", path, line, problems, limit=LO_MAX),
                capacity=capacity, hours=hours, slot_minutes=own, closures=tuple(closures), line=line)


def _read_closure(item: Any, path: Path, room_line: int, problems: Problems) -> Closure | None:
    line = getattr(item, "line", room_line)
    if not isinstance(item, dict):
        problems.add(path, line, "each closure is a mapping: {date: 2026-12-25, reason: ...} or "
                                 "{from: 2027-01-01, to: 2027-01-03, reason: ...}")
        return None
    _unknown(item, CLOSURE_KEYS, path, line, problems, "a closure takes date, or from and to; time; reason")

    def day(key: str) -> date | None:
        try:
            return date.fromisoformat(str(item[key]).strip())
        except ValueError:
            problems.add(path, line, f"closure {key} {item[key]!r} is not a date such as 2026-12-25")
            return None

    if "date" in item and ("from" in item or "to" in item):
        problems.add(path, line, "a closure takes date (one day) or from and to (several), not both")
        return None
    if "date" in item:
        first = last = day("date")
    elif "from" in item and "to" in item:
        first, last = day("from"), day("to")
    else:
        problems.add(path, line, "a closure needs date, or from and to")
        return None
    if first is None or last is None:
        return None
    if last < first:
        problems.add(path, line, f"closure ends ({last}) before it starts ({first})")
        return None
    period = None
    if "time" in item:
        period = parse_period(str(item["time"]))
        if period is None:
            problems.add(path, line, f"closure time {item['time']!r} is not a time range such as 13:00-15:00")
            return None
    reason = str(item.get("reason") or "").strip()
    return Closure(first=first, last=last, period=period, reason=reason, line=line)


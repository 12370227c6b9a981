#!/usr/bin/env python
"""Modality Worklist C-FIND latency: p50/p95/p99/max per query kind over 10,000 scheduled steps.

Builds a fresh registry (patients with Chinese names, identifiers, visits, orders, one scheduled
procedure step each, spread over 30 days and 12 stations), starts the real server
(``pacs serve``) on it, and queries it as a modality does, with pynetdicom:

- ``station_date``: Scheduled Station AE Title + Scheduled Procedure Step Start Date (today), the
  query a modality sends every few minutes; cycles through the stations; ISO_IR 192;
- ``name_today``: PatientName ``ZHANG*`` and today's Start Date without Specific Character Set
  (a console's search for a patient in the day's list);
- ``name_pinyin``: PatientName ``ZHANG*`` without Specific Character Set, every day (an ASCII
  console; about 850 matches: a measure of the cost per answer more than of latency);
- ``name_han``: PatientName ``张*`` in ISO_IR 192;
- ``name_rare``: PatientName ``*NA*`` (leading wildcard: no index can help);
- ``patient_id``: PatientID of one patient (cycles through patients that have steps); ISO_IR 192.

Each query carries the return keys a modality asks for (patient, accession, study UID, requested
procedure, and the Scheduled Procedure Step Sequence with modality, station, start date and
time, SPS ID and description) and is timed from send to the final status with
``time.perf_counter``, on one association reused for every query; ``station_date`` is also timed
with a new association per query (associate, query, release), as many modalities do. Every kind's
match count is checked against the generated data; C-ECHO on the same association gives the floor.
DCMTK's ``findscu -W`` (with ``TCP_NODELAY=1``), the toolkit many modalities are built on, then
sends the same queries of each kind on one association, each timed by findscu's own log clock
(log4cplus stamps to the microsecond) and its matches counted: the goal is judged on these
figures, as a modality sees the SCP, and on the pynetdicom client's, whose decoding of every
answer in Python costs it about as much CPU as the server spends. findscu also repeats one
``station_date`` query in a process per query and with ``--repeat``. Then the same queries run in this process against the same database through
``pacs.archive.worklist`` to split the time into SQL, ORM, building the answers and encoding them;
what is left of the end-to-end figure is pynetdicom (both sides) and the network. The SQL plans
(SQLite ``EXPLAIN QUERY PLAN``, PostgreSQL ``EXPLAIN ANALYZE``) of the statements the worklist
actually issues are printed, and the cost of pynetdicom's per-association copy of the server's
presentation contexts.

Run from the project root::

    .venv/bin/python bench/mwl_query.py                               # SQLite, 10,000 steps
    .venv/bin/python bench/mwl_query.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/mwl_query.py --steps 50000 --repeat 500
    .venv/bin/python bench/mwl_query.py --variants                    # what proposed changes would gain
    .venv/bin/python bench/mwl_query.py --profile                     # where the server's time goes
    .venv/bin/python bench/mwl_query.py --profile --profile-variant cached,quiet

``--database-url`` names a PostgreSQL server to connect to as an administrator; the benchmark
creates a database of its own there and drops it at the end. Without it the server uses a SQLite
file (WAL, synchronous=FULL) in a temporary data folder.

Each kind measures up to ``--repeat`` queries but stops after ``--budget`` seconds once
``--min-repeat`` are done, so the default run stays near two minutes; the table says how many
were measured (a p99 of ten samples is their maximum).

``--variants`` afterwards starts the server again, as it is and then with one change applied at
start by a small bootstrap (pynetdicom's per-message logging off, pydicom validation off,
presentation contexts not deep-copied per association, answers cached so that only pynetdicom and
encoding remain), and measures each on a fresh process: what a proposed change would gain, before
anyone makes it. ``--profile`` restarts the server under the same bootstrap with cProfile in every
thread it starts (pynetdicom serves each association in its own threads, which a plain
``python -m cProfile`` would not see), runs each query kind again on its own association, and
prints per kind where the server's time goes per query and the top functions. cProfile inflates
pure-Python code, so read its figures as shares.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    DOCTORS,
    GIVEN_NAMES,
    SURNAMES,
    cpu_model,
    findscu_queries,
    free_port,
    git_state,
    load_average,
)

SSD_RANDOM_PAGE_COST = 1.1  # docs/administrator.md, "PostgreSQL": the planner's cost of a random page read on SSD storage
GOAL_P50_MS = 10.0
GOAL_P99_MS = 50.0
SERVER_START_TIMEOUT = 90.0
CALLED_AE = "PACS"
PENDING = (0xFF00, 0xFF01)  # PS3.4 C.4.1.1.4 Pending statuses
MAX_MATCHES = 2000  # pacs.archive.worklist.MAX_MATCHES: the SCP answers at most this many

# (AE title, modality, station name, location, share of the department's volume)
STATIONS = [
    ("CT1", "CT", "CT Room 1", "放射科一楼CT1室", 11),
    ("CT2", "CT", "CT Room 2", "放射科一楼CT2室", 11),
    ("CT3", "CT", "CT Room 3", "急诊楼CT室", 8),
    ("MR1", "MR", "MR Room 1", "放射科二楼MR1室", 6),
    ("MR2", "MR", "MR Room 2", "放射科二楼MR2室", 6),
    ("DR1", "DX", "DR Room 1", "放射科一楼DR1室", 12),
    ("DR2", "DX", "DR Room 2", "放射科一楼DR2室", 12),
    ("CR1", "CR", "CR Room 1", "急诊楼摄片室", 6),
    ("US1", "US", "Ultrasound 1", "超声科1诊室", 10),
    ("US2", "US", "Ultrasound 2", "超声科2诊室", 10),
    ("MG1", "MG", "Mammography", "乳腺中心", 4),
    ("RF1", "RF", "Fluoroscopy", "放射科一楼透视室", 4),
]

# Common surnames with their approximate share (per mille, 2020 census order of magnitude), plus
# a few whose surname reading differs from plain pinyin and some compound ones.
DEPARTMENTS = ["呼吸内科", "心内科", "消化内科", "神经内科", "骨科", "普外科", "急诊科", "体检中心",
               "肿瘤科", "妇产科", "儿科", "泌尿外科"]
REASONS = ["发热咳嗽", "胸痛待查", "腹痛", "头痛头晕", "膝关节疼痛", "外伤", "体检", "术后复查",
           "肿块待查", "腰痛"]
WARDS = ["呼吸内科病区", "心内科病区", "骨科病区", "普外科病区", "神经内科病区"]


# --------------------------------------------------------------------------------------------
# Test data: written straight into the registry tables with SQLAlchemy Core
# --------------------------------------------------------------------------------------------


@dataclass
class StepFacts:
    """What the queries will be checked against: one entry per generated step."""

    station: str
    start_date: str
    patient: int
    accession: str


@dataclass
class Generated:
    """The generated registry, as far as the queries need to know it."""

    today: date
    steps: list[StepFacts] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)  # index = patient row id - 1
    alphabetic: list[str] = field(default_factory=list)
    ideographic: list[str] = field(default_factory=list)
    build_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)


def load_procedures() -> dict[str, list[tuple[str, str, str, int]]]:
    """Modality → [(code, description, body part, minutes)] from mappings/codes/procedures.csv."""
    by_modality: dict[str, list[tuple[str, str, str, int]]] = defaultdict(list)
    with (ROOT / "pacs" / "mappings" / "codes" / "procedures.csv").open(newline="", encoding="utf-8") as f:
        rows = [line for line in f if line.strip() and not line.startswith("#")]
    for row in csv.DictReader(rows):
        if row["code"] and row["description"] and not row["code"][0].isdigit():
            by_modality[row["modality"]].append((row["code"], row["description"], row["body_part"],
                                                 int(row["duration_minutes"] or 15)))
    # Stations whose modality has no entry in the shipped table get a generic procedure.
    for _, modality, *_ in STATIONS:
        by_modality.setdefault(modality, [(f"{modality}9999", f"{modality}检查", "", 15)])
    return by_modality


def populate(url: str, *, steps: int, patients: int, days: int, seed: int) -> Generated:
    """Migrate the schema at ``url`` and fill it; ids are given explicitly so rows link without
    reading anything back."""
    from pydicom.uid import generate_uid
    from sqlalchemy import func, insert, select, text

    from pacs.db import Database, utcnow
    from pacs.integration.names import NameRules, person_name
    from pacs.registry.models import (
        ImagingOrder, OrderStatus, Patient, PatientIdentifier, ProcedureStep, StepStatus, Visit,
    )

    started = time.perf_counter()
    rng = random.Random(seed)
    today = date.today()
    out = Generated(today=today)
    db = Database(url)
    db.migrate()
    rules = NameRules.load(ROOT / "pacs" / "mappings")
    now = utcnow()
    surnames = [s for s, _ in SURNAMES]
    weights = [w for _, w in SURNAMES]

    patient_rows, identifier_rows, visit_rows = [], [], []
    for pid in range(1, patients + 1):
        family = rng.choices(surnames, weights)[0]
        given = rng.choice(GIVEN_NAMES)
        name = person_name(family, given, rules=rules)
        patient_id = f"P{pid:08d}"
        national = f"11010{rng.randint(1940, 2020)}{rng.randint(10000000, 99999999)}"
        patient_rows.append(dict(
            id=pid, patient_id=patient_id, issuer="HIS", family_name=name.family, given_name=name.given,
            name_alphabetic=name.alphabetic, name_ideographic=name.ideographic, name_phonetic="",
            name_override=None, sex=rng.choice("MF"),
            birth_date=date(1940, 1, 1) + timedelta(days=rng.randrange(80 * 365)),
            address=f"北京市海淀区中关村大街{rng.randint(1, 300)}号", phone=f"13{rng.randint(100000000, 999999999)}",
            national_id=national, merged_into=None, created_at=now, updated_at=now))
        identifier_rows.append(dict(patient=pid, value=patient_id, authority="HIS", type_code="MR", active=True))
        identifier_rows.append(dict(patient=pid, value=national, authority="CHN", type_code="NI", active=True))
        inpatient = rng.random() < 0.25
        visit_rows.append(dict(
            id=pid, patient=pid, visit_number=f"V{pid:08d}", patient_class="inpatient" if inpatient else "outpatient",
            ward=rng.choice(WARDS) if inpatient else "", room=str(rng.randint(1, 30)) if inpatient else "",
            bed=str(rng.randint(1, 6)) if inpatient else "", attending_doctor=rng.choice(DOCTORS),
            admitted_at=None, discharged_at=None, status="active", updated_at=now))
        out.patient_ids.append(patient_id)
        out.alphabetic.append(name.alphabetic)
        out.ideographic.append(name.ideographic)

    procedures = load_procedures()
    station_weights = [s[4] for s in STATIONS]
    first_day = today - timedelta(days=days // 2)
    day_weights = [0.4 if (first_day + timedelta(days=d)).weekday() >= 5 else 1.0 for d in range(days)]
    order_rows, step_rows = [], []
    for sid in range(1, steps + 1):
        ae, modality, station_name, location, _ = rng.choices(STATIONS, station_weights)[0]
        code, description, body_part, minutes = rng.choice(procedures[modality])
        day = first_day + timedelta(days=rng.choices(range(days), day_weights)[0])
        start = datetime.combine(day, dtime(8, 0)) + timedelta(minutes=5 * rng.randrange(12 * 10))
        patient = rng.randrange(1, patients + 1) if sid > patients else sid  # everyone has a step
        accession = f"A{sid:09d}"
        doctor = rng.choice(DOCTORS)
        order_rows.append(dict(
            id=sid, patient=patient, visit=patient, placer_number=f"HIS{sid:010d}", placer_authority="HIS",
            filler_number="", accession_number=accession, requested_procedure_id=accession,
            procedure_code=code, procedure_scheme="99HIS", procedure_text=description, body_part=body_part,
            reason=rng.choice(REASONS), priority="stat" if rng.random() < 0.05 else "routine",
            referring_physician=doctor, requesting_physician=doctor, department=rng.choice(DEPARTMENTS),
            study_instance_uid=generate_uid(), status=OrderStatus.SCHEDULED.value, source_message=None,
            created_at=now, updated_at=now))
        step_rows.append(dict(
            id=sid, order=sid, sps_id=accession, modality=modality, station_ae_title=ae,
            station_name=station_name, location=location, start=start, start_date=start.strftime("%Y%m%d"),
            start_time=start.strftime("%H%M%S"), duration_minutes=minutes, protocol_code="", protocol_scheme="",
            protocol_text="", description=description, performing_physician="",
            status=StepStatus.SCHEDULED.value))
        out.steps.append(StepFacts(ae, start.strftime("%Y%m%d"), patient, accession))

    tables = [(Patient, patient_rows), (PatientIdentifier, identifier_rows), (Visit, visit_rows),
              (ImagingOrder, order_rows), (ProcedureStep, step_rows)]
    with db.engine.begin() as conn:
        for model, rows in tables:
            for i in range(0, len(rows), 5000):
                conn.execute(insert(model.__table__), rows[i:i + 5000])  # type: ignore[attr-defined]
        if not db.is_sqlite:
            # Explicit ids leave the sequences behind; move them past the rows.
            for model, _ in tables:
                name = model.__tablename__
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('\"{name}\"', 'id'), "
                                  f"(SELECT max(id) FROM \"{name}\"))"))
    with db.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")  # planner statistics, as a database in service has them
        for model, _ in tables:
            out.counts[model.__tablename__] = conn.execute(  # type: ignore[attr-defined]
                select(func.count()).select_from(model.__table__)).scalar_one()  # type: ignore[attr-defined]
    db.dispose()
    out.build_seconds = time.perf_counter() - started
    return out


# --------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------


@dataclass
class Kind:
    name: str
    describe: str
    charset: str | None
    identifiers: Callable[[int], Any]  # repetition number → query dataset
    accessions: Callable[[int], frozenset[str]]  # repetition number → the accession numbers it must find

    def expected(self, i: int) -> int:
        """How many matches query ``i`` must return (the SCP answers at most MAX_MATCHES)."""
        return min(MAX_MATCHES, len(self.accessions(i)))


def identifier(*, charset: str | None = None, patient_name: str = "", patient_id: str = "",
               station: str = "", start_date: str = "") -> Any:
    """A worklist query with the return keys a modality asks for (IHE RAD-5, PS3.4 K.6)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.AccessionNumber = ""
    ds.StudyInstanceUID = ""
    ds.RequestedProcedureID = ""
    ds.RequestedProcedureDescription = ""
    sps = Dataset()
    sps.Modality = ""
    sps.ScheduledStationAETitle = station
    sps.ScheduledProcedureStepStartDate = start_date
    sps.ScheduledProcedureStepStartTime = ""
    sps.ScheduledProcedureStepID = ""
    sps.ScheduledProcedureStepDescription = ""
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def make_kinds(data: Generated, seed: int) -> list[Kind]:
    """The query kinds, each with the accession numbers its queries must find."""
    today = data.today.strftime("%Y%m%d")
    stations = [s[0] for s in STATIONS]
    on_station_today: dict[str, frozenset[str]] = {
        station: frozenset(s.accession for s in data.steps if s.start_date == today and s.station == station)
        for station in stations}
    of_patient: defaultdict[int, set[str]] = defaultdict(set)
    for step in data.steps:
        of_patient[step.patient].add(step.accession)
    rng = random.Random(seed + 1)
    with_steps = sorted(of_patient)
    sample = [rng.choice(with_steps) for _ in range(1000)]

    def by_name(pattern: str) -> frozenset[str]:
        # As cond_person_name without "=": the alphabetic group (case folded) or the ideographic
        # one matches; the patterns used here are "X*" and "*X*".
        core = pattern.strip("*").upper()

        def hit(p: int) -> bool:
            a, i = data.alphabetic[p - 1].upper(), data.ideographic[p - 1].upper()
            if pattern.startswith("*"):
                return core in a or core in i
            return a.startswith(core) or i.startswith(core)
        return frozenset(acc for p, accessions in of_patient.items() if hit(p) for acc in accessions)

    named = {p: by_name(p) for p in ("ZHANG*", "张*", "*NA*")}
    today_steps = frozenset(s.accession for s in data.steps if s.start_date == today)
    return [
        Kind("station_date", f"ScheduledStationAETitle=<each of {len(stations)}> + StartDate={today}, ISO_IR 192",
             "ISO_IR 192",
             lambda i: identifier(charset="ISO_IR 192", station=stations[i % len(stations)], start_date=today),
             lambda i: on_station_today[stations[i % len(stations)]]),
        Kind("name_today", f"PatientName=ZHANG* + StartDate={today}, no Specific Character Set", None,
             lambda i: identifier(patient_name="ZHANG*", start_date=today),
             lambda i: named["ZHANG*"] & today_steps),
        Kind("name_pinyin", "PatientName=ZHANG*, no Specific Character Set", None,
             lambda i: identifier(patient_name="ZHANG*"), lambda i: named["ZHANG*"]),
        Kind("name_han", "PatientName=张*, ISO_IR 192", "ISO_IR 192",
             lambda i: identifier(charset="ISO_IR 192", patient_name="张*"), lambda i: named["张*"]),
        Kind("name_rare", "PatientName=*NA*, no Specific Character Set", None,
             lambda i: identifier(patient_name="*NA*"), lambda i: named["*NA*"]),
        Kind("patient_id", "PatientID=<one of 1,000 patients>, ISO_IR 192", "ISO_IR 192",
             lambda i: identifier(charset="ISO_IR 192", patient_id=data.patient_ids[sample[i % 1000] - 1]),
             lambda i: frozenset(of_patient[sample[i % 1000]])),
    ]


@dataclass
class Timing:
    kind: str
    mode: str
    ms: list[float] = field(default_factory=list)
    matches: list[int] = field(default_factory=list)
    mismatches: int = 0
    failures: Counter[int] = field(default_factory=Counter)
    odd: list[str] = field(default_factory=list)  # the first few unexpected answers, for the report
    phases: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    dropped: int = 0  # responses the pynetdicom client dropped (DroppedResponses)
    server_cpu_ms: float = float("nan")  # per query, every thread of the server process
    client_cpu_ms: float = float("nan")  # per query, every thread of this process

    def pct(self, p: float) -> float:
        return percentile(self.ms, p)


class DroppedResponses(logging.Handler):
    """Counts the C-FIND responses the pynetdicom requestor drops: its association reactor can take
    a response off the DIMSE queue between two queries and discard it as an "unexpected C-FIND
    service message" (a race between Association._run_reactor and send_c_find's pause; see
    pynetdicom issue #875). The answer then lacks one match although the SCP sent it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "unexpected" in record.getMessage() and "C-FIND" in record.getMessage():
            self.count += 1


DROPPED = DroppedResponses()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (the value at or below which p % of the samples fall)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, int(-(-p * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


def _nodelay(event: Any) -> None:
    """Nagle's algorithm costs ~40 ms per DIMSE exchange on loopback (DESIGN.md)."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def client_ae(calling: str = "CT1") -> Any:
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    return ae


def associate(ae: Any, port: int) -> Any:
    from pynetdicom import evt

    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED_AE, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    if not assoc.is_established:
        raise RuntimeError(f"association to {CALLED_AE} on port {port} was not established")
    return assoc


def c_find(assoc: Any, query: Any) -> tuple[int, int, list[Any]]:
    """One C-FIND to its final status: (final status, number of matches, the matches as
    pynetdicom gives them, not yet read)."""
    from pynetdicom.sop_class import ModalityWorklistInformationFind

    found_all = []
    final = -1
    for status, found in assoc.send_c_find(query, ModalityWorklistInformationFind):
        if status is None or "Status" not in status:
            raise RuntimeError("no C-FIND response (timeout or association aborted)")
        if status.Status in PENDING:
            found_all.append(found)
        else:
            final = status.Status
    return final, len(found_all), found_all


def run_kind(assoc: Any, kind: Kind, *, repeat: int, warmup: int, budget: float, min_repeat: int,
             server: Server) -> Timing:
    timing = Timing(kind.name, "one association")
    started = time.perf_counter()
    for i in range(warmup):  # within about a second
        c_find(assoc, kind.identifiers(i))
        if time.perf_counter() - started > 1.0:
            break
    started = time.perf_counter()
    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    dropped = DROPPED.count
    for i in range(repeat):
        query = kind.identifiers(i)
        t0 = time.perf_counter()
        final, matches, found = c_find(assoc, query)
        timing.ms.append((time.perf_counter() - t0) * 1000)
        timing.matches.append(matches)
        check(timing, kind, i, final, found)
        if i + 1 >= min_repeat and time.perf_counter() - started > budget:
            break
    timing.server_cpu_ms = (server.cpu_seconds() - server_cpu) / len(timing.ms) * 1000
    timing.client_cpu_ms = (time.process_time() - client_cpu) / len(timing.ms) * 1000
    timing.dropped = DROPPED.count - dropped
    return timing


def check(timing: Timing, kind: Kind, i: int, final: int, found: list[Any]) -> None:
    """Count a query whose final status is not Success or whose match count is not the expected
    one; note the first few, with the accession numbers missing or extra and where in the
    answer sequence they are."""
    expected = kind.expected(i)
    if final != 0:
        timing.failures[final] += 1
    if len(found) != expected:
        timing.mismatches += 1
    if (final != 0 or len(found) != expected) and len(timing.odd) < 3:
        note = (f"query {i} ({kind.describe}): final status 0x{final & 0xFFFF:04X}, {len(found)} matches, "
                f"{expected} expected, at {time.strftime('%H:%M:%S')}")
        if expected < MAX_MATCHES:
            got = [str(ds.get("AccessionNumber", "?")) if ds is not None else "(undecodable)" for ds in found]
            want = kind.accessions(i)
            missing = sorted(want - set(got))
            extra = [(n, acc) for n, acc in enumerate(got) if acc not in want]
            repeated = [acc for acc, n in Counter(got).items() if n > 1]
            note += f"; missing {missing}, extra (position, accession) {extra}, repeated {repeated}"
        timing.odd.append(note)


def run_new_associations(server: Server, kind: Kind, *, repeat: int, budget: float, min_repeat: int) -> Timing:
    """Associate, query, release per query, as many modalities do; timed from the A-ASSOCIATE-RQ to
    the A-RELEASE-RP."""
    timing = Timing(kind.name, "new association per query")
    port = server.dicom_port
    ae = client_ae()
    for i in range(3):  # warm-up
        assoc = associate(ae, port)
        c_find(assoc, kind.identifiers(i))
        assoc.release()
    started = time.perf_counter()
    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    dropped = DROPPED.count
    for i in range(repeat):
        query = kind.identifiers(i)
        t0 = time.perf_counter()
        assoc = associate(ae, port)
        t1 = time.perf_counter()
        final, matches, found = c_find(assoc, query)
        t2 = time.perf_counter()
        assoc.release()
        t3 = time.perf_counter()
        timing.ms.append((t3 - t0) * 1000)
        timing.phases["associate"].append((t1 - t0) * 1000)
        timing.phases["C-FIND"].append((t2 - t1) * 1000)
        timing.phases["release"].append((t3 - t2) * 1000)
        timing.matches.append(matches)
        check(timing, kind, i, final, found)
        if i + 1 >= min_repeat and time.perf_counter() - started > budget:
            break
    timing.server_cpu_ms = (server.cpu_seconds() - server_cpu) / len(timing.ms) * 1000
    timing.client_cpu_ms = (time.process_time() - client_cpu) / len(timing.ms) * 1000
    timing.dropped = DROPPED.count - dropped
    return timing


def idle_cpu(server: Server, assoc: Any, seconds: float) -> tuple[float, float]:
    """Server and client CPU (% of one core) while an association is open and idle: pynetdicom's
    reactors poll their queues and socket every millisecond."""
    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    time.sleep(seconds)
    return ((server.cpu_seconds() - server_cpu) / seconds * 100, (time.process_time() - client_cpu) / seconds * 100)


def run_echo(assoc: Any, repeat: int) -> Timing:
    """C-ECHO round trips on the same association: what pynetdicom and loopback cost with no work."""
    timing = Timing("c_echo", "one association")
    for i in range(repeat + 10):
        t0 = time.perf_counter()
        status = assoc.send_c_echo()
        if i >= 10:
            timing.ms.append((time.perf_counter() - t0) * 1000)
            timing.matches.append(0)
            if not status or status.Status != 0:
                timing.failures[status.Status if status else -1] += 1
    return timing


def sample_answer(assoc: Any, kind: Kind) -> list[str]:
    _, _, first = c_find(assoc, kind.identifiers(0))
    if not first:
        return ["(no match)"]
    ds = first[0]
    sps = ds.ScheduledProcedureStepSequence[0]
    return [f"PatientName={ds.PatientName!s} PatientID={ds.PatientID} Accession={ds.AccessionNumber} "
            f"Station={sps.ScheduledStationAETitle} {sps.Modality} {sps.ScheduledProcedureStepStartDate} "
            f"{sps.ScheduledProcedureStepStartTime} {sps.ScheduledProcedureStepDescription!s}"]


# --------------------------------------------------------------------------------------------
# DCMTK findscu as an outside client
# --------------------------------------------------------------------------------------------


def findscu_query_file(kind: Kind, tmp: Path) -> Path:
    """The kind's first query as a DICOM file for findscu."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    query = kind.identifiers(0)
    query.file_meta = FileMetaDataset()
    query.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"  # Modality Worklist Find
    query.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    query.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp / f"{kind.name}.dcm"
    query.save_as(path, enforce_file_format=True)
    return path


def findscu_times(port: int, query: Path, rounds: int, repeat: int) -> tuple[list[float], float]:
    """findscu -W with TCP_NODELAY=1: wall times of ``rounds`` processes with one query each, and
    the marginal cost of one C-FIND on one association, from --repeat ``repeat`` against --repeat 1."""
    findscu = shutil.which("findscu")
    assert findscu is not None
    env = dict(os.environ, TCP_NODELAY="1")

    def once(n: int) -> float:
        command = [findscu, "-W", "-aet", "CT1", "-aec", CALLED_AE, "--repeat", str(n), "127.0.0.1", str(port),
                   str(query)]
        t0 = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, timeout=300, check=False)
        elapsed = (time.perf_counter() - t0) * 1000
        if done.returncode != 0:
            raise RuntimeError(f"findscu failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
        return elapsed

    once(1)
    singles = [once(1) for _ in range(rounds)]
    many = [once(repeat) for _ in range(3)]
    return singles, (statistics.median(many) - statistics.median(singles)) / (repeat - 1)


def findscu_kind(server: Server, kind: Kind, count: int, warmup: int, tmp: Path) -> Timing:
    """One findscu process, one association, ``warmup`` + ``count`` queries of ``kind`` one after
    another (findscu sends the query files it is given in turn); each measured query is timed by
    findscu's own log clock from "Sending Find Request" to "Received Final Find Response" and its
    matches counted from the "Received Find Response" lines. Server CPU over the whole process
    (association setup included), client CPU from the child's rusage."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder = tmp / "findscu" / kind.name
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(warmup + count):
        query = kind.identifiers(i - warmup if i >= warmup else i)
        query.file_meta = FileMetaDataset()
        query.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"  # Modality Worklist Find
        query.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
        query.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        files.append(folder / f"q{i:05d}.dcm")
        query.save_as(files[-1], enforce_file_format=True)
    timing = Timing(kind.name, "findscu")
    server_cpu = server.cpu_seconds()
    queries, client_cpu = findscu_queries(["-W", "-aet", "CT1", "-aec", CALLED_AE, "127.0.0.1",
                                           str(server.dicom_port)], files, tmp)
    for i, query in enumerate(queries[warmup:]):
        timing.ms.append(query.ms)
        timing.matches.append(query.matches)
        if not query.success:
            timing.failures[-1] += 1
        elif query.matches != kind.expected(i):
            timing.mismatches += 1
            if len(timing.odd) < 3:
                timing.odd.append(f"findscu query {i}: {query.matches} matches, {kind.expected(i)} expected")
    timing.server_cpu_ms = (server.cpu_seconds() - server_cpu) / (warmup + count) * 1000
    timing.client_cpu_ms = client_cpu / (warmup + count) * 1000
    return timing


def findscu_check(port: int, kind: Kind, rounds: int, repeat: int, tmp: Path) -> list[str]:
    findscu = shutil.which("findscu")
    if findscu is None:
        return ["findscu not found (apt-get install dcmtk): skipped"]
    singles, marginal = findscu_times(port, findscu_query_file(kind, tmp), rounds, repeat)
    version = subprocess.run([findscu, "--version"], capture_output=True, text=True, check=False).stdout.splitlines()
    query = kind.identifiers(0)
    sps = query.ScheduledProcedureStepSequence[0]
    return [
        f"{(version[0] if version else 'findscu').strip(' $')}, TCP_NODELAY=1; "
        f"station {sps.ScheduledStationAETitle}, date {sps.ScheduledProcedureStepStartDate} "
        f"({kind.expected(0)} matches), ISO_IR 192",
        f"  one process per query (exec + associate + C-FIND + release), {rounds} runs: "
        f"p50 {percentile(singles, 50):.1f} ms, p95 {percentile(singles, 95):.1f} ms, max {max(singles):.1f} ms",
        f"  marginal cost of one C-FIND on one association (--repeat {repeat} against --repeat 1): {marginal:.2f} ms",
    ]


# --------------------------------------------------------------------------------------------
# In-process decomposition and SQL plans (same database, same code as the SCP)
# --------------------------------------------------------------------------------------------


def decompose(url: str, kinds: list[Kind], rounds: int, budget: float, implicit_vr: bool
              ) -> tuple[dict[str, dict[str, float]], dict[str, list[str]], Counter[str]]:
    """Per kind, medians of: the worklist's SQL statement alone (driver execute + fetchall);
    find_rows (the same through SQLAlchemy, into ORM objects); find() to the last answer (adds
    validating the identifier, building the items and the answers); and encoding the answers as
    pynetdicom does. Also the SQL plan of the statement, and the pydicom warnings raised."""
    from pynetdicom.dsutils import encode
    from sqlalchemy import event

    from pacs.archive import worklist
    from pacs.db import Database
    from pacs.integration.names import NameRules

    db = Database(url)
    names = NameRules.load(ROOT / "pacs" / "mappings")
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "procedure_step" in statement:
            captured.append((statement, parameters))

    from pacs.db import Shapes

    run = Shapes._run

    def run_captured(conn: Any, shape: Any, values: Any) -> Any:  # a query of a known shape, on the driver's cursor
        if "procedure_step" in shape.sql:
            captured.append((shape.sql, shape.parameters(values)))
        return run(conn, shape, values)

    figures: dict[str, dict[str, float]] = {}
    plans: dict[str, list[str]] = {}
    warned: Counter[str] = Counter()
    event.listen(db.engine, "before_cursor_execute", capture)
    Shapes._run = staticmethod(run_captured)  # type: ignore[method-assign]
    for kind in kinds:
        raw_ms, rows_ms, find_ms, enc_ms, n_items = [], [], [], [], []
        started = time.perf_counter()
        for i in range(rounds + 3):
            if i >= 6 and time.perf_counter() - started > budget:
                break
            query = kind.identifiers(i)
            captured.clear()
            with db.session() as session:
                t0 = time.perf_counter()
                rows = worklist.find_rows(session.connection(), query)
                t1 = time.perf_counter()
            statement, parameters = captured[0]
            with db.engine.connect() as conn:
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                t2 = time.perf_counter()
                cursor.execute(statement, parameters)
                cursor.fetchall()
                t3 = time.perf_counter()
                cursor.close()
            with db.session() as session, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t4 = time.perf_counter()
                answers = list(worklist.find(session.connection(), query, names=names))
                t5 = time.perf_counter()
            warned.update(f"{kind.name}: {w.message}" for w in caught)
            warned.update(f"{kind.name}: sent: {path}" for answer in answers for path in overlong(answer))
            t6 = time.perf_counter()
            for answer in answers:
                encode(answer, implicit_vr, True)
            t7 = time.perf_counter()
            if i >= 3:
                rows_ms.append((t1 - t0) * 1000)
                raw_ms.append((t3 - t2) * 1000)
                find_ms.append((t5 - t4) * 1000)
                enc_ms.append((t7 - t6) * 1000)
                n_items.append(len(rows))
        figures[kind.name] = {"raw": statistics.median(raw_ms), "rows": statistics.median(rows_ms),
                              "find": statistics.median(find_ms), "encode": statistics.median(enc_ms),
                              "items": statistics.mean(n_items), "rounds": len(rows_ms)}
        plans[kind.name] = explain(db, *captured[0]) if captured else ["(no statement captured)"]
    event.remove(db.engine, "before_cursor_execute", capture)
    Shapes._run = staticmethod(run)  # type: ignore[method-assign]
    # The same ASCII query, asking also for the station name and location (SH, 16 characters)
    query = identifier(patient_name="ZHANG*")
    query.ScheduledProcedureStepSequence[0].ScheduledStationName = ""
    query.ScheduledProcedureStepSequence[0].ScheduledProcedureStepLocation = ""
    with db.session() as session, warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        examples: dict[str, str] = {}
        for answer in worklist.find(session.connection(), query, names=names):
            for path in overlong(answer):
                warned[f"ZHANG* + station name and location asked for: sent: {path}"] += 1
                sps = answer.ScheduledProcedureStepSequence[0]
                examples.setdefault(path, str(sps.get("ScheduledProcedureStepLocation", "")))
    for path, example in examples.items():
        warned[f"ZHANG* + station name and location asked for: e.g. {example!r}"] = 0
    db.dispose()
    return figures, plans, warned


def overlong(ds: Any, prefix: str = "") -> Iterator[str]:
    """Elements whose value is longer than their VR allows (PS3.5 6.2), as keyword paths."""
    from pydicom.valuerep import MAX_VALUE_LEN

    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                yield from overlong(item, f"{prefix}{element.keyword}>")
            continue
        limit = MAX_VALUE_LEN.get(element.VR, 0)
        values = element.value if element.VM > 1 else [element.value]
        for value in values:
            if limit and isinstance(value, str) and len(value) > limit:
                yield f"{prefix}{element.keyword} ({element.VR}) longer than {limit} characters"
                break


def context_copy_cost(tmp: Path) -> str:
    """pynetdicom deep-copies the AE's supported presentation contexts for every association
    (transport.py, RequestHandler._create_association): what that costs with the server's AE."""
    from copy import deepcopy

    try:
        from pacs.archive.ae import make_ae
        from pacs.settings import Settings

        ae = make_ae(Settings(data_dir=tmp / "unused"))
    except Exception as exc:  # the server's AE is built differently: report, don't fail
        return f"(the server's AE could not be built here: {exc})"
    contexts = ae.supported_contexts
    syntaxes = sum(len(cx.transfer_syntax) for cx in contexts)
    deepcopy(contexts)
    rounds = 10
    t0 = time.perf_counter()
    for _ in range(rounds):
        deepcopy(contexts)
    ms = (time.perf_counter() - t0) / rounds * 1000
    return (f"the server's AE supports {len(contexts)} presentation contexts with {syntaxes} transfer "
            f"syntaxes in all; pynetdicom deep-copies them for every association: {ms:.1f} ms")


def explain(db: Any, statement: str, parameters: Any) -> list[str]:
    with db.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        cursor = raw.cursor()
        if db.is_sqlite:
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            depth: dict[int, int] = {0: -1}
            lines = []
            for node, parent, _, detail in cursor.fetchall():
                depth[node] = depth.get(parent, -1) + 1
                lines.append("  " * depth[node] + detail)
            return lines
        cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + statement, parameters)
        return [row[0] for row in cursor.fetchall()]


# --------------------------------------------------------------------------------------------
# The server under test
# --------------------------------------------------------------------------------------------

# Server bootstraps: ``python -c BOOTSTRAP PROFILE_PREFIX CHANGES serve ...`` runs ``pacs serve``
# after setting up cProfile in every thread (PROFILE_PREFIX, or "-" for none) and applying what-if
# changes (CHANGES, comma-separated, or "-" for none).
#
# Profiling: pynetdicom serves an association in its own Association and DUL threads, which a
# plain ``python -m cProfile`` would not see. SIGUSR1 writes the profiles of the threads that have
# ended since the last SIGUSR1 to PREFIX<n>.prof and then PREFIX<n>.done.
#
# What-if changes, to measure what a proposed change would gain before anyone makes it:
#   quiet   pynetdicom's per-message logging off (_config.LOG_RESPONSE_IDENTIFIERS /
#           LOG_REQUEST_IDENTIFIERS: pretty-prints every answer even when nothing is logged;
#           LOG_HANDLER_LEVEL: the standard PDU/DIMSE event handlers)
#   novalid pydicom value validation off (config.settings.writing_validation_mode = IGNORE)
#   sharedcx each association gets a shallow copy of the AE's supported presentation contexts
#           instead of pynetdicom's deepcopy (transport.py, RequestHandler._create_association)
#   cached  pacs.archive.worklist.find keeps the answers of an identical query (same identifier and
#           peer character set) and yields them again: what is left is the session the service
#           opens, pynetdicom and encoding
BOOTSTRAP = r"""
import sys
prefix, changes = sys.argv[1], set(sys.argv[2].split(","))
del sys.argv[1:3]
if prefix != "-":
    import cProfile, pstats, signal, threading
    lock = threading.Lock()
    finished = []
    dumps = [0]
    original_bootstrap = threading.Thread._bootstrap_inner
    def profiled(self):
        profile = cProfile.Profile()
        profile.enable()
        try:
            original_bootstrap(self)
        finally:
            profile.disable()
            with lock:
                finished.append(profile)
    threading.Thread._bootstrap_inner = profiled
    def dump(signum, frame):
        with lock:
            taken = list(finished)
            finished.clear()
        n = dumps[0]
        dumps[0] += 1
        if taken:
            stats = pstats.Stats(taken[0])
            for profile in taken[1:]:
                stats.add(profile)
            stats.dump_stats(f"{prefix}{n}.prof")
        open(f"{prefix}{n}.done", "w").write(str(len(taken)))
    signal.signal(signal.SIGUSR1, dump)
if "quiet" in changes:
    from pynetdicom import _config
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_HANDLER_LEVEL = "none"
if "novalid" in changes:
    from pydicom import config
    config.settings.writing_validation_mode = config.IGNORE
if "sharedcx" in changes:
    import pynetdicom.transport
    pynetdicom.transport.deepcopy = list
if "cached" in changes:
    from pacs.archive import worklist
    original_find = worklist.find
    cache = {}
    def find(session, identifier, **options):
        key = (options.get("peer_charset"), str(identifier))
        if key not in cache:
            cache[key] = list(original_find(session, identifier, **options))
        yield from cache[key]
    worklist.find = find
from pacs.cli import main
sys.argv[0] = "pacs"
sys.exit(main(sys.argv[1:]))
"""

VARIANTS = [
    ("quiet", "pynetdicom logging off"),
    ("novalid", "pydicom validation off"),
    ("sharedcx", "contexts not deep-copied"),
    ("cached", "answers cached"),
    ("cached,quiet", "answers cached + logging off"),
]


@dataclass
class Server:
    data_dir: Path
    database_url: str
    profile_prefix: str | None = None
    variant: str | None = None
    process: subprocess.Popen[bytes] | None = None
    dicom_port: int = 0
    command_line: list[str] = field(default_factory=list)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        name = ("profiled-" if self.profile_prefix else "") + (self.variant or "").replace(",", "-")
        self.log = self.data_dir.parent / (f"server-{name}.log" if name else "server.log")

    def start(self) -> None:
        self.dicom_port = free_port()
        serve = ["serve", "--data-dir", str(self.data_dir), "--dicom-port", str(self.dicom_port),
                 "--mllp-port", str(free_port()), "--http-port", str(free_port()), "--host", "127.0.0.1"]
        python = sys.executable
        if self.profile_prefix or self.variant:
            setup = [self.profile_prefix or "-", self.variant or "-"]
            command = [python, "-c", BOOTSTRAP, *setup, *serve]
            self.command_line = [python, "-c", "<BOOTSTRAP in bench/mwl_query.py>", *setup, *serve]
        else:
            command = self.command_line = [python, "-m", "pacs.cli", *serve]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
        env["PACS_DATABASE_URL"] = self.database_url
        env["PACS_LOG_LEVEL"] = "WARNING"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                            start_new_session=True)
        # Ready when the DICOM port accepts and the server has said it serves (it says so once every
        # front end is up; the DICOM one starts first, so the port alone is not enough).
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        accepting = False
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.tail()}")
            if not accepting:
                try:
                    with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                        accepting = True
                except OSError:
                    pass
            if accepting and "pacs: serving" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the server was not serving within {SERVER_START_TIMEOUT:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()  # type: ignore[union-attr]
            fields = stat.rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, AttributeError):
            return float("nan")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def run_variants(data_dir: Path, url: str, kinds: list[Kind], args: argparse.Namespace) -> None:
    """The server as it is and with each what-if change, one after the other, each on a fresh
    process: the chosen kinds on one association, associate + release alone, and findscu."""
    chosen = [k for k in kinds if k.name in args.variant_kinds.split(",")]
    query = findscu_query_file(kinds[0], data_dir.parent) if shutil.which("findscu") else None
    print("\n## What if: the server as it is and with one change applied at start (see BOOTSTRAP), ms")
    print(f"{'change':<30} {'kind':<13} {'n':>5} {'p50':>8} {'p99':>8} {'srv CPU':>8} {'Δp50':>8}")
    as_is: dict[str, float] = {}
    findscu_lines: list[str] = []
    associate_lines: list[str] = []
    for variant, label in [(None, "(as is)"), *VARIANTS]:
        server = Server(data_dir, url, variant=variant)
        server.start()
        try:
            ae = client_ae()
            assoc = associate(ae, server.dicom_port)
            for kind in chosen:
                t = run_kind(assoc, kind, repeat=args.repeat, warmup=args.warmup, budget=args.budget / 2,
                             min_repeat=args.min_repeat, server=server)
                as_is.setdefault(kind.name, t.pct(50))
                gain = f"{t.pct(50) - as_is[kind.name]:+8.2f}" if variant else ""
                print(f"{label:<30} {t.kind:<13} {len(t.ms):>5} {t.pct(50):>8.2f} {t.pct(99):>8.2f} "
                      f"{t.server_cpu_ms:>8.2f} {gain:>8}{problems(t)}")
            assoc.release()
            associating = []
            for _ in range(23):
                t0 = time.perf_counter()
                associate(ae, server.dicom_port).release()
                associating.append((time.perf_counter() - t0) * 1000)
            associating = associating[3:]
            associate_lines.append(f"  {label:<30} p50 {percentile(associating, 50):6.2f} ms, "
                                   f"p95 {percentile(associating, 95):6.2f} ms")
            if query is not None:
                _, marginal = findscu_times(server.dicom_port, query, 3, 20)
                findscu_lines.append(f"  {label:<30} {marginal:6.2f} ms")
        finally:
            server.stop()
    print("pynetdicom client: associate + release, no query (20 times):")
    print("\n".join(associate_lines))
    if findscu_lines:
        print(f"findscu (TCP_NODELAY=1): marginal cost of one C-FIND on one association, the {kinds[0].name} "
              f"query for {kinds[0].identifiers(0).ScheduledProcedureStepSequence[0].ScheduledStationAETitle} "
              f"({kinds[0].expected(0)} matches):")
        print("\n".join(findscu_lines))


def profile_server(data_dir: Path, url: str, kinds: list[Kind], rounds: int, top: int, budget: float,
                   variant: str | None) -> None:
    """Run each kind on its own association against a server with cProfile in every thread."""
    import pstats

    prefix = str(data_dir.parent / f"profile-{(variant or 'as-is').replace(',', '-')}-")
    server = Server(data_dir, url, profile_prefix=prefix, variant=variant)
    server.start()
    print(f"\n## Server profile (cProfile in every server thread; up to {rounds} queries or {budget:.0f} s per kind, "
          "one association per kind)")
    print(f"server: {shlex.join(server.command_line)}")
    try:
        ae = client_ae()
        for n, kind in enumerate(kinds):
            assoc = associate(ae, server.dicom_port)
            started = time.perf_counter()
            done_queries = 0
            while done_queries < rounds and (done_queries < 3 or time.perf_counter() - started < budget):
                c_find(assoc, kind.identifiers(done_queries))
                done_queries += 1
            assoc.release()
            time.sleep(0.3)  # the acceptor's threads end ~0.1 s after the release
            os.kill(server.process.pid, signal.SIGUSR1)  # type: ignore[union-attr]
            done = Path(f"{prefix}{n}.done")
            deadline = time.monotonic() + 30
            while not done.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not Path(f"{prefix}{n}.prof").exists():
                print(f"{kind.name}: no profile written\n{server.tail()}")
                continue
            stats = pstats.Stats(f"{prefix}{n}.prof")
            report_profile(kind, stats, done_queries, top)
    finally:
        server.stop()


# (label, predicate on (file, line, function)) — cumulative time of the outermost match.
# (label, end of the file name, function names): the cumulative time of those functions.
PROFILE_PARTS = [
    ("handle_find (the whole handler generator)", "archive/handlers.py", ("handle_find",)),
    ("  validate_identifier", "archive/worklist.py", ("validate_identifier",)),
    ("  find_rows: SQL statement + a record per table", "archive/worklist.py", ("find_rows",)),
    ("    driver execute (cursor.execute)", "engine/default.py", ("do_execute", "do_execute_no_params")),
    ("    SQLAlchemy compile of the statement", "sql/elements.py", ("_compile_w_cache",)),
    ("  Answer.plan: the return keys, once per query", "archive/worklist.py", ("plan",)),
    ("  Answer.respond: each answer", "archive/worklist.py", ("respond",)),
    ("    Answer.person: pinyin for physician names", "archive/charset.py", ("person",)),
    ("  session commit/close", "orm/session.py", ("commit", "close")),
    ("pydicom value validation (everywhere)", "pydicom/valuerep.py", ("validate_value",)),
    ("pynetdicom encode(): answers and command sets", "pynetdicom/dsutils.py", ("encode",)),
    ("pynetdicom pretty_dataset (LOG_RESPONSE_IDENTIFIERS)", "pynetdicom/dsutils.py", ("pretty_dataset",)),
    ("pynetdicom send_msg (command set + P-DATA, queued)", "pynetdicom/dimse.py", ("send_msg",)),
    ("DUL: PDU encode + socket send (+ waiting for the GIL)", "pynetdicom/dul.py", ("_send",)),
    ("time.sleep in pynetdicom reactors (polling)", "~", ("<built-in method time.sleep>",)),
    ("association setup (deepcopy of the supported contexts)", "pynetdicom/transport.py", ("_create_association",)),
]


def report_profile(kind: Kind, stats: Any, queries: int, top: int) -> None:
    raw = stats.stats  # (file, line, fn) → (cc, nc, tt, ct, callers)
    print(f"\n### {kind.name}: {kind.describe}; {queries} queries (cProfile inflates Python code; compare shares)")
    handler_ct = None
    for label, suffix, names in PROFILE_PARTS:
        ct, calls = 0.0, 0
        for (filename, _, fn), (cc, nc, tt, cum, callers) in raw.items():
            if filename.endswith(suffix) and fn in names:
                ct += cum
                calls += nc
        if handler_ct is None and calls:
            handler_ct = ct
        share = f"{ct / handler_ct * 100:5.1f} %" if handler_ct else "     "
        print(f"  {ct / queries * 1000:8.2f} ms/query {share}  {label}  ({calls / queries:.0f} calls/query)")
    print(f"  top {top} functions by own time (ms per query, calls per query):")
    rows = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)
    for (filename, line, fn), (cc, nc, tt, cum, callers) in rows[:top]:
        print(f"    {tt / queries * 1000:7.3f} {nc / queries:7.0f}  {_short(filename)}:{line}({fn})")


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", str(ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def database_facts(url: str) -> str:
    if url.startswith("sqlite"):
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL) file in the temporary data folder"
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    return f"PostgreSQL {version}, database of its own"


def problems(t: Timing) -> str:
    extra = ""
    if t.mismatches:
        extra += f"  {t.mismatches} WITH UNEXPECTED MATCH COUNTS"
    if t.failures:
        extra += "  final statuses " + ", ".join(f"0x{s & 0xFFFF:04X}×{n}" for s, n in t.failures.items())
    if t.dropped:
        extra += (f"\n    the pynetdicom client dropped {t.dropped} response(s) as 'unexpected C-FIND service "
                  "message' (its reactor race, pynetdicom issue #875): not the server's fault")
    return extra + "".join(f"\n    {odd}" for odd in t.odd)


def timing_line(t: Timing) -> str:
    goal = "meets" if t.pct(50) < GOAL_P50_MS and t.pct(99) < GOAL_P99_MS else "MISSES"
    extra = problems(t)
    return (f"{t.kind:<13} {len(t.ms):>5} {statistics.mean(t.matches):>8.1f} {t.pct(50):>8.2f} {t.pct(95):>8.2f} "
            f"{t.pct(99):>8.2f} {max(t.ms):>8.2f} {t.server_cpu_ms:>8.2f} {t.client_cpu_ms:>8.2f}  {goal}{extra}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10000, help="scheduled procedure steps (default 10000)")
    parser.add_argument("--patients", type=int, help="patients (default 80%% of --steps)")
    parser.add_argument("--days", type=int, default=30, help="days the steps spread over, centred on today")
    parser.add_argument("--database-url",
                        help="PostgreSQL server to create a database on, "
                             "e.g. postgresql://postgres@127.0.0.1:5432/postgres "
                             "(default: a SQLite file in the temporary data folder)")
    parser.add_argument("--pg-default-costs", action="store_true",
                        help="leave PostgreSQL's random_page_cost at its default (4) instead of the advice of docs/administrator.md "
                             "for SSD storage")
    parser.add_argument("--repeat", type=int, default=200, help="measured queries per kind (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured queries per kind first (default 10)")
    parser.add_argument("--budget", type=float, default=6.0,
                        help="seconds per kind after which measuring stops early, once --min-repeat are done")
    parser.add_argument("--min-repeat", type=int, default=10, help="measured queries per kind at least (default 10)")
    parser.add_argument("--new-assoc-repeat", type=int, default=100,
                        help="station_date queries with a new association each (0 to skip)")
    parser.add_argument("--findscu-runs", type=int, default=10, help="findscu processes to time (0 to skip)")
    parser.add_argument("--decompose-rounds", type=int, default=20,
                        help="in-process rounds per kind for the SQL / build / encode split, within --budget/2 "
                             "seconds (0 to skip)")
    parser.add_argument("--variants", action="store_true",
                        help="afterwards, measure what each proposed change would gain (a server per change)")
    parser.add_argument("--variant-kinds", default="station_date,patient_id,name_rare",
                        help="query kinds for --variants (default station_date,patient_id,name_rare)")
    parser.add_argument("--profile", action="store_true", help="profile the server per query kind afterwards")
    parser.add_argument("--profile-rounds", type=int, default=40)
    parser.add_argument("--profile-variant", help="profile the server with these what-if changes, e.g. cached,quiet")
    parser.add_argument("--top", type=int, default=15, help="functions to list per profile")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("pynetdicom").addHandler(DROPPED)
    patients = args.patients or max(1, args.steps * 4 // 5)
    tmp = Path(tempfile.mkdtemp(prefix="mwl-bench-"))
    data_dir = tmp / "data"
    data_dir.mkdir()
    database_name = None
    if args.database_url:
        import psycopg

        admin = args.database_url.replace("postgresql+psycopg://", "postgresql://")
        database_name = f"mwl_bench_{os.getpid()}_{int(time.time())}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database_name}"')
            if not args.pg_default_costs:  # the advice of docs/administrator.md for a database on SSD storage
                conn.execute(f'ALTER DATABASE "{database_name}" SET random_page_cost = {SSD_RANDOM_PAGE_COST}')
        url = f"{admin.rpartition('/')[0]}/{database_name}"
    else:
        url = f"sqlite:///{data_dir / 'pacs.db'}"

    server = Server(data_dir, url)
    ok = True
    try:
        print(f"# Modality Worklist C-FIND latency ({date.today():%Y-%m-%d})")
        print(f"reproduce: cd {ROOT} && {shlex.join([sys.executable, *sys.argv])}")
        data = populate(url, steps=args.steps, patients=patients, days=args.days, seed=args.seed)
        kinds = make_kinds(data, args.seed)
        print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}, "
              f"Python {platform.python_version()}")
        import pydicom
        import pynetdicom
        import sqlalchemy

        print(f"libraries: pydicom {pydicom.__version__}, pynetdicom {pynetdicom.__version__}, "
              f"SQLAlchemy {sqlalchemy.__version__}")
        print(f"load average at start: {load_average()} (other work on the machine moves the latencies a lot; "
              "the CPU figures less)")
        print(f"database: {database_facts(url)}")
        if database_name:
            print("PostgreSQL planner: random_page_cost = " + ("4 (PostgreSQL's default)" if args.pg_default_costs else
                  f"{SSD_RANDOM_PAGE_COST} for the benchmark's database, as docs/administrator.md advises on SSD storage "
                  "(--pg-default-costs: PostgreSQL's default 4)"))
        print(f"code: {git_state()}")
        print("rows: " + ", ".join(f"{name} {count:,}" for name, count in data.counts.items())
              + f" (generated and inserted in {data.build_seconds:.1f} s)")
        today = data.today.strftime("%Y%m%d")
        per_day = Counter(s.station for s in data.steps if s.start_date == today)
        print(f"today ({today}) per station: " + ", ".join(f"{st} {per_day[st]}" for st, *_ in STATIONS))

        server.start()
        print(f"server: {shlex.join(server.command_line)}")
        ae = client_ae()
        assoc = associate(ae, server.dicom_port)
        transfer_syntax = next(cx.transfer_syntax[0] for cx in assoc.accepted_contexts
                               if cx.abstract_syntax == "1.2.840.10008.5.1.4.31")
        implicit_vr = transfer_syntax.is_implicit_VR
        print(f"worklist context accepted with {transfer_syntax.name}; client maximum PDU {ae.maximum_pdu_size}")
        for kind in kinds[:3]:
            print(f"sample answer {kind.name}: {sample_answer(assoc, kind)[0]}")

        idle = idle_cpu(server, assoc, 2.0)
        echo = run_echo(assoc, args.repeat)
        timings = []
        for kind in kinds:
            timings.append(run_kind(assoc, kind, repeat=args.repeat, warmup=args.warmup, budget=args.budget,
                                    min_repeat=args.min_repeat, server=server))
        assoc.release()
        if args.new_assoc_repeat:
            timings.append(run_new_associations(server, kinds[0], repeat=args.new_assoc_repeat, budget=args.budget,
                                                min_repeat=min(args.min_repeat, args.new_assoc_repeat)))

        print(f"\n## pynetdicom client, TCP_NODELAY, end to end (send → final status), ms; goal p50 < "
              f"{GOAL_P50_MS:.0f}, p99 < {GOAL_P99_MS:.0f}")
        for kind in kinds:
            print(f"  {kind.name:<13} {kind.describe}")
        header = (f"{'kind':<13} {'n':>5} {'matches':>8} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} {'srv CPU':>8} "
                  f"{'cli CPU':>8}")
        print("one association for every query:")
        print(header)
        for t in timings:
            if t.mode != "one association":
                print(f"{t.mode} (associate + C-FIND + release):")
                print(header)
            print(timing_line(t))
            if t.phases:
                parts = (f"{name} {percentile(ms, 50):.2f}" for name, ms in t.phases.items())
                print("  p50 of its parts: " + ", ".join(parts))
            ok = ok and not t.failures and t.mismatches <= t.dropped  # drops are the client's
        print(f"baseline C-ECHO on the same association ({len(echo.ms)}): p50 {echo.pct(50):.2f} ms, "
              f"p99 {echo.pct(99):.2f} ms, max {max(echo.ms):.2f} ms")
        print(f"CPU: the server's and this client's process time per query, all threads; with one association "
              f"open and idle, the server uses {idle[0]:.0f} % and the client {idle[1]:.0f} % of a core")

        findscu_timings: list[Timing] = []
        if args.findscu_runs and shutil.which("findscu"):
            print("\n## DCMTK findscu as the client (a modality's toolkit): one association per kind, each query "
                  "timed by findscu's\n## own log clock (send → final status), ms; goal p50 < "
                  f"{GOAL_P50_MS:.0f}, p99 < {GOAL_P99_MS:.0f}")
            print(header)
            for t in timings:
                if t.mode == "one association":
                    kind = next(k for k in kinds if k.name == t.kind)
                    findscu_timings.append(findscu_kind(server, kind, len(t.ms), args.warmup, tmp))
                    print(timing_line(findscu_timings[-1]))
                    ok = ok and not findscu_timings[-1].failures and not findscu_timings[-1].mismatches
            print("  srv CPU includes the association's setup; cli CPU is findscu's (user + system)")
            for line in findscu_check(server.dicom_port, kinds[0], args.findscu_runs, 20, tmp):
                print(line)
        elif args.findscu_runs:
            print("\n## DCMTK findscu as the client: findscu not found (apt-get install dcmtk), skipped")
        server.stop()

        if args.decompose_rounds:
            figures, plans, warned = decompose(url, kinds, args.decompose_rounds, args.budget / 2, implicit_vr)
            print("\n## In-process split (same database and code as the SCP, no network), medians, ms")
            print(f"{'kind':<13} {'n':>3} {'items':>6} {'SQL':>7} {'ORM':>7} {'build':>8} {'encode':>8} {'sum':>8} "
                  f"{'e2e p50':>8} {'rest':>8} {'srv rest':>8}")
            for t in timings:
                if t.mode != "one association":
                    continue
                f = figures[t.kind]
                total = f["find"] + f["encode"]
                print(f"{t.kind:<13} {f['rounds']:>3} {f['items']:>6.1f} {f['raw']:>7.2f} "
                      f"{f['rows'] - f['raw']:>7.2f} "
                      f"{f['find'] - f['rows']:>8.2f} {f['encode']:>8.2f} {total:>8.2f} {t.pct(50):>8.2f} "
                      f"{t.pct(50) - total:>8.2f} {t.server_cpu_ms - total:>8.2f}")
            print("  SQL = the statement worklist.find_rows issues, run on the driver alone (execute + fetchall); "
                  "ORM = the rest of find_rows\n  (SQLAlchemy compile, each result row into a record per table); "
                  "build = the rest of worklist.find (validate_identifier,\n  Answer.plan, Answer.respond); encode = "
                  "pynetdicom.dsutils.encode of each answer; sum = all of these; rest = end-to-end p50 minus sum "
                  "(pynetdicom\n  on both sides, the client, loopback); srv rest = the server's CPU per query minus "
                  "sum (pynetdicom in the server: DIMSE/PDU\n  encoding, its per-response logging, reactor polling)")
            if warned:
                print("\n## pydicom warnings while building the answers (the server also logs each as a WARNING "
                      "line);\n## 'sent:' values longer than their VR allows in what goes out")
                for message, n in sorted(warned.items()):
                    print(f"  {n:>6}× {message}" if n else f"  {'':>7} {message}")
            print("\n## SQL plans of the statements the worklist issues")
            for kind in kinds:
                print(f"{kind.name}:")
                for line in plans[kind.name]:
                    print(f"    {line}")

        print(f"\n## Association setup\n{context_copy_cost(tmp)}")

        if args.variants:
            run_variants(data_dir, url, kinds, args)

        for label, judged in (("DCMTK findscu", findscu_timings),
                              ("the pynetdicom client", [t for t in timings if t.mode == "one association"])):
            if not judged:
                continue
            met = [t.kind for t in judged if t.pct(50) < GOAL_P50_MS and t.pct(99) < GOAL_P99_MS]
            missed = [f"{t.kind} ({t.pct(50):.0f}/{t.pct(99):.0f})" for t in judged if t.kind not in met]
            print(f"\ngoal p50 < {GOAL_P50_MS:.0f} ms and p99 < {GOAL_P99_MS:.0f} ms on one association, {label}: "
                  f"met by {', '.join(met) or 'none'}; missed by {', '.join(missed) or 'none'} (p50/p99 ms)")
        print(f"load average at the end: {load_average()}")

        if args.profile:
            profile_server(data_dir, url, kinds, args.profile_rounds, args.top, args.budget, args.profile_variant)
    finally:
        server.stop()
        if database_name:
            import psycopg

            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database_name}" WITH (FORCE)')
        if args.keep:
            print(f"data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

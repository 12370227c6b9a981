#!/usr/bin/env python
"""HL7 v2 throughput: ADT^A04 and ORM^O01 over MLLP to the ACK, on one connection and on several.

Starts the real server (``pacs serve``) on a fresh data folder, sends new patients (ADT^A04,
v2.5, UTF-8, Chinese names) each followed by an order (ORM^O01 NW, v2.3.1, procedure codes from
``mappings/codes/procedures.csv``) from separate sender processes, one plain socket each with
TCP_NODELAY, one message in flight per connection. For each connection count it prints
messages/s, ACK latency p50/p95/p99/max and the AA count; afterwards it kills the server with
SIGKILL and checks in the database that every AA'd message is PROCESSED and that its patient or
order exists.

Run from the project root::

    .venv/bin/python bench/hl7_throughput.py                     # SQLite, 5,000 messages, 1 and 8
    .venv/bin/python bench/hl7_throughput.py --connections 1,2,4,8 --messages 10000
    .venv/bin/python bench/hl7_throughput.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/hl7_throughput.py --profile stages    # where the server's time goes
    .venv/bin/python bench/hl7_throughput.py --profile cprofile  # every function (slower)
    .venv/bin/python bench/hl7_throughput.py --profile py-spy    # sampled; needs py-spy in the venv

``--database-url`` names a PostgreSQL server to connect to as an administrator; the benchmark
creates a database of its own there and drops it at the end. Without it the server uses its
default SQLite file (WAL, synchronous=FULL) in the temporary data folder.

``--profile stages`` and ``--profile cprofile`` run the server under a small bootstrap that
instruments the intake worker (where messages are stored, parsed, mapped, applied and
committed) only while each measured run is going, and print per run where the time goes per
message. ``stages`` times the pipeline's stages, the ORM session and the database driver with
perf_counter (a few microseconds per call, so its figures are close to the real ones);
``cprofile`` sees every function but roughly doubles the cost of pure-Python code, so read its
figures as shares. ``py-spy`` samples the whole server process from start to end. Throughput
figures of a profiled run are not the benchmark's.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import platform
import random
import re
import shlex
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

from common import cpu_model, free_port, git_state  # noqa: E402  (bench/common.py)
PROCEDURES_CSV = ROOT / "pacs" / "mappings" / "codes" / "procedures.csv"

# MLLP (HL7 v2.5.1 Appendix C): <VT> payload <FS><CR>
START_BLOCK = b"\x0b"
TRAILER = b"\x1c\x0d"

GOAL_RATE = 1000.0  # messages/s
GOAL_P99_MS = 50.0
SERVER_START_TIMEOUT = 90.0
ACK_TIMEOUT = 60.0

SURNAMES = ["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
            "何", "高", "林", "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹", "曾", "彭",
            "单", "解", "欧阳", "司马", "诸葛", "上官"]
GIVEN = ["伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛",
         "明", "超", "秀兰", "霞", "平", "刚", "桂英", "建华", "国强", "晓东", "子涵", "雨桐", "浩然", "思远",
         "乐", "行", "长春", "重阳"]
DISTRICTS = ["东城区东华门大街", "西城区金融街", "朝阳区建国路", "海淀区中关村大街", "丰台区丰台路",
             "石景山区鲁谷路", "通州区新华大街", "昌平区府学路"]
DOCTORS = ["D001^李^四", "D002^王^五", "D003^赵^六", "D010^曾^国藩", "D011^单^田芳"]
DEPARTMENTS = ["RAD^放射科", "0301^呼吸内科", "0402^神经内科", "0501^骨科", "ED^急诊科"]
REASONS = ["咳嗽两周", "头痛三天", "腰痛", "体检", "外伤", "发热待查", "胸闷气短", "膝关节疼痛"]


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment from {field number: value} (MSH counts MSH-1 as the separator itself)."""
    if name == "MSH":
        values = [""] * (max(fields) - 1)
        for number, value in fields.items():
            values[number - 2] = value
        return "MSH|" + "|".join(values)
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return name + "|" + "|".join(values)


def msh(message_type: str, control: str, when: str, version: str) -> str:
    return seg("MSH", {2: "^~\\&", 3: "HIS", 4: "IHE_OP", 5: "PACS", 6: "RADIOLOGY", 7: when,
                       9: message_type, 10: control, 11: "P", 12: version, 15: "AL", 16: "NE",
                       17: "CHN", 18: "UNICODE UTF-8"})


def load_procedures() -> list[tuple[str, str, str]]:
    """(code, modality, description) rows of the shipped procedure table."""
    with PROCEDURES_CSV.open(encoding="utf-8", newline="") as handle:
        lines = [line for line in handle if line.strip() and not line.lstrip().startswith("#")]
    return [(row["code"], row["modality"], row["description"]) for row in csv.DictReader(lines)]


@dataclass
class Outbound:
    control_id: str
    kind: str  # "ADT" or "ORM"
    key: str  # the patient ID (ADT) or placer order number (ORM) that must exist afterwards
    frame: bytes


def make_messages(tag: str, count: int, seed: int) -> list[Outbound]:
    """``count`` distinct messages: a new patient (ADT^A04), then an order for it (ORM^O01 NW)."""
    rng = random.Random(seed)
    procedures = load_procedures()
    out: list[Outbound] = []
    base = datetime(2026, 11, 25, 7, 0, 0)
    number = 0
    while len(out) < count:
        number += 1
        patient_id = f"{tag}P{number:06d}"
        when = (base + timedelta(seconds=number)).strftime("%Y%m%d%H%M%S")
        family, given = rng.choice(SURNAMES), rng.choice(GIVEN) + rng.choice(["", *GIVEN])
        sex = rng.choice("MF")
        born = datetime(1930, 1, 1) + timedelta(days=rng.randrange(33000))
        region = rng.choice(["110101", "310104", "440305", "510107"])
        national = f"{region}{born:%Y%m%d}{rng.randrange(1000):03d}{rng.choice('0123456789X')}"
        visit = f"{tag}V{number:06d}"
        pid = seg("PID", {1: "1", 3: f"{patient_id}^^^HOSP^PI~{national}^^^CHN^NI",
                          5: f"{family}^{given}^^^^^L^I", 7: f"{born:%Y%m%d}", 8: sex,
                          11: f"{rng.choice(DISTRICTS)}{rng.randrange(1, 300)}号^^北京^^100006^CHN",
                          13: f"^PRN^PH^^^^^^^^^139{rng.randrange(10**8):08d}"})
        adt = [
            msh("ADT^A04^ADT_A01", f"{tag}A{number:06d}", when, "2.5"),
            seg("EVN", {1: "A04", 2: when}),
            pid,
            seg("PV1", {1: "1", 2: "O", 3: "OPD^^^HOSP", 7: rng.choice(DOCTORS), 19: visit, 44: when}),
        ]
        out.append(Outbound(f"{tag}A{number:06d}", "ADT", patient_id, _frame(adt)))
        if len(out) >= count:
            break
        code, modality, description = rng.choice(procedures)
        placer = f"{tag}PL{number:06d}"
        start = (base + timedelta(hours=2, minutes=number % 600)).strftime("%Y%m%d%H%M%S")
        doctor = rng.choice(DOCTORS)
        orm = [
            msh("ORM^O01", f"{tag}O{number:06d}", when, "2.3.1"),
            seg("PID", {1: "1", 3: f"{patient_id}^^^HOSP^PI", 5: f"{family}^{given}^^^^^L^I",
                        7: f"{born:%Y%m%d}", 8: sex}),
            seg("PV1", {1: "1", 2: "O", 3: "OPD^^^HOSP", 8: rng.choice(DOCTORS), 19: visit}),
            seg("ORC", {1: "NW", 2: f"{placer}^HIS", 5: "SC", 7: f"^^^{start}^^R", 9: when, 12: doctor,
                        17: rng.choice(DEPARTMENTS)}),
            seg("OBR", {1: "1", 2: f"{placer}^HIS", 4: f"{code}^{description}^HOSP", 16: doctor,
                        18: f"{tag}ACC{number:06d}", 19: f"{tag}RP{number:06d}", 20: f"{tag}SPS{number:06d}",
                        24: modality, 27: f"^^^{start}^^R", 31: f"^{rng.choice(REASONS)}"}),
        ]
        out.append(Outbound(f"{tag}O{number:06d}", "ORM", placer, _frame(orm)))
    return out


def _frame(segments: list[str]) -> bytes:
    return START_BLOCK + ("\r".join(segments) + "\r").encode("utf-8") + TRAILER


# --------------------------------------------------------------------------------------------
# Senders: one OS process per connection
# --------------------------------------------------------------------------------------------


def _msa(ack: bytes) -> tuple[str, str]:
    """MSA-1 (AA/AE/AR) and MSA-2 of an ACK payload."""
    text = ack.decode("utf-8", "replace")
    for segment in re.split(r"[\r\n]+", text):
        if segment.startswith("MSA"):
            fields = segment.split(segment[3]) if len(segment) > 3 else []
            return (fields[1] if len(fields) > 1 else "", fields[2] if len(fields) > 2 else "")
    return "", ""


def sender(index: int, port: int, tag: str, count: int, seed: int, barrier: Any, results: Any) -> None:
    """Connect, wait for the others, then send each message and wait for its ACK."""
    report: dict[str, Any] = {"index": index, "latencies": [], "aa": [], "not_aa": 0, "first_not_aa": "",
                              "error": "", "start": 0.0, "end": 0.0, "cpu": 0.0}
    try:
        messages = make_messages(tag, count, seed)
        sock = socket.create_connection(("127.0.0.1", port), timeout=ACK_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except Exception as exc:  # report it; the parent counts this sender as failed
        report["error"] = f"{type(exc).__name__}: {exc}"
        barrier.abort()
        results.put(report)
        return
    latencies: list[float] = report["latencies"]
    buffer = bytearray()
    try:
        barrier.wait()
        cpu = time.process_time()
        report["start"] = time.perf_counter()
        for message in messages:
            sent = time.perf_counter()
            sock.sendall(message.frame)
            while (end := buffer.find(TRAILER)) < 0:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection before acknowledging")
                buffer += chunk
            latencies.append(time.perf_counter() - sent)
            start = buffer.find(START_BLOCK)
            ack = bytes(buffer[start + 1:end])
            del buffer[:end + len(TRAILER)]
            code, echoed = _msa(ack)
            if code == "AA" and echoed == message.control_id:
                report["aa"].append((message.control_id, message.kind, message.key))
            else:
                report["not_aa"] += 1
                if not report["first_not_aa"]:
                    report["first_not_aa"] = f"{message.control_id}: " + ack.decode("utf-8", "replace").replace(
                        "\r", "\n    ")
        report["end"] = time.perf_counter()
        report["cpu"] = time.process_time() - cpu
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["end"] = time.perf_counter()
    finally:
        sock.close()
    results.put(report)


@dataclass
class RunResult:
    name: str
    connections: int
    messages: int
    seconds: float
    latencies: list[float]
    aa: list[tuple[str, str, str]]
    not_aa: int
    first_not_aa: str
    errors: list[str]
    server_cpu: float  # the server and the processes it started (the MLLP front)
    main_cpu: float  # the server's main process alone (the intake worker's)
    client_cpu: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile, in milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
        return ordered[rank - 1] * 1000


def run(name: str, port: int, connections: int, total: int, tag: str, server_pid: int) -> RunResult:
    """Send ``total`` messages spread over ``connections`` sender processes, all starting together."""
    context = mp.get_context("spawn")
    barrier = context.Barrier(connections + 1)
    results = context.Queue()
    shares = [total // connections + (1 if i < total % connections else 0) for i in range(connections)]
    processes = [
        context.Process(target=sender, args=(i, port, f"{tag}{i:02d}", shares[i], zlib.crc32(f"{tag}{i}".encode()),
                                             barrier, results), daemon=True)
        for i in range(connections)
    ]
    for process in processes:
        process.start()
    try:
        barrier.wait(timeout=120)
    except threading.BrokenBarrierError:
        pass  # a sender failed to connect; its report says why
    cpu_before = server_cpu_seconds(server_pid)
    reports = [results.get(timeout=ACK_TIMEOUT * max(shares) + 120) for _ in processes]
    cpu_after = server_cpu_seconds(server_pid)
    for process in processes:
        process.join(10)
    started = [r["start"] for r in reports if r["start"]]
    ended = [r["end"] for r in reports if r["end"]]
    return RunResult(
        name=name, connections=connections, messages=total,
        seconds=(max(ended) - min(started)) if started and ended else 0.0,
        latencies=[x for r in reports for x in r["latencies"]],
        aa=[x for r in reports for x in r["aa"]],
        not_aa=sum(r["not_aa"] for r in reports),
        first_not_aa=next((r["first_not_aa"] for r in reports if r["first_not_aa"]), ""),
        errors=[f"sender {r['index']}: {r['error']}" for r in reports if r["error"]],
        server_cpu=cpu_after[1] - cpu_before[1],
        main_cpu=cpu_after[0] - cpu_before[0],
        client_cpu=sum(r["cpu"] for r in reports),
    )


# --------------------------------------------------------------------------------------------
# The server under test
# --------------------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (from /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (the MLLP front process of ``pacs serve``)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def server_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time of the server process and of all the processes it started: (main, all)."""
    main = process_cpu_seconds(pid)
    return main, main + sum(process_cpu_seconds(child) for child in descendants(pid))


def python_child(pid: int) -> int:
    """The pid of the Python server when ``pid`` is a wrapper (py-spy) that started it."""
    for _ in range(100):
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return pid
        if children:
            return int(children[0])
        time.sleep(0.05)
    return pid


# Runs `pacs serve` with instruments on the intake worker, switched on by SIGUSR1 and off (and
# written out as <prefix><run>.*) by SIGUSR2, so start-up and warm-up are left out.
#   stages:   perf_counter around the channel's stages, the registry services, the ORM session
#             and the database driver (a few microseconds per call), only in the intake thread;
#   cprofile: cProfile on the intake worker and on the event loop thread.
PROFILE_BOOTSTRAP = r"""
import cProfile, collections, functools, json, signal, sys, threading, time
mode, prefix = sys.argv[1], sys.argv[2]
del sys.argv[1:3]
from sqlalchemy.engine import Connection
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.orm import Session
from pacs.integration import channel, hl7v2, intake
from pacs.registry import service

local = threading.local()
state = {"on": False, "run": 0, "in_batch": False}
totals, batch_sizes, batches, profiles = {}, collections.Counter(), {}, {}

def reset():
    totals.clear(); batch_sizes.clear()
    batches.update(count=0, messages=0, wall=0.0, cpu=0.0)
    profiles.update(intake=cProfile.Profile(), loop=cProfile.Profile())

def timed(name, function, unless=()):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        active = getattr(local, "active", None)
        if active is None or name in active or any(u in active for u in unless):
            return function(*args, **kwargs)
        active.add(name)
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            entry = totals.setdefault(name, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - start
            active.discard(name)
    return wrapper

if mode == "stages":
    for owner, attribute in [
        (channel.Channel, "receive"), (intake, "store_raw"), (intake, "AppliedIndex"), (channel.Channel, "process"),
        (channel.Channel, "_parse"), (hl7v2, "parse"), (channel, "map_hl7"),
        (channel, "apply_mapped"), (service, "upsert_patient"), (service, "_known_identifiers"),
        (service, "_add_identifiers"), (service, "person_name"), (service, "upsert_visit"),
        (service, "apply_order"), (service, "find_order"), (service, "_new_order"),
        (channel.Channel, "_finish"), (channel, "build_ack"), (channel.Channel, "save"), (Session, "commit"),
        (Session, "flush"), (Session, "execute"), (Connection, "execute"), (Connection, "exec_driver_sql"),
        (DefaultDialect, "do_execute"), (DefaultDialect, "do_execute_no_params"), (DefaultDialect, "do_commit"),
    ]:
        setattr(owner, attribute, timed(attribute, getattr(owner, attribute)))
    # statements compiled once and run on the driver's cursor (pacs.db.Prepared), and savepoints
    from pacs import db
    from pacs.audit import service as audit_service
    for owner, attribute in [(db.Prepared, "execute"), (db.Prepared, "execute_many"), (db.Prepared, "rows"),
                             (db.Prepared, "returning_each"), (db, "savepoint"), (audit_service, "savepoint")]:
        setattr(owner, attribute, timed("prepared", getattr(owner, attribute)))

# One cycle of the intake worker: a commit (the previous batch's effects and this batch's raw
# messages), then this batch through the channel.
cycle = intake.Intake._cycle
def profiled_cycle(self, batch, processed, *rest):
    if not state["on"]:
        return cycle(self, batch, processed, *rest)
    state["in_batch"] = True
    local.active = set()
    if mode == "cprofile":
        profiles["intake"].enable()
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        return cycle(self, batch, processed, *rest)
    finally:
        if mode == "cprofile":
            profiles["intake"].disable()
        batches["wall"] += time.perf_counter() - wall
        batches["cpu"] += time.thread_time() - cpu
        if batch:
            batches["count"] += 1
            batches["messages"] += len(batch)
            batch_sizes[len(batch)] += 1
        local.active = None
        state["in_batch"] = False
intake.Intake._cycle = profiled_cycle

def start(signum, frame):
    reset()
    state["on"] = True
    if mode == "cprofile":
        profiles["loop"].enable()

def stop(signum, frame):
    state["on"] = False
    deadline = time.monotonic() + 5
    while state["in_batch"] and time.monotonic() < deadline:
        time.sleep(0.001)
    state["run"] += 1
    base = f"{prefix}{state['run']}."
    if mode == "cprofile":
        profiles["loop"].disable()
        profiles["loop"].dump_stats(base + "loop.prof")
        profiles["intake"].dump_stats(base + "intake.prof")
    with open(base + "json", "w") as out:
        json.dump({"timers": totals, "batches": batches, "batch_sizes": batch_sizes}, out)
    open(base + "done", "w").close()

reset()
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
from pacs.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Server:
    data_dir: Path
    database_url: str | None
    profile: str | None
    process: subprocess.Popen[bytes] | None = None
    mllp_port: int = 0
    http_port: int = 0
    pid: int = 0
    command_line: list[str] = field(default_factory=list)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir.parent / "server.log"

    @property
    def profile_prefix(self) -> str:
        return str(self.data_dir.parent / "profile-")

    def command(self) -> list[str]:
        python = str(Path(sys.executable))
        serve = ["serve", "--data-dir", str(self.data_dir), "--mllp-port", str(self.mllp_port),
                 "--http-port", str(self.http_port), "--dicom-port", str(free_port()), "--host", "127.0.0.1"]
        if self.profile in ("stages", "cprofile"):
            return [python, "-c", PROFILE_BOOTSTRAP, self.profile, self.profile_prefix, *serve]
        if self.profile == "py-spy":
            py_spy = Path(sys.executable).parent / "py-spy"
            return [str(py_spy), "record", "--nonblocking", "--threads", "--rate", "200", "--format", "raw",
                    "--output", self.profile_prefix + "py-spy.txt", "--", python, "-m", "pacs.cli", *serve]
        return [python, "-m", "pacs.cli", *serve]

    def start(self) -> None:
        self.mllp_port, self.http_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
        env["PACS_LOG_LEVEL"] = "WARNING"
        if self.database_url:
            env["PACS_DATABASE_URL"] = self.database_url
        command = self.command()
        self.command_line = list(command)
        if self.profile in ("stages", "cprofile"):
            self.command_line[2] = "<profiling bootstrap>"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.tail()}")
            if "pacs: serving" in self.log.read_text(errors="replace"):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the server did not say it was serving within {SERVER_START_TIMEOUT:.0f} s:\n"
                               f"{self.tail()}")
        with socket.create_connection(("127.0.0.1", self.mllp_port), timeout=5):
            pass
        self.pid = python_child(self.process.pid) if self.profile == "py-spy" else self.process.pid

    def collect_profile(self, run: int) -> dict[str, Any]:
        """Switch the instruments off (SIGUSR2) and read what they recorded during run ``run``."""
        import json

        self.signal(signal.SIGUSR2)
        base = f"{self.profile_prefix}{run}."
        deadline = time.monotonic() + 60
        while not Path(base + "done").exists():
            if time.monotonic() > deadline or self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"the server wrote no profile for run {run}:\n{self.tail()}")
            time.sleep(0.05)
        return json.loads(Path(base + "json").read_text())

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL: nothing gets a chance to flush, so only what was committed survives."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            if self.pid != self.process.pid:
                self.process.wait(60)  # py-spy writes its profile when its child dies
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


# --------------------------------------------------------------------------------------------
# Databases: the benchmark's own PostgreSQL database, and the durability check
# --------------------------------------------------------------------------------------------


def postgres_url(url: str, database: str) -> str:
    head, _, _ = url.rpartition("/")
    return f"{head}/{database}"


def postgres_admin(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(statement)


def postgres_facts(url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        fsync = conn.execute("SHOW fsync").fetchone()[0]
        sync_commit = conn.execute("SHOW synchronous_commit").fetchone()[0]
        wal_sync = conn.execute("SHOW wal_sync_method").fetchone()[0]
    return f"PostgreSQL {version} (fsync={fsync}, synchronous_commit={sync_commit}, wal_sync_method={wal_sync})"


def query(database_url: str | None, data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    if database_url:
        import psycopg

        with psycopg.connect(database_url) as conn:
            return list(conn.execute(sql).fetchall())
    with sqlite3.connect(data_dir / "pacs.db") as conn:
        return list(conn.execute(sql).fetchall())


def verify(database_url: str | None, data_dir: Path, acked: list[tuple[str, str, str]]) -> list[str]:
    """Problems with the durability of what was acknowledged (empty when all is well)."""
    status = {control: (s, ack) for control, s, ack in query(
        database_url, data_dir,
        "SELECT control_id, status, ack_code FROM message WHERE sending_facility = 'IHE_OP'")}
    patients = {value for (value,) in query(database_url, data_dir, "SELECT value FROM patient_identifier")}
    orders = {number for (number,) in query(database_url, data_dir,
                                             "SELECT placer_number FROM imaging_order")}
    steps = {number for (number,) in query(
        database_url, data_dir,
        "SELECT o.placer_number FROM procedure_step s JOIN imaging_order o ON s.\"order\" = o.id")}
    problems: list[str] = []
    missing = [c for c, _, _ in acked if c not in status]
    not_processed = [f"{c} ({status[c][0]})" for c, _, _ in acked if c in status and status[c][0] != "PROCESSED"]
    no_patient = [k for _, kind, k in acked if kind == "ADT" and k not in patients]
    no_order = [k for _, kind, k in acked if kind == "ORM" and k not in orders]
    no_step = [k for _, kind, k in acked if kind == "ORM" and k not in steps]
    for what, items in (("acknowledged but not in the message store", missing),
                        ("acknowledged but not PROCESSED", not_processed),
                        ("ADT acknowledged but the patient is missing", no_patient),
                        ("ORM acknowledged but the order is missing", no_order),
                        ("ORM acknowledged but the worklist step is missing", no_step)):
        if items:
            problems.append(f"{len(items)} message(s) {what}, e.g. {', '.join(items[:5])}")
    return problems


# --------------------------------------------------------------------------------------------
# Facts and profiles
# --------------------------------------------------------------------------------------------


def filesystem_of(path: Path) -> str:
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return f"{kind} at {best or '?'}"


def fsync_ms(folder: Path, rounds: int = 200) -> float:
    """Median time of a 4 KB write + fsync in ``folder`` (the floor under every durable commit)."""
    path = folder / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for i in range(rounds):
            os.pwrite(fd, os.urandom(4096), (i % 16) * 4096)
            start = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


# The intake worker's stages as the stage timers see them: (depth, timer, label). Each parent's
# time includes its children's; "(rest)" is what the parent spends outside the children listed.
STAGE_TREE = [
    (0, "_cycle", "intake cycles: commit, then store and process the next batch"),
    (1, "receive", "receive: message-store row from the MSH"),
    (1, "store_raw", "store_raw: one INSERT for the batch's raw messages"),
    (1, "AppliedIndex", "duplicate check: one SELECT per sender for the batch"),
    (1, "process", "process (per message, inside the batch transaction)"),
    (2, "_parse", "decode, parse, header checks"),
    (3, "parse", "hl7v2.parse"),
    (2, "map_hl7", "mapping (map_hl7)"),
    (2, "apply_mapped", "destination: registry services (apply_mapped)"),
    (3, "upsert_patient", "upsert_patient (SELECT, INSERT or UPDATE if changed)"),
    (4, "_known_identifiers", "identifiers and their patients (one SELECT)"),
    (4, "person_name", "person_name (pinyin, PN groups)"),
    (4, "_add_identifiers", "_add_identifiers (INSERT the new ones)"),
    (3, "upsert_visit", "upsert_visit (SELECT, INSERT or UPDATE if changed)"),
    (3, "apply_order", "apply_order"),
    (4, "find_order", "find_order (one SELECT by placer/filler/accession)"),
    (4, "_new_order", "_new_order (INSERT order, steps, event)"),
    (2, "_finish", "ACK and final status (_finish)"),
    (3, "build_ack", "build_ack"),
    (1, "save", "save: the batch's message-row UPDATEs and audit entries"),
    (1, "commit", "Session.commit (one per cycle)"),
]
CROSS_CUTTING = [
    ("flush", "ORM flushes (merge, A47, status transitions)"),
    ("execute", "SQLAlchemy statements (Session/Connection.execute, incl. driver time)"),
    ("prepared", "prepared statements and savepoints on the driver's cursor (pacs.db.Prepared)"),
    ("exec_driver_sql", "plain statements through SQLAlchemy: BEGIN"),
    (("do_execute", "do_execute_no_params"), "driver: SQL statements (sqlite3/psycopg C code + I/O)"),
    ("do_commit", "driver: COMMIT (SQLite: WAL append + fsync; PostgreSQL: round trip + WAL flush)"),
]


def report_stages(data: dict[str, Any], server_cpu: float, front_cpu: float) -> None:
    timers: dict[str, list[float]] = data["timers"]
    batches = data["batches"]
    messages = max(int(batches["messages"]), 1)
    wall = batches["wall"]

    def get(name: str | tuple[str, ...]) -> tuple[int, float]:
        names = (name,) if isinstance(name, str) else name
        return (int(sum(timers.get(n, [0, 0.0])[0] for n in names)),
                sum(timers.get(n, [0, 0.0])[1] for n in names))

    timers["_cycle"] = [batches["count"], wall]
    sizes = {int(k): v for k, v in data["batch_sizes"].items()}
    print(f"  intake worker: {wall / messages * 1000:.3f} ms/msg wall, {batches['cpu'] / messages * 1000:.3f} ms/msg "
          f"CPU (the rest is fsync, database round trips and waiting for the GIL); "
          f"{batches['count']} batches, mean {messages / max(batches['count'], 1):.1f}, "
          f"largest {max(sizes, default=0)} messages")
    print(f"  main process CPU: {server_cpu / messages * 1000:.3f} ms/msg, of which outside the intake worker "
          f"(the MLLP front's relay, or the event loop's MLLP reads/writes; other threads): "
          f"{(server_cpu - batches['cpu']) / messages * 1000:.3f} ms/msg")
    if front_cpu:
        print(f"  MLLP front process CPU (MLLP reads/writes, decode, parse, map): "
              f"{front_cpu / messages * 1000:.3f} ms/msg")
    print(f"    {'stage':62} {'calls/msg':>9} {'ms/msg':>8} {'share':>6}")
    for index, (depth, name, label) in enumerate(STAGE_TREE):
        calls, seconds = get(name)
        print(f"    {'  ' * depth + label:62} {calls / messages:>9.2f} {seconds / messages * 1000:>8.3f} "
              f"{seconds / wall * 100 if wall else 0:>5.1f}%")
        children = []
        for child_depth, child, _ in STAGE_TREE[index + 1:]:
            if child_depth <= depth:
                break
            if child_depth == depth + 1:
                children.append(child)
        if children:
            rest = seconds - sum(get(c)[1] for c in children)
            print(f"    {'  ' * (depth + 1) + '(rest)':62} {'':>9} {rest / messages * 1000:>8.3f} "
                  f"{rest / wall * 100 if wall else 0:>5.1f}%")
    print(f"    {'across the stages above:':62}")
    for name, label in CROSS_CUTTING:
        calls, seconds = get(name)
        print(f"    {'  ' + label:62} {calls / messages:>9.2f} {seconds / messages * 1000:>8.3f} "
              f"{seconds / wall * 100 if wall else 0:>5.1f}%")


def report_cprofile(base: str, data: dict[str, Any], top: int) -> None:
    import pstats

    messages = max(int(data["batches"]["messages"]), 1)
    intake_path, loop_path = Path(base + "intake.prof"), Path(base + "loop.prof")
    print(f"  intake worker under cProfile: {data['batches']['wall'] / messages * 1000:.3f} ms/msg wall "
          f"(cProfile inflates Python code; compare shares, not times)")
    stats = pstats.Stats(str(intake_path))
    print(f"  intake worker, top {top} by own time:")
    _print_top(stats, "tottime", top, messages)
    print(f"  intake worker, top {top} by cumulative time:")
    _print_top(stats, "cumulative", top, messages)
    if loop_path.exists():
        loop = pstats.Stats(str(loop_path))
        print(f"  event loop thread, top {min(top, 12)} by own time (epoll is waiting, not work):")
        _print_top(loop, "tottime", min(top, 12), messages)


def _print_top(stats: Any, key: str, top: int, messages: int) -> None:
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2 if key == "tottime" else 3], reverse=True)[:top]
    print(f"    {'calls':>8} {'own ms/msg':>10} {'cum ms/msg':>10}  function")
    for (filename, line, function), (_cc, calls, own, cumulative, _callers) in rows:
        where = function if filename == "~" else f"{_short(filename)}:{line}({function})"
        print(f"    {calls:>8} {own / messages * 1000:>10.3f} {cumulative / messages * 1000:>10.3f}  {where}")


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/pacs/", "/lib/python"):
        if marker in filename:
            return filename.split(marker, 1)[1] if marker != "/pacs/" else "pacs/" + filename.split(marker, 1)[1]
    return filename


def _py_spy_frame(frame: str) -> str:
    """``function (file:line)`` → ``function (short file)``, so a function's lines add up."""
    function, _, where = frame.partition(" (")
    return f"{function} ({_short(where.rstrip(')').rsplit(':', 1)[0])})" if where else function


def report_py_spy(path: Path, top: int) -> None:
    """Summarise py-spy's collapsed stacks: samples per thread and per function (inclusive/own)."""
    if not path.exists():
        print("  (py-spy wrote no profile)")
        return
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        threads[frames[0]] += count
        total += count
        names = [_py_spy_frame(frame) for frame in frames[1:]]
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    print(f"\npy-spy: {total} samples of busy threads (200/s, whole run incl. start-up and warm-up)")
    for thread, count in threads.most_common():
        print(f"  {count:>7}  {count / total * 100:5.1f}%  {thread}")
    print(f"\n  top {top} by inclusive samples:")
    for name, count in inclusive.most_common(top):
        print(f"  {count:>7}  {count / total * 100:5.1f}%  {name}")
    print(f"\n  top {top} by own samples:")
    for name, count in own.most_common(top):
        print(f"  {count:>7}  {count / total * 100:5.1f}%  {name}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000, help="messages per run (default 5000)")
    parser.add_argument("--connections", default="1,8",
                        help="comma-separated connection counts, one run each (default 1,8)")
    parser.add_argument("--warmup", type=int, default=400, help="messages sent before measuring (default 400)")
    parser.add_argument("--no-analyze", dest="analyze", action="store_false",
                        help="PostgreSQL: measure without the ANALYZE after the warm-up (tables without statistics)")
    parser.add_argument("--database-url", default=os.environ.get("PACS_DATABASE_URL"),
                        help="PostgreSQL server to create a scratch database on, e.g. "
                             "postgresql://postgres@127.0.0.1:5432/postgres (default: PACS_DATABASE_URL, "
                             "else SQLite)")
    parser.add_argument("--profile", choices=["stages", "cprofile", "py-spy"],
                        help="where the server's time goes: stages (timers on the pipeline's stages, the "
                             "ORM and the driver; little overhead), cprofile (every function, about 2x "
                             "slower) or py-spy (sampling; pip install py-spy into the venv)")
    parser.add_argument("--top", type=int, default=20, help="functions listed per profile table (default 20)")
    parser.add_argument("--tmp", type=Path,
                        help="where the server's scratch data folder goes (default the system temp folder)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch data folder (and the PostgreSQL database)")
    args = parser.parse_args(argv)
    args.connection_counts = [int(c) for c in args.connections.split(",") if c.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="pacs-hl7-bench-", dir=args.tmp or tempfile.gettempdir()))
    data_dir = scratch / "data"
    tag = f"B{int(time.time()) % 100000:05d}"
    database_url = None
    database_name = ""
    if args.database_url:
        database_name = f"pacs_bench_{os.getpid()}"
        admin = args.database_url
        postgres_admin(admin, f'CREATE DATABASE "{database_name}"')
        database_url = postgres_url(admin, database_name)
    server = Server(data_dir, database_url, args.profile)

    command = [".venv/bin/python", "bench/hl7_throughput.py", f"--messages={args.messages}",
               f"--connections={args.connections}", f"--warmup={args.warmup}"]
    if args.database_url:
        command.append(f"--database-url={args.database_url}")
    if args.profile:
        command.append(f"--profile={args.profile}")
    if not args.analyze:
        command.append("--no-analyze")
    if args.tmp:
        command.append(f"--tmp={args.tmp}")
    print(f"reproduce: cd {shlex.quote(str(ROOT))} && {shlex.join(command)}")
    try:
        import sqlalchemy

        db_text = (postgres_facts(database_url) if database_url else
                   f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL) on {filesystem_of(scratch)}")
        print(f"machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {cpu_model()}; "
              f"{platform.platform()}; load average {os.getloadavg()[0]:.2f} before the run")
        print(f"python: {platform.python_implementation()} {platform.python_version()}; "
              f"SQLAlchemy {sqlalchemy.__version__}")
        print(f"database: {db_text}")
        print(f"code: {git_state()}")
        print(f"fsync of a 4 KB write in the scratch folder: median {fsync_ms(scratch):.2f} ms")
        print("messages: ADT^A04 v2.5 (new patient) then ORM^O01 NW v2.3.1 (its order), UTF-8, "
              "from IHE_OP; one in flight per connection; senders are separate processes")

        server.start()
        print(f"server: pid {server.pid}, MLLP {server.mllp_port}"
              + (f", profiled with {args.profile}" if args.profile else "")
              + f"\n  {shlex.join(server.command_line)}")
        if args.warmup:
            warm = run("warm-up", server.mllp_port, min(8, max(args.connection_counts)), args.warmup,
                       f"{tag}W", server.pid)
            if warm.errors or warm.not_aa:
                print(f"warm-up: {warm.not_aa} not AA; {'; '.join(warm.errors)}\n  {warm.first_not_aa}")
        if database_url and args.analyze:
            # A server that has run for a minute has its tables' statistics: autovacuum analyzes a
            # table once 50 rows and a tenth of it have changed (autovacuum_naptime, 1 min). A
            # database created seconds ago has none, and PostgreSQL then plans the duplicate
            # check's look-up by sender alone, reading every message of the sender.
            started = time.perf_counter()
            postgres_admin(database_url, "ANALYZE")
            print(f"statistics: ANALYZE after the warm-up, as autovacuum would ({time.perf_counter() - started:.2f} s)")
        instrumented = args.profile in ("stages", "cprofile")
        results: list[RunResult] = []
        profiles: list[dict[str, Any]] = []
        print(f"\n{'conns':>5} {'messages':>8} {'seconds':>8} {'msg/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
              f"{'p99 ms':>7} {'max ms':>7} {'AA':>6} {'not AA':>6} {'server CPU':>10} {'server':>6} "
              f"{'main proc':>9} {'client CPU':>10}")
        print(f"{'':>72} {'ms/msg':>10} {'cores':>6} {'ms/msg':>9} {'ms/msg':>10}")
        for number, connections in enumerate(args.connection_counts):
            if instrumented:
                server.signal(signal.SIGUSR1)
            result = run(f"{connections} connection(s)", server.mllp_port, connections, args.messages,
                         f"{tag}R{number}", server.pid)
            results.append(result)
            done = max(len(result.latencies), 1)
            print(f"{connections:>5} {len(result.latencies):>8} {result.seconds:>8.2f} {result.rate:>7.0f} "
                  f"{result.percentile(50):>7.2f} {result.percentile(95):>7.2f} {result.percentile(99):>7.2f} "
                  f"{max(result.latencies, default=0) * 1000:>7.2f} {len(result.aa):>6} {result.not_aa:>6} "
                  f"{result.server_cpu / done * 1000:>10.2f} "
                  f"{result.server_cpu / result.seconds if result.seconds else 0:>6.2f} "
                  f"{result.main_cpu / done * 1000:>9.2f} "
                  f"{result.client_cpu / done * 1000:>10.2f}", flush=True)
            for error in result.errors:
                print(f"      {error}")
            if result.first_not_aa:
                print(f"      first ACK that was not AA: {result.first_not_aa}")
            if instrumented:
                profiles.append(server.collect_profile(number + 1))

        # Durability: kill the server outright; only committed work survives.
        server.kill()
        acked = [x for r in results for x in r.aa] + (warm.aa if args.warmup else [])
        problems = verify(database_url, data_dir, acked)
        print("\ndurability (server killed with SIGKILL, then the database read): "
              f"{len(acked)} AA'd messages, warm-up included: "
              + ("all PROCESSED, every patient, order and worklist step present" if not problems
                 else "PROBLEMS:\n  " + "\n  ".join(problems)))

        print(f"\ngoal: >= {GOAL_RATE:.0f} msg/s with p99 < {GOAL_P99_MS:.0f} ms, every message durable")
        for result in results:
            met = result.rate >= GOAL_RATE and result.percentile(99) < GOAL_P99_MS and not problems \
                and not result.not_aa and not result.errors
            print(f"  {result.name:>16}: {result.rate:7.0f} msg/s, p99 {result.percentile(99):6.2f} ms -> "
                  f"{'met' if met else 'not met'}")
        for number, (result, profile) in enumerate(zip(results, profiles, strict=False)):
            print(f"\nwhere the server's time goes, {result.name} ({args.profile}):")
            if args.profile == "stages":
                report_stages(profile, result.main_cpu, result.server_cpu - result.main_cpu)
            else:
                report_cprofile(f"{server.profile_prefix}{number + 1}.", profile, args.top)
        if args.profile == "py-spy":
            report_py_spy(Path(server.profile_prefix + "py-spy.txt"), args.top)
        print(f"\nload average {os.getloadavg()[0]:.2f} after the run (other work on the machine skews the figures)")
        failed = bool(problems) or any(r.not_aa or r.errors for r in results)
        return 1 if failed else 0
    finally:
        server.kill()
        if database_name and args.keep:
            print(f"database kept: {database_url}")
        elif database_name:
            try:
                postgres_admin(args.database_url, f'DROP DATABASE IF EXISTS "{database_name}" WITH (FORCE)')
            except Exception as exc:
                print(f"could not drop database {database_name}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"scratch folder kept: {scratch}")
        else:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""What authentication costs a request: the Gate alone, and whole HTTP requests with each kind
of credentials beside a server without access control.

1. **The Gate** (``pacs.auth.access.Gate.principal``), in this process on a migrated SQLite
   database, on prepared Starlette requests (a fresh request each time, as each HTTP request is):
   a bearer token (looked up once, then kept in memory), a browser's session cookie (an HMAC
   check, the user kept) and HTTP Basic (one login, then kept); ``--gate-requests`` requests per
   kind in each of ``--rounds`` rounds, kinds in turn; microseconds per request, the median
   round and the fastest. Then **access control in the framework**: a FastAPI app of one route
   called over ASGI, open and guarded as the server's routes are (``require()``, the session
   cookie middleware, the same Gate), so the difference is all access control adds to a request
   short of the network, FastAPI's dependency handling and any hop to a worker thread included.
2. **Whole requests over HTTP**: ``pacs serve`` from this tree (first administrator from
   ``PACS_ADMIN_PASSWORD``, a token from ``pacs tokens create``, a session from the login form)
   and, with ``--before DIR``, ``pacs serve`` from another tree at the same time (a worktree of
   the commit before access control: ``git worktree add --detach /tmp/pacs-before 3a70333^``),
   each seeded with one FHIR ServiceRequest (its patient too) and two DICOM instances (STOW-RS).
   Then the FHIR paths (read a Patient, search ServiceRequests, read an ImagingStudy search,
   create a ServiceRequest) and DICOMweb (QIDO-RS studies search, WADO-RS study metadata),
   ``--requests`` of each per credentials kind, each timed from the client, on one kept-alive
   connection per server and kind; rounds alternate the servers and rotate the kinds, so that
   what the machine does meanwhile falls on each alike. The before server is asked without
   credentials (it asks for none); ours with a token, Basic and the session cookie (with its
   CSRF token on the POST). ``/healthz`` (public on both) shows what the two servers differ by
   besides access control.
3. **The Gate on and off in one server** (``--same-server``): ``pacs serve`` from this tree under
   a small bootstrap whose SIGUSR2 switches the Gate's identification off and on (off: one
   principal who may do everything answers every request, no credentials read); seeded the same
   way, the same token requests in batches ordered on, off, off, on, ...: everything else
   (routes, middleware, the require() dependencies) is the same code.

Run from the project root::

    .venv/bin/python bench/auth.py                                   # the Gate, and HTTP on this tree
    git worktree add --detach /tmp/pacs-before 3a70333^
    .venv/bin/python bench/auth.py --before /tmp/pacs-before         # beside the tree before access control
    .venv/bin/python bench/auth.py --no-http --same-server           # the Gate on and off in one server
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx
from common import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    admin_env,
    basic,
    bearer,
    cpu_model,
    create_token,
    free_port,
    git_state,
    load_average,
    session_login,
)

GATE_REQUESTS = 20_000  # per kind and round
HTTP_REQUESTS = 400  # per path, kind and server
ROUNDS = 5
WRITES_SHARE = 4  # a POST (a write, with its fsync) is sent this many times less often than a read
SERVER_START_SECONDS = 60
REQUEST_SECONDS = 60
MICRO = 1e6
Samples = dict[tuple[str, str, str], list[float]]
GOAL_US = 200  # issue 19: authentication costs under 0.2 ms a request
SERVICE_REQUEST = ROOT / "tests" / "data" / "fhir" / "servicerequest_contained.json"
DICOM_FILES = ("CT_small.dcm", "MR_small.dcm")  # pydicom's test files, shipped with it
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=bench'
FHIR_JSON = "application/fhir+json"
DICOM_JSON = "application/dicom+json"
CSRF_HEADER = "X-CSRF-Token"


# --------------------------------------------------------------------------------------------
# 1. The Gate alone
# --------------------------------------------------------------------------------------------


def gate_figures(requests: int, rounds: int, tmp: Path) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Microseconds per ``Gate.principal`` call, per round, for each kind of credentials; and
    per request of a one-route app with and without access control (:func:`framework_figures`)."""
    from sqlmodel import Session
    from starlette.requests import Request

    from pacs.auth import accounts
    from pacs.auth.access import Gate
    from pacs.auth.roles import Permission
    from pacs.auth.sessions import COOKIE, Sessions, load_or_create_key
    from pacs.db import Database
    from pacs.settings import Settings

    settings = Settings(data_dir=tmp / "gate", database_url=f"sqlite:///{tmp / 'gate.db'}", admin_password=ADMIN_PASSWORD)
    settings.data_dir.mkdir(parents=True)
    db = Database(settings.effective_database_url)
    db.migrate()
    accounts.first_administrator(db, settings)
    with Session(db.engine) as session:
        _, token = accounts.create_token(session, client="bench", scopes=[p.value for p in Permission])
        admin = accounts.user_by_name(session, ADMIN_USER)
        assert admin is not None and admin.id is not None
        user_id, epoch = admin.id, admin.session_epoch
        session.commit()
    sessions = Sessions(load_or_create_key(settings.session_key_file),
                        idle_seconds=settings.auth.session_idle_minutes * 60,
                        max_seconds=settings.auth.session_max_hours * 3600)
    gate = Gate(db=db, settings=settings, sessions=sessions)
    cookie, _ = sessions.new(user_id, epoch)
    headers = {
        "token": [(b"authorization", f"Bearer {token}".encode())],
        "session": [(b"cookie", f"{COOKIE}={cookie}".encode())],
        "basic": [(b"authorization", basic(ADMIN_USER, ADMIN_PASSWORD)["Authorization"].encode())],
    }

    def request(kind: str) -> Request:
        return Request({"type": "http", "method": "GET", "path": "/fhir/Patient", "query_string": b"",
                        "headers": headers[kind], "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080),
                        "scheme": "http", "root_path": "", "http_version": "1.1"})

    kinds = list(headers)
    for kind in kinds:  # the first of each looks up the database (and logs in, for Basic)
        gate.principal(request(kind))
    figures: dict[str, list[float]] = {kind: [] for kind in kinds}
    for number in range(rounds):
        for kind in kinds[number % len(kinds):] + kinds[:number % len(kinds)]:
            prepared = [request(kind) for _ in range(requests)]
            started = time.perf_counter()
            for each in prepared:
                gate.principal(each)
            figures[kind].append((time.perf_counter() - started) / requests * MICRO)
    framework = framework_figures(gate, headers, requests, rounds)
    db.dispose()
    return figures, framework


FRAMEWORK_REQUESTS_SHARE = 4  # the app's requests per round: this share of the Gate's


def framework_figures(gate: Any, headers: dict[str, list[tuple[bytes, bytes]]], requests: int,
                      rounds: int) -> dict[str, list[float]]:
    """Microseconds per request of a FastAPI app of one route, called over ASGI in this process:
    open (no dependency, no middleware) and guarded as the server's routes are (``require()``,
    the SessionCookies middleware, this Gate) with each kind of credentials. The difference is
    all that access control adds to a request in the framework, thread hops included."""
    import asyncio

    from fastapi import Depends, FastAPI
    from fastapi.responses import Response

    from pacs.auth.access import SessionCookies, require
    from pacs.auth.roles import Permission

    def app_of(guarded: bool) -> FastAPI:
        app = FastAPI()
        app.state.gate = gate

        @app.get("/fhir/Patient", dependencies=[Depends(require(Permission.PATIENTS_READ))] if guarded else [],
                 response_model=None)
        def read() -> Any:  # a plain def, as the server's routes are: run in a worker thread
            return Response(b"{}", media_type="application/json")

        if guarded:
            app.add_middleware(SessionCookies)
        return app

    apps = {"open": (app_of(False), "token")} | {kind: (app_of(True), kind) for kind in headers}

    async def drive(app: FastAPI, kind: str, count: int) -> float:
        scope = {"type": "http", "method": "GET", "path": "/fhir/Patient", "raw_path": b"/fhir/Patient",
                 "query_string": b"", "root_path": "", "headers": headers[kind], "client": ("127.0.0.1", 50000),
                 "server": ("127.0.0.1", 8080), "scheme": "http", "http_version": "1.1"}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] != 200:
                raise RuntimeError(f"{kind}: {message['status']}")

        started = time.perf_counter()
        for _ in range(count):
            await app({**scope, "state": {}}, receive, send)
        return (time.perf_counter() - started) / count * MICRO

    async def run() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {name: [] for name in apps}
        count = max(1, requests // FRAMEWORK_REQUESTS_SHARE)
        names = list(apps)
        for name, (app, kind) in apps.items():  # warm
            await drive(app, kind, count // 10 + 1)
        for number in range(rounds):
            for name in names[number % len(names):] + names[:number % len(names)]:
                app, kind = apps[name]
                out[name].append(await drive(app, kind, count))
        return out

    return asyncio.run(run())


# --------------------------------------------------------------------------------------------
# 2. Whole requests over HTTP
# --------------------------------------------------------------------------------------------


@dataclass
class Serve:
    """``pacs serve`` run from the tree ``source``, on its own data folder and free ports."""

    name: str
    source: Path
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    http_port: int = 0
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    bootstrap: str = ""  # Python code run in place of `-m pacs.cli` (the same arguments)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True)
        self.http_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
        env.update(admin_env(), TCP_NODELAY="1", PACS_LOG_LEVEL="WARNING")
        start = ["-c", self.bootstrap] if self.bootstrap else ["-m", "pacs.cli"]
        command = [sys.executable, *start, "serve", "--host", "127.0.0.1", "--data-dir", str(self.data_dir),
                   "--http-port", str(self.http_port), "--mllp-port", str(free_port()), "--dicom-port", str(free_port())]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.source,
                                            start_new_session=True)
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name}: pacs serve exited:\n{self.log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: pacs serve did not start:\n{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)

    def cpu_ns(self) -> int:
        """Nanoseconds the server's threads have run on a CPU (/proc/PID/task/*/schedstat)."""
        assert self.process is not None
        total = 0
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):  # a thread that ended meanwhile
                continue
        return total

    def stop(self) -> None:
        for client in self.clients.values():
            client.close()
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(SERVER_START_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def stow_body(files: list[bytes]) -> bytes:
    parts = b"".join(b"--bench\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n" for data in files)
    return parts + b"--bench--\r\n"


def seed(server: Serve, headers: dict[str, str]) -> None:
    """One ServiceRequest (and its patient), two instances; their ids for the paths."""
    from pydicom.data import get_testdata_file

    with httpx.Client(base_url=server.base, headers=headers, timeout=REQUEST_SECONDS) as http:
        created = http.post("/fhir/ServiceRequest", content=SERVICE_REQUEST.read_bytes(),
                            headers={"Content-Type": FHIR_JSON})
        if created.status_code not in (200, 201):
            raise RuntimeError(f"{server.name}: the ServiceRequest was refused: {created.status_code} {created.text[:300]}")
        order = created.json()
        stored = http.post("/dicomweb/studies", content=stow_body([Path(get_testdata_file(name)).read_bytes()
                                                                   for name in DICOM_FILES]),
                           headers={"Content-Type": STOW_TYPE})
        if stored.status_code not in (200, 202):
            raise RuntimeError(f"{server.name}: STOW-RS refused: {stored.status_code} {stored.text[:300]}")
        study = http.get("/dicomweb/studies", params={"limit": "1"}).json()[0]
    server.ids = {"order": order["id"], "patient": order["subject"]["reference"].split("/")[-1],
                  "study": study["0020000D"]["Value"][0], "patient_id": study["00100020"]["Value"][0]}


@dataclass(frozen=True)
class Timed:
    label: str
    method: str
    url: str  # with {order}, {patient}, {study}, {patient_id} from the server's ids
    accept: str = ""
    body: bytes = b""
    every: int = 1  # sent once in this many requests (a write)


PATHS = [
    Timed("GET /healthz (public)", "GET", "/healthz"),
    Timed("GET /fhir/Patient/{id}", "GET", "/fhir/Patient/{patient}", FHIR_JSON),
    Timed("GET /fhir/ServiceRequest?patient=", "GET", "/fhir/ServiceRequest?patient={patient}", FHIR_JSON),
    Timed("GET /fhir/ImagingStudy?patient=", "GET", "/fhir/ImagingStudy?patient={patient}", FHIR_JSON),
    Timed("POST /fhir/ServiceRequest (an update)", "POST", "/fhir/ServiceRequest", FHIR_JSON,
          SERVICE_REQUEST.read_bytes(), WRITES_SHARE),
    Timed("GET /dicomweb/studies?PatientID= (QIDO-RS)", "GET", "/dicomweb/studies?PatientID={patient_id}", DICOM_JSON),
    Timed("GET /dicomweb/studies/{uid}/metadata (WADO-RS)", "GET", "/dicomweb/studies/{study}/metadata", DICOM_JSON),
]


def timed(client: httpx.Client, server: Serve, path: Timed, count: int, extra: dict[str, str]) -> list[float]:
    """``count`` requests of ``path``; microseconds each, from the client."""
    url = path.url.format(**server.ids)
    headers = {"Accept": path.accept} if path.accept else {}
    if path.body:
        headers["Content-Type"] = FHIR_JSON
    headers.update(extra if path.method != "GET" else {})
    out = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.request(path.method, url, content=path.body or None, headers=headers)
        elapsed = time.perf_counter() - started
        if response.status_code >= 300:
            raise RuntimeError(f"{server.name}: {path.method} {url} answered {response.status_code}: {response.text[:300]}")
        out.append(elapsed * MICRO)
    return out


def http_figures(servers: list[Serve], kinds: dict[str, list[str]], requests: int, rounds: int,
                 writes: dict[str, dict[str, str]]) -> tuple[Samples, Samples]:
    """(server, kind, path label) → microseconds per request from the client, and the server's
    CPU microseconds per request of each batch."""
    samples: Samples = {}
    cpu: Samples = {}
    per_round = max(1, requests // rounds)
    for number in range(rounds):
        order = servers if number % 2 == 0 else servers[::-1]
        for server in order:
            names = kinds[server.name]
            for kind in names[number % len(names):] + names[:number % len(names)]:
                client = server.clients[kind]
                for path in PATHS:
                    count = max(1, per_round // path.every)
                    key = (server.name, kind, path.label)
                    used = server.cpu_ns()
                    samples.setdefault(key, []).extend(
                        timed(client, server, path, count, writes.get(server.name, {}).get(kind, {})))
                    cpu.setdefault(key, []).append((server.cpu_ns() - used) / count / 1e3)
    return samples, cpu


# --------------------------------------------------------------------------------------------
# 3. The Gate on and off in one server
# --------------------------------------------------------------------------------------------


# Runs `pacs serve` with a switch: SIGUSR2 turns the Gate's identification off or on (off: the
# app's Gate answers every request with one principal who may do everything, reading no
# credentials; the require() dependencies still run and check it). (FastAPI's dependency
# override, which the tests' unguarded server uses, is no baseline: while any override is set,
# FastAPI analyses every dependency's signature again on every request, 130-250 µs here.)
GATE_SWITCH = r"""
import signal, sys
import pacs.http
from pacs.auth.access import Principal
from pacs.auth.roles import Permission
everyone = Principal(name="bench", kind="user", permissions=frozenset(Permission), roles=("admin",))
made = pacs.http.create_app
def create_app(services):
    app = made(services)
    def switch(signum, frame):
        gate = app.state.gate
        if "principal" in vars(gate):
            del gate.principal
        else:
            gate.principal = lambda request, **_: everyone
    signal.signal(signal.SIGUSR2, switch)
    return app
pacs.http.create_app = create_app
from pacs.cli import main
sys.exit(main(sys.argv[1:]))
"""
SWITCH_SECONDS = 5.0


def switch_gate(server: Serve, on: bool) -> None:
    """Turn the Gate on or off in ``server`` (started with :data:`GATE_SWITCH`) and wait until a
    request without credentials shows it: 401 with the Gate, 200 without."""
    assert server.process is not None
    wanted = 401 if on else 200
    probe = f"/fhir/Patient/{server.ids['patient']}"
    if httpx.get(server.base + probe, timeout=REQUEST_SECONDS).status_code == wanted:
        return
    os.kill(server.process.pid, signal.SIGUSR2)
    deadline = time.monotonic() + SWITCH_SECONDS
    while httpx.get(server.base + probe, timeout=REQUEST_SECONDS).status_code != wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Gate did not turn {'on' if on else 'off'}")
        time.sleep(0.05)


def same_server_figures(requests: int, rounds: int, tmp: Path) -> tuple[Samples, Samples]:
    """("same", "gate" or "off", path label) → µs per request from the client, and the server's
    CPU µs per request of each batch; batches in the order on, off, off, on, ... so that a drift
    falls on both alike."""
    server = Serve("same", ROOT, tmp / "same", bootstrap=GATE_SWITCH)
    server.start()
    try:
        token = create_token(server.data_dir, None)
        seed(server, bearer(token))
        samples: Samples = {}
        cpu: Samples = {}
        with httpx.Client(base_url=server.base, headers=bearer(token), timeout=REQUEST_SECONDS) as client:
            for number in range(rounds * 2):
                gated = number % 4 in (0, 3)
                switch_gate(server, gated)
                mode = "gate" if gated else "off"
                for path in PATHS:
                    if path.method != "GET":
                        continue
                    key = ("same", mode, path.label)
                    used = server.cpu_ns()
                    count = max(1, requests // rounds)
                    samples.setdefault(key, []).extend(timed(client, server, path, count, {}))
                    cpu.setdefault(key, []).append((server.cpu_ns() - used) / count / 1e3)
        return samples, cpu
    finally:
        server.stop()


def report_same_server(samples: Samples, cpu: Samples, requests: int, rounds: int) -> None:
    print(f"\n## The Gate on and off in one server: token requests, {requests} per path and mode in {rounds} "
          f"batches each\n")
    print("| path | client µs, Gate on | Gate off | difference | server CPU µs, Gate on | Gate off | difference |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path in PATHS:
        if path.method != "GET":
            continue
        on, off = median(samples[("same", "gate", path.label)]), median(samples[("same", "off", path.label)])
        cpu_on, cpu_off = median(cpu[("same", "gate", path.label)]), median(cpu[("same", "off", path.label)])
        print(f"| {path.label} | {on:,.0f} | {off:,.0f} | {on - off:+,.0f} | {cpu_on:,.0f} | {cpu_off:,.0f} | "
              f"{cpu_on - cpu_off:+,.0f} |")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else median(values)


def report_framework(figures: dict[str, list[float]], requests: int) -> None:
    print(f"\n## Access control in the framework: one route over ASGI in this process, open and guarded "
          f"({requests // FRAMEWORK_REQUESTS_SHARE:,} requests per round)\n")
    print("| route | µs per request, median round | fastest round | access control's share (median) |")
    print("|---|---:|---:|---:|")
    names = {"open": "open (no dependency)", "token": "guarded, bearer token", "session": "guarded, session cookie",
             "basic": "guarded, HTTP Basic"}
    base = median(figures["open"])
    for name, values in figures.items():
        share = "—" if name == "open" else f"{median(values) - base:+.0f}"
        print(f"| {names[name]} | {median(values):.0f} | {min(values):.0f} | {share} |")


def report_gate(figures: dict[str, list[float]], requests: int) -> None:
    print(f"\n## The Gate alone: Gate.principal on a prepared request ({requests:,} per kind and round, "
          f"{len(next(iter(figures.values())))} rounds)\n")
    print("| credentials | µs per request, median round | fastest round | under 200 µs |")
    print("|---|---:|---:|---|")
    names = {"token": "bearer token (kept)", "session": "session cookie", "basic": "HTTP Basic (kept)"}
    for kind, values in figures.items():
        print(f"| {names[kind]} | {median(values):.1f} | {min(values):.1f} | {'yes' if median(values) < GOAL_US else 'NO'} |")


def report_http(samples: Samples, kinds: dict[str, list[str]], before: bool, title: str) -> None:
    ours = kinds["ours"]
    print(f"\n## Whole requests over HTTP: {title}\n")
    columns = (["before: none"] if before else []) + [f"ours: {kind}" for kind in ours]
    print("| path | " + " | ".join(columns) + (" | ours − before, per kind |" if before else " |"))
    print("|---|" + "---:|" * len(columns) + ("---|" if before else ""))
    for path in PATHS:
        cells, base = [], None
        if before:
            values = samples[("before", "none", path.label)]
            base = median(values)
            cells.append(f"{base:,.0f} ({p90(values):,.0f})")
        deltas = []
        for kind in ours:
            values = samples[("ours", kind, path.label)]
            cells.append(f"{median(values):,.0f} ({p90(values):,.0f})")
            if base is not None:
                deltas.append(f"{kind} {median(values) - base:+,.0f}")
        print(f"| {path.label} | " + " | ".join(cells) + (f" | {', '.join(deltas)} |" if before else " |"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="a tree without access control to run beside ours")
    parser.add_argument("--gate-requests", type=int, default=GATE_REQUESTS, help="per kind and round")
    parser.add_argument("--requests", type=int, default=HTTP_REQUESTS, help="per path, kind and server")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--no-http", action="store_true", help="no pacs serve (the Gate, and --same-server)")
    parser.add_argument("--same-server", action="store_true", help="the Gate on and off in one in-process server")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    servers: list[Serve] = []
    try:
        print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}, "
              f"Python {platform.python_version()}; load average at start: {load_average()}")
        print(f"code: {git_state()}")
        if args.before:
            before_commit = subprocess.run(["git", "-C", str(args.before), "log", "-1", "--format=%h %s"],
                                           capture_output=True, text=True, check=False).stdout.strip()
            print(f"before: {args.before} ({before_commit or 'not a git tree'})")
        gate, framework = gate_figures(args.gate_requests, args.rounds, tmp)
        report_gate(gate, args.gate_requests)
        report_framework(framework, args.gate_requests)
        if not args.no_http:
            ours = Serve("ours", ROOT, tmp / "ours")
            servers.append(ours)
            if args.before:
                servers.append(Serve("before", args.before.resolve(), tmp / "before"))
            for server in servers:
                server.start()
            token = create_token(ours.data_dir, None)
            cookie, csrf = session_login(ours.base, ADMIN_USER, ADMIN_PASSWORD)
            credentials = {"token": bearer(token), "basic": basic(ADMIN_USER, ADMIN_PASSWORD), "session": {"Cookie": cookie}}
            seed(ours, credentials["token"])
            kinds: dict[str, list[str]] = {"ours": list(credentials)}
            ours.clients = {kind: httpx.Client(base_url=ours.base, headers=headers, timeout=REQUEST_SECONDS)
                            for kind, headers in credentials.items()}
            writes = {"ours": {"session": {CSRF_HEADER: csrf}}}
            if args.before:
                before = servers[1]
                seed(before, {})
                kinds["before"] = ["none"]
                before.clients = {"none": httpx.Client(base_url=before.base, timeout=REQUEST_SECONDS)}
            samples, cpu = http_figures(servers, kinds, args.requests, args.rounds, writes)
            report_http(samples, kinds, bool(args.before), "median µs per request from the client (p90 in brackets)")
            report_http(cpu, kinds, bool(args.before),
                        "the server's CPU µs per request (all its threads), median of the batches (p90 in brackets)")
            print(f"\n{args.requests} requests per path, kind and server ({args.requests // WRITES_SHARE} of the POST), "
                  f"{args.rounds} rounds; httpx {httpx.__version__}, one kept-alive connection per server and kind")
        if args.same_server:
            report_same_server(*same_server_figures(args.requests, args.rounds, tmp), args.requests, args.rounds)
        print(f"reproduce: cd {ROOT} && {shlex.join([sys.executable, *sys.argv])}")
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            print(f"scratch folder kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

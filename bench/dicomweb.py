#!/usr/bin/env python
"""DICOMweb: WADO-RS retrieve and metadata of a 500-instance study and QIDO-RS study search, side by
side with Orthanc's DICOMweb plugin on the same data in the same run; QIDO-RS at 10,000 and
100,000 studies.

In one run on this machine:

1. corpus (generated once into a cache folder, with ``bench/ingest.py``'s generator): one study of
   ``--instances`` (default 500) 512x512 16-bit CT instances in two series, explicit VR little
   endian, noisy phantom pixel data (about 525 KB a file), patient and study attributes as a CT
   sends them; and ``--small-studies`` (default 12) two-instance studies of other patients, half
   of them with Chinese names in ISO_IR 192. Both are sent with DCMTK ``storescu`` (one
   association per folder, ``TCP_NODELAY=1``) to ``pacs serve`` (fresh data folder, free ports)
   and to Debian's Orthanc with the DICOMweb plugin (``/dicom-web/``, no authentication, its
   own configuration, storage and index in the scratch folder), and counted on both;
2. WADO-RS: ``GET /studies/{uid}`` with
   ``Accept: multipart/related; type="application/dicom"; transfer-syntax=*``, one check request
   per server first (not timed: the body goes to a file and every part is compared with the files
   sent, SHA-256), then ``--repeat`` timed requests per server, alternating which goes first, each
   read with a streaming httpx client that only counts bytes; wall time, time to first byte,
   MB/s (10^6 bytes), the server's CPU and the client's. Metadata: ``GET /studies/{uid}/metadata``
   the same way (the answer parsed afterwards: one object per instance, SOP Instance UIDs right);
   the first, cold, request is shown apart from the median. Ours over Orthanc's, side by side;
3. QIDO-RS ``GET /studies`` on the small dataset both hold, on both servers: by ``PatientID``,
   by ``PatientName`` wildcard in pinyin (``ZHANG*``) and in Han characters (``张*``), by
   ``StudyDate`` range + ``ModalitiesInStudy``, and the first page of everything, all with
   ``limit=100``; ``--queries`` (default 200) per kind after 10 not counted, on one reused HTTP
   connection, p50/p95/p99/max, server CPU per query, every answer checked against the data;
4. QIDO-RS on our server after ``--studies`` (default 10,000 and 100,000) studies are in its
   index: patient, patient_identifier, study and series rows written directly with SQLAlchemy
   Core (the server stopped meanwhile) — 95 % Chinese names (surnames by frequency, PN groups
   from ``pacs.integration.names.person_name``), two studies per patient, five years of study
   dates (weekends lighter), CT/DX/MR/US/CR/MG/RF/XA mixed as a general hospital's are, 1-4
   series each, procedures from ``mappings/codes/procedures.csv``; the same query kinds, with
   random patients, surnames by frequency and random months;
5. in this process, on the same database: each QIDO kind split into parsing, SQL + ORM rows
   (``qr.find_rows``), building the DICOM JSON and encoding it; the SQL alone (the statement
   ``find_rows`` issues, run on the driver) with its ``LIMIT 10000`` and with the page's
   ``LIMIT 100``; the SQL plan. For WADO: reading the files alone, ``dcmread`` of every header
   and the metadata JSON built in-process.

``--orthanc-studies N`` also fills Orthanc with the first N generated studies (one tiny instance
per series, sent with storescu over two associations) and runs the QIDO kinds on it; 10,000
studies take a few minutes, 100,000 take too long for a default run. ``--profile`` samples our
server with py-spy (optional, not a dependency: ``.venv/bin/pip install py-spy``) during a WADO
retrieve, the metadata requests and each QIDO kind at the largest index, and prints where the
samples fall: SQL and ORM, JSON, pydicom, multipart writing and file reads, the HTTP protocol,
the framework's thread hops.

Run from the project root::

    .venv/bin/python bench/dicomweb.py                    # SQLite; 10,000 and 100,000 studies (~6 min)
    .venv/bin/python bench/dicomweb.py --quick            # 3 repeats, 100 queries, 10,000 studies only
    .venv/bin/python bench/dicomweb.py --profile          # + py-spy profiles of our server
    .venv/bin/python bench/dicomweb.py --orthanc-studies 10000   # + Orthanc QIDO at 10,000 studies
    .venv/bin/python bench/dicomweb.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

Our server asks every HTTP request who it comes from: it starts with ``PACS_ADMIN_PASSWORD`` and
the benchmark's clients send a bearer token made with ``pacs tokens create`` (``--credentials
basic``: the administrator's HTTP Basic; ``session``: a session cookie from the login form).

``--database-url`` names a PostgreSQL server to connect to as an administrator; the benchmark
creates a database of its own there and drops it at the end. Every server and storescu process
runs with ``TCP_NODELAY=1``. The exit status is 1 when an instance did not arrive, a retrieved
part differs from its file, or one of our answers is wrong.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import hashlib
import json
import mmap
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest  # noqa: E402  (bench/ingest.py: corpus generator, server helpers, facts)
from common import (  # noqa: E402  (bench/common.py)
    ADMIN_PASSWORD,
    ADMIN_USER,
    DOCTORS,
    GIVEN_NAMES,
    SURNAMES,
    admin_env,
    basic,
    bearer,
    create_token,
    session_login,
)

ROOT = ingest.ROOT
CORPUS_VERSION = 2  # bump when the generated files change
PART10_META_START = 132  # 128-byte preamble + "DICM"
SEED = 20260
ORTHANC_AE = "ORTHANC"
OUR_AE = ingest.OUR_AE
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
JSON_ACCEPT = "application/dicom+json"
PAGE = 100  # limit= of every QIDO request
WARMUP_QUERIES = 10
CREDENTIALS = ("token", "basic", "session")  # what our HTTP clients may send (--credentials)
SESSION_IDLE_MINUTES = 720  # our server's, so that a session outlives a long run between requests
UID_ROOT = "1.2.826.0.1.3680043.10.1139"  # an example root for generated rows

GOAL_QIDO_P50_MS = 20.0  # at 100,000 studies
GOAL_WADO_RATIO = 1.0  # our MB/s over Orthanc's, and Orthanc's metadata time over ours

# A general hospital's mix of studies: modality, share, series per study (min, max), instances per series
MODALITY_MIX = [("CT", 28, (1, 4), 180), ("DX", 24, (1, 2), 1), ("MR", 14, (3, 4), 120), ("US", 14, (1, 1), 20),
                ("CR", 8, (1, 2), 1), ("MG", 5, (1, 1), 4), ("RF", 4, (1, 2), 12), ("XA", 3, (1, 3), 40)]
LATIN_FAMILIES = ["SMITH", "MUELLER", "GARCIA", "DUPONT", "ROSSI", "NOVAK", "SILVA", "BROWN", "KIM", "TANAKA",
                  "NGUYEN", "IVANOV"]
LATIN_GIVEN = ["JOHN", "EMMA", "HANS", "MARIA", "LUCA", "PETRA", "ANA", "CLAIRE", "MIN", "YUKI", "AN", "OLGA"]
INSTITUTION = "第一人民医院"

# Common surnames with their approximate share (per mille, 2020 census order of magnitude), plus
# a few whose surname reading differs from plain pinyin and some compound ones.
# --------------------------------------------------------------------------------------------
# The corpus: one large study and a few small ones, as DICOM files
# --------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    folder: Path
    big: dict[str, Any]  # the large study: uid, patient_id, name, date, modality, instances, files, bytes
    small: list[dict[str, Any]]
    hashes: dict[str, str]  # SHA-256 of every file → its name

    @property
    def studies(self) -> list[dict[str, Any]]:
        return [self.big, *self.small]

    @property
    def instances(self) -> int:
        return sum(s["instances"] for s in self.studies)

    @property
    def bytes(self) -> int:
        return sum(s["bytes"] for s in self.studies)


def dataset_digest(data: bytes | mmap.mmap) -> str:
    """SHA-256 of a Part 10 object's data set, after the File Meta Information: every archive
    writes its own meta group (implementation UID, source AE), the data set must be what was sent."""
    start = 0
    if data[128:132] == b"DICM" and data[132:138] == b"\x02\x00\x00\x00UL":
        start = 144 + int.from_bytes(data[140:144], "little")  # after (0002,0000) and the group it counts
    return hashlib.sha256(data[start:]).hexdigest()


def make_corpus(folder: Path, instances: int, small_studies: int, seed: int) -> Corpus:
    """Write the corpus once; later runs with the same parameters read its manifest."""
    manifest = folder / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        if data.get("version") == CORPUS_VERSION and all((folder / name).exists() for name in data["hashes"].values()):
            return Corpus(folder, data["big"], data["small"], data["hashes"])
    import numpy as np
    import pydicom

    shutil.rmtree(folder, ignore_errors=True)
    (folder / "big").mkdir(parents=True)
    (folder / "small").mkdir()
    rng = np.random.default_rng(seed)
    coords = np.arange(512, dtype=np.float32) - 255.5
    grid = np.meshgrid(coords, coords, indexing="ij")

    def describe(written: dict[str, Any], sub: str) -> dict[str, Any]:
        first = pydicom.dcmread(written["files"][0], stop_before_pixels=True)
        return {**written["study"], "name": str(first.PatientName), "date": first.StudyDate,
                "modality": first.Modality, "bytes": written["bytes"],
                "files": [f"{sub}/{p.name}" for p in written["files"]]}

    # number 1003: patient 501 of ingest's generator, a Latin name (its even patients are Chinese)
    big = describe(ingest._write_study(folder / "big", "BIG", 1003, instances, seed, rng, grid), "big")
    small = [describe(ingest._write_study(folder / "small", f"S{n:02d}", n, 2, seed, rng, grid), "small")
             for n in range(small_studies)]
    hashes = {}
    for study in [big, *small]:
        for name in study["files"]:
            hashes[dataset_digest((folder / name).read_bytes())] = name
    manifest.write_text(json.dumps({"version": CORPUS_VERSION, "big": big, "small": small, "hashes": hashes},
                                   ensure_ascii=False, indent=1))
    return Corpus(folder, big, small, hashes)


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


@dataclass
class Ours:
    """``pacs serve`` on its own data folder and free ports."""

    data_dir: Path
    database_url: str | None = None
    process: subprocess.Popen[bytes] | None = None
    dicom_port: int = 0
    http_port: int = 0
    name: str = "ours"
    ae_title: str = OUR_AE
    command_line: list[str] = field(default_factory=list)
    changes: str | None = None  # what-if changes applied at start by VARIANT_BOOTSTRAP (None: plain pacs serve)
    credentials: str = "token"  # what our HTTP clients send: "token", "basic" or "session"
    auth: dict[str, str] = field(default_factory=dict)  # the headers that carry them

    @property
    def log(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'pacs.db').resolve()}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicomweb"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        return ingest.process_cpu_seconds(self.pid)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = self.dicom_port or ingest.free_port()
        self.http_port = self.http_port or ingest.free_port()
        serve = ["serve", "--data-dir", str(self.data_dir), "--dicom-port", str(self.dicom_port),
                 "--mllp-port", str(ingest.free_port()), "--http-port", str(self.http_port), "--host", "127.0.0.1",
                 "--ae-title", OUR_AE]
        if self.changes is None:
            self.command_line = [sys.executable, "-m", "pacs.cli", *serve]
            command = self.command_line
        else:
            command = [sys.executable, "-c", VARIANT_BOOTSTRAP, self.changes or "none", *serve]
            self.command_line = [sys.executable, "-c", "<what-if bootstrap>", self.changes or "none", *serve]
        env = ingest.nodelay_env()
        env["PACS_LOG_LEVEL"] = "WARNING"
        env.update(admin_env())
        env["PACS_AUTH__SESSION_IDLE_MINUTES"] = str(SESSION_IDLE_MINUTES)
        if self.database_url:
            env["PACS_DATABASE_URL"] = self.database_url
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + ingest.SERVER_START_TIMEOUT
        while "pacs: serving" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise RuntimeError(f"pacs serve exited with {self.process.returncode}:\n{ingest.tail(self.log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"pacs serve did not start:\n{ingest.tail(self.log)}")
            time.sleep(0.05)
        ingest.wait_for_port(self.http_port, self.process, self.log, 10)
        ingest.wait_for_port(self.dicom_port, self.process, self.log, 10)
        if not self.auth:  # (kept across restarts: the token, the user and the session key are in the data)
            self.auth = self.credential_headers()

    def credential_headers(self) -> dict[str, str]:
        """pacs serve asks every HTTP request who it comes from: a token made with ``pacs tokens
        create`` (what a platform sends), the administrator's HTTP Basic, or a browser's session."""
        if self.credentials == "basic":
            return basic(ADMIN_USER, ADMIN_PASSWORD)
        if self.credentials == "session":
            cookie, _ = session_login(f"http://127.0.0.1:{self.http_port}", ADMIN_USER, ADMIN_PASSWORD)
            return {"Cookie": cookie}
        return bearer(create_token(self.data_dir, self.database_url, ["studies.read"], cwd=ROOT))

    def count(self) -> int:
        return int(ingest.sql(self.url, "SELECT count(*) FROM instance")[0][0])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(300)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


@dataclass
class Orthanc:
    """Debian's Orthanc with the DICOMweb plugin, its own configuration, storage and index."""

    folder: Path
    process: subprocess.Popen[bytes] | None = None
    dicom_port: int = 0
    http_port: int = 0
    name: str = "orthanc"
    ae_title: str = ORTHANC_AE
    config: dict[str, Any] = field(default_factory=dict)
    auth: dict[str, str] = field(default_factory=dict)  # none: its authentication is off

    @property
    def log(self) -> Path:
        return self.folder / "orthanc.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        return ingest.process_cpu_seconds(self.pid)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dicom_port, self.http_port = ingest.free_port(), ingest.free_port()
        self.config = {
            "Name": "pacs-bench", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "DicomAet": ORTHANC_AE, "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = self.folder / "config.json"
        path.write_text(json.dumps(self.config, indent=2))
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(["Orthanc", str(path)], stdout=log, stderr=subprocess.STDOUT,
                                            env=ingest.nodelay_env(), cwd=self.folder, start_new_session=True)
        ingest.wait_for_port(self.http_port, self.process, self.log, ingest.SERVER_START_TIMEOUT)
        ingest.wait_for_port(self.dicom_port, self.process, self.log, ingest.SERVER_START_TIMEOUT)

    def rest(self, path: str) -> Any:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.http_port}{path}", timeout=120).json()

    def count(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])

    def plugin_version(self) -> str:
        try:
            return str(self.rest("/plugins/dicom-web").get("Version", "?"))
        except Exception:  # a figure for the header only
            return "?"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


def send_folders(target: Any, folders: list[Path], log: Path, expected: int) -> tuple[float, list[str]]:
    """storescu, one association per folder, all at once; then wait until ``expected`` are indexed."""
    seconds, problems = ingest.storescu(target, folders, log)
    deadline = time.monotonic() + 60
    while (count := target.count()) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    if count != expected:
        problems.append(f"{target.name}: {count} instances indexed, expected {expected}")
    return seconds, problems


# --------------------------------------------------------------------------------------------
# WADO-RS
# --------------------------------------------------------------------------------------------


@dataclass
class Transfer:
    target: str
    seconds: float
    first_byte: float
    bytes: int
    server_cpu: float
    client_cpu: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


def client(timeout: float = 300, auth: dict[str, str] | None = None) -> Any:
    """An HTTP client sending a server's credentials (``auth``)."""
    import httpx

    return httpx.Client(timeout=timeout, headers={"Accept-Encoding": "identity", **(auth or {})})


def retrieve(http: Any, target: Any, url: str, accept: str, sink: Any = None) -> Transfer:
    """One GET read as a stream: only the byte count is kept (or every chunk written to ``sink``)."""
    cpu, client_cpu = target.cpu_seconds(), time.process_time()
    started = time.perf_counter()
    first = 0.0
    size = 0
    with http.stream("GET", url, headers={"Accept": accept}) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"{target.name}: GET {url} answered {response.status_code}: {response.text[:300]}")
        for chunk in response.iter_raw():
            if not first:
                first = time.perf_counter() - started
            size += len(chunk)
            if sink is not None:
                sink.write(chunk)
        content_type = response.headers.get("content-type", "")
    seconds = time.perf_counter() - started
    transfer = Transfer(target.name, seconds, first, size, target.cpu_seconds() - cpu, time.process_time() - client_cpu)
    transfer.content_type = content_type  # type: ignore[attr-defined]
    return transfer


def check_parts(path: Path, content_type: str, corpus: Corpus, study: dict[str, Any]) -> list[str]:
    """Every part of a multipart/related body in ``path`` holds one of the study's data sets as
    sent, byte for byte (the File Meta Information aside: each archive writes its own)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return [f"no boundary in Content-Type {content_type!r}"]
    delimiter = b"--" + match.group(1).encode()
    wanted = {h for h, name in corpus.hashes.items() if name in set(study["files"])}
    seen: set[str] = set()
    problems: list[str] = []
    parts = 0
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as body:
        position = body.find(delimiter)
        while position >= 0:
            start = position + len(delimiter)
            if body[start:start + 2] == b"--":
                break
            head_end = body.find(b"\r\n\r\n", start)
            following = body.find(b"\r\n" + delimiter, head_end)
            if head_end < 0 or following < 0:
                problems.append("a part without an end")
                break
            parts += 1
            digest = dataset_digest(body[head_end + 4:following])
            if digest not in wanted:
                headers = body[start:head_end].decode("latin-1").strip().replace("\r\n", "; ")
                problems.append(f"part {parts} ({following - head_end - 4} bytes; {headers[:160]}) is not a data set sent")
            seen.add(digest)
            position = following + 2
    if parts != study["instances"]:
        problems.append(f"{parts} parts, expected {study['instances']}")
    elif len(seen & wanted) != len(wanted):
        problems.append(f"{len(wanted - seen)} files missing from the parts")
    return problems


def metadata_check(body: bytes, study: dict[str, Any], corpus: Corpus) -> tuple[list[str], float]:
    """The metadata answer is one object per instance with the right SOP Instance UIDs; returns
    problems and the mean number of top-level attributes per instance."""
    try:
        items = json.loads(body)
    except ValueError as exc:
        return [f"metadata is not JSON: {exc}"], 0.0
    problems = []
    if len(items) != study["instances"]:
        problems.append(f"{len(items)} metadata objects, expected {study['instances']}")
    uids = {(item.get("00080018") or {}).get("Value", [""])[0] for item in items}
    if len(uids) != len(items):
        problems.append("SOP Instance UIDs missing or repeated in the metadata")
    return problems, statistics.mean(len(item) for item in items) if items else 0.0


def run_wado(targets: list[Any], corpus: Corpus, repeat: int, scratch: Path) -> tuple[dict[str, list[Transfer]],
                                                                                      dict[str, list[Transfer]],
                                                                                      list[str]]:
    study = corpus.big
    retrieves: dict[str, list[Transfer]] = defaultdict(list)
    metadata: dict[str, list[Transfer]] = defaultdict(list)
    problems: list[str] = []
    clients = {t.name: client(auth=t.auth) for t in targets}
    try:
        for target in targets:  # the check requests: not timed, every part compared with the files
            http = clients[target.name]
            url = f"{target.base}/studies/{study['uid']}"
            body_path = scratch / f"{target.name}-wado.body"
            with body_path.open("wb") as sink:
                checked = retrieve(http, target, url, WADO_ACCEPT, sink)
            found = check_parts(body_path, checked.content_type, corpus, study)  # type: ignore[attr-defined]
            body_path.unlink()
            print(f"  check {target.name}: {checked.bytes / 1e6:.1f} MB, "
                  + ("every part's data set byte-identical to one sent" if not found else "PROBLEMS: " + "; ".join(found[:3])),
                  flush=True)
            if found and target.name == "ours":
                problems += [f"WADO-RS ours: {p}" for p in found]
            response = http.get(f"{url}/metadata", headers={"Accept": JSON_ACCEPT})
            cold = Transfer(target.name, response.elapsed.total_seconds(), 0.0, len(response.content), 0.0, 0.0)
            metadata[target.name + " (first)"].append(cold)
            found, attributes = metadata_check(response.content, study, corpus)
            print(f"  check {target.name} metadata: {len(response.content) / 1e6:.2f} MB, {attributes:.0f} attributes "
                  f"per instance; " + ("one object per instance" if not found else "PROBLEMS: " + "; ".join(found)),
                  flush=True)
            if found and target.name == "ours":
                problems += [f"metadata ours: {p}" for p in found]
        for number in range(repeat):
            order = targets if number % 2 == 0 else list(reversed(targets))
            for target in order:
                url = f"{target.base}/studies/{study['uid']}"
                retrieves[target.name].append(retrieve(clients[target.name], target, url, WADO_ACCEPT))
            for target in order:
                url = f"{target.base}/studies/{study['uid']}/metadata"
                metadata[target.name].append(retrieve(clients[target.name], target, url, JSON_ACCEPT))
    finally:
        for http in clients.values():
            http.close()
    return retrieves, metadata, problems


def median_of(transfers: list[Transfer], attribute: str) -> float:
    return statistics.median(getattr(t, attribute) for t in transfers)


def print_wado(corpus: Corpus, retrieves: dict[str, list[Transfer]], metadata: dict[str, list[Transfer]]) -> None:
    study = corpus.big
    print(f"\nWADO-RS retrieve of the {study['instances']}-instance study ({study['bytes'] / 1e6:.0f} MB of files), "
          f"{len(retrieves.get('ours', []))} timed requests each, medians:")
    print(f"  {'server':10} {'seconds':>8} {'MB/s':>8} {'1st byte':>9} {'server CPU':>11} {'client CPU':>11}  "
          f"(all runs, MB/s)")
    for name, runs in retrieves.items():
        print(f"  {name:10} {median_of(runs, 'seconds'):>8.3f} {median_of(runs, 'mb_per_s'):>8.1f} "
              f"{median_of(runs, 'first_byte') * 1000:>7.1f}ms {median_of(runs, 'server_cpu'):>10.2f}s "
              f"{median_of(runs, 'client_cpu'):>10.2f}s  ({', '.join(f'{r.mb_per_s:.0f}' for r in runs)})")
    if "ours" in retrieves and "orthanc" in retrieves:
        ratio = median_of(retrieves["ours"], "mb_per_s") / median_of(retrieves["orthanc"], "mb_per_s")
        print(f"  ours / Orthanc throughput: {ratio:.2f}")
    print("\nWADO-RS metadata of the same study (GET /studies/{uid}/metadata), medians:")
    print(f"  {'server':10} {'seconds':>8} {'ms/inst':>8} {'1st byte':>9} {'server CPU':>11} {'bytes':>10}  "
          f"first request (cold)")
    for name in [n for n in metadata if not n.endswith("(first)")]:
        runs = metadata[name]
        cold = metadata.get(name + " (first)", [None])[0]
        print(f"  {name:10} {median_of(runs, 'seconds'):>8.3f} "
              f"{median_of(runs, 'seconds') / study['instances'] * 1000:>8.2f} "
              f"{median_of(runs, 'first_byte') * 1000:>7.1f}ms {median_of(runs, 'server_cpu'):>10.2f}s "
              f"{int(median_of(runs, 'bytes')):>10}  {cold.seconds:.3f} s" if cold else "")
    if "ours" in metadata and "orthanc" in metadata:
        ratio = median_of(metadata["orthanc"], "seconds") / median_of(metadata["ours"], "seconds")
        print(f"  Orthanc's time / ours: {ratio:.2f} (above 1: ours is faster)")


# --------------------------------------------------------------------------------------------
# Generated studies for the large index (and optionally for Orthanc)
# --------------------------------------------------------------------------------------------


@dataclass
class Population:
    """What the generated rows hold, as far as the queries need to know it; indexes from 0."""

    patient_ids: list[str] = field(default_factory=list)
    alphabetic: list[str] = field(default_factory=list)
    ideographic: list[str] = field(default_factory=list)
    sex: list[str] = field(default_factory=list)
    birth: list[str] = field(default_factory=list)
    study_patient: list[int] = field(default_factory=list)
    study_date: list[str] = field(default_factory=list)
    study_time: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    series: list[list[tuple[str, str, str, int]]] = field(default_factory=list)  # modality, body part, desc, n
    description: list[str] = field(default_factory=list)
    referring: list[str] = field(default_factory=list)
    first_day: date = date(2021, 1, 1)
    days: int = 5 * 365

    def study_uid(self, index: int) -> str:
        return f"{UID_ROOT}.{index + 1}"

    def accession(self, index: int) -> str:
        return f"Q{index + 1:09d}"


def load_procedures() -> dict[str, list[tuple[str, str]]]:
    """Modality → [(description, body part)] from mappings/codes/procedures.csv (DX for DR rows)."""
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with (ROOT / "pacs" / "mappings" / "codes" / "procedures.csv").open(newline="", encoding="utf-8") as handle:
        rows = [line for line in handle if line.strip() and not line.startswith("#")]
    for row in csv.DictReader(rows):
        if row.get("description"):
            out[row["modality"]].append((row["description"], row["body_part"]))
    for modality, *_ in MODALITY_MIX:
        out.setdefault(modality, [(f"{modality}检查", "")])
    return out


def generate(studies: int, seed: int) -> Population:
    """``studies`` studies of ``studies // 2`` patients (two each, the second a follow-up)."""
    from pacs.integration.names import NameRules, person_name

    rules = NameRules.load(ROOT / "pacs" / "mappings")
    rng = random.Random(seed)
    pop = Population()
    surnames = [s for s, _ in SURNAMES]
    weights = [w for _, w in SURNAMES]
    doctors = []
    for doctor in DOCTORS:
        family, given = doctor.split("^")
        name = person_name(family, given, rules=rules)
        doctors.append(f"{name.alphabetic}={name.ideographic}")
    procedures = load_procedures()
    day_weights = [0.35 if (pop.first_day + timedelta(days=d)).weekday() >= 5 else 1.0 for d in range(pop.days)]
    day_cumulative = list(_cumulative(day_weights))
    mix_cumulative = list(_cumulative([m[1] for m in MODALITY_MIX]))
    for patient in range((studies + 1) // 2):
        if rng.random() < 0.95:
            name = person_name(rng.choices(surnames, weights)[0], rng.choice(GIVEN_NAMES), rules=rules)
            alphabetic, ideographic = name.alphabetic, name.ideographic
        else:
            alphabetic, ideographic = f"{rng.choice(LATIN_FAMILIES)}^{rng.choice(LATIN_GIVEN)}", ""
        pop.patient_ids.append(f"P{seed % 1000:03d}{patient + 1:08d}")
        pop.alphabetic.append(alphabetic)
        pop.ideographic.append(ideographic)
        pop.sex.append(rng.choice("MF"))
        pop.birth.append((date(1935, 1, 1) + timedelta(days=rng.randrange(85 * 365))).strftime("%Y%m%d"))
    for index in range(studies):
        patient = index // 2
        day = pop.first_day + timedelta(days=rng.choices(range(pop.days), cum_weights=day_cumulative)[0])
        modality, _, (low, high), per_series = rng.choices(MODALITY_MIX, cum_weights=mix_cumulative)[0]
        description, body_part = rng.choice(procedures[modality])
        series = [(modality, body_part, f"{description} {n + 1}", max(1, int(per_series * rng.uniform(0.5, 1.5))))
                  for n in range(rng.randint(low, high))]
        modalities = modality
        if modality == "CT" and rng.random() < 0.1:  # a dose report alongside
            series.append(("SR", body_part, "Dose Report", 1))
            modalities = "CT\\SR"
        pop.study_patient.append(patient)
        pop.study_date.append(day.strftime("%Y%m%d"))
        pop.study_time.append(f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}")
        pop.modalities.append(modalities)
        pop.series.append(series)
        pop.description.append(description)
        pop.referring.append(rng.choice(doctors))
    return pop


def _cumulative(values: list[float]) -> Iterator[float]:
    total = 0.0
    for value in values:
        total += value
        yield total


def next_ids(url: str) -> dict[str, int]:
    tables = ("patient", "patient_identifier", "study", "series")
    return {t: int(ingest.sql(url, f"SELECT coalesce(max(id), 0) FROM {t}")[0][0]) for t in tables}


def insert_rows(url: str, pop: Population, start: int, stop: int) -> float:
    """Studies ``start`` to ``stop`` of ``pop`` (and their patients, identifiers and series) as
    rows of a migrated database, with SQLAlchemy Core and explicit ids; seconds taken."""
    from sqlalchemy import create_engine, insert, text

    from pacs.archive.index import Series, Study
    from pacs.registry.models import Patient, PatientIdentifier

    started = time.perf_counter()
    ids = next_ids(url)
    now = datetime.now(UTC)
    first_patient = start // 2
    patient_row = {}  # generated patient index → row id
    patients, identifiers, studies, series_rows = [], [], [], []
    for patient in range(first_patient, (stop + 1) // 2):
        row_id = ids["patient"] + len(patients) + 1
        patient_row[patient] = row_id
        alphabetic, ideographic = pop.alphabetic[patient], pop.ideographic[patient]
        family, _, given = (ideographic or alphabetic).partition("^")
        patients.append(dict(
            id=row_id, patient_id=pop.patient_ids[patient], issuer="HIS", family_name=family, given_name=given,
            name_alphabetic=alphabetic, name_ideographic=ideographic, name_phonetic="", name_override=None,
            sex=pop.sex[patient], birth_date=datetime.strptime(pop.birth[patient], "%Y%m%d").date(),
            address="", phone="", national_id="", merged_into=None, created_at=now, updated_at=now))
        identifiers.append(dict(id=ids["patient_identifier"] + len(identifiers) + 1, patient=row_id,
                                value=pop.patient_ids[patient], authority="HIS", type_code="MR", active=True))
    for index in range(start, stop):
        study_id = ids["study"] + len(studies) + 1
        patient = pop.study_patient[index]
        name = pop.alphabetic[patient] + (f"={pop.ideographic[patient]}" if pop.ideographic[patient] else "")
        series = pop.series[index]
        instances = sum(s[3] for s in series)
        studies.append(dict(
            id=study_id, study_instance_uid=pop.study_uid(index), patient=patient_row[patient], order=None,
            accession_number=pop.accession(index), study_id=str(index + 1), study_date=pop.study_date[index],
            study_time=pop.study_time[index], description=pop.description[index],
            referring_physician=pop.referring[index], modalities=pop.modalities[index],
            number_of_series=len(series), number_of_instances=instances, size_bytes=instances * 520_000,
            received={"PatientID": pop.patient_ids[patient], "PatientName": name,
                      "AccessionNumber": pop.accession(index)},
            charset="ISO_IR 192", reconciled_by="", created_at=now, updated_at=now))
        for number, (modality, body_part, description, count) in enumerate(series, 1):
            series_rows.append(dict(
                id=ids["series"] + len(series_rows) + 1, series_instance_uid=f"{pop.study_uid(index)}.{number}",
                study=study_id, modality=modality, series_number=number, description=description,
                body_part=body_part, laterality="", series_date=pop.study_date[index],
                series_time=pop.study_time[index], station_name=f"{modality}01", institution=INSTITUTION,
                performing_physician="", operators="", protocol="", calling_ae_title=f"{modality}01",
                number_of_instances=count, created_at=now, updated_at=now))
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    tables = [(Patient, patients), (PatientIdentifier, identifiers), (Study, studies), (Series, series_rows)]
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
        for model, rows in tables:
            for i in range(0, len(rows), 10000):
                conn.execute(insert(model.__table__), rows[i:i + 10000])  # type: ignore[attr-defined]
        if engine.dialect.name == "postgresql":
            for model, _ in tables:
                name = model.__tablename__
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('\"{name}\"', 'id'), "
                                  f"(SELECT max(id) FROM \"{name}\"))"))
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return time.perf_counter() - started


def write_orthanc_files(folder: Path, pop: Population, count: int) -> int:
    """The first ``count`` generated studies as DICOM files, one small instance per series, for Orthanc."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    marker = folder / f"complete-{count}"
    if marker.exists():
        return int(marker.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files = 0
    for index in range(count):
        patient = pop.study_patient[index]
        for number, (modality, body_part, description, _) in enumerate(pop.series[index], 1):
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67" if modality == "SR" else "1.2.840.10008.5.1.4.1.1.7"
            ds.SOPInstanceUID = f"{pop.study_uid(index)}.{number}.1"
            ds.StudyDate = ds.SeriesDate = pop.study_date[index]
            ds.StudyTime = pop.study_time[index]
            ds.AccessionNumber = pop.accession(index)
            ds.Modality = modality
            ds.InstitutionName = INSTITUTION
            ds.ReferringPhysicianName = pop.referring[index]
            ds.StudyDescription = pop.description[index]
            ds.SeriesDescription = description
            ds.PatientName = pop.alphabetic[patient] + (f"={pop.ideographic[patient]}"
                                                        if pop.ideographic[patient] else "")
            ds.PatientID = pop.patient_ids[patient]
            ds.PatientBirthDate = pop.birth[patient]
            ds.PatientSex = pop.sex[patient]
            ds.BodyPartExamined = body_part
            ds.StudyInstanceUID = pop.study_uid(index)
            ds.SeriesInstanceUID = f"{pop.study_uid(index)}.{number}"
            ds.StudyID = str(index + 1)
            ds.SeriesNumber = number
            ds.InstanceNumber = 1
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.file_meta = meta
            part = folder / f"p{files % 2}"
            part.mkdir(exist_ok=True)
            ds.save_as(part / f"g{index:07d}_{number}.dcm", enforce_file_format=True)
            files += 1
    marker.write_text(str(files))
    return files


# --------------------------------------------------------------------------------------------
# QIDO-RS
# --------------------------------------------------------------------------------------------


@dataclass
class Facts:
    """The studies a server holds, as the queries check them: one entry per study, and sorted
    indexes so that each answer's expected matches are found without a scan."""

    patient_id: list[str] = field(default_factory=list)
    alphabetic: list[str] = field(default_factory=list)  # upper-case
    ideographic: list[str] = field(default_factory=list)
    date: list[str] = field(default_factory=list)
    modalities: list[set[str]] = field(default_factory=list)
    uid: list[str] = field(default_factory=list)
    _indexes: dict[str, Any] = field(default_factory=dict, repr=False)

    def add(self, patient_id: str, name: str, study_date: str, modalities: set[str], uid: str) -> None:
        groups = name.split("=")
        self.patient_id.append(patient_id)
        self.alphabetic.append(groups[0].upper())
        self.ideographic.append(groups[1] if len(groups) > 1 else "")
        self.date.append(study_date)
        self.modalities.append(modalities)
        self.uid.append(uid)
        self._indexes.clear()

    def extend(self, pop: Population, start: int, stop: int) -> None:
        for index in range(start, stop):
            patient = pop.study_patient[index]
            self.add(pop.patient_ids[patient], pop.alphabetic[patient] + "=" + pop.ideographic[patient],
                     pop.study_date[index], set(pop.modalities[index].split("\\")), pop.study_uid(index))

    def copy(self) -> Facts:
        return Facts(list(self.patient_id), list(self.alphabetic), list(self.ideographic), list(self.date),
                     list(self.modalities), list(self.uid))

    def __len__(self) -> int:
        return len(self.uid)

    def _sorted(self, name: str) -> tuple[list[str], list[int]]:
        if name not in self._indexes:
            values = getattr(self, name)
            order = sorted(range(len(values)), key=values.__getitem__)
            self._indexes[name] = ([values[i] for i in order], order)
        return self._indexes[name]

    def prefixed(self, name: str, prefix: str) -> list[int]:
        """Studies whose ``name`` column starts with ``prefix``."""
        keys, order = self._sorted(name)
        low = bisect.bisect_left(keys, prefix)
        high = bisect.bisect_left(keys, prefix + "\U0010ffff")
        return order[low:high]

    def between(self, name: str, low: str, high: str) -> list[int]:
        keys, order = self._sorted(name)
        return order[bisect.bisect_left(keys, low):bisect.bisect_right(keys, high)]

    def uids(self, indexes: list[int]) -> set[str]:
        return {self.uid[i] for i in indexes}


@dataclass
class Request:
    params: dict[str, str]
    expected: Callable[[], set[str]]  # the Study Instance UIDs that match


@dataclass
class Kind:
    name: str
    describe: str
    make: Callable[[random.Random], Request]


def make_kinds(facts: Facts, pinyin_of: dict[str, str]) -> list[Kind]:
    """The query kinds; each request draws its value from the data (patients, surnames by
    frequency, months); every answer is checked against ``facts``."""
    ids = sorted(set(facts.patient_id))
    surnames = [s for s, _ in SURNAMES if s in pinyin_of]
    weights = [w for s, w in SURNAMES if s in pinyin_of]
    present_han = {n.split("^")[0] for n in facts.ideographic if n}
    if not any(s in present_han for s in surnames):  # a small dataset: its own surnames
        surnames = sorted(s for s in present_han if s in pinyin_of) or surnames
        weights = [1] * len(surnames)
    months = sorted({d[:6] for d in facts.date if d})

    def by_id(rng: random.Random) -> Request:
        patient_id = rng.choice(ids)
        return Request({"PatientID": patient_id}, lambda: facts.uids(facts.between("patient_id", patient_id,
                                                                                   patient_id)))

    def by_pinyin(rng: random.Random) -> Request:
        prefix = pinyin_of[rng.choices(surnames, weights)[0]]
        return Request({"PatientName": f"{prefix}*"}, lambda: facts.uids(facts.prefixed("alphabetic", prefix)))

    def by_han(rng: random.Random) -> Request:
        prefix = rng.choices(surnames, weights)[0]
        return Request({"PatientName": f"{prefix}*"}, lambda: facts.uids(facts.prefixed("ideographic", prefix)))

    def by_date(rng: random.Random) -> Request:
        month = rng.choice(months)
        year, number = int(month[:4]), int(month[4:])
        last = (date(year + number // 12, number % 12 + 1, 1) - timedelta(days=1)).day
        low, high = month + "01", f"{month}{last:02d}"
        modality = rng.choice(["CT", "CT", "MR", "DX"]) if len(months) > 3 else "CT"
        return Request({"StudyDate": f"{low}-{high}", "ModalitiesInStudy": modality},
                       lambda: {facts.uid[i] for i in facts.between("date", low, high)
                                if modality in facts.modalities[i]})

    def everything(rng: random.Random) -> Request:
        return Request({}, lambda: set(facts.uid))

    return [
        Kind("patient_id", "PatientID=<one patient's>", by_id),
        Kind("name_pinyin", "PatientName=ZHANG* (surname by frequency)", by_pinyin),
        Kind("name_han", "PatientName=张* (surname by frequency)", by_han),
        Kind("date_modality", "StudyDate=<a month>&ModalitiesInStudy=CT|MR|DX", by_date),
        Kind("first_page", "no key: the first page of every study", everything),
    ]


@dataclass
class Timing:
    label: str
    kind: str
    latencies: list[float] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    expected: list[int] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
        return ordered[rank - 1] * 1000


def qido_kind(http: Any, target: Any, kind: Kind, facts: Facts, queries: int, seed: int, label: str,
              strict: bool = True) -> Timing:
    """``queries`` requests of one kind (after WARMUP_QUERIES not counted) on one connection."""
    rng = random.Random(seed)
    timing = Timing(label, kind.name)
    url = f"{target.base}/studies"
    for number in range(WARMUP_QUERIES + queries):
        request = kind.make(rng)
        params = {**request.params, "limit": str(PAGE)}
        if number == WARMUP_QUERIES:
            cpu, client_cpu = target.cpu_seconds(), time.process_time()
        started = time.perf_counter()
        response = http.get(url, params=params, headers={"Accept": JSON_ACCEPT})
        body = response.content
        elapsed = time.perf_counter() - started
        if number < WARMUP_QUERIES:
            continue
        timing.latencies.append(elapsed)
        expected = request.expected()
        if response.status_code not in (200, 204):
            timing.wrong.append(f"{params}: HTTP {response.status_code} {body[:200]!r}")
            continue
        items = json.loads(body) if body.strip() else []
        got = [(item.get("0020000D") or {}).get("Value", [""])[0] for item in items]
        timing.answered.append(len(got))
        timing.expected.append(min(PAGE, len(expected)))
        if len(got) != min(PAGE, len(expected)) or not set(got) <= expected:
            timing.wrong.append(f"{params}: {len(got)} answered ({len(set(got) - expected)} not matching), "
                                f"expected {min(PAGE, len(expected))} of {len(expected)}")
    timing.server_cpu = target.cpu_seconds() - cpu
    timing.client_cpu = time.process_time() - client_cpu
    return timing


def print_qido_header() -> None:
    print(f"  {'index':26} {'kind':14} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'srv CPU':>8} {'answered':>9} {'expected':>9}  check")
    print(f"  {'':26} {'':14} {'':>4} {'':>8} {'':>8} {'':>8} {'':>8} {'ms/query':>8} {'mean':>9} {'mean':>9}")


def print_qido(t: Timing, strict: bool = True) -> None:
    n = max(len(t.latencies), 1)
    if t.wrong:
        check = f"{len(t.wrong)} {'WRONG' if strict else 'differ'}, e.g. {t.wrong[0]}"
    else:
        check = "all right"
    answered = statistics.mean(t.answered) if t.answered else 0
    expected = statistics.mean(t.expected) if t.expected else 0
    print(f"  {t.label:26} {t.kind:14} {len(t.latencies):>4} {t.pct(50):>8.2f} {t.pct(95):>8.2f} {t.pct(99):>8.2f} "
          f"{t.pct(100):>8.2f} {t.server_cpu / n * 1000:>8.2f} {answered:>9.1f} {expected:>9.1f}  {check[:160]}",
          flush=True)


def run_qido(target: Any, kinds: list[Kind], facts: Facts, queries: int, seed: int, label: str,
             strict: bool = True) -> list[Timing]:
    out = []
    with client(60, target.auth) as http:
        for number, kind in enumerate(kinds):
            timing = qido_kind(http, target, kind, facts, queries, seed + number, label, strict)
            print_qido(timing, strict)
            out.append(timing)
    return out


# --------------------------------------------------------------------------------------------
# In-process split of the server's work
# --------------------------------------------------------------------------------------------


def decompose_qido(url: str, kinds: list[Kind], facts: Facts, rounds: int, seed: int, explain: bool) -> None:
    """Each kind through pacs.archive.dicomweb.qido in this process, on the server's database:
    parse, SQL + ORM rows, JSON building, encoding; and the SQL alone, as issued and with the
    page's LIMIT."""
    from sqlalchemy import and_, true
    from sqlmodel import col, select

    from pacs.archive import qr
    from pacs.archive.charset import UNICODE
    from pacs.archive.dicomweb import qido
    from pacs.archive.dicomweb.dicomjson import dumps
    from pacs.archive.index import Study
    from pacs.db import Database
    from pacs.integration.names import NameRules
    from pacs.registry.models import Patient

    db = Database(url)
    names = NameRules.load(ROOT / "pacs" / "mappings")
    print(f"  {'kind':14} {'total':>7} {'parse':>7} {'rows':>7} {'build':>7} {'encode':>7} {'rows':>7} "
          f"{'SQL as':>8} {'SQL with':>9}  (ms, medians of {rounds})")
    print(f"  {'':14} {'':>7} {'':>7} {'SQL+ORM':>7} {'JSON':>7} {'dumps':>7} {'fetched':>7} "
          f"{'issued':>8} {'LIMIT ' + str(PAGE):>9}")
    plans = []
    for number, kind in enumerate(kinds):
        rng = random.Random(seed + number)
        parts: dict[str, list[float]] = defaultdict(list)
        fetched = []
        for _ in range(rounds):
            params = [*kind.make(rng).params.items(), ("limit", str(PAGE))]
            with db.session() as session:
                t0 = time.perf_counter()
                query = qido.parse(params, "studies")
                t1 = time.perf_counter()
                rows = qr.find_rows(session.connection(), query.identifier, query.level)
                t2 = time.perf_counter()
                # what qido.search does with the rows: slice the page, values, DICOM JSON
                answer = qr.Answer(UNICODE, names)
                wanted = list(dict.fromkeys(qido._wanted(query, study=None, series=None)))
                items = []
                for found in rows[query.offset:][:query.limit]:
                    values = answer.values(found, query.level)
                    values.pop("QueryRetrieveLevel", None)
                    values["SpecificCharacterSet"] = UNICODE
                    values["InstanceAvailability"] = "ONLINE"
                    values["RetrieveURL"] = qido.retrieve_url("http://127.0.0.1/dicomweb", found, query.level)
                    items.append(qido._json(wanted, values))
                t3 = t4 = time.perf_counter()
                body = dumps(items)
                t5 = time.perf_counter()
            fetched.append(len(rows))
            parts["parse"].append(t1 - t0)
            parts["rows"].append(t2 - t1)
            parts["build"].append(t3 - t2)
            parts["encode"].append(t5 - t4)
            parts["total"].append(t5 - t0)
            where = and_(true(), *qr.conditions(query.identifier, "STUDY"))
            statement = (select(Patient, Study).join(Study, Study.patient == Patient.id).where(where)
                         .order_by(col(Study.study_date).desc(), col(Study.id)))
            for label, limit in (("sql", qr.MAX_MATCHES), ("sql_page", PAGE)):
                sql_text = str(statement.limit(limit).compile(dialect=db.engine.dialect,
                                                              compile_kwargs={"literal_binds": True}))
                with db.engine.connect() as conn:
                    s0 = time.perf_counter()
                    conn.exec_driver_sql(sql_text).fetchall()
                    parts[label].append(time.perf_counter() - s0)
                if label == "sql":
                    issued = sql_text
            del body
        med = {k: statistics.median(v) * 1000 for k, v in parts.items()}
        print(f"  {kind.name:14} {med['total']:>7.2f} {med['parse']:>7.2f} {med['rows']:>7.2f} {med['build']:>7.2f} "
              f"{med['encode']:>7.2f} {statistics.median(fetched):>7.0f} {med['sql']:>8.2f} {med['sql_page']:>9.2f}",
              flush=True)
        if explain:
            plans.append((kind.name, issued))
    if explain:
        print("  SQL plans of the statements qr.find_rows issues (LIMIT as issued):")
        with db.engine.connect() as conn:
            for name, sql_text in plans:
                if db.is_sqlite:
                    plan = [f"{row[3]}" for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql_text)]
                else:
                    plan = [row[0] for row in conn.exec_driver_sql("EXPLAIN ANALYZE " + sql_text)]
                where = sql_text.split("WHERE", 1)[-1].split("ORDER BY")[0].strip()
                print(f"    {name}: WHERE {where[:200]}")
                for line in plan[:14]:
                    print(f"      {line}")
    db.dispose()


def decompose_wado(url: str, corpus: Corpus) -> None:
    """What the WADO-RS work costs without HTTP: reading the files, locating the study,
    dcmread of every header, and the metadata JSON built through pacs' Wado in this process."""
    import pydicom

    from pacs.archive.dicomweb import wado
    from pacs.archive.dicomweb.dicomjson import dumps
    from pacs.archive.storage import FilesystemArea
    from pacs.db import Database

    study = corpus.big
    files = [corpus.folder / name for name in study["files"]]
    started = time.perf_counter()
    total = 0
    for path in files:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                total += len(chunk)
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for path in files:
        pydicom.dcmread(path, defer_size=wado.BULK_THRESHOLD, stop_before_pixels=True)
    header_seconds = time.perf_counter() - started
    db = Database(url)
    data_dir = Path(url.removeprefix("sqlite:///")).parent if url.startswith("sqlite:///") else None
    print(f"  reading the study's {len(files)} files from the page cache (1 MB reads): {read_seconds:.3f} s = "
          f"{total / 1e6 / read_seconds:.0f} MB/s; dcmread of every header (defer_size, stop_before_pixels): "
          f"{header_seconds:.3f} s = {header_seconds / len(files) * 1000:.2f} ms/instance")
    if data_dir is None:
        db.dispose()
        return
    areas = {"online": FilesystemArea("online", data_dir / "storage")}
    with db.session() as session:
        wado.locate(session, areas, study=study["uid"])  # the first call configures the mappers
    with db.session() as session:
        started = time.perf_counter()
        items = wado.locate(session, areas, study=study["uid"])
        locate_seconds = time.perf_counter() - started
    service = wado.Wado(db, areas, "http://127.0.0.1/dicomweb")
    started = time.perf_counter()
    size = sum(len(chunk) for chunk in service.metadata_chunks(items))
    metadata_seconds = time.perf_counter() - started
    started = time.perf_counter()
    objects = [service.metadata(item) for item in items]
    objects_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for value in objects:
        dumps(value)
    dumps_seconds = time.perf_counter() - started
    print(f"  locate() of the study (second call): {locate_seconds * 1000:.1f} ms; metadata_chunks() in-process: "
          f"{metadata_seconds:.3f} s ({size / 1e6:.2f} MB): Wado.metadata() {objects_seconds:.3f} s (dcmread "
          f"~{header_seconds:.3f} s of it, the rest element by element to_json_dict and tidy) + dumps "
          f"{dumps_seconds:.3f} s")
    db.dispose()


# --------------------------------------------------------------------------------------------
# py-spy profiles of our server
# --------------------------------------------------------------------------------------------

CATEGORIES = [  # (label, substring of the leaf frame's file) in order; the first that matches
    ("SQL: driver + SQLAlchemy Core", ("sqlalchemy/engine", "sqlalchemy/sql", "sqlalchemy/pool", "sqlite3",
                                       "psycopg", "sqlalchemy/dialects", "sqlalchemy/event", "sqlalchemy/util")),
    ("SQL: ORM (rows to objects, session)", ("sqlalchemy/orm", "sqlmodel")),
    ("pydicom", ("pydicom/",)),
    ("JSON encoding (json module)", ("json/",)),
    ("our DICOM JSON building (qido, dicomjson)", ("dicomweb/qido.py", "dicomweb/dicomjson.py", "archive/qr.py",
                                                  "archive/charset.py")),
    ("our WADO (wado.py, media.py: multipart, file reads)", ("dicomweb/wado.py", "dicomweb/media.py")),
    ("other pacs code", ("pacs/",)),
    ("HTTP protocol (h11, uvicorn)", ("h11/", "uvicorn/")),
    ("framework (starlette, fastapi, anyio thread hops)", ("starlette/", "fastapi/", "anyio/")),
    ("asyncio event loop", ("asyncio/",)),
    ("threading / queue", ("threading.py", "queue.py", "concurrent/")),
]


def _frames(stack: str) -> list[tuple[str, str]]:
    """py-spy raw frames ``function (file:line)`` → (function, file)."""
    out = []
    for frame in stack.split(";"):
        match = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", frame.strip())
        if match:
            out.append((match.group(1), match.group(2)))
        else:
            out.append((frame.strip(), ""))
    return out


class Spy:
    """py-spy record on a process while a block runs; raw (collapsed) output parsed afterwards."""

    def __init__(self, pid: int, path: Path, rate: int = 250) -> None:
        self.pid, self.path, self.rate = pid, path, rate
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Spy:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.process = subprocess.Popen([spy, "record", "-p", str(self.pid), "-r", str(self.rate), "-f", "raw",
                                         "-o", str(self.path), "--gil"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(1.0)  # attached
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.seconds = time.perf_counter() - self.started
        self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        if not self.path.exists():
            print(f"    py-spy wrote nothing: {err.decode(errors='replace')[-400:]}")


KEY_FUNCTIONS = [  # inclusive shares of these (function, file substring)
    ("qido.search", "search", "dicomweb/qido.py"), ("qr.find_rows", "find_rows", "archive/qr.py"),
    ("Answer.values", "values", "archive/qr.py"), ("qido._json", "_json", "dicomweb/qido.py"),
    ("dicomjson.dumps", "dumps", "dicomweb/dicomjson.py"), ("wado.locate", "locate", "dicomweb/wado.py"),
    ("Wado.metadata", "metadata", "dicomweb/wado.py"), ("Wado.truth", "truth", "dicomweb/wado.py"),
    ("pydicom dcmread", "dcmread", "pydicom/"), ("media.multipart_chunks", "multipart_chunks", "dicomweb/media.py"),
    ("media.file_chunks", "file_chunks", "dicomweb/media.py"),
    ("starlette StreamingResponse", "stream_response", "starlette/responses.py"),
    ("anyio to_thread (thread hops)", "run_sync", "anyio/"), ("h11 send", "send", "h11/"),
    ("uvicorn h11 protocol", "", "uvicorn/protocols/http/h11_impl.py"),
    ("audit entry (AuditMiddleware._record)", "_record", "pacs/audit/"), ("session commit/close", "commit", "sqlalchemy/orm/session.py"),
]


def report_spy(spy: Spy, title: str, top: int) -> None:
    path = spy.path
    if not path.exists():
        return
    samples: list[tuple[list[tuple[str, str]], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples.append((_frames(stack), int(count)))
    total = sum(c for _, c in samples)
    busy = total / (spy.rate * spy.seconds) if spy.seconds else 0.0
    print(f"\n  {title}: {total} samples of the thread holding the GIL over {spy.seconds:.1f} s: the GIL was "
          f"held {busy:.0%} of the wall time")
    if not total:
        return
    threads: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in samples:
        files = " ".join(f for _, f in frames)
        if "asyncio/base_events.py" in files:
            threads["event loop thread (uvicorn, async parts)"] += count
        elif "anyio/_backends" in files:
            threads["anyio worker threads (sync handlers, sync iterators)"] += count
        else:
            threads["other threads (DICOM, housekeeping, ...)"] += count
        code = [(fn, f) for fn, f in frames if f]
        leaf = code[-1] if code else ("?", "")
        for label, needles in CATEGORIES:
            if any(n in leaf[1] for n in needles):
                categories[label] += count
                break
        else:
            categories["other: " + _short(leaf[1]).split("/")[0]] += count
        own[f"{leaf[0]} ({_short(leaf[1])})"] += count
        for label, function, needle in KEY_FUNCTIONS:
            if any(needle in f and (not function or fn == function) for fn, f in code):
                inclusive[label] += count
    print("    by thread: " + "; ".join(f"{k} {v / total:.0%}" for k, v in threads.most_common()))
    print("    own time by kind (the innermost Python frame of each sample):")
    for label, count in categories.most_common():
        print(f"      {count / total:>5.0%}  {label}")
    print("    inclusive (samples with the function anywhere on the stack):")
    for label, count in inclusive.most_common():
        print(f"      {count / total:>5.0%}  {label}")
    print(f"    top {top} functions by own samples:")
    for label, count in own.most_common(top):
        print(f"      {count / total:>5.0%}  {label}")


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/pacs/"):
        if marker in filename:
            return ("pacs/" if marker == "/pacs/" else "") + filename.split(marker, 1)[1]
    return filename


def profile_server(ours: Any, corpus: Corpus, kinds: list[Kind], facts: Facts, scratch: Path, queries: int,
                   seed: int, top: int, label: str) -> None:
    study = corpus.big
    print(f"\nwhere our server's time goes (py-spy --gil, 250 Hz: the thread holding the GIL, i.e. Python work; "
          f"{label}; sampling slows the server, compare shares):")
    with client(auth=ours.auth) as http:
        path = scratch / "spy-wado.txt"
        with Spy(ours.pid, path) as spy:
            for _ in range(3):
                retrieve(http, ours, f"{ours.base}/studies/{study['uid']}", WADO_ACCEPT)
        report_spy(spy, "WADO-RS retrieve of the study, 3 requests", top)
        path = scratch / "spy-metadata.txt"
        with Spy(ours.pid, path) as spy:
            for _ in range(3):
                retrieve(http, ours, f"{ours.base}/studies/{study['uid']}/metadata", JSON_ACCEPT)
        report_spy(spy, "WADO-RS metadata of the study, 3 requests", top)
        for number, kind in enumerate(kinds):
            path = scratch / f"spy-qido-{kind.name}.txt"
            with Spy(ours.pid, path) as spy:
                qido_kind(http, ours, kind, facts, queries, seed + number, label)
            report_spy(spy, f"QIDO-RS {kind.name}, {queries} queries", top)


# --------------------------------------------------------------------------------------------
# What-if variants: proposed changes applied at start by a bootstrap (nothing in pacs/ changes)
# --------------------------------------------------------------------------------------------

# Runs ``pacs serve`` with the changes named in argv[1] applied first:
#   batched:   a streamed body produced by a sync iterator (WADO-RS multipart, metadata) is handed
#              to the event loop in batches of ~8 MB, one worker-thread hop per batch, instead of one
#              hop (and one h11 send) per chunk: header, file, CRLF of every instance;
#   pagelimit: QIDO-RS asks the database for offset+limit rows instead of qr.MAX_MATCHES (10,000)
#              and slicing them in Python;
#   httptools: uvicorn's httptools protocol (C) instead of h11 (pure Python): uvicorn picks it when it
#              can import it; the folder --extra-site names (pip install --target DIR httptools) is put
#              on sys.path of this server only, so the project's environment does not change.
VARIANT_BOOTSTRAP = r"""
import os, sys
changes = set(filter(None, sys.argv[1].split(","))) - {"none"}
del sys.argv[1]
if "httptools" in changes:
    sys.path.insert(0, os.environ["BENCH_EXTRA_SITE"])
    import httptools  # noqa: F401  (fails loudly when the folder lacks it)
from pacs.archive.dicomweb import api, qido
if "batched" in changes:
    import anyio
    from fastapi.responses import StreamingResponse
    BATCH = 8 << 20
    def batches(chunks):
        iterator = iter(chunks)
        def take():
            out, size = [], 0
            for chunk in iterator:
                out.append(chunk)
                size += len(chunk)
                if size >= BATCH:
                    break
            return b"".join(out)
        async def body():
            while True:
                data = await anyio.to_thread.run_sync(take)
                if not data:
                    return
                yield data
        return body()
    class Batched(StreamingResponse):
        def __init__(self, content, *args, **kwargs):
            if not hasattr(content, "__aiter__"):
                content = batches(content)
            super().__init__(content, *args, **kwargs)
    api.StreamingResponse = Batched
if "pagelimit" in changes:
    from pacs.archive import qr
    original_search = qido.search
    def search(session, query, **kwargs):
        saved = qr.MAX_MATCHES
        if query.limit is not None:
            qr.MAX_MATCHES = query.offset + query.limit
        try:
            return original_search(session, query, **kwargs)
        finally:
            qr.MAX_MATCHES = saved
    qido.search = search
from pacs.cli import main
sys.exit(main(sys.argv[1:]))
"""
VARIANTS = [
    ("batched", "streamed bodies handed over in ~8 MB batches, one thread hop each (WADO-RS, metadata)"),
    ("pagelimit", "QIDO-RS: LIMIT offset+limit in SQL instead of 10,000 rows sliced in Python"),
    ("httptools", "uvicorn's httptools HTTP protocol instead of h11 (only with --extra-site)"),
]


def run_variants(ours: Ours, corpus: Corpus, kinds: list[Kind], facts: Facts, repeat: int, queries: int,
                 seed: int, start: Callable[[Any], Any], stop: Callable[[Any], None]) -> None:
    """Our server restarted on the same data with each change (and once without, under the same
    bootstrap); WADO-RS, metadata and the QIDO-RS kinds measured on each."""
    study = corpus.big
    print(f"\nwhat-if variants ({len(facts):,} studies; the server restarted with each change applied at start; "
          f"nothing in pacs/ changes):")
    for name, describe in VARIANTS:
        print(f"  {name:10} {describe}")
    print(f"  {'variant':18} {'WADO MB/s':>10} {'metadata s':>11} " + " ".join(f"{k.name[:13]:>13}" for k in kinds)
          + "   (QIDO p50 ms)")
    names = [name for name, _ in VARIANTS if name != "httptools" or os.environ.get("BENCH_EXTRA_SITE")]
    plan = [("as is", ""), *[(name, name) for name in names], ("as is", "")]
    for label, changes in plan:
        stop(ours)
        ours.changes = changes
        start(ours)
        with client(auth=ours.auth) as http:
            for _ in range(2):  # warm
                retrieve(http, ours, f"{ours.base}/studies/{study['uid']}", WADO_ACCEPT)
                retrieve(http, ours, f"{ours.base}/studies/{study['uid']}/metadata", JSON_ACCEPT)
            wado_runs = [retrieve(http, ours, f"{ours.base}/studies/{study['uid']}", WADO_ACCEPT)
                         for _ in range(repeat)]
            meta_runs = [retrieve(http, ours, f"{ours.base}/studies/{study['uid']}/metadata", JSON_ACCEPT)
                         for _ in range(repeat)]
            p50s = []
            for number, kind in enumerate(kinds):
                timing = qido_kind(http, ours, kind, facts, queries, seed + number, label)
                p50s.append(f"{timing.pct(50):>13.2f}" + ("!" if timing.wrong else ""))
        print(f"  {label:18} {median_of(wado_runs, 'mb_per_s'):>10.0f} {median_of(meta_runs, 'seconds'):>11.3f} "
              + " ".join(p50s), flush=True)
    stop(ours)
    ours.changes = None
    start(ours)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repeats, 100 queries per kind, 10,000 studies only")
    parser.add_argument("--instances", type=int, default=500, help="instances of the large study (default 500)")
    parser.add_argument("--small-studies", type=int, default=12, help="two-instance studies besides it (12)")
    parser.add_argument("--repeat", type=int, help="timed WADO-RS requests per server (default 5; quick 3)")
    parser.add_argument("--queries", type=int, help="QIDO-RS requests per kind (default 200; quick 100)")
    parser.add_argument("--studies", help="index sizes for QIDO, comma-separated (default 10000,100000; quick 10000)")
    parser.add_argument("--orthanc-studies", type=int, default=0,
                        help="also fill Orthanc with this many generated studies and query it (default 0)")
    parser.add_argument("--no-orthanc", action="store_true", help="our server only")
    parser.add_argument("--analyze", action="store_true",
                        help="ANALYZE the largest index and split the queries again in-process (plans, SQL time)")
    parser.add_argument("--profile", action="store_true", help="py-spy profiles of our server (WADO, metadata, QIDO)")
    parser.add_argument("--no-decompose", action="store_true", help="skip the in-process split of the work")
    parser.add_argument("--variants", action="store_true",
                        help="measure what proposed changes would gain (server restarted with each; see VARIANTS)")
    parser.add_argument("--extra-site", type=Path,
                        help="a folder from 'pip install --target DIR httptools': adds the httptools variant")
    parser.add_argument("--top", type=int, default=12, help="functions listed per profile (12)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--credentials", choices=CREDENTIALS, default=CREDENTIALS[0],
                        help="what our HTTP clients send: a bearer token (pacs tokens create; default), the "
                             "administrator's HTTP Basic, or a session cookie from the login form")
    parser.add_argument("--database-url", help="PostgreSQL admin URL; a scratch database is created and dropped")
    parser.add_argument("--cache", type=Path, help="corpus cache folder (default <temp>/pacs-bench-dicomweb)")
    parser.add_argument("--tmp", type=Path, help="scratch parent folder (default the system temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (and database)")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (3 if args.quick else 5)
    args.queries = args.queries or (100 if args.quick else 200)
    if args.extra_site:
        os.environ["BENCH_EXTRA_SITE"] = str(args.extra_site.resolve())
    args.sizes = [int(s) for s in (args.studies or ("10000" if args.quick else "10000,100000")).split(",") if s]
    return args


def reproduce_command(argv: list[str] | None) -> str:
    given = list(sys.argv[1:] if argv is None else argv)
    return f"cd {shlex.quote(str(ROOT))} && .venv/bin/python bench/dicomweb.py {shlex.join(given)}".rstrip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="pacs-dicomweb-bench-", dir=args.tmp or tempfile.gettempdir()))
    cache = args.cache or Path(tempfile.gettempdir()) / "pacs-bench-dicomweb"
    databases = ingest.Databases(args.database_url)
    running: list[Any] = []
    problems: list[str] = []
    print(f"reproduce: {reproduce_command(argv)}")
    try:
        ingest.print_facts(scratch, argparse.Namespace(database_url=args.database_url))
        import httpx

        print(f"HTTP client: httpx {httpx.__version__}, one connection per server reused; py-spy "
              f"{'yes' if args.profile else 'not used'}; load average {os.getloadavg()[0]:.2f} at the start")
        started = time.perf_counter()
        corpus = make_corpus(cache / f"v{CORPUS_VERSION}-{args.instances}-{args.small_studies}-seed{args.seed}",
                             args.instances, args.small_studies, args.seed)
        big = corpus.big
        chinese = sum("=" in s["name"] for s in corpus.small)
        print(f"corpus: one study of {big['instances']} CT instances 512x512 16-bit, explicit VR LE "
              f"({big['bytes'] / 1e6:.0f} MB; patient {big['name']}, {big['patient_id']}) and {len(corpus.small)} "
              f"two-instance studies ({chinese} with Chinese names in ISO_IR 192); {corpus.folder} (ready in "
              f"{time.perf_counter() - started:.1f} s; page cache warmed in "
              f"{ingest.warm_page_cache([corpus.folder / n for s in corpus.studies for n in s['files']]):.1f} s)")

        def start(target: Any) -> Any:
            running.append(target)
            target.start()
            return target

        def stop(target: Any) -> None:
            target.stop()
            running.remove(target)

        ours = start(Ours(scratch / "ours", databases.new("dw"), credentials=args.credentials))
        targets: list[Any] = [ours]
        if not args.no_orthanc:
            orthanc = start(Orthanc(scratch / "orthanc"))
            targets.append(orthanc)
            shown = {k: v for k, v in orthanc.config.items() if "Directory" not in k and "Port" not in k}
            print(f"Orthanc: DICOMweb plugin {orthanc.plugin_version()}; configuration {json.dumps(shown)}; other "
                  f"settings Debian's defaults")
        print(f"ours: {shlex.join(ours.command_line)}")
        print("\nsending the corpus with storescu (-nh +sd +sp '*.dcm', TCP_NODELAY=1, one association per folder):")
        for target in targets:
            seconds, found = send_folders(target, [corpus.folder / "big", corpus.folder / "small"],
                                          scratch / f"{target.name}.storescu.log", corpus.instances)
            print(f"  {target.name:8} {corpus.instances} instances in {seconds:.1f} s "
                  f"({corpus.instances / seconds:.0f} inst/s)" + (f"; PROBLEMS: {found}" if found else "; all indexed"),
                  flush=True)
            problems += found
        if problems:
            raise RuntimeError("the corpus did not arrive: " + "; ".join(problems))

        print(f"\nWADO-RS: GET /studies/{{uid}}, Accept: {WADO_ACCEPT}")
        retrieves, metadata, found = run_wado(targets, corpus, args.repeat, scratch)
        problems += found
        print_wado(corpus, retrieves, metadata)

        # Whether a Chinese-name study goes out as stored (not corrected/re-encoded) on our side
        chinese_study = next((s for s in corpus.small if "=" in s["name"]), None)
        if chinese_study is not None:
            with client(auth=ours.auth) as http:
                body_path = scratch / "ours-small.body"
                with body_path.open("wb") as sink:
                    checked = retrieve(http, ours, f"{ours.base}/studies/{chinese_study['uid']}", WADO_ACCEPT, sink)
                found = check_parts(body_path, checked.content_type, corpus, chinese_study)  # type: ignore[attr-defined]
                print(f"  a study of a Chinese-name patient ({chinese_study['name']}) from ours: "
                      + ("sent as stored" if not found else "NOT as stored: " + "; ".join(found[:2])))

        facts = Facts()
        for study in corpus.studies:
            facts.add(study["patient_id"], study["name"], study["date"], {study["modality"]}, study["uid"])
        pinyin_of = surname_pinyin()
        small_kinds = make_kinds(facts, pinyin_of)
        print(f"\nQIDO-RS GET /studies?...&limit={PAGE}, one connection reused, {args.queries} queries per kind after "
              f"{WARMUP_QUERIES} not counted; 'answered' is the mean number of studies per answer:")
        for kind in small_kinds:
            print(f"  {kind.name:14} {kind.describe}")
        print_qido_header()
        timings: list[Timing] = []
        timings += run_qido(ours, small_kinds, facts, args.queries, args.seed, f"ours, {len(facts)} studies")
        if not args.no_orthanc:
            run_qido(orthanc, small_kinds, facts, args.queries, args.seed, f"Orthanc, {len(facts)} studies",
                     strict=False)

        pop = generate(max(args.sizes + [args.orthanc_studies]), args.seed)
        if args.orthanc_studies and not args.no_orthanc:
            gen_folder = cache / f"orthanc-generated-seed{args.seed}"
            started = time.perf_counter()
            files = write_orthanc_files(gen_folder, pop, args.orthanc_studies)
            written = time.perf_counter() - started
            seconds, found = send_folders(orthanc, sorted(p for p in gen_folder.iterdir() if p.is_dir()),
                                          scratch / "orthanc-generated.storescu.log", corpus.instances + files)
            print(f"\n  Orthanc filled with {args.orthanc_studies:,} generated studies ({files:,} small instances; "
                  f"files ready in {written:.0f} s, sent in {seconds:.0f} s over 2 associations)"
                  + (f"; PROBLEMS {found}" if found else ""))
            orthanc_facts = facts.copy()
            orthanc_facts.extend(pop, 0, args.orthanc_studies)
            run_qido(orthanc, make_kinds(orthanc_facts, pinyin_of), orthanc_facts, args.queries, args.seed,
                     f"Orthanc, {len(orthanc_facts):,} studies", strict=False)
        if not args.no_orthanc:
            stop(orthanc)

        if not args.no_decompose:
            print("\nWADO-RS work without HTTP (this process, same files and database):")
            decompose_wado(ours.url, corpus)

        inserted = 0
        by_size: dict[int, list[Timing]] = {}
        kinds: list[Kind] = small_kinds
        for size in sorted(args.sizes):
            stop(ours)
            seconds = insert_rows(ours.url, pop, inserted, size)
            facts.extend(pop, inserted, size)
            inserted = size
            start(ours)
            print(f"\n{size:,} generated studies in the index (+{len(corpus.studies)} received; rows written with "
                  f"SQLAlchemy Core in {seconds:.1f} s, the server stopped meanwhile):", flush=True)
            kinds = make_kinds(facts, pinyin_of)
            print_qido_header()
            by_size[size] = run_qido(ours, kinds, facts, args.queries, args.seed, f"ours, {len(facts):,} studies")
            timings += by_size[size]
            if not args.no_decompose:
                print(f"  in this process, {len(facts):,} studies:")
                decompose_qido(ours.url, kinds, facts, 20, args.seed, explain=size == max(args.sizes))
        if args.analyze:
            analyze(ours.url)
            print(f"\nafter ANALYZE (planner statistics), {len(facts):,} studies, in this process:")
            decompose_qido(ours.url, kinds, facts, 10, args.seed, explain=True)
        if args.variants:
            run_variants(ours, corpus, kinds, facts, args.repeat, min(args.queries, 30), args.seed, start, stop)
        if args.profile:
            profile_server(ours, corpus, kinds, facts, scratch, min(args.queries, 30), args.seed, args.top,
                           f"{len(facts):,} studies")

        problems += [f"QIDO {t.label} {t.kind}: {w}" for t in timings for w in t.wrong[:3]]
        print("\ngoals:")
        largest = max(by_size) if by_size else None
        if largest:
            for timing in by_size[largest]:
                print(f"  QIDO p50 < {GOAL_QIDO_P50_MS:.0f} ms at {largest:,} studies, {timing.kind:14}: "
                      f"{timing.pct(50):7.2f} ms -> {'met' if timing.pct(50) < GOAL_QIDO_P50_MS else 'NOT met'}")
        if "orthanc" in retrieves:
            ratio = median_of(retrieves["ours"], "mb_per_s") / median_of(retrieves["orthanc"], "mb_per_s")
            print(f"  WADO-RS MB/s >= Orthanc's: {median_of(retrieves['ours'], 'mb_per_s'):.0f} vs "
                  f"{median_of(retrieves['orthanc'], 'mb_per_s'):.0f} MB/s, ratio {ratio:.2f} -> "
                  f"{'met' if ratio >= GOAL_WADO_RATIO else 'NOT met'}")
            ratio = median_of(metadata["orthanc"], "seconds") / median_of(metadata["ours"], "seconds")
            print(f"  metadata time <= Orthanc's: {median_of(metadata['ours'], 'seconds'):.3f} vs "
                  f"{median_of(metadata['orthanc'], 'seconds'):.3f} s, Orthanc/ours {ratio:.2f} -> "
                  f"{'met' if ratio >= GOAL_WADO_RATIO else 'NOT met'}")
        print(f"\nload average {os.getloadavg()[0]:.2f} after the run (other work on a 2-core machine moves the "
              f"figures by 10-20 % and more)")
        if problems:
            print("PROBLEMS:\n  " + "\n  ".join(problems[:20]))
        return 1 if problems else 0
    finally:
        for target in list(running):
            target.stop()
        if not args.keep:
            databases.drop()
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"scratch folder kept: {scratch}")


def analyze(url: str) -> None:
    """ANALYZE the whole database (planner statistics)."""
    if url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("ANALYZE")
        return
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("ANALYZE")


def surname_pinyin() -> dict[str, str]:
    """Han surname → its pinyin as the archive writes it (``张`` → ``ZHANG``)."""
    from pacs.integration.names import NameRules, person_name

    rules = NameRules.load(ROOT / "pacs" / "mappings")
    out = {}
    for surname, _ in SURNAMES:
        out[surname] = person_name(surname, "伟", rules=rules).alphabetic.split("^")[0]
    for alphabetic, ideographic in ingest.CHINESE_PATIENTS:
        out.setdefault(ideographic.split("^")[0], alphabetic.split("^")[0])
    return out


if __name__ == "__main__":
    sys.exit(main())

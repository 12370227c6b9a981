#!/usr/bin/env python
"""DICOM ingest: the same 512x512 CT corpus sent by DCMTK storescu to this archive and to Orthanc.

Generates (once, into a cache folder) a corpus of realistic 512x512 16-bit CT instances: 150 per
study in two series of 75, distinct UIDs, patient IDs and accession numbers, half the patients with
Chinese names in ISO_IR 192, explicit VR little endian, noisy phantom pixel data (about 525 KB a
file, not trivially compressible). Then, in one run on this machine:

1. ingest: for each association count (default 1 and 4) and each target (``pacs serve`` on a fresh
   data folder and free ports; Debian's ``Orthanc`` with a temporary configuration and fresh
   storage and index), a warm-up study first, then the whole corpus sent by ``storescu`` (one
   process per association, the corpus split in contiguous parts, all started together), timed
   from the first process start to the last exit. Prints instances/s, MB/s (10^6 bytes), the
   server's CPU per instance and in cores, our rate over Orthanc's, and checks afterwards that
   every instance arrived (our index count; Orthanc's ``/statistics``);
2. C-FIND at STUDY level by Patient ID (Study Root, pynetdicom SCU, one association reused, 200
   queries, every match count checked): on our nearly empty archive (the corpus just sent) and on
   Orthanc's for reference; then on a fresh archive whose index has had 1,000,000 instance rows
   (10,000 studies x 100 instances, 5,000 patients) inserted directly with SQLAlchemy Core, where
   the one-association ingest is repeated, to compare both with the empty-archive figures.

Every server and storescu process runs with ``TCP_NODELAY=1`` in its environment (DESIGN.md:
Nagle's algorithm costs ~40 ms per DIMSE exchange on loopback for DCMTK and Orthanc).

Run from the project root::

    .venv/bin/python bench/ingest.py                      # 1,500 instances, 1 and 4 associations, 1M index
    .venv/bin/python bench/ingest.py --quick              # 300 instances, 100,000-row index, 100 queries
    .venv/bin/python bench/ingest.py --instances 3000 --associations 1,2,4
    .venv/bin/python bench/ingest.py --profile            # + where our time goes (stage timers)
    .venv/bin/python bench/ingest.py --profile cprofile --profile-only
    .venv/bin/python bench/ingest.py --variants --profile-only  # what proposed changes would gain
    .venv/bin/python bench/ingest.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/ingest.py --against HEAD~1 --no-orthanc --way issue --associations 4  # A/B of a change

``--profile stages`` (the default of ``--profile``) runs one more ingest (one association;
``--profile-associations N`` for more) with our server under a small bootstrap (passed with
``python -c``; nothing in ``pacs/`` changes) that times store()'s steps, the index writer, fsync and pynetdicom's PDU reading with ``perf_counter`` and
``thread_time``, only during the measured ingest. ``--profile cprofile`` instead runs a cProfile in
every thread started during the measured ingest and in the index writer: pynetdicom serves each
association in an Association thread and a DUL thread, which ``python -m cProfile -m pacs.cli
serve`` would not see (it profiles the main thread only, the asyncio loop). cProfile roughly
doubles the cost of pure-Python code: read its figures as shares. Figures of profiled runs are not
throughput figures.

``--variants`` measures, before anyone changes ``pacs/``, what each proposed change would gain: the
same bootstrap applies one change at start (no directory fsync, no duplicate SELECT, no SHA-256
read-back, Core INSERTs for the index rows, no per-commit counters, pynetdicom polling every 0.1 ms,
all of them; see ``VARIANTS``) and the one-association ingest runs on a fresh archive with each;
then four associations on one process and on two processes sharing the DICOM port with
``SO_REUSEPORT``. Most of them drop a guarantee the archive keeps, so they are upper bounds of what
a change that keeps it could gain, not proposals as they stand. ``--variant-rounds N`` repeats the
plan and prints medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

from common import cpu_model, findscu_queries, free_port, git_state, memory_gb  # noqa: E402  (bench/common.py)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
OUR_AE = "PACS"
ORTHANC_AE = "ORTHANC"
CALLING_AE = "STORESCU"
FIND_AE = "BENCHFIND"
CORPUS_VERSION = 2  # bump when the generated files change
WARMUP_INSTANCES = 20
SERVER_START_TIMEOUT = 120.0
SEND_TIMEOUT = 3600.0

GOAL_RATIO = 1.0  # our ingest rate over Orthanc's, same machine, same run
ISSUE_GOALS = {1: (1.5, 0.0), 4: (1.3, 1.0)}  # issue 25, the issue way: median ratio, every round's ratio
GOAL_SCALE = 0.8  # at 1M instances: rate >= 80 % and C-FIND p50 <= 120 % of the empty archive's
GOAL_FIND_P50_MS = 10.0

CHINESE_PATIENTS = [("ZHANG^WEI", "张^伟"), ("WANG^FANG", "王^芳"), ("LI^XIUYING", "李^秀英"),
                    ("LIU^YANG", "刘^洋"), ("CHEN^JING", "陈^静"), ("OUYANG^XIAODONG", "欧阳^晓东"),
                    ("ZENG^GUOQIANG", "曾^国强"), ("SHAN^TIANFANG", "单^田芳")]
LATIN_PATIENTS = ["MUELLER^HANS", "SMITH^JOHN", "GARCIA^MARIA", "DUPONT^CLAIRE", "ROSSI^LUCA",
                  "NOVAK^PETRA", "SILVA^ANA", "BROWN^EMMA"]
PROTOCOLS = [("CHEST", "CT Chest w/o contrast", "Thorax routine"), ("HEAD", "CT Head", "Head routine"),
             ("ABDOMEN", "CT Abdomen/Pelvis w contrast", "Abdomen portal venous"),
             ("SPINE", "CT Lumbar spine", "L-spine bone")]


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    folder: Path
    files: list[Path]
    bytes: int
    warmup: Path
    warmup_count: int
    studies: list[dict[str, Any]]  # {uid, patient_id, instances}

    @property
    def patient_studies(self) -> dict[str, int]:
        """Patient ID → number of studies (what a C-FIND by that ID must return)."""
        out: dict[str, int] = {}
        for study in self.studies:
            out[study["patient_id"]] = out.get(study["patient_id"], 0) + 1
        return out

    def split(self, parts: int) -> list[Path]:
        """Folders holding the corpus in ``parts`` contiguous parts (hard links to the files)."""
        if parts == 1:
            return [self.folder / "all"]
        base = self.folder / f"split{parts}"
        folders = [base / f"p{i}" for i in range(parts)]
        if not (base / "complete").exists():
            shutil.rmtree(base, ignore_errors=True)
            size = -(-len(self.files) // parts)
            for i, folder in enumerate(folders):
                folder.mkdir(parents=True)
                for path in self.files[i * size:(i + 1) * size]:
                    os.link(path, folder / path.name)
            (base / "complete").touch()
        return folders

    def deal(self, parts: int) -> list[Path]:
        """Folders for ``parts`` associations as a user would make them: one folder per patient
        (``<patient>/<study>/<file>``, hard links), the patients dealt round-robin to the parts.
        With 5 patients of 300 instances and 4 parts, the first part gets 600 and its storescu
        sends alone at the end. With fewer patients than parts, as many folders as patients."""
        base = self.folder / f"dealt{parts}"
        folders = [base / f"a{i}" for i in range(parts)]
        if not (base / "complete").exists():
            shutil.rmtree(base, ignore_errors=True)
            patients = list(dict.fromkeys(study["patient_id"] for study in self.studies))
            for number, study in enumerate(self.studies):
                part = folders[patients.index(study["patient_id"]) % parts]
                folder = part / study["patient_id"] / f"S{number:03d}"
                folder.mkdir(parents=True)
                for path in self.files:
                    if path.name.startswith(f"S{number:03d}_"):
                        os.link(path, folder / path.name)
            (base / "complete").touch()
        return [folder for folder in folders if folder.exists()]  # fewer patients than parts: fewer associations


@dataclass(frozen=True)
class Way:
    """How a row is sent and what surrounds it. ``bench``: the corpus in contiguous parts of one
    folder each, a warm-up study first, rows back to back, archives deleted at the end of the run,
    ours with ``--dicom-processes``. ``issue`` (as a new user measures, issue 25): one folder per
    patient dealt round-robin to the associations (``storescu +sd +r +sp '*.dcm'``), no warm-up,
    20 s between rows, each archive deleted as soon as its row is done, ours on the server's own
    default configuration. A spec such as ``dealt+warmup+pause=0+config=3`` sets each part alone,
    to test one difference at a time: ``dealt``, ``warmup``, ``pause=S``, ``delete``, ``config=N``
    (``config=default``: no ``[dicom] processes`` given)."""

    name: str
    dealt: bool = False
    warm_up: bool = True
    pause: float = 0.0
    delete: bool = False
    configs: tuple[int | None, ...] = ()  # ours' [dicom] processes; None = the server's default; () = --dicom-processes


WAYS = {"bench": Way("bench"), "issue": Way("issue", dealt=True, warm_up=False, pause=20.0, delete=True, configs=(None,))}


def parse_way(spec: str) -> Way:
    if spec in WAYS:
        return WAYS[spec]
    way: dict[str, Any] = {"name": spec, "warm_up": False}
    configs: list[int | None] = []
    for part in filter(None, spec.split("+")):
        key, _, value = part.partition("=")
        if key == "dealt":
            way["dealt"] = True
        elif key == "warmup":
            way["warm_up"] = True
        elif key == "delete":
            way["delete"] = True
        elif key == "pause":
            way["pause"] = float(value)
        elif key == "config":
            configs.append(None if value == "default" else int(value))
        else:
            raise argparse.ArgumentTypeError(f"unknown part {part!r} of --way {spec!r} (dealt, warmup, pause=S, "
                                             f"delete, config=N|default)")
    return Way(**way, configs=tuple(configs))


def phantom(rng: Any, z: int, grid: tuple[Any, Any]) -> bytes:
    """One 512x512 slice, stored values (HU + 1024, 12 bits used): a body ellipse with a bone rim,
    a slow gradient, slice-to-slice variation and Gaussian noise."""
    import numpy as np

    yy, xx = grid
    ry = 150.0 + 25.0 * np.sin(z / 23.0)
    r = (xx / 205.0) ** 2 + ((yy + 10.0) / ry) ** 2
    image = np.where(r < 1.0, 1064.0, 24.0)  # soft tissue 40 HU, air -1000 HU
    image = np.where((r > 0.86) & (r < 1.0), 1700.0, image)  # cortical rim
    organ = ((xx - 60.0 - 10 * np.cos(z / 17.0)) / 70.0) ** 2 + ((yy - 20.0) / 55.0) ** 2
    image = np.where(organ < 1.0, 1084.0, image)
    image += (xx + yy) * 0.04 * (r < 1.0)
    image += rng.normal(0.0, 14.0, image.shape)
    return np.clip(image, 0, 4095).astype("<u2").tobytes()


def make_corpus(folder: Path, instances: int, per_study: int, seed: int) -> Corpus:
    """Write the corpus (once); later runs with the same parameters read the manifest."""
    manifest = folder / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        files = [folder / "all" / name for name in data["files"]]
        if all(p.exists() for p in files):
            return Corpus(folder, files, data["bytes"], folder / "warmup", data["warmup_count"], data["studies"])
    import numpy as np

    shutil.rmtree(folder, ignore_errors=True)
    (folder / "all").mkdir(parents=True)
    (folder / "warmup").mkdir()
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    coords = np.arange(512, dtype=np.float32) - 255.5
    grid = np.meshgrid(coords, coords, indexing="ij")
    studies: list[dict[str, Any]] = []
    files: list[Path] = []
    total = 0
    study_count = -(-instances // per_study)
    for number in range(study_count):
        count = min(per_study, instances - number * per_study)
        written = _write_study(folder / "all", f"S{number:03d}", number, count, seed, rng, grid)
        studies.append(written["study"])
        files += written["files"]
        total += written["bytes"]
    _write_study(folder / "warmup", "WARM", 999, WARMUP_INSTANCES, seed + 1, rng, grid)
    data = {"version": CORPUS_VERSION, "instances": instances, "per_study": per_study, "seed": seed,
            "bytes": total, "files": [p.name for p in files], "studies": studies,
            "warmup_count": WARMUP_INSTANCES, "seconds": time.perf_counter() - started}
    manifest.write_text(json.dumps(data, indent=1))
    return Corpus(folder, files, total, folder / "warmup", WARMUP_INSTANCES, studies)


def _write_study(folder: Path, prefix: str, number: int, count: int, seed: int, rng: Any,
                 grid: tuple[Any, Any]) -> dict[str, Any]:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=["pacs-bench-ingest", str(seed), *map(str, parts)])

    # Every patient has two studies, as in the large index, so a query by patient ID returns two
    # matches on both and the latencies compare.
    patient = number // 2
    chinese = patient % 2 == 0
    patient_id = f"ING{seed:04d}{patient:05d}" if prefix != "WARM" else f"WARM{seed:04d}"
    when = datetime(2026, 3, 2, 8, 0) + timedelta(days=number // 4, minutes=37 * number)
    study_uid = uid(prefix, number, "study")
    code, description, protocol = PROTOCOLS[number % len(PROTOCOLS)]
    birth = date(1940, 1, 1) + timedelta(days=(patient * 3571) % 25000)
    files: list[Path] = []
    size = 0
    per_series = -(-count // 2)
    for index in range(count):
        series = index // per_series + 1
        sop_uid = uid(prefix, number, series, index)
        ds = Dataset()
        if chinese:
            ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
        ds.StudyTime = when.strftime("%H%M%S")
        ds.SeriesTime = (when + timedelta(minutes=series)).strftime("%H%M%S")
        ds.ContentTime = (when + timedelta(minutes=series, seconds=index // 4)).strftime("%H%M%S.%f")[:13]
        ds.AccessionNumber = f"ACC{seed:04d}{number:05d}"
        ds.Modality = "CT"
        ds.Manufacturer = "BENCH Medical"
        ds.InstitutionName = "第一人民医院" if chinese else "General Hospital"
        ds.ReferringPhysicianName = "LI^SI=李^四" if chinese else "JONES^ALAN"
        ds.StationName = "CT01"
        ds.StudyDescription = description
        ds.SeriesDescription = f"{protocol} {'5.0' if series == 1 else '1.25'} mm"
        ds.OperatorsName = "WANG^WU=王^五" if chinese else "TECH^ONE"
        ds.ManufacturerModelName = "Bench 64"
        if chinese:
            alphabetic, ideographic = CHINESE_PATIENTS[patient % len(CHINESE_PATIENTS)]
            ds.PatientName = f"{alphabetic}={ideographic}"
        else:
            ds.PatientName = LATIN_PATIENTS[patient % len(LATIN_PATIENTS)]
        ds.PatientID = patient_id
        ds.IssuerOfPatientID = "HOSP"
        ds.PatientBirthDate = birth.strftime("%Y%m%d")
        ds.PatientSex = "MF"[patient % 2]
        ds.PatientAge = f"{max(1, 2026 - birth.year):03d}Y"
        ds.BodyPartExamined = code
        ds.SliceThickness = "5.0" if series == 1 else "1.25"
        ds.KVP = "120"
        ds.DataCollectionDiameter = "500.0"
        ds.ReconstructionDiameter = "380.0"
        ds.GantryDetectorTilt = "0.0"
        ds.TableHeight = "160.0"
        ds.RotationDirection = "CW"
        ds.ExposureTime = "500"
        ds.XRayTubeCurrent = "250"
        ds.Exposure = "125"
        ds.ConvolutionKernel = "STANDARD" if series == 1 else "BONE"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = uid(prefix, number, series, "series")
        ds.StudyID = str(number + 1)
        ds.SeriesNumber = series
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = index + 1
        location = -300.0 + index * (5.0 if series == 1 else 1.25)
        ds.ImagePositionPatient = ["-190.0", "-190.0", f"{location:.2f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = uid(prefix, number, "for")
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{location:.2f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = 512
        ds.Columns = 512
        ds.PixelSpacing = ["0.742188", "0.742188"]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.add_new(0x7FE00010, "OW", phantom(rng, index, grid))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        path = folder / f"{prefix}_{series}_{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        size += path.stat().st_size
    return {"study": {"uid": study_uid, "patient_id": patient_id, "instances": count}, "files": files, "bytes": size}


def warm_page_cache(files: list[Path]) -> float:
    """Read every file once so each target reads the corpus from memory, not the disk."""
    started = time.perf_counter()
    for path in files:
        with path.open("rb") as handle:
            while handle.read(1 << 20):
                pass
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not accept within {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads and the processes it started (the DICOM
    receivers of ``[dicom] processes``), from /proc; 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children: list[str] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += (task / "children").read_text().split()
        except OSError:
            pass
    return own + sum(process_cpu_seconds(int(child)) for child in children)


class Switches:
    """Context switches of a process's threads (and of the processes it started) while a row
    runs, from ``/proc/<pid>/task/*/status``, read every :data:`SWITCH_SAMPLE` seconds: a thread
    that ends between two readings loses what it did since the last one (an association's
    threads end with it), so the count is a little low. Switches are where a threaded Python
    server pays for its hand-overs and its GIL: each is a sleep and a wake-up."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._first: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Switches:
        self._first = self._read()
        self._last = dict(self._first)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._last.update(self._read())

    @property
    def count(self) -> int:
        return sum(last - self._first.get(task, 0) for task, last in self._last.items())

    def _run(self) -> None:
        while not self._stop.wait(SWITCH_SAMPLE):
            self._last.update(self._read())

    def _read(self, pid: int | None = None) -> dict[str, int]:
        pid = self.pid if pid is None else pid
        counts: dict[str, int] = {}
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                status = (task / "status").read_text()
                children = (task / "children").read_text().split()
            except OSError:
                continue
            counts[f"{pid}/{task.name}"] = sum(int(line.split()[1]) for line in status.splitlines()
                                               if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
            for child in children:
                counts.update(self._read(int(child)))
        return counts


SWITCH_SAMPLE = 0.05  # seconds between readings of the server's threads' context switches


def nodelay_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env["TCP_NODELAY"] = "1"
    return env


# Runs `pacs serve` with instruments that switch on at SIGUSR1 (sent after the warm-up) and are
# written to PREFIX.* when the server has stopped (SIGTERM):
#   stages:   perf_counter / thread_time around store()'s steps, fsync, the index writer's batches
#             and commits, and pynetdicom's PDU reading and decoding; every thread started while on
#             reports its wall and CPU time by kind (Association, DULServiceProvider, ...);
#   cprofile: a cProfile in every thread started while on (pynetdicom's Association and DUL
#             threads) and in the index writer's batches.
PROFILE_BOOTSTRAP = r"""
import cProfile, functools, json, os, pstats, signal, socket, sys, threading, time
mode, prefix, changes = sys.argv[1], sys.argv[2], set(filter(None, sys.argv[3].split(",")))
del sys.argv[1:4]
state = {"on": False}
lock = threading.Lock()
timers, threads, profiles, batch_sizes = {}, [], {}, {}

def record(name, wall, cpu):
    with lock:
        entry = timers.setdefault(name, [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += wall
        entry[2] += cpu

def timed(name, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if not state["on"]:
            return function(*args, **kwargs)
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            record(name, time.perf_counter() - wall, time.thread_time() - cpu)
    return wrapper

original_inner = threading.Thread._bootstrap_inner
def bootstrap_inner(self):
    if not state["on"] or self.name == "index-writer":
        return original_inner(self)
    kind = type(self).__name__
    profile = cProfile.Profile() if mode == "cprofile" else None
    wall, cpu = time.perf_counter(), time.thread_time()
    if profile is not None:
        profile.enable()
    try:
        return original_inner(self)
    finally:
        if profile is not None:
            profile.disable()
        with lock:
            threads.append([kind, time.perf_counter() - wall, time.thread_time() - cpu])
            if profile is not None:
                profiles.setdefault(kind, []).append(profile)
threading.Thread._bootstrap_inner = bootstrap_inner

from pacs.archive import handlers, storage, store
from pacs.archive.storage import FilesystemArea
from pacs.archive.store import Archive
writer_profile = cProfile.Profile() if mode == "cprofile" else None
original_batch = Archive._index_batch
def index_batch(self, batch):
    if not state["on"]:
        return original_batch(self, batch)
    with lock:
        batch_sizes[len(batch)] = batch_sizes.get(len(batch), 0) + 1
    wall, cpu = time.perf_counter(), time.thread_time()
    if writer_profile is not None:
        writer_profile.enable()
    try:
        return original_batch(self, batch)
    finally:
        if writer_profile is not None:
            writer_profile.disable()
        record("_index_batch", time.perf_counter() - wall, time.thread_time() - cpu)
Archive._index_batch = index_batch

# What-if changes (see VARIANTS): each measures what a proposed change would gain, before anyone
# makes it in pacs/.
if "nodirsync" in changes:
    storage._fsync_dir = lambda path: None
if "noexisting" in changes:
    Archive._duplicate = lambda self, session, job: None
if "nohash" in changes:
    storage.sha256_file = lambda path: "0" * 64
if "nocounts" in changes:
    Archive._apply_counts = lambda self, session, counts: None
if "fastpoll" in changes:
    import types
    from pynetdicom import association as pn_association, dul as pn_dul
    fast = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    fast.sleep = lambda seconds: time.sleep(min(seconds, 0.0001))
    pn_association.time = pn_dul.time = fast
if "reuseport" in changes:
    from pynetdicom.transport import AssociationServer
    original_bind = AssociationServer.server_bind
    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        original_bind(self)
    AssociationServer.server_bind = server_bind
if "coreindex" in changes:
    from sqlalchemy import insert
    from pacs.archive.index import Instance, InstanceFile
    from pacs.archive.status import Status
    from pacs.db import utcnow
    INSERT_INSTANCE, INSERT_FILE = insert(Instance.__table__), insert(InstanceFile.__table__)
    original_index = Archive._index
    def core_index(self, session, job, counts):
        ds, text, number = job.header, store._text, store._int
        study_uid, series_uid = text(ds, "StudyInstanceUID"), text(ds, "SeriesInstanceUID")
        if job.replace is not None or study_uid not in self._studies or series_uid not in self._series:
            return original_index(self, session, job, counts)  # new study or series: reconcile as usual
        study_id, series_id = self._studies[study_uid], self._series[series_uid]
        connection, now = session.connection(), utcnow()
        instance_id = connection.execute(INSERT_INSTANCE, dict(
            sop_instance_uid=text(ds, "SOPInstanceUID"), series=series_id, sop_class_uid=text(ds, "SOPClassUID"),
            instance_number=number(ds, "InstanceNumber"), transfer_syntax_uid=job.transfer_syntax,
            content_date=text(ds, "ContentDate")[:8], content_time=text(ds, "ContentTime"), rows=number(ds, "Rows"),
            columns=number(ds, "Columns"), number_of_frames=number(ds, "NumberOfFrames"), size=job.stored.size,
            checksum=job.stored.checksum, received_at=now)).inserted_primary_key[0]
        connection.execute(INSERT_FILE, dict(instance=instance_id, area=job.area, key=job.stored.key,
                                             size=job.stored.size, checksum=job.stored.checksum, created_at=now))
        entry = counts.setdefault(study_id, [0, 0, 0])
        entry[0] += 1
        entry[1] += job.stored.size
        counts.setdefault(-series_id, [0, 0, 0])[0] += 1
        return store.StoreResult(store.Outcome.STORED, Status.SUCCESS, "", instance_id, study_uid)
    Archive._index = core_index

if mode == "stages":
    from pynetdicom.dimse_messages import DIMSEMessage
    from pynetdicom.dul import DULServiceProvider
    from pynetdicom.transport import AssociationSocket
    from sqlalchemy.orm import Session

    from pacs.archive import dul as pacs_dul, part10
    pacs_dul.install()  # the archive's own socket reads first, so that the timer wraps them
    handlers.handle_store = timed("handle_store", handlers.handle_store)
    for owner, attribute in [
        (Archive, "store"), (part10, "scan"), (store, "read_header"), (store, "check_identity"), (Archive, "_duplicate"),
        (Archive, "_short_of_space"), (Archive, "_held"), (FilesystemArea, "put_file"), (FilesystemArea, "stage"),
        (FilesystemArea, "place"), (storage, "sha256_file"),
        (storage, "_fsync_dir"), (Archive, "_index"), (Archive, "_apply_counts"), (Session, "commit"),
        (DULServiceProvider, "_read_pdu_data"), (DIMSEMessage, "decode_msg"), (AssociationSocket, "recv"),
        (AssociationSocket, "send"), (os, "fsync"), (os, "replace"),
    ]:
        setattr(owner, attribute, timed(f"{getattr(owner, '__name__', owner)}.{attribute}",
                                        getattr(owner, attribute)))

signal.signal(signal.SIGUSR1, lambda signum, frame: state.update(on=True))
from pacs.cli import main
code = main(sys.argv[1:])
state["on"] = False
time.sleep(0.2)
if mode == "none":
    sys.exit(code)
with lock:
    with open(prefix + "json", "w") as out:
        json.dump({"timers": timers, "threads": threads, "batch_sizes": batch_sizes}, out)
    if mode == "cprofile":
        for kind, items in profiles.items():
            stats = pstats.Stats(items[0])
            for item in items[1:]:
                stats.add(item)
            stats.dump_stats(f"{prefix}{kind}.prof")
        if writer_profile is not None and writer_profile.getstats():
            writer_profile.dump_stats(prefix + "index-writer.prof")
sys.exit(code)
"""


@dataclass
class OurServer:
    """``pacs serve`` on its own data folder and free ports."""

    data_dir: Path
    database_url: str | None = None
    profile: str | None = None
    process: subprocess.Popen[bytes] | None = None
    dicom_port: int = 0
    command_line: list[str] = field(default_factory=list)
    name: str = "ours"
    ae_title: str = OUR_AE
    changes: str = ""  # what-if changes applied by the bootstrap (see VARIANTS)
    tag: str = ""  # tells apart the logs of processes sharing a data folder
    processes: int | None = 1  # [dicom] processes: receivers sharing the DICOM port; None: the server's default
    source: Path = ROOT  # the checkout whose pacs package runs (bench/cfind.py's --against)

    @property
    def config_name(self) -> str:
        return "default" if self.processes is None else f"processes={self.processes}"

    @property
    def log(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}{self.tag}.log"

    @property
    def profile_prefix(self) -> str:
        return str(self.data_dir.parent / f"{self.data_dir.name}{self.tag}-profile.")

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'pacs.db').resolve()}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = self.dicom_port or free_port()
        serve = ["serve", "--data-dir", str(self.data_dir), "--dicom-port", str(self.dicom_port),
                 "--mllp-port", str(free_port()), "--http-port", str(free_port()), "--host", "127.0.0.1",
                 "--ae-title", OUR_AE]
        python = sys.executable
        if self.profile or self.changes:
            command = [python, "-c", PROFILE_BOOTSTRAP, self.profile or "none", self.profile_prefix, self.changes,
                       *serve]
            self.command_line = [python, "-c", "<profiling bootstrap>", *command[3:]]
        else:
            command = [python, "-m", "pacs.cli", *serve]
            self.command_line = command
        env = nodelay_env()
        env["PACS_LOG_LEVEL"] = "WARNING"
        if self.processes is not None:
            env["PACS_DICOM__PROCESSES"] = str(self.processes)
        if self.database_url:
            env["PACS_DATABASE_URL"] = self.database_url
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.source,
                                            start_new_session=True)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while "pacs: serving" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise RuntimeError(f"pacs serve exited with {self.process.returncode}:\n{tail(self.log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"pacs serve did not start within {SERVER_START_TIMEOUT:.0f} s:\n{tail(self.log)}")
            time.sleep(0.05)
        wait_for_port(self.dicom_port, self.process, self.log, 10)

    def count(self) -> int:
        return int(sql(self.url, "SELECT count(*) FROM instance")[0][0])

    def stored_files(self) -> int:
        """Files in the storage area (data/storage/ab/cd/<key>), leftovers in .incoming excluded."""
        return sum(1 for path in (self.data_dir / "storage").glob("??/??/*") if path.is_file())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(300)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


@dataclass
class ServerGroup:
    """Several ``pacs serve`` processes on one data folder sharing the DICOM port (SO_REUSEPORT,
    set by the bootstrap's ``reuseport`` change): the kernel spreads associations over them."""

    servers: list[OurServer]
    name: str = "ours"
    ae_title: str = OUR_AE

    @property
    def dicom_port(self) -> int:
        return self.servers[0].dicom_port

    @property
    def pid(self) -> int:
        return self.servers[0].pid

    @property
    def data_dir(self) -> Path:
        return self.servers[0].data_dir

    def start(self) -> None:
        for number, server in enumerate(self.servers):
            server.dicom_port = self.servers[0].dicom_port
            server.start()  # one after the other: the first migrates the schema
            if number == 0:
                for other in self.servers[1:]:
                    other.dicom_port = server.dicom_port

    def cpu_seconds(self) -> float:
        return sum(server.cpu_seconds() for server in self.servers)

    def count(self) -> int:
        return self.servers[0].count()

    def stored_files(self) -> int:
        return self.servers[0].stored_files()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@dataclass
class Orthanc:
    """Debian's Orthanc with its own configuration, storage and index in a temporary folder."""

    folder: Path
    process: subprocess.Popen[bytes] | None = None
    dicom_port: int = 0
    http_port: int = 0
    name: str = "orthanc"
    ae_title: str = ORTHANC_AE
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.folder / "orthanc.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dicom_port, self.http_port = free_port(), free_port()
        self.config = {
            "Name": "pacs-bench", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "DicomAet": ORTHANC_AE, "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True,
            "Plugins": [],
        }
        path = self.folder / "config.json"
        path.write_text(json.dumps(self.config, indent=2))
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(["Orthanc", str(path)], stdout=log, stderr=subprocess.STDOUT,
                                            env=nodelay_env(), cwd=self.folder, start_new_session=True)
        wait_for_port(self.http_port, self.process, self.log, SERVER_START_TIMEOUT)
        wait_for_port(self.dicom_port, self.process, self.log, SERVER_START_TIMEOUT)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def rest(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=60) as response:
            return json.loads(response.read())

    def count(self) -> int:
        """Instances in Orthanc's index: /statistics, and the listing /instances when they differ."""
        counted = int(self.rest("/statistics")["CountInstances"])
        listed = len(self.rest("/instances"))
        if listed != counted:
            print(f"    (Orthanc: /statistics says {counted} instances, /instances lists {listed})")
        return listed

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


def sql(url: str, statement: str) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return list(conn.execute(statement).fetchall())
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return list(conn.execute(statement).fetchall())


# --------------------------------------------------------------------------------------------
# Sending with storescu
# --------------------------------------------------------------------------------------------


@dataclass
class SendResult:
    target: str
    associations: int
    instances: int
    bytes: int
    seconds: float
    server_cpu: float
    client_cpu: float
    arrived: int = 0
    expected: int = 0
    failures: list[str] = field(default_factory=list)
    label: str = ""
    way: str = "bench"
    finishes: list[float] = field(default_factory=list)  # seconds to each storescu's exit
    config: str = ""  # ours: [dicom] processes as run ("default" = the server's own default)
    switches: int = 0  # the server's context switches during the row (Switches)

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0

    @property
    def complete(self) -> bool:
        return self.arrived == self.expected and not self.failures


def storescu(target: Any, folders: list[Path], log: Path, *, recursive: bool = False,
             finishes: list[float] | None = None) -> tuple[float, list[str]]:
    """Send each folder over its own association, all at once; wall time and problems. With
    ``recursive`` (``+r``) storescu walks the folder's subfolders; ``finishes`` gets the seconds
    from the start to each process's exit, in the order of ``folders``."""
    processes = []
    started = time.perf_counter()
    with log.open("ab") as out:
        for folder in folders:
            command = ["storescu", "-nh", "-aet", CALLING_AE, "-aec", target.ae_title, "+sd", *(["+r"] if recursive else []),
                       "+sp", "*.dcm", "127.0.0.1", str(target.dicom_port), str(folder)]
            processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=nodelay_env()))
        problems = []
        ended: dict[int, float] = {}
        deadline = time.monotonic() + SEND_TIMEOUT
        while len(ended) < len(processes):
            for number, process in enumerate(processes):
                if number not in ended and process.poll() is not None:
                    ended[number] = time.perf_counter() - started
            if time.monotonic() > deadline:
                for number, process in enumerate(processes):
                    if number not in ended:
                        process.kill()
                        process.wait()
                        ended[number] = time.perf_counter() - started
            time.sleep(0.002)
        for process, folder in zip(processes, folders, strict=True):
            if process.returncode != 0:
                problems.append(f"storescu for {folder.name} exited with {process.returncode}")
        if finishes is not None:
            finishes[:] = [ended[number] for number in range(len(processes))]
    seconds = time.perf_counter() - started
    text = log.read_text(errors="replace")
    failed = [line for line in text.splitlines() if line.startswith(("E:", "F:"))]
    if failed:
        problems.append(f"{len(failed)} storescu error line(s), e.g. {failed[0]}")
    return seconds, problems


def send(target: Any, corpus: Corpus, associations: int, log: Path, expected: int, label: str = "",
         expected_files: int | None = None, way: Way | None = None) -> SendResult:
    way = way or WAYS["bench"]
    folders = corpus.deal(associations) if way.dealt else corpus.split(associations)
    log.write_text("")
    cpu_before = target.cpu_seconds()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    finishes: list[float] = []
    with Switches(target.pid) as switches:
        seconds, problems = storescu(target, folders, log, recursive=way.dealt, finishes=finishes)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_after = target.cpu_seconds()
    client = (children_after.ru_utime + children_after.ru_stime) - (children.ru_utime + children.ru_stime)
    result = SendResult(target.name, associations, len(corpus.files), corpus.bytes, seconds, cpu_after - cpu_before,
                        client, expected=expected, failures=problems, label=label, way=way.name, finishes=finishes,
                        config=getattr(target, "config_name", ""), switches=switches.count)
    deadline = time.monotonic() + 30
    while True:  # both answer after indexing, but give a lagging index a moment anyway
        result.arrived = target.count()
        if result.arrived >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if result.arrived != expected:
        result.failures.append(f"{result.arrived} instances indexed, expected {expected}")
    if isinstance(target, (OurServer, ServerGroup)):
        files = target.stored_files()
        wanted = expected if expected_files is None else expected_files
        if files != wanted:
            result.failures.append(f"{files} files in the storage area, expected {wanted}")
    return result


def warm_up(target: Any, corpus: Corpus, log: Path) -> None:
    seconds, problems = storescu(target, [corpus.warmup], log)
    if problems:
        raise RuntimeError(f"warm-up to {target.name} failed: {problems}\n{tail(log)}")


# --------------------------------------------------------------------------------------------
# C-FIND
# --------------------------------------------------------------------------------------------


@dataclass
class FindResult:
    label: str
    latencies: list[float]  # seconds
    wrong: list[str] = field(default_factory=list)

    def pct(self, p: float) -> float:
        """Nearest-rank percentile in milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
        return ordered[rank - 1] * 1000


def study_query(patient_id: str) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient_id
    for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
                    "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName",
                    "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"):
        setattr(ds, keyword, None)
    return ds


def c_find_latency(target: Any, expected: dict[str, int], queries: int, seed: int, label: str,
                   warmup: int = 10) -> FindResult:
    """``queries`` STUDY-level C-FINDs by Patient ID over one association, each timed from the
    request to the final response; every match count checked against ``expected``."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    def nodelay(event: Any) -> None:
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    ae = AE(ae_title=FIND_AE)
    ae.add_requested_context(FIND)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    assoc = ae.associate("127.0.0.1", target.dicom_port, ae_title=target.ae_title,
                         evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
    if not assoc.is_established:
        raise RuntimeError(f"C-FIND association to {target.name} was not established")
    rng = random.Random(seed)
    ids = sorted(expected)
    result = FindResult(label, [])
    try:
        for number in range(warmup + queries):
            patient_id = rng.choice(ids)
            query = study_query(patient_id)
            started = time.perf_counter()
            matches, final = 0, None
            for status, _identifier in assoc.send_c_find(query, FIND):
                if status is None or "Status" not in status:
                    raise RuntimeError(f"no C-FIND response from {target.name} (timeout or abort)")
                if status.Status in (0xFF00, 0xFF01):
                    matches += 1
                else:
                    final = status.Status
            elapsed = time.perf_counter() - started
            if number >= warmup:
                result.latencies.append(elapsed)
            if final != 0 or matches != expected[patient_id]:
                result.wrong.append(f"{patient_id}: status 0x{final or 0:04X}, {matches} matches, "
                                    f"expected {expected[patient_id]}")
    finally:
        assoc.release()
    return result


def c_find_findscu(target: Any, expected: dict[str, int], queries: int, seed: int, label: str, tmp: Path,
                   warmup: int = 10) -> FindResult:
    """The same queries from DCMTK findscu (Study Root, one association, the query files in turn),
    each timed by findscu's own log clock from the request to the final response: the SCP's
    latency as a C++ client sees it, without the Python client's decoding in it."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    folder = tmp / "findscu" / re.sub(r"\W+", "-", label)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    ids = sorted(expected)
    asked, files = [], []
    for number in range(warmup + queries):
        patient_id = rng.choice(ids)
        query = study_query(patient_id)
        query.file_meta = FileMetaDataset()
        query.file_meta.MediaStorageSOPClassUID = FIND
        query.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
        query.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        files.append(folder / f"q{number:05d}.dcm")
        query.save_as(files[-1], enforce_file_format=True)
        asked.append(patient_id)
    answered, _cpu = findscu_queries(["-S", "-aet", FIND_AE, "-aec", target.ae_title, "127.0.0.1",
                                      str(target.dicom_port)], files, folder)
    result = FindResult(label, [])
    for number, (patient_id, query) in enumerate(zip(asked, answered, strict=True)):
        if number >= warmup:
            result.latencies.append(query.ms / 1000)
        if not query.success or query.matches != expected[patient_id]:
            result.wrong.append(f"{patient_id}: {'success' if query.success else 'failure'}, {query.matches} "
                                f"matches, expected {expected[patient_id]}")
    return result


# --------------------------------------------------------------------------------------------
# A large index, written directly
# --------------------------------------------------------------------------------------------


def bulk_index(url: str, *, instances: int, per_study: int, patients: int) -> tuple[dict[str, int], float]:
    """Migrate the schema at ``url`` and insert ``instances`` instance rows (and their studies,
    series, files, patients and identifiers) with SQLAlchemy Core; explicit ids, so nothing is read
    back. Returns patient ID → studies, and the seconds it took."""
    from sqlalchemy import create_engine, insert, text

    from pacs.archive.index import Instance, InstanceFile, Series, Study
    from pacs.db import Database
    from pacs.registry.models import Patient, PatientIdentifier

    started = time.perf_counter()
    db = Database(url)
    db.migrate()
    db.dispose()
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    now = datetime.now(UTC)
    rng = random.Random(4711)
    studies = instances // per_study
    series_per_study = 2
    per_series = per_study // series_per_study
    root = "1.2.826.0.1.3680043.10.1138"  # an example root for generated rows
    patient_studies: dict[str, int] = {}
    surnames = [c for c, _ in CHINESE_PATIENTS]

    def patient_rows() -> Any:
        for pid in range(1, patients + 1):
            alphabetic, ideographic = CHINESE_PATIENTS[pid % len(CHINESE_PATIENTS)]
            yield Patient.__table__, dict(  # type: ignore[attr-defined]
                id=pid, patient_id=f"BULK{pid:07d}", issuer="HOSP", family_name=ideographic.split("^")[0],
                given_name=ideographic.split("^")[1], name_alphabetic=f"{surnames[pid % len(surnames)]}{pid}",
                name_ideographic=ideographic, name_phonetic="", name_override=None, sex="MF"[pid % 2],
                birth_date=date(1940, 1, 1) + timedelta(days=pid % 25000), address="", phone="", national_id="",
                merged_into=None, created_at=now, updated_at=now)
            yield PatientIdentifier.__table__, dict(  # type: ignore[attr-defined]
                id=pid, patient=pid, value=f"BULK{pid:07d}", authority="HOSP", type_code="MR", active=True)

    def study_rows() -> Any:
        instance_id = 0
        for sid in range(1, studies + 1):
            pid = (sid - 1) % patients + 1
            patient_id = f"BULK{pid:07d}"
            patient_studies[patient_id] = patient_studies.get(patient_id, 0) + 1
            day = date(2020, 1, 1) + timedelta(days=rng.randrange(2000))
            yield Study.__table__, dict(  # type: ignore[attr-defined]
                id=sid, study_instance_uid=f"{root}.{sid}", patient=pid, order=None, accession_number=f"BA{sid:08d}",
                study_id=str(sid), study_date=day.strftime("%Y%m%d"), study_time=f"{rng.randrange(7, 19):02d}3000",
                description=PROTOCOLS[sid % len(PROTOCOLS)][1], referring_physician="LI^SI=李^四", modalities="CT",
                number_of_series=series_per_study, number_of_instances=per_study, size_bytes=per_study * 526000,
                received={"PatientID": patient_id}, charset="ISO_IR 192", reconciled_by="patient_id",
                created_at=now, updated_at=now)
            for number in range(1, series_per_study + 1):
                series_id = (sid - 1) * series_per_study + number
                yield Series.__table__, dict(  # type: ignore[attr-defined]
                    id=series_id, series_instance_uid=f"{root}.{sid}.{number}", study=sid, modality="CT",
                    series_number=number, description="Bulk series", body_part="CHEST", laterality="",
                    series_date=day.strftime("%Y%m%d"), series_time="083000", station_name="CT01",
                    institution="General Hospital", performing_physician="", operators="", protocol="",
                    calling_ae_title="CT01", number_of_instances=per_series, created_at=now, updated_at=now)
                for index in range(1, per_series + 1):
                    instance_id += 1
                    yield Instance.__table__, dict(  # type: ignore[attr-defined]
                        id=instance_id, sop_instance_uid=f"{root}.{sid}.{number}.{index}", series=series_id,
                        sop_class_uid=CT_IMAGE_STORAGE, instance_number=index,
                        transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN, content_date=day.strftime("%Y%m%d"),
                        content_time="083000", rows=512, columns=512, number_of_frames=None, size=526000,
                        checksum=f"{instance_id:064x}", received_at=now)
                    yield InstanceFile.__table__, dict(  # type: ignore[attr-defined]
                        id=instance_id, instance=instance_id, area="online", key=f"{instance_id:032x}", size=526000,
                        checksum=f"{instance_id:064x}", created_at=now)

    tables = [Patient, PatientIdentifier, Study, Series, Instance, InstanceFile]
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
        # rows are written parents first (the foreign keys PostgreSQL checks at each statement)
        pending: dict[Any, list[dict[str, Any]]] = {model.__table__: [] for model in tables}  # type: ignore[attr-defined]

        def flush() -> None:
            for table, batch in pending.items():
                if batch:
                    conn.execute(insert(table), batch)
                    batch.clear()

        for rows in (patient_rows(), study_rows()):
            for table, row in rows:
                batch = pending[table]
                batch.append(row)
                if len(batch) >= 20000:
                    flush()
        flush()
        if engine.dialect.name == "postgresql":
            for model in tables:
                name = model.__tablename__
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('\"{name}\"', 'id'), "
                                  f"(SELECT max(id) FROM \"{name}\"))"))
            # the planner's statistics, as autovacuum would have them on an archive that grew
            # over months (a table filled seconds before has none: see bench/hl7_throughput.py)
            conn.execute(text("ANALYZE"))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            conn.commit()
    engine.dispose()
    return patient_studies, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# Facts
# --------------------------------------------------------------------------------------------


def filesystem_of(path: Path) -> str:
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return f"{kind} at {best or '?'}"


def fsync_ms(folder: Path, rounds: int = 100) -> float:
    """Median time of a 4 KB write + fsync in ``folder``."""
    path = folder / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for i in range(rounds):
            os.pwrite(fd, os.urandom(4096), (i % 16) * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


def tool_version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not found"
    text = (out.stdout or out.stderr).strip().splitlines()
    return next((line.strip() for line in text if line.strip()), "?")


def print_facts(scratch: Path, args: argparse.Namespace) -> None:
    import pydicom
    import pynetdicom
    import sqlalchemy

    print(f"machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {cpu_model()}, "
          f"{memory_gb():.0f} GB RAM; {platform.platform()}; load average {os.getloadavg()[0]:.2f} before the run")
    print(f"python {platform.python_version()}; pydicom {pydicom.__version__}, pynetdicom {pynetdicom.__version__}, "
          f"SQLAlchemy {sqlalchemy.__version__}; {tool_version(['Orthanc', '--version'])}; DCMTK "
          f"{tool_version(['storescu', '--version']).replace('$dcmtk: storescu ', '').rstrip('$')}")
    database = ("PostgreSQL via --database-url" if args.database_url
                else f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL)")
    print(f"database: {database}; "
          f"scratch on {filesystem_of(scratch)}; 4 KB write+fsync median {fsync_ms(scratch):.2f} ms")
    print(f"code: {git_state()}")


# --------------------------------------------------------------------------------------------
# What-if variants
# --------------------------------------------------------------------------------------------

# Each is applied at start by the bootstrap (nothing in pacs/ changes) and measured on a fresh
# archive with the one-association ingest: an upper bound of what the change it stands for would gain.
VARIANTS = [
    ("nodirsync", "no fsync of the directory after each file's rename (bound for one directory "
                  "fsync per group commit, or directories made durable once)"),
    ("noexisting", "no duplicate SELECT in the index writer (the unique constraint alone decides)"),
    ("nohash", "no SHA-256 read-back of the stored file (bound for hashing while the data arrive)"),
    ("coreindex", "instance and file rows as two Core INSERTs when study and series are known (no ORM)"),
    ("nocounts", "study/series counters not updated per commit (bound for counting at query time or later)"),
    ("fastpoll", "pynetdicom's reactors sleep 0.1 ms instead of 1 ms between polls (bound for an "
                 "event-driven receiver)"),
]
ALL_CHANGES = ",".join(name for name, _ in VARIANTS)


def run_variants(args: argparse.Namespace, corpus: Corpus, scratch: Path, databases: Databases,
                 start: Any, finish: Any) -> None:
    """The one-association ingest as it is and with each change; then four associations on one
    process and on two processes sharing the port. With ``--variant-rounds`` > 1 the whole plan
    repeats (so each change is measured between unchanged runs) and a summary gives medians."""
    plan: list[tuple[str, str, int, int]] = [("as is", "", 1, 1)]
    plan += [(name, name, 1, 1) for name, _ in VARIANTS]
    plan += [("all of the above", ALL_CHANGES, 1, 1), ("as is", "", 1, 1), ("as is", "", 4, 1),
             ("2 processes, SO_REUSEPORT", "reuseport", 4, 2),
             ("2 processes + all of the above", "reuseport," + ALL_CHANGES, 4, 2)]
    print("\nwhat-if variants (fresh archive each; applied at start by the bootstrap; nothing in pacs/ changes):")
    for name, describe in VARIANTS:
        print(f"  {name:11} {describe}")
    print(f"  {'variant':32} {'assoc':>5} {'seconds':>8} {'inst/s':>8} {'ms/inst':>8} {'vs as is':>9} "
          f"{'server CPU':>10}  verified")
    rates: dict[tuple[str, int], list[SendResult]] = {}
    runs = 0
    for round_number in range(args.variant_rounds):
        for name, changes, associations, processes in plan:
            runs += 1
            folder = scratch / f"variant-{runs}"
            url = databases.new(f"v{runs}")
            if processes > 1:
                target: Any = ServerGroup([OurServer(folder, url, changes=changes, tag=f"-{i}")
                                           for i in range(processes)])
            else:
                target = OurServer(folder, url, changes=changes)
            start(target)
            warm_up(target, corpus, scratch / "warmup.log")
            result = send(target, corpus, associations, scratch / f"variant-{runs}.storescu.log",
                          corpus.warmup_count + len(corpus.files), label=name)
            finish(target, result)
            rates.setdefault((name, associations), []).append(result)
            reference = statistics.median(r.rate for r in rates.get(("as is", associations), [result]))
            check = "all indexed and filed" if result.complete else "PROBLEMS: " + "; ".join(result.failures)
            n = max(result.instances, 1)
            print(f"  {name:32} {associations:>5} {result.seconds:>8.2f} {result.rate:>8.1f} "
                  f"{1000 / result.rate if result.rate else 0:>8.2f} {result.rate / reference - 1:>+9.0%} "
                  f"{result.server_cpu / n * 1000:>10.2f}  {check}", flush=True)
    print("  ('vs as is': against the median of the unchanged runs with the same association count so far)")
    if args.variant_rounds > 1:
        print(f"\n  medians over {args.variant_rounds} rounds:")
        print(f"  {'variant':32} {'assoc':>5} {'inst/s':>8} {'ms/inst':>8} {'vs as is':>9} {'server CPU':>10} "
              f"{'vs as is':>9}  {'runs':>4}")
        for (name, associations), results in rates.items():
            base = rates[("as is", associations)]
            rate = statistics.median(r.rate for r in results)
            cpu = statistics.median(r.server_cpu / max(r.instances, 1) * 1000 for r in results)
            base_rate = statistics.median(r.rate for r in base)
            base_cpu = statistics.median(r.server_cpu / max(r.instances, 1) * 1000 for r in base)
            bad = sum(not r.complete for r in results)
            print(f"  {name:32} {associations:>5} {rate:>8.1f} {1000 / rate if rate else 0:>8.2f} "
                  f"{rate / base_rate - 1:>+9.0%} {cpu:>10.2f} {cpu / base_cpu - 1:>+9.0%}  {len(results):>4}"
                  + (f"  {bad} run(s) lost instances" if bad else ""))


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------

WAITING = ("sleep", "acquire", "select", "poll", "wait", "'get' of", "recv_into", "accept")


def report_stages(data: dict[str, Any], result: SendResult) -> None:
    n = max(result.instances, 1)
    timers: dict[str, list[float]] = data["timers"]
    threads: list[list[Any]] = data["threads"]
    sizes = {int(k): v for k, v in data["batch_sizes"].items()}

    def t(name: str) -> tuple[float, float, float]:
        calls, wall, cpu = timers.get(name, [0, 0.0, 0.0])
        return calls / n, wall / n * 1000, cpu / n * 1000

    def line(label: str, name: str | None = None, values: tuple[float, float, float] | None = None,
              depth: int = 0) -> None:
        calls, wall, cpu = values if values is not None else t(name or "")
        print(f"    {'  ' * depth + label:64} {calls:>7.2f} {wall:>8.3f} {cpu:>8.3f}")

    by_kind: dict[str, list[float]] = {}
    for kind, wall, cpu in threads:
        entry = by_kind.setdefault(kind, [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += wall
        entry[2] += cpu
    per = 1000 / result.rate if result.rate else 0.0
    print(f"  {result.instances} instances at {result.rate:.1f} inst/s = {per:.2f} ms per instance (wall); server CPU "
          f"{result.server_cpu / n * 1000:.2f} ms/inst ({result.server_cpu / result.seconds:.2f} cores); "
          f"storescu CPU {result.client_cpu / n * 1000:.2f} ms/inst")
    print(f"    {'(per instance)':64} {'calls':>7} {'wall ms':>8} {'CPU ms':>8}")
    for kind in ("Association", "DULServiceProvider"):
        count, wall, cpu = by_kind.get(kind, [0, 0.0, 0.0])
        label = {"Association": "Association thread (DIMSE, runs the C-STORE handler)",
                 "DULServiceProvider": "DUL thread (socket reads, PDU decode, write to temp file)"}[kind]
        line(label, values=(count / n, wall / n * 1000, cpu / n * 1000))
        if kind == "Association":
            line("handle_store", "handle_store", depth=1)
            line("Archive.store", "Archive.store", depth=2)
            line("part10.scan (the header of a plain image, from the head in memory)", "pacs.archive.part10.scan",
                 depth=3)
            line("read_header (pydicom dcmread, defer_size=1024; other objects)", "pacs.archive.store.read_header",
                 depth=3)
            line("check_identity", "pacs.archive.store.check_identity", depth=3)
            line("_short_of_space", "Archive._short_of_space", depth=3)
            line("_held (duplicate check: index and objects not yet indexed)", "Archive._held", depth=3)
            line("FilesystemArea.stage (answered once durable: rename, folder fsync)", "FilesystemArea.stage",
                 depth=3)
            line("FilesystemArea.put_file (answered once indexed)", "FilesystemArea.put_file", depth=3)
            fsyncs = timers.get("os.fsync", [0, 0.0, 0.0])
            dirs = timers.get("pacs.archive.storage._fsync_dir", [0, 0.0, 0.0])
            line("os.fsync (file and directory)", values=(fsyncs[0] / n, fsyncs[1] / n * 1000, fsyncs[2] / n * 1000),
                 depth=4)
            line("_fsync_dir (open + fsync + close)", values=(dirs[0] / n, dirs[1] / n * 1000, dirs[2] / n * 1000),
                 depth=4)
            line("os.replace", "os.replace", depth=4)
            line("sha256_file (reads the file back)", "pacs.archive.storage.sha256_file", depth=4)
            parts = ["pacs.archive.part10.scan", "pacs.archive.store.read_header", "pacs.archive.store.check_identity",
                     "Archive._short_of_space", "Archive._held", "FilesystemArea.stage", "FilesystemArea.put_file"]
            _, store_wall, store_cpu = t("Archive.store")
            rest_wall = store_wall - sum(t(p)[1] for p in parts)
            rest_cpu = store_cpu - sum(t(p)[2] for p in parts)
            line("(rest: hand to the index writer; when answered once indexed, wait for its commit)",
                 values=(0, rest_wall, rest_cpu), depth=3)
            _, handler_wall, handler_cpu = t("handle_store")
            line("(outside the handler: reactor polling, waiting for the next request, C-STORE-RSP)",
                 values=(0, wall / n * 1000 - handler_wall, cpu / n * 1000 - handler_cpu), depth=1)
        else:
            line("_read_pdu_data (one PDU: recv + decode + dispatch)", "DULServiceProvider._read_pdu_data", depth=1)
            line("AssociationSocket.recv (socket reads into one buffer)", "AssociationSocket.recv", depth=2)
            line("DIMSEMessage.decode_msg (append PDV to the temp file)", "DIMSEMessage.decode_msg", depth=1)
            line("AssociationSocket.send (C-STORE-RSP)", "AssociationSocket.send", depth=1)
    line("index writer: _index_batch (group commit)", "_index_batch")
    line("FilesystemArea.place (file a staged object under ab/cd)", "FilesystemArea.place", depth=1)
    line("_duplicate (SELECT by SOP Instance UID)", "Archive._duplicate", depth=1)
    line("_index (rows of one instance)", "Archive._index", depth=1)
    line("_apply_counts (study/series counters)", "Archive._apply_counts", depth=1)
    line("Session.commit (flush + COMMIT; SQLite WAL fsync)", "Session.commit", depth=1)
    batches = sum(sizes.values())
    mean = sum(k * v for k, v in sizes.items()) / batches if batches else 0
    print(f"  index writer: {batches} batches, mean {mean:.1f} instances, largest {max(sizes, default=0)}")
    others = {k: v for k, v in by_kind.items() if k not in ("Association", "DULServiceProvider")}
    for kind, (count, wall, cpu) in others.items():
        print(f"  other threads started during the run: {int(count)} x {kind}, CPU {cpu / n * 1000:.3f} ms/inst")


def report_cprofile(prefix: str, result: SendResult, top: int) -> None:
    import pstats

    n = max(result.instances, 1)
    print(f"  {result.instances} instances at {result.rate:.1f} inst/s under cProfile (inflates Python code; "
          f"compare shares, not times); 'own' and 'cum' are wall ms per instance; waiting marked (w)")
    for kind, title in (("Association", "Association threads (DIMSE; the C-STORE handler and store())"),
                        ("DULServiceProvider", "DUL threads (socket reads, PDU decode, temp-file writes)"),
                        ("index-writer", "index writer (group commits)")):
        path = Path(f"{prefix}{kind}.prof")
        if not path.exists():
            print(f"\n  {title}: no profile")
            continue
        stats = pstats.Stats(str(path))
        for key, what in (("tottime", "own"), ("cumulative", "cumulative")):
            print(f"\n  {title}, top {top} by {what} time:")
            column = 2 if key == "tottime" else 3
            rows = sorted(stats.stats.items(), key=lambda kv: kv[1][column], reverse=True)[:top]  # type: ignore[attr-defined]
            print(f"    {'calls/inst':>10} {'own ms':>8} {'cum ms':>8}  function")
            for (filename, line, function), (_cc, calls, own, cumulative, _callers) in rows:
                where = function if filename == "~" else f"{short(filename)}:{line}({function})"
                waiting = "(w) " if filename == "~" and any(w in function for w in WAITING) else ""
                print(f"    {calls / n:>10.2f} {own / n * 1000:>8.3f} {cumulative / n * 1000:>8.3f}  {waiting}{where}")


def short(filename: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    if "/pacs/" in filename:
        return "pacs/" + filename.split("/pacs/", 1)[1]
    return filename


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, help="instances in the corpus (default 1500; --quick 300)")
    parser.add_argument("--per-study", type=int, default=150, help="instances per study (default 150)")
    parser.add_argument("--associations", default="1,4",
                        help="comma-separated association counts, one ingest each per target (default 1,4)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="repeat the ours/Orthanc ingest comparison this many times; the ratios use medians "
                             "(default 3: a single round moves by a fifth on a 2-core machine)")
    parser.add_argument("--queries", type=int, help="C-FIND queries per measurement (default 200; --quick 100)")
    parser.add_argument("--index-instances", type=int,
                        help="instance rows written directly into the index for the large-archive figures "
                             "(default 1,000,000; --quick 100,000; 0 skips them)")
    parser.add_argument("--index-per-study", type=int, default=100, help="instances per generated study (default 100)")
    parser.add_argument("--quick", action="store_true",
                        help="300 instances, a 100,000-row index and 100 queries (a couple of minutes)")
    parser.add_argument("--no-orthanc", action="store_true", help="measure only this archive")
    parser.add_argument("--against", metavar="REV",
                        help="also our archive at this git revision (a worktree), in every round: an A/B of a change")
    parser.add_argument("--way", dest="ways", action="append", type=parse_way,
                        help="how rows are sent, repeatable: bench, issue, or a spec such as "
                             "dealt+warmup+pause=0+delete+config=3 (see Way; default: bench and issue)")
    parser.add_argument("--dicom-processes", type=int, default=1,
                        help="our [dicom] processes: processes serving the DICOM port (default 1, the server's "
                             "own default; N = the main process and N - 1 receivers)")
    parser.add_argument("--profile", nargs="?", const="stages", choices=["stages", "cprofile"],
                        help="one more one-association ingest with our server instrumented: stages (timers on "
                             "store()'s steps, fsync, index writer, PDU reading; default) or cprofile (every "
                             "function of every thread of the association and of the index writer)")
    parser.add_argument("--profile-associations", type=int, default=1,
                        help="associations of the profiled ingest, the corpus split as --way bench does (default 1)")
    parser.add_argument("--profile-only", action="store_true", help="run only the profiled ingest (and --variants)")
    parser.add_argument("--variants", action="store_true",
                        help="also measure what-if changes applied at start (see VARIANTS in the source): "
                             "one-association ingest with each, and four associations on two processes "
                             "sharing the port with SO_REUSEPORT")
    parser.add_argument("--variant-rounds", type=int, default=1,
                        help="repeat the --variants plan this many times and summarise with medians (default 1)")
    parser.add_argument("--top", type=int, default=25, help="functions per cProfile table (default 25)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (different UIDs and patients)")
    parser.add_argument("--cache", type=Path, help="corpus cache folder (default: <temp>/pacs-bench-ingest)")
    parser.add_argument("--tmp", type=Path, help="where the scratch folders go (default: the system temp folder)")
    parser.add_argument("--database-url", default=os.environ.get("PACS_DATABASE_URL"),
                        help="PostgreSQL server on which to create (and drop) a scratch database per archive, "
                             "e.g. postgresql://postgres@127.0.0.1:5432/postgres (default: SQLite in the data folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (and databases)")
    args = parser.parse_args(argv)
    for name, default, quick in (("instances", 1500, 300), ("index_instances", 1_000_000, 100_000),
                                 ("queries", 200, 100)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
    if args.profile_only and not args.profile and not args.variants:
        args.profile = "stages"
    args.association_counts = [int(c) for c in args.associations.split(",") if c.strip()]
    args.ways = args.ways or [WAYS["bench"], WAYS["issue"]]
    return args


def reproduce_command(args: argparse.Namespace, argv: list[str] | None) -> str:
    given = list(sys.argv[1:] if argv is None else argv)
    return f"cd {shlex.quote(str(ROOT))} && .venv/bin/python bench/ingest.py {shlex.join(given)}".rstrip()


class Databases:
    """Scratch PostgreSQL databases, one per archive started (none with SQLite)."""

    def __init__(self, admin_url: str | None) -> None:
        self.admin = admin_url
        self.created: list[str] = []

    def new(self, name: str) -> str | None:
        if not self.admin:
            return None
        import psycopg

        database = f"pacs_ingest_{os.getpid()}_{name}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        self.created.append(database)
        return self.admin.rpartition("/")[0] + "/" + database

    def drop(self) -> None:
        if not self.admin:
            return
        import psycopg

        for database in self.created:
            try:
                with psycopg.connect(self.admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            except Exception as exc:  # report and go on: the figures are already printed
                print(f"could not drop database {database}: {exc}", file=sys.stderr)


def median_rate(results: list[SendResult], target: str, associations: int, way: str = "bench",
                config: str | None = None) -> tuple[float, float] | None:
    """Median inst/s and MB/s of the unlabelled runs of ``target`` at ``associations`` sent ``way``
    (ours: with ``config`` if given)."""
    rows = rows_of(results, target, associations, way, config)
    if not rows:
        return None
    return statistics.median(r.rate for r in rows), statistics.median(r.mb_per_s for r in rows)


def rows_of(results: list[SendResult], target: str, associations: int, way: str,
            config: str | None = None) -> list[SendResult]:
    return [r for r in results if r.target == target and r.associations == associations and not r.label
            and r.rate and r.way == way and (config is None or r.config == config)]


def print_ratios(results: list[SendResult], args: argparse.Namespace) -> None:
    """Ours over Orthanc per way, association count and configuration: the median and each round
    (ours in round r over Orthanc in round r), and the issue's goal lines for the issue way."""
    print("\nours / Orthanc" + (f" (medians of {args.rounds} rounds; each round's ratio after)" if args.rounds > 1 else "")
          + ":")
    print(f"  {'way':28} {'assoc':>5} {'ours config':16} {'ours inst/s':>11} {'Orthanc':>8} {'ratio':>6}  rounds")
    for way in args.ways:
        for associations in args.association_counts:
            theirs = rows_of(results, "orthanc", associations, way.name)
            configs = list(dict.fromkeys(r.config for r in rows_of(results, "ours", associations, way.name)))
            for config in configs:
                ours = rows_of(results, "ours", associations, way.name, config)
                if not ours or not theirs:
                    continue
                o, t = statistics.median(r.rate for r in ours), statistics.median(r.rate for r in theirs)
                rounds = [a.rate / b.rate for a, b in zip(ours, theirs, strict=False)]
                line = (f"  {way.name:28} {associations:>5} {config:16} {o:>11.1f} {t:>8.1f} {o / t:>6.2f}  "
                        + ", ".join(f"{r:.2f}" for r in rounds))
                if way.name == "issue":
                    goal = ISSUE_GOALS.get(associations)
                    if goal:
                        median_goal, every_goal = goal
                        met = o / t >= median_goal and all(r >= every_goal for r in rounds)
                        line += (f"  (issue 25: median >= {median_goal}" + (f", every round >= {every_goal}"
                                 if every_goal else "") + f" -> {'met' if met else 'not met'})")
                print(line)


def print_against(results: list[SendResult], args: argparse.Namespace, other: str) -> None:
    """This checkout over the ``--against`` revision, per way and association count: the
    median rate and server CPU per instance of each, and each round's ratio."""
    print(f"\nours / {other}" + (f" (medians of {args.rounds} rounds; each round's ratio after)"
                                  if args.rounds > 1 else "") + ":")
    print(f"  {'way':28} {'assoc':>5} {'ours inst/s':>11} {'CPU ms':>7} {other + ' inst/s':>18} {'CPU ms':>7} "
          f"{'ratio':>6}  rounds")
    for way in args.ways:
        for associations in args.association_counts:
            ours, theirs = rows_of(results, "ours", associations, way.name), rows_of(results, other, associations,
                                                                                      way.name)
            if not ours or not theirs:
                continue
            o, t = statistics.median(r.rate for r in ours), statistics.median(r.rate for r in theirs)
            cpu_o = statistics.median(r.server_cpu / max(r.instances, 1) * 1000 for r in ours)
            cpu_t = statistics.median(r.server_cpu / max(r.instances, 1) * 1000 for r in theirs)
            rounds = ", ".join(f"{a.rate / b.rate:.2f}" for a, b in zip(ours, theirs, strict=False))
            print(f"  {way.name:28} {associations:>5} {o:>11.1f} {cpu_o:>7.2f} {t:>18.1f} {cpu_t:>7.2f} "
                  f"{o / t:>6.2f}  {rounds}")


def print_send(result: SendResult) -> None:
    n = max(result.instances, 1)
    cores = result.server_cpu / result.seconds if result.seconds else 0.0
    check = "all indexed and filed" if result.complete else "PROBLEMS: " + "; ".join(result.failures)
    name = result.target + (f" {result.config}" if result.config else "") + (f" {result.label}" if result.label else "")
    ends = "/".join(f"{end:.1f}" for end in result.finishes) if len(result.finishes) > 1 else ""
    print(f"  {result.way[:14]:14} {name:26} {result.associations:>5} "
          f"{result.instances:>9} {result.seconds:>8.2f} {result.rate:>8.1f} {result.mb_per_s:>7.1f} "
          f"{result.server_cpu / n * 1000:>10.2f} {cores:>6.2f} {result.switches / n:>8.1f} "
          f"{result.client_cpu / n * 1000:>9.2f}  {check}"
          + (f"; ends {ends} s" if ends else ""), flush=True)


def print_send_header() -> None:
    print(f"  {'way':14} {'target':26} {'assoc':>5} {'instances':>9} {'seconds':>8} {'inst/s':>8} {'MB/s':>7} "
          f"{'server CPU':>10} {'server':>6} {'switches':>8} {'storescu':>9}  verified")
    print(f"  {'':14} {'':26} {'':>5} {'':>9} {'':>8} {'':>8} {'':>7} {'ms/inst':>10} {'cores':>6} {'/inst':>8} "
          f"{'ms/inst':>9}")


def print_find(result: FindResult) -> None:
    wrong = f"; {len(result.wrong)} WRONG, e.g. {result.wrong[0]}" if result.wrong else "; all match counts right"
    print(f"  {result.label:40} {len(result.latencies):>6} {result.pct(50):>8.2f} {result.pct(95):>8.2f} "
          f"{result.pct(99):>8.2f} {max(result.latencies, default=0) * 1000:>8.2f}{wrong}", flush=True)


def print_find_header() -> None:
    print(f"  {'archive':40} {'queries':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="pacs-ingest-bench-", dir=args.tmp or tempfile.gettempdir()))
    cache = args.cache or Path(tempfile.gettempdir()) / "pacs-bench-ingest"
    databases = Databases(args.database_url)
    running: list[Any] = []
    kept: list[Path] = []
    failed = False
    print(f"reproduce: {reproduce_command(args, argv)}")
    against: tuple[Path, str] | None = None
    try:
        if args.against:
            from cfind import worktree  # (bench/cfind.py)

            against = worktree(args.against, scratch)
            print(f"against: {args.against} = {against[1]}, from a worktree in {against[0]}")
        print_facts(scratch, args)
        started = time.perf_counter()
        corpus = make_corpus(cache / f"v{CORPUS_VERSION}-{args.instances}x{args.per_study}-seed{args.seed}",
                             args.instances, args.per_study, args.seed)
        print(f"corpus: {len(corpus.files)} instances in {len(corpus.studies)} studies "
              f"({len(corpus.patient_studies)} patients), {corpus.bytes / 1e6:.0f} MB, 512x512 16-bit CT, explicit "
              f"VR LE, half ISO_IR 192 with Chinese names; {corpus.folder} "
              f"(ready in {time.perf_counter() - started:.1f} s; page cache warmed in "
              f"{warm_page_cache(corpus.files):.1f} s); each archive gets a {corpus.warmup_count}-instance "
              f"warm-up study first")
        print("every server and storescu runs with TCP_NODELAY=1; storescu -nh +sd +sp '*.dcm' (+r with dealt "
              "patient folders), one process per association; server CPU counts every process serving the DICOM port")

        def start(target: Any) -> Any:
            running.append(target)
            target.start()
            return target

        def finish(target: Any, result: SendResult | None = None, delete: bool = False) -> None:
            target.stop()
            running.remove(target)
            folder = getattr(target, "data_dir", None) or target.folder
            if result is not None and not result.complete:
                kept.append(folder)
                print(f"    (kept {folder} and its log for a look)")
            elif delete and not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
            # Otherwise it goes with the scratch folder at the end of the run, not now: on a file
            # system without a journal, ext4 skips freed inodes for a minute or more when it
            # allocates new ones (find_inode_bit, recently_deleted), which slowed whichever
            # target came next.

        results: list[SendResult] = []
        finds: dict[str, FindResult] = {}
        if not args.profile_only:
            print("\ningest (fresh archive per row; the target measured first alternates by round; rates over the "
                  "corpus, warm-up excluded; 'ends' are the seconds at which each storescu exited):")
            for way in args.ways:
                configs = ", ".join("default" if c is None else str(c) for c in way.configs or (args.dicom_processes,))
                print(f"  way {way.name}: {'patient folders dealt round-robin, storescu +r' if way.dealt else 'contiguous parts'}"
                      f"; {'a warm-up study first' if way.warm_up else 'no warm-up'}; {way.pause:g} s between rows; "
                      f"archives deleted {'after each row' if way.delete else 'at the end of the run'}; "
                      f"ours' [dicom] processes: {configs}")
            print_send_header()
            orthanc_config_shown = False
            first_done = False
            plan = [(r, a, w) for r in range(args.rounds) for a in args.association_counts for w in args.ways]
            for round_number, associations, way in plan:

                def measure(target: Any, name: str, key: str) -> None:
                    nonlocal first_done
                    expected = len(corpus.files)
                    if way.warm_up:
                        warm_up(target, corpus, scratch / "warmup.log")
                        expected += corpus.warmup_count
                    result = send(target, corpus, associations, scratch / f"{key}-{associations}.storescu.log",
                                  expected, way=way)
                    results.append(result)
                    print_send(result)
                    if not first_done and key in ("ours", "orthanc") and f"{key}-empty" not in finds:
                        label = f"{name}, {len(corpus.studies) + way.warm_up} studies"
                        finds[f"{key}-empty"] = c_find_latency(target, corpus.patient_studies, args.queries,
                                                               args.seed, label)
                        finds[f"{key}-empty-findscu"] = c_find_findscu(target, corpus.patient_studies, args.queries,
                                                                       args.seed, label + ", findscu", scratch)
                    finish(target, result, delete=way.delete)
                    if way.pause:
                        time.sleep(way.pause)

                def run_ours() -> None:
                    # this checkout and, with --against, the other revision, the first changing by round
                    sources = [(ROOT, "ours"), *([(against[0], f"ours@{against[1]}")] if against else [])]
                    for source, name in sources if round_number % 2 == 0 else sources[::-1]:
                        for config in way.configs or (args.dicom_processes,):
                            tag = (f"{name}-{associations}-{round_number}-{way.name}-{config}"
                                   .replace("+", "_").replace("=", "").replace("@", "-"))
                            server = OurServer(scratch / tag, databases.new(f"r{len(results)}"), processes=config,
                                               source=source, name=name)
                            measure(start(server), name, "ours")

                def run_orthanc() -> None:
                    nonlocal orthanc_config_shown
                    tag = f"{associations}-{round_number}-{way.name}".replace("+", "_").replace("=", "")
                    orthanc = start(Orthanc(scratch / f"orthanc-{tag}"))
                    if not orthanc_config_shown:
                        shown = {k: v for k, v in orthanc.config.items() if "Directory" not in k}
                        print(f"  (Orthanc configuration: {json.dumps(shown)}; "
                              f"other settings Debian's defaults, e.g. MaximumPduLength 16384, SyncStorageArea true)")
                        orthanc_config_shown = True
                    measure(orthanc, "Orthanc", "orthanc")

                # Who goes first alternates from round to round: whatever one target leaves behind
                # (dirty pages being written back, a warmer cache) falls on each in turn.
                order = [run_ours] if args.no_orthanc else [run_ours, run_orthanc]
                for run in order if round_number % 2 == 0 else order[::-1]:
                    run()
                first_done = True

            if not args.no_orthanc:
                print_ratios(results, args)
            if against:
                print_against(results, args, f"ours@{against[1]}")

            if args.index_instances:
                studies = args.index_instances // args.index_per_study
                print(f"\nlarge index: {args.index_instances:,} instance rows ({studies:,} "
                      f"studies x {args.index_per_study}, 2 series each) written with SQLAlchemy Core into a fresh "
                      f"archive's database ...", flush=True)
                big = OurServer(scratch / "ours-1m", databases.new("big"), processes=args.dicom_processes)
                big.data_dir.mkdir(parents=True)
                patients = max(1, args.index_instances // args.index_per_study // 2)
                bulk_ids, bulk_seconds = bulk_index(big.url, instances=args.index_instances,
                                                    per_study=args.index_per_study, patients=patients)
                rows = big.count()
                print(f"  {rows:,} instance rows, {patients:,} patients (2 studies each) in {bulk_seconds:.1f} s")
                start(big)
                expected_ids = {**bulk_ids, **corpus.patient_studies}
                finds["ours-big-before"] = c_find_latency(big, bulk_ids, args.queries, args.seed + 1,
                                                          f"ours, {rows:,} instances")
                finds["ours-big-before-findscu"] = c_find_findscu(big, bulk_ids, args.queries, args.seed + 1,
                                                                  f"ours, {rows:,} instances, findscu", scratch)
                warm_up(big, corpus, scratch / "warmup.log")
                result = send(big, corpus, 1, scratch / "ours-1m.storescu.log",
                              rows + corpus.warmup_count + len(corpus.files), label=f"@{rows / 1e6:g}M",
                              expected_files=corpus.warmup_count + len(corpus.files))
                results.append(result)
                finds["ours-big-after"] = c_find_latency(big, expected_ids, args.queries, args.seed + 2,
                                                         f"ours, {result.arrived:,} instances, after ingest")
                finish(big, result)
                print_send_header()
                print_send(result)

            print("\nC-FIND, Study Root, STUDY level by PatientID, one association reused, pynetdicom SCU "
                  "and DCMTK findscu (timed by its own log clock; 10 warm-up queries not counted):")
            print_find_header()
            for found in finds.values():
                print_find(found)

        profiled: SendResult | None = None
        if args.profile:
            print(f"\nprofiled ingest ({args.profile}), {args.profile_associations} association(s), fresh archive:",
                  flush=True)
            server = start(OurServer(scratch / "ours-profiled", databases.new("prof"), profile=args.profile))
            print(f"  {shlex.join(server.command_line)}")
            warm_up(server, corpus, scratch / "warmup.log")
            time.sleep(0.5)  # the warm-up association's threads end
            os.kill(server.pid, signal.SIGUSR1)
            profiled = send(server, corpus, args.profile_associations, scratch / "ours-profiled.storescu.log",
                            corpus.warmup_count + len(corpus.files), label="profiled")
            prefix = server.profile_prefix
            server.stop()
            running.remove(server)
            print_send_header()
            print_send(profiled)
            data_path = Path(prefix + "json")
            if not data_path.exists():
                print(f"  the server wrote no profile:\n{tail(server.log)}")
            elif args.profile == "stages":
                report_stages(json.loads(data_path.read_text()), profiled)
            else:
                report_cprofile(prefix, profiled, args.top)
            if not args.keep:
                shutil.rmtree(server.data_dir, ignore_errors=True)

        if args.variants:
            run_variants(args, corpus, scratch, databases, start, finish)

        all_results = results + ([profiled] if profiled else [])
        failed = any(not r.complete for r in all_results) or any(f.wrong for f in finds.values())
        if not args.profile_only:
            print("\ngoals:")
            for associations in args.association_counts:
                o, t = median_rate(results, "ours", associations), median_rate(results, "orthanc", associations)
                if o and t:
                    ratio = o[0] / t[0]
                    print(f"  ingest >= Orthanc's, {associations} association(s): ratio {ratio:.2f} -> "
                          f"{'met' if ratio >= GOAL_RATIO else 'not met'}")
            empty = median_rate(results, "ours", 1)
            big_result = next((r for r in results if r.label.startswith("@")), None)
            if empty and big_result:
                share = big_result.rate / empty[0]
                print(f"  ingest at {big_result.label[1:]} >= {GOAL_SCALE:.0%} of the empty archive's: "
                      f"{big_result.rate:.1f} vs {empty[0]:.1f} inst/s = {share:.0%} -> "
                      f"{'met' if share >= GOAL_SCALE else 'not met'}")
            for client in ("", "-findscu"):
                e, b = finds.get("ours-empty" + client), finds.get("ours-big-before" + client)
                if e and b:
                    share = b.pct(50) / e.pct(50) if e.pct(50) else 0.0
                    print(f"  C-FIND p50 at the large index <= {2 - GOAL_SCALE:.0%} of the empty archive's"
                          f"{', findscu' if client else ''}: {b.pct(50):.2f} vs {e.pct(50):.2f} ms = {share:.0%} "
                          f"-> {'met' if share <= 2 - GOAL_SCALE else 'not met'}")
            for key in ("ours-empty", "ours-big-before", "ours-empty-findscu", "ours-big-before-findscu"):
                if key in finds:
                    p50 = finds[key].pct(50)
                    print(f"  C-FIND p50 < {GOAL_FIND_P50_MS:.0f} ms, {finds[key].label}: {p50:.2f} ms -> "
                          f"{'met' if p50 < GOAL_FIND_P50_MS else 'not met'}")
        print(f"\nload average {os.getloadavg()[0]:.2f} after the run (other work on a 2-core machine moves "
              f"the figures by 10-20 %)")
        if failed:
            print("SOME INSTANCES DID NOT ARRIVE OR SOME QUERY ANSWERED WRONGLY (see above)")
        return 1 if failed else 0
    finally:
        for target in list(running):
            target.stop()
        databases.drop() if not args.keep else None
        if against:
            subprocess.run(["git", "worktree", "remove", "--force", str(against[0])], cwd=ROOT, capture_output=True,
                           check=False)
        if args.keep or kept:
            print(f"scratch folder kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Hostile input at length on the DICOM and MLLP ports: ``--inputs`` (default 10,000) seeded
inputs of each kind sent to a real ``pacs serve`` process, the same inputs the suite sends a few
dozen of (``tests/archive/test_hostile_dicom.py``, ``tests/integration/test_hl7_mutations.py``;
``bench/hostile_http.py`` does the HTTP port):

- ``store``: C-STORE of damaged data sets, as raw PDUs (a VR changed or unknown, a value
  replaced, an element removed, twice or out of order, a length that lies, bytes flipped, a
  data set cut short);
- ``find``: study- and patient-root C-FIND identifiers with odd values, VRs, levels and
  character sets;
- ``worklist``: the same for MWL C-FIND, Scheduled Procedure Step Sequence included;
- ``retrieve``: C-MOVE and C-GET identifiers likewise;
- ``commitment``: storage commitment N-ACTIONs with damaged transactions and references;
- ``mllp``: HL7 v2 messages with delimiters, segment breaks, bytes, character sets and fields
  damaged.

Every answer must be one the service defines (a DIMSE status of its service, an ACK with MSA-1
AA, AE or AR) on a connection that goes on serving; every object answered Success must be
indexed, found by QIDO-RS and retrieved by WADO-RS (with a bearer token of ``studies.read``
from ``pacs tokens create``: the server asks every HTTP request who it comes from); every
message answered AA or AE must be in the message store. Then the server's log is read for tracebacks and the DICOM port is asked for
a C-ECHO. The exit status is 1 when anything of that was found.

Run from the project root::

    .venv/bin/python bench/hostile.py                      # SQLite, 10,000 inputs of each kind
    .venv/bin/python bench/hostile.py --inputs 2000 --kinds store,mllp --seed 7
    .venv/bin/python bench/hostile.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import shlex
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx
from common import admin_env, bearer, cpu_model, create_token, git_state, load_average
from hostile_http import log_findings
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import create_engine, text

from tests.archive.mutate import commitment_request, mwl_identifier, qr_identifier, store_mutations
from tests.archive.raw import RawStorer, plain_ct
from tests.archive.test_hostile_dicom import (
    ACTION_STATUSES,
    FIND_STATUSES,
    RETRIEVE_STATUSES,
    STORE_STATUSES,
    failure,
)
from tests.helpers import MLLPClient
from tests.integration.test_hl7_mutations import MESSAGES, msa_code, mutate
from tests.process import ServeProcess

DEFAULT_INPUTS = 10_000  # per kind
KINDS = ("store", "find", "worklist", "retrieve", "commitment", "mllp")
PER_ASSOCIATION = 500  # inputs sent over one association before the next is opened
SHOWN_FAULTS = 10
WELL_KNOWN_COMMITMENT = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.5


class Tally:
    """What one kind's inputs got: answers by code, faults, and what was acknowledged."""

    def __init__(self) -> None:
        self.answers: Counter[str] = Counter()
        self.faults: list[str] = []
        self.acknowledged = 0
        self.lost = 0


def associations(port: int, contexts: list[str], inputs: int, handlers: list | None = None) -> Iterator:
    """Associations of :data:`PER_ASSOCIATION` inputs each, over explicit VR little endian."""
    for _ in range(0, inputs, PER_ASSOCIATION):
        ae = AE(ae_title="HOSTILE")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        for context in contexts:
            ae.add_requested_context(context, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title="PACS", evt_handlers=handlers or [])
        if assoc.is_established:  # without it each request waits ~40 ms on Nagle's algorithm
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield assoc
        if assoc.is_established:
            assoc.release()


def run_store(server: ServeProcess, rng: random.Random, inputs: int, work: Path, auth: dict[str, str]) -> Tally:
    tally = Tally()
    accepted: dict[str, bytes] = {}
    number = 0
    while number < inputs:
        scu = RawStorer(server.dicom_port, [CTImageStorage], calling="HOSTILE")
        try:
            for _ in range(min(PER_ASSOCIATION, inputs - number)):
                ds, data = plain_ct(work)
                label, damaged = store_mutations(rng, data)
                number += 1
                try:
                    status = int(scu.store(CTImageStorage, ds.SOPInstanceUID, damaged).Status)
                except AssertionError:  # no answer: the association went, a fault; go on with a new one
                    tally.answers["none"] += 1
                    tally.faults.append(f"case {number - 1} ({label}): no C-STORE response")
                    break
                tally.answers[f"0x{status:04X}"] += 1
                if status not in STORE_STATUSES and not failure(status):
                    tally.faults.append(f"case {number} ({label}): 0x{status:04X}")
                if status == 0:
                    accepted[ds.SOPInstanceUID] = damaged
        finally:
            if scu.assoc.is_established:
                scu.release()
            for path in work.glob("*.dcm"):
                path.unlink()
    tally.acknowledged = len(accepted)
    with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}/dicomweb", timeout=60, headers=auth) as http:
        for uid, sent in accepted.items():
            found = http.get("/instances", params={"SOPInstanceUID": uid})
            if found.status_code != 200 or len(found.json()) != 1:
                tally.lost += 1
                tally.faults.append(f"{uid} answered Success, not found by QIDO-RS ({found.status_code})")
                continue
            study, series = found.json()[0]["0020000D"]["Value"][0], found.json()[0]["0020000E"]["Value"][0]
            whole = http.get(f"/studies/{study}/series/{series}/instances/{uid}",
                             headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
            if whole.status_code != 200:
                tally.lost += 1
                tally.faults.append(f"{uid} answered Success, WADO-RS {whole.status_code}")
    return tally


def run_queries(server: ServeProcess, rng: random.Random, inputs: int, models: list[str],
                make: Callable[[random.Random], tuple[str, Dataset]], allowed: set[int]) -> Tally:
    tally = Tally()
    number = 0
    for assoc in associations(server.dicom_port, models, inputs):
        for _ in range(min(PER_ASSOCIATION, inputs - number)):
            model = models[number % len(models)]
            label, identifier = make(rng)
            if not assoc.is_established:
                tally.faults.append(f"case {number} ({label}): the association was lost")
                break
            final = None
            try:
                if model == StudyRootQueryRetrieveInformationModelMove:
                    responses = assoc.send_c_move(identifier, "HOSTILE", model)
                elif model == StudyRootQueryRetrieveInformationModelGet:
                    responses = assoc.send_c_get(identifier, model)
                else:
                    responses = assoc.send_c_find(identifier, model)
                for status, _ in responses:
                    final = int(status.Status) if status is not None and "Status" in status else None
            except ValueError:  # pynetdicom could not encode what the generator made: nothing was sent
                tally.answers["not sent"] += 1
                number += 1
                continue
            tally.answers["none" if final is None else f"0x{final:04X}"] += 1
            if final is None or (final not in allowed and not failure(final)):
                tally.faults.append(f"case {number} ({label}): {'no answer' if final is None else hex(final)}")
            number += 1
    return tally


def run_commitment(server: ServeProcess, rng: random.Random, inputs: int, work: Path) -> Tally:
    tally = Tally()
    held = []
    with RawStorer(server.dicom_port, [CTImageStorage], calling="HOSTILE") as scu:
        for _ in range(5):
            ds, data = plain_ct(work)
            if scu.store(CTImageStorage, ds.SOPInstanceUID, data).Status == 0:
                held.append((CTImageStorage, ds.SOPInstanceUID))
    reports: list[object] = []
    handlers = [(evt.EVT_N_EVENT_REPORT, lambda event: (reports.append(event), (0, None))[1])]
    number = 0
    for assoc in associations(server.dicom_port, [StorageCommitmentPushModel], inputs, handlers):
        for _ in range(min(PER_ASSOCIATION, inputs - number)):
            label, info = commitment_request(rng, held)
            if not assoc.is_established:
                tally.faults.append(f"case {number} ({label}): the association was lost")
                break
            status, _ = assoc.send_n_action(info if len(info) else None, 1, StorageCommitmentPushModel,
                                            WELL_KNOWN_COMMITMENT)
            code = int(status.Status) if status is not None and "Status" in status else None
            if code == 0:
                await_report(reports, len(reports))
            tally.answers["none" if code is None else f"0x{code:04X}"] += 1
            if code not in ACTION_STATUSES:
                tally.faults.append(f"case {number} ({label}): {'no answer' if code is None else hex(code)}")
            number += 1
    return tally


def await_report(reports: list[object], seen: int, timeout: float = 10.0) -> None:
    """Wait for the report of a commitment request just answered Success (PS3.4 J.3.3), sent on
    this association, before the next request: pynetdicom's requestor can stall when its own
    request and the peer's N-EVENT-REPORT cross."""
    deadline = time.monotonic() + timeout
    while len(reports) <= seen and time.monotonic() < deadline:
        time.sleep(0.001)


def run_mllp(server: ServeProcess, rng: random.Random, inputs: int, database_url: str) -> Tally:
    tally = Tally()
    answered: list[bytes] = []
    number = 0
    while number < inputs:
        with MLLPClient(server.mllp_port, timeout=60) as client:
            for _ in range(min(PER_ASSOCIATION, inputs - number)):
                sent = mutate(rng.choice(MESSAGES), rng)
                try:
                    code = msa_code(client.send(sent))
                except (OSError, TimeoutError) as exc:
                    tally.faults.append(f"case {number}: {exc}")
                    break
                tally.answers[code.decode("latin-1") or "none"] += 1
                if code not in (b"AA", b"AE", b"AR"):
                    tally.faults.append(f"case {number}: MSA-1 {code!r}")
                if code in (b"AA", b"AE"):
                    answered.append(sent)
                number += 1
    tally.acknowledged = len(answered)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        for raw in answered:
            if conn.execute(text("SELECT 1 FROM message WHERE raw = :raw LIMIT 1"), {"raw": raw}).first() is None:
                tally.lost += 1
                tally.faults.append(f"acknowledged and not stored: {raw[:80]!r}")
    engine.dispose()
    return tally


def echo(port: int) -> bool:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    ok = assoc.is_established and int(assoc.send_c_echo().Status) == 0
    if assoc.is_established:
        assoc.release()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=DEFAULT_INPUTS, help="inputs of each kind")
    parser.add_argument("--seed", default="18", help="the seed of every kind's inputs")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--database-url", help="a PostgreSQL server (administrator): a scratch database there")
    parser.add_argument("--keep", action="store_true", help="keep the data folder and the server's log")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # pydicom's words about the odd values this client makes on purpose
    logging.disable(logging.WARNING)
    config.settings.writing_validation_mode = config.IGNORE
    kinds = [k for k in args.kinds.split(",") if k]
    if set(kinds) - set(KINDS):
        print(f"unknown kinds: {', '.join(sorted(set(kinds) - set(KINDS)))} (known: {', '.join(KINDS)})")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="hostile-"))
    data_dir, work = tmp / "data", tmp / "work"
    work.mkdir()
    admin = database_name = None
    if args.database_url:
        import psycopg

        admin = args.database_url.replace("postgresql+psycopg://", "postgresql://")
        database_name = f"hostile_{os.getpid()}_{int(time.time())}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database_name}"')
        url = f"{admin.rpartition('/')[0]}/{database_name}"
    else:
        url = f"sqlite:///{data_dir / 'pacs.db'}"
    reader_url = url.replace("postgresql://", "postgresql+psycopg://")
    server = ServeProcess(data_dir, url, TCP_NODELAY="1", **admin_env())
    ok = True
    try:
        print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}, "
              f"Python {platform.python_version()}; load average at start: {load_average()}")
        print(f"code: {git_state()}")
        print(f"database: {'PostgreSQL, a scratch database' if admin else 'SQLite in the data folder'}; "
              f"{args.inputs:,} inputs of each kind, seed {args.seed!r}")
        server.start()
        reader = bearer(create_token(data_dir, url, ["studies.read"]))  # QIDO-RS and WADO-RS of what was stored
        rows = []
        for kind in kinds:
            rng = random.Random(f"{args.seed}-{kind}")
            started = time.perf_counter()
            if kind == "store":
                tally = run_store(server, rng, args.inputs, work, reader)
            elif kind == "find":
                tally = run_queries(server, rng, args.inputs, [StudyRootQueryRetrieveInformationModelFind,
                                                               PatientRootQueryRetrieveInformationModelFind],
                                    qr_identifier, FIND_STATUSES)
            elif kind == "worklist":
                tally = run_queries(server, rng, args.inputs, [ModalityWorklistInformationFind], mwl_identifier,
                                    FIND_STATUSES)
            elif kind == "retrieve":
                tally = run_queries(server, rng, args.inputs, [StudyRootQueryRetrieveInformationModelMove,
                                                               StudyRootQueryRetrieveInformationModelGet],
                                    qr_identifier, RETRIEVE_STATUSES)
            elif kind == "commitment":
                tally = run_commitment(server, rng, args.inputs, work)
            else:
                tally = run_mllp(server, rng, args.inputs, reader_url)
            rows.append((kind, tally, time.perf_counter() - started))
        alive = echo(server.dicom_port)
        with socket.create_connection(("127.0.0.1", server.mllp_port), timeout=10):
            pass
        findings = log_findings(server.log)
        print()
        print("| kind | inputs | seconds | inputs/s | acknowledged | lost | faults | answers |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for kind, tally, seconds in rows:
            total = sum(tally.answers.values())
            answers = ", ".join(f"{code}: {n:,}" for code, n in sorted(tally.answers.items()))
            print(f"| {kind} | {total:,} | {seconds:.0f} | {total / seconds:,.0f} | {tally.acknowledged:,} | "
                  f"{tally.lost} | {len(tally.faults)} | {answers} |")
        print()
        print("server log: " + ", ".join(f"{len(lines)} {name}" for name, lines in findings.items())
              + f"; C-ECHO afterwards: {'0x0000' if alive else 'failed'}")
        for kind, tally, _ in rows:
            for line in tally.faults[:SHOWN_FAULTS]:
                print(f"  fault ({kind}): {line}")
        for name, lines in findings.items():
            for line in lines[:SHOWN_FAULTS]:
                print(f"  {name}: {line}")
        ok = alive and not any(t.faults for _, t, _ in rows) and not findings["tracebacks"]
        print(f"\nresult: {'nothing lost, no fault, no traceback' if ok else 'FAULTS FOUND'}")
        print(f"reproduce: cd {ROOT} && {shlex.join([sys.executable, *sys.argv])}")
    finally:
        server.stop()
        if admin and database_name:
            import psycopg

            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database_name}" WITH (FORCE)')
        if args.keep:
            print(f"data and the server's log kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

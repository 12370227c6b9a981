#!/usr/bin/env python
"""Hostile HTTP input at length: ``--inputs`` (default 10,000) seeded inputs of each kind sent to
a real ``pacs serve`` process, the same inputs ``tests/test_http_hostile.py`` sends a few hundred
of in the suite:

- ``fhir``: searches with every declared parameter of every type (from /fhir/metadata), with
  modifiers and result parameters, their values hostile (numbers of 5,000 digits, comma lists of
  nothing, other digits and scripts, NUL and control characters, long strings, SQL and LIKE
  injections, references that are not, impossible and edge dates); reads of ids that name
  nothing; types and paths nothing serves; every method; bodies nested too deep, cut short or not
  JSON;
- ``api``: every /api list with hostile parameters; ids in paths; check-in, reprocess and retry
  with hostile ids and bodies; paths and methods nothing serves;
- ``dicomweb``: QIDO-RS with hostile keys, values, limit/offset, includefield, fuzzymatching;
  WADO-RS of UIDs, frames, bulk data tags and rendering parameters that are not; Accept headers
  nothing satisfies;
- ``stow``: STOW-RS with broken multipart framing (no or another boundary, one too long, parts
  cut short, parts that are not DICOM, part headers past any size, preambles, no close
  delimiter, another media type);
- ``credentials``: requests that need a permission sent with hostile credentials instead
  (Authorization headers empty, huge or of other schemes, Basic with base64 that is not or
  decodes to NUL, tokens nearly right, cookies that are not this server's, header lines with NUL
  and control characters on connections of their own): each must get 401, or 400 for a request
  the HTTP layer can't read (429 for a Basic login past the address's limit), never a 5xx.

The server asks every request who it comes from, as ``pacs serve`` does: the other kinds are
sent with a bearer token of every permission, made with ``pacs tokens create``.

Each kind goes over one kept-alive connection. It counts the answers by status and every fault:
a 5xx, an error not in the protocol's shape (FHIR OperationOutcome, DICOMweb ``{"status",
"message"}``, /api ``{"detail"}``), a 405 without Allow, the server closing the connection, an
instance STOW-RS acknowledged that can't be retrieved. Then the server's log is read for
tracebacks, error lines and lost audit entries, and /healthz is asked on a new connection. The
exit status is 1 when anything of that was found.

Run from the project root::

    .venv/bin/python bench/hostile_http.py                          # SQLite, 10,000 inputs of each kind
    .venv/bin/python bench/hostile_http.py --inputs 20000 --seed 7 --kinds fhir,stow
    .venv/bin/python bench/hostile_http.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

``--database-url`` names a PostgreSQL server to connect to as an administrator; the benchmark
creates a database of its own there and drops it at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shlex
import shutil
import sys
import tempfile
import time
from http import HTTPStatus
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx
from common import admin_env, bearer, cpu_model, create_token, git_state, load_average

from tests.process import ServeProcess
from tests.test_http_hostile import GENERATORS, KINDS, SEED, Verdicts, prepare, send

DEFAULT_INPUTS = 10_000  # per kind
AUDIT_SETTLE_SECONDS = 2.0  # for the audit writer to write (or fail to write) the last entries
SHOWN_FAULTS = 10
LOG_FINDINGS = {
    "tracebacks": re.compile(r"^Traceback \(most recent call last\)"),
    "error lines": re.compile(r"^(ERROR:|\S+ \S+ ERROR )"),
    "audit entries lost": re.compile(r"audit event lost|audit entries .* not written"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=DEFAULT_INPUTS, help="inputs of each kind")
    parser.add_argument("--seed", default=SEED, help="the seed of every kind's inputs")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--database-url", help="a PostgreSQL server (administrator): a scratch database there")
    parser.add_argument("--keep", action="store_true", help="keep the data folder and the server's log")
    return parser.parse_args(argv)


def log_findings(log: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {name: [] for name in LOG_FINDINGS}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        for name, pattern in LOG_FINDINGS.items():
            if pattern.search(line):
                found[name].append(line[:300])
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        print(f"unknown kinds: {', '.join(sorted(unknown))} (known: {', '.join(KINDS)})")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="hostile-http-"))
    data_dir = tmp / "data"
    admin = database_name = None
    if args.database_url:
        import psycopg

        admin = args.database_url.replace("postgresql+psycopg://", "postgresql://")
        database_name = f"hostile_http_{os.getpid()}_{int(time.time())}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database_name}"')
        url = f"{admin.rpartition('/')[0]}/{database_name}"
    else:
        url = f"sqlite:///{data_dir / 'pacs.db'}"
    server = ServeProcess(data_dir, url, TCP_NODELAY="1", **admin_env())
    ok = True
    try:
        print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}, "
              f"Python {platform.python_version()}; load average at start: {load_average()}")
        print(f"code: {git_state()}")
        print(f"database: {'PostgreSQL, a scratch database' if admin else 'SQLite in the data folder'}; "
              f"{args.inputs:,} inputs of each kind, seed {args.seed!r}")
        server.start()
        token = create_token(data_dir, url)
        base = f"http://127.0.0.1:{server.http_port}"
        rows = []
        faults: list[str] = []
        with httpx.Client(base_url=base, timeout=120, headers=bearer(token)) as client:
            target = prepare(client)
            for kind in kinds:
                verdicts = Verdicts()
                started = time.perf_counter()
                send(client, GENERATORS[kind](random.Random(f"{args.seed}-{kind}"), target, args.inputs), verdicts)
                seconds = time.perf_counter() - started
                verdicts.check_acknowledged(client)
                five = sum(n for status, n in verdicts.statuses.items() if status >= HTTPStatus.INTERNAL_SERVER_ERROR)
                rows.append((kind, sum(verdicts.statuses.values()), seconds, five, len(verdicts.faults),
                             len(verdicts.acknowledged), dict(sorted(verdicts.statuses.items()))))
                faults += [f"{kind}: {f}" for f in verdicts.faults]
        time.sleep(AUDIT_SETTLE_SECONDS)
        healthy = httpx.get(base + "/healthz", timeout=30).status_code == HTTPStatus.OK
        findings = log_findings(server.log)
        print()
        print("| kind | answers | seconds | requests/s | 5xx | faults | STOW-RS stored | answers by status |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for kind, answers, seconds, five, fault_count, stored, statuses in rows:
            by_status = ", ".join(f"{status}: {n:,}" for status, n in statuses.items())
            print(f"| {kind} | {answers:,} | {seconds:.1f} | {answers / seconds:,.0f} | {five} | {fault_count} | "
                  f"{stored if kind == 'stow' else '—'} | {by_status} |")
        print()
        print("server log: " + ", ".join(f"{len(lines)} {name}" for name, lines in findings.items())
              + f"; /healthz afterwards: {'200' if healthy else 'not 200'}")
        for line in faults[:SHOWN_FAULTS]:
            print(f"  fault: {line}")
        for name, lines in findings.items():
            for line in lines[:SHOWN_FAULTS]:
                print(f"  {name}: {line}")
        ok = not faults and healthy and not any(findings.values())
        print(f"\nresult: {'no 5xx, no fault, no traceback' if ok else 'FAULTS FOUND'}")
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

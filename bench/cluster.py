"""Ingest, HL7 and QIDO-RS through HAProxy with 1, 2 and 3 `pacs serve` nodes on this machine.

    .venv/bin/python bench/cluster.py                  # 1, 2 and 3 nodes; 1,000 instances, 4,000 messages
    .venv/bin/python bench/cluster.py --quick          # 200 instances, 400 messages, 50 queries a row
    .venv/bin/python bench/cluster.py --nodes 1,3 --s3 # only those counts; objects in moto's S3

For each node count, ``deploy/cluster.sh`` starts that many nodes (PACS_CLUSTER_NODES) behind
HAProxy (deploy/haproxy.cfg) on one scratch PostgreSQL database, created before and dropped after
(``--database-url``: the server, trust authentication). With one node the same cluster is also
measured on node 1's own ports, without HAProxy: the row "1 node direct" shows what the proxy
costs. Each row, one after the other:

1. C-STORE ingest: DCMTK storescu, ``--associations`` processes at once, each sending its part of
   a generated CT corpus (``bench/ingest.py``'s generator, 512x512 16-bit, a corpus of its own per
   row so nothing is a duplicate); instances/s from the first storescu's start to the last one's
   exit; every instance must then be indexed (rows in ``instance``).
2. HL7 v2 over MLLP: ``bench/hl7_throughput.py``'s senders (ADT^A04 then ORM^O01 per patient),
   ``--connections`` connections at once, each waiting for every ACK; messages/s and p50/p95 ACK
   latency; every acknowledged message must be PROCESSED with its patient, order and worklist step.
3. QIDO-RS: ``GET /dicomweb/studies?PatientID=...`` for the row's patients, logged in as the
   administrator through the login form (the session cookie any node reads), one connection,
   p50/p95 of ``--queries`` requests after 5 not counted; each answer must hold the patient's studies.

During each phase ``pg_stat_activity`` is read every 0.1 s: the most connections the nodes held
open at once (in all, and in one process) and the most busy at once, the measure of the pool
sizes and ``max_connections`` a deployment needs (docs/administrator.md).

On two cores more nodes cannot be faster: the nodes, HAProxy, PostgreSQL and the clients share
them. The figures show what the proxy and the shared database cost, not a speed-up. Exits 1 when
anything did not arrive.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dicomweb  # (bench/dicomweb.py: the HTTP client, QIDO timing)
import hl7_throughput  # (bench/hl7_throughput.py: MLLP senders, durability check)
import ingest  # (bench/ingest.py: the CT corpus, storescu)
from common import (  # (bench/common.py)
    ADMIN_PASSWORD,
    ADMIN_USER,
    admin_env,
    cpu_model,
    git_state,
    load_average,
    memory_gb,
    session_login,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for the tests' helpers

from tests.process import free_cluster_base  # noqa: E402  (tests/process.py)

CLUSTER = ROOT / "deploy" / "cluster.sh"
WARMUP_QUERIES = 5
ARRIVAL_TIMEOUT = 60.0  # seconds for the last acknowledged object or message to be in the index


@dataclass
class Row:
    label: str
    nodes: int
    proxied: bool
    ingest_seconds: float = 0.0
    instances: int = 0
    megabytes: float = 0.0
    hl7: Any = None  # hl7_throughput.RunResult
    qido: Any = None  # dicomweb.Timing
    connections: dict[str, Any] = field(default_factory=dict)  # phase -> Connections
    problems: list[str] = field(default_factory=list)

    @property
    def ingest_rate(self) -> float:
        return self.instances / self.ingest_seconds if self.ingest_seconds else 0.0


class Cluster:
    """deploy/cluster.sh with ``nodes`` nodes in ``folder`` on the database ``url``."""

    def __init__(self, folder: Path, nodes: int, url: str, s3: bool) -> None:
        self.folder, self.nodes, self.url = folder, nodes, url
        self.base = free_cluster_base(nodes)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PACS_", "MOTO_"))}
        self.env.update(admin_env(), PACS_DATABASE_URL=url, PACS_CLUSTER_PORT=str(self.base),
                        PACS_CLUSTER_NODES=str(nodes), PACS_LOG_LEVEL="WARNING",
                        PACS_BIN=str(Path(sys.executable).parent / "pacs"))
        if s3:
            self.env["PACS_CLUSTER_S3"] = "moto"

    def __call__(self, *args: str) -> str:
        done = subprocess.run([str(CLUSTER), *args, str(self.folder)], env=self.env, capture_output=True,
                              text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"deploy/cluster.sh {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    def ports(self, node: int | None) -> tuple[int, int, int]:
        """DICOM, MLLP, HTTP: HAProxy's (``node`` None) or a node's own."""
        first = self.base if node is None else self.base + 10 * node
        return first, first + 1, first + 2

    def node_pid(self, node: int) -> int:
        return int((self.folder / f"node{node}.pid").read_text())


class Connections(threading.Thread):
    """The cluster's connections to its database while a phase runs: ``pg_stat_activity`` read
    every :data:`SAMPLE_SECONDS`; the most open at once in all and in one process (each names
    its connections, ``pacs.db.application_name``), and the most busy at once (a statement
    running, or a transaction open between two)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.database = url, url.rsplit("/", 1)[1]
        self.done = threading.Event()
        self.open = self.busy = self.per_process = self.samples = 0
        self.processes: set[str] = set()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.done.wait(SAMPLE_SECONDS):
                rows = conn.execute("SELECT application_name, state FROM pg_stat_activity "
                                    "WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                                    [self.database]).fetchall()
                names = Counter(name for name, _ in rows)
                self.processes.update(names)
                self.samples += 1
                self.open = max(self.open, len(rows))
                self.per_process = max(self.per_process, *names.values(), 0)
                self.busy = max(self.busy, sum(1 for _, state in rows if state in BUSY_STATES))

    def __enter__(self) -> Connections:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.join(10)

    def summary(self) -> str:
        return (f"at most {self.open} open ({self.per_process} in one of {len(self.processes)} processes), "
                f"{self.busy} busy at once ({self.samples} samples)")


SAMPLE_SECONDS = 0.1
BUSY_STATES = ("active", "idle in transaction")


def count_instances(url: str) -> int:
    return int(ingest.sql(url, "SELECT count(*) FROM instance")[0][0])


def measure_ingest(row: Row, corpus: ingest.Corpus, port: int, url: str, associations: int, log: Path) -> None:
    target = SimpleNamespace(ae_title=ingest.OUR_AE, dicom_port=port)
    log.write_text("")
    _, problems = ingest.storescu(target, [corpus.warmup], log)  # a study not timed: connections, caches
    row.problems += [f"warm-up: {problem}" for problem in problems]
    before = count_instances(url)
    log.write_text("")
    row.ingest_seconds, problems = ingest.storescu(target, corpus.split(associations), log)
    row.instances, row.megabytes = len(corpus.files), corpus.bytes / 1e6
    row.problems += problems
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while (arrived := count_instances(url) - before) < len(corpus.files) and time.monotonic() < deadline:
        time.sleep(0.5)
    if arrived != len(corpus.files):
        row.problems.append(f"{arrived} instances indexed, {len(corpus.files)} sent")


def measure_hl7(row: Row, port: int, url: str, connections: int, messages: int, tag: str, pid: int) -> None:
    result = hl7_throughput.run(row.label, port, connections, messages, tag, pid)
    row.hl7 = result
    row.problems += result.errors
    if result.not_aa:
        row.problems.append(f"{result.not_aa} messages not answered AA, e.g. {result.first_not_aa[:200]}")
    if len(result.aa) != messages:
        row.problems.append(f"{len(result.aa)} of {messages} messages acknowledged AA")
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while (missing := hl7_throughput.verify(url, Path(), result.aa)) and time.monotonic() < deadline:
        time.sleep(0.5)
    row.problems += missing


def measure_qido(row: Row, corpus: ingest.Corpus, port: int, queries: int) -> None:
    base = f"http://127.0.0.1:{port}"
    cookie, _ = session_login(base, ADMIN_USER, ADMIN_PASSWORD)
    timing = dicomweb.Timing(row.label, "PatientID")
    patients = sorted(corpus.patient_studies.items())
    with dicomweb.client(60, {"Cookie": cookie}) as http:
        for number in range(WARMUP_QUERIES + queries):
            patient, studies = patients[number % len(patients)]
            started = time.perf_counter()
            response = http.get(f"{base}/dicomweb/studies", params={"PatientID": patient},
                                headers={"Accept": dicomweb.JSON_ACCEPT})
            body = response.content
            elapsed = time.perf_counter() - started
            if number < WARMUP_QUERIES:
                continue
            timing.latencies.append(elapsed)
            answered = len(json.loads(body)) if response.status_code == 200 and body.strip() else 0
            timing.answered.append(answered)
            timing.expected.append(studies)
            if response.status_code not in (200, 204) or answered != studies:
                timing.wrong.append(f"PatientID={patient}: HTTP {response.status_code}, {answered} studies, "
                                    f"expected {studies}")
    row.qido = timing
    if timing.wrong:
        row.problems.append(f"{len(timing.wrong)} QIDO answers wrong, e.g. {timing.wrong[0]}")


def measure(row: Row, cluster: Cluster, corpus: ingest.Corpus, args: argparse.Namespace, scratch: Path,
            tag: str) -> None:
    dicom, mllp, http = cluster.ports(None if row.proxied else 1)
    print(f"\n{row.label}: DICOM :{dicom}, MLLP :{mllp}, HTTP :{http}; load average {load_average()}", flush=True)
    with Connections(cluster.url) as row.connections["ingest"]:
        measure_ingest(row, corpus, dicom, cluster.url, args.associations, scratch / f"storescu-{tag}.log")
    print(f"  ingest {row.instances} instances in {row.ingest_seconds:.2f} s: {row.ingest_rate:.1f} inst/s; "
          f"database connections {row.connections['ingest'].summary()}", flush=True)
    with Connections(cluster.url) as row.connections["HL7"]:
        measure_hl7(row, mllp, cluster.url, args.connections, args.messages, tag, cluster.node_pid(1))
    print(f"  HL7 {len(row.hl7.latencies)} messages: {row.hl7.rate:.0f} msg/s, ACK p50 {row.hl7.percentile(50):.1f} ms, "
          f"p95 {row.hl7.percentile(95):.1f} ms; database connections {row.connections['HL7'].summary()}", flush=True)
    with Connections(cluster.url) as row.connections["QIDO"]:
        measure_qido(row, corpus, http, args.queries)
    print(f"  QIDO {len(row.qido.latencies)} queries: p50 {row.qido.pct(50):.2f} ms, p95 {row.qido.pct(95):.2f} ms; "
          f"database connections {row.connections['QIDO'].summary()}", flush=True)
    for problem in row.problems:
        print(f"  PROBLEM: {problem}", flush=True)


def run_count(nodes: int, args: argparse.Namespace, scratch: Path, corpora: list[ingest.Corpus]) -> list[Row]:
    """One cluster of ``nodes`` nodes on its own scratch database; its rows."""
    name = f"bench_cluster_{os.getpid()}_{nodes}"
    admin = f"{args.database_url.rstrip('/')}/postgres"
    url = f"{args.database_url.rstrip('/')}/{name}"
    hl7_throughput.postgres_admin(admin, f'CREATE DATABASE "{name}"')
    rows = [Row(f"{nodes} node{'s' if nodes > 1 else ''}", nodes, True)]
    if nodes == 1:
        rows.insert(0, Row("1 node direct", 1, False))
    cluster = Cluster(scratch / f"cluster{nodes}", nodes, url, args.s3)
    try:
        started = time.perf_counter()
        cluster("start")
        print(f"\n{nodes}-node cluster started in {time.perf_counter() - started:.1f} s (ports from {cluster.base}, "
              f"database {name})", flush=True)
        for row in rows:
            tag = f"K{nodes}{'D' if not row.proxied else 'H'}"
            try:
                measure(row, cluster, corpora.pop(0), args, scratch, tag)
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:  # the row fails
                row.problems.append(f"{type(exc).__name__}: {exc}")
                print(f"  PROBLEM: {row.problems[-1]}", flush=True)
    finally:
        try:
            cluster("stop")
        finally:
            hl7_throughput.postgres_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"\n  {'row':15} {'ingest':>9} {'':>6} {'HL7':>8} {'ACK p50':>8} {'ACK p95':>8} {'QIDO p50':>9} "
          f"{'QIDO p95':>9}  check")
    print(f"  {'':15} {'inst/s':>9} {'MB/s':>6} {'msg/s':>8} {'ms':>8} {'ms':>8} {'ms':>9} {'ms':>9}")
    for row in rows:
        if row.hl7 is None or row.qido is None:
            print(f"  {row.label:15} not measured: {row.problems[-1][:120]}")
            continue
        hl7, qido = row.hl7, row.qido
        check = "all arrived" if not row.problems else f"{len(row.problems)} PROBLEM(S)"
        print(f"  {row.label:15} {row.ingest_rate:>9.1f} {row.megabytes / max(row.ingest_seconds, 1e-9):>6.1f} "
              f"{hl7.rate:>8.0f} {hl7.percentile(50):>8.1f} {hl7.percentile(95):>8.1f} "
              f"{qido.pct(50):>9.2f} {qido.pct(95):>9.2f}  {check}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="1,2,3", help="node counts, comma-separated (1-3; default 1,2,3)")
    parser.add_argument("--quick", action="store_true", help="200 instances, 400 messages, 50 queries a row")
    parser.add_argument("--instances", type=int, help="CT instances a row (default 1,000; --quick 200)")
    parser.add_argument("--per-study", type=int, default=50, help="instances a study (default 50)")
    parser.add_argument("--associations", type=int, default=4, help="storescu processes at once (default 4)")
    parser.add_argument("--messages", type=int, help="HL7 messages a row (default 4,000; --quick 400)")
    parser.add_argument("--connections", type=int, default=4, help="MLLP connections at once (default 4)")
    parser.add_argument("--queries", type=int, help="QIDO requests a row (default 200; --quick 50)")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432",
                        help="PostgreSQL server for the scratch databases (trust authentication)")
    parser.add_argument("--s3", action="store_true",
                        help="objects in moto's S3 server, acknowledged once indexed (PACS_CLUSTER_S3=moto); "
                             "default: each node's own data folder")
    parser.add_argument("--cache", type=Path, help="corpus cache folder (default: <temp>/pacs-bench-ingest)")
    parser.add_argument("--seed", type=int, default=2400)
    args = parser.parse_args(argv)
    args.counts = [int(n) for n in args.nodes.split(",")]
    if not args.counts or any(n not in (1, 2, 3) for n in args.counts):
        parser.error("--nodes: counts from 1 to 3")
    args.instances = args.instances or (200 if args.quick else 1000)
    args.messages = args.messages or (400 if args.quick else 4000)
    args.queries = args.queries or (50 if args.quick else 200)
    return args


def print_facts(args: argparse.Namespace) -> None:
    import pynetdicom

    print(f"machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {cpu_model()}, "
          f"{memory_gb():.0f} GB RAM; {platform.platform()}")
    print(f"python {platform.python_version()}, pynetdicom {pynetdicom.__version__}; "
          f"{ingest.tool_version(['haproxy', '-v'])}; DCMTK "
          f"{ingest.tool_version(['storescu', '--version']).replace('$dcmtk: storescu ', '').rstrip('$')}")
    print(f"database: {hl7_throughput.postgres_facts(args.database_url.rstrip('/') + '/postgres')}, "
          f"one scratch database a cluster; objects: {'moto S3' if args.s3 else 'each node its own data folder'}")
    print(f"code: {git_state()}")
    print(f"load average before: {load_average()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    command = f"cd {shlex.quote(str(ROOT))} && .venv/bin/python bench/cluster.py {shlex.join(given)}".rstrip()
    for tool in ("haproxy", "storescu", "psql"):
        if shutil.which(tool) is None:
            print(f"{tool} not found", file=sys.stderr)
            return 2
    print_facts(args)
    cache = args.cache or Path(tempfile.gettempdir()) / "pacs-bench-ingest"
    rows_wanted = sum(2 if n == 1 else 1 for n in args.counts)
    started = time.perf_counter()
    corpora = [ingest.make_corpus(cache / f"v{ingest.CORPUS_VERSION}-{args.instances}x{args.per_study}-"
                                  f"seed{args.seed + k}", args.instances, args.per_study, args.seed + k)
               for k in range(rows_wanted)]  # a corpus a row: no instance is sent twice
    print(f"corpus: {rows_wanted} x {args.instances} CT instances 512x512 "
          f"({corpora[0].bytes / 1e6:.0f} MB each, {len(corpora[0].studies)} studies), "
          f"ready in {time.perf_counter() - started:.1f} s; {args.associations} storescu associations, "
          f"{args.connections} MLLP connections, {args.queries} QIDO queries a row", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="pacs-bench-cluster-") as folder:
        for nodes in args.counts:
            rows += run_count(nodes, args, Path(folder), corpora)
    print_table(rows)
    print(f"\nload average after: {load_average()}")
    print(f"command: {command}")
    problems = [f"{row.label}: {problem}" for row in rows for problem in row.problems]
    for problem in problems:
        print(f"PROBLEM {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

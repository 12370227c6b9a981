"""Study-level C-FIND against Orthanc, timed by DCMTK findscu, with the server CPU per query.

Each target (our archive on this checkout; ``--against REV`` adds our archive at another git
revision, in a worktree; Debian's Orthanc unless ``--no-orthanc``) gets the same small corpus by
storescu, then ``--rounds`` rounds of ``--queries`` study-level queries by Patient ID from one
findscu process on one association, the targets taking turns in each round and the first of
them changing from round to round. Per round and target it prints findscu's p50 and p95 (its own
log clock, from the request to the final response: no Python client in the figure) and the CPU
seconds the server spent per query, read from /proc before and after: on a 2-core machine the
steadier of the two figures. Every query's match count is checked.

``--floor`` adds the floor of the DIMSE stack: the archive's own AE as ``pacs serve`` makes it
(:func:`pacs.archive.ae.make_ae`, with the patches of :mod:`pacs.archive.dul`,
:mod:`~pacs.archive.dimse` and :mod:`~pacs.archive.encoding`), whose C-FIND handler decodes the identifier and answers from
memory as many matches as the archive would, through the same direct sender: what a C-FIND costs
before any query, audit or access check runs.

    .venv/bin/python bench/cfind.py                        # ours and Orthanc, 4 rounds of 500 queries
    .venv/bin/python bench/cfind.py --against HEAD~1 --no-orthanc --rounds 6   # A/B of a change
    .venv/bin/python bench/cfind.py --index-instances 1000000   # ours on a 1M-instance index too
    .venv/bin/python bench/cfind.py --floor                     # and the DIMSE stack alone
    .venv/bin/python bench/cfind.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLOOR_AE = "FLOOR"

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest  # noqa: E402  (bench/ingest.py: corpus, servers, storescu, findscu)
from common import cpu_model, git_state, load_average  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Figures:
    name: str
    p50: list[float] = field(default_factory=list)  # ms, one per round
    p95: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # server CPU ms per query
    wrong: list[str] = field(default_factory=list)


@dataclass
class Floor:
    """``bench/cfind.py --serve-floor``: the DIMSE stack's C-FIND with the answers in memory."""

    folder: Path
    expected: dict[str, int]
    name: str = "DIMSE floor"
    ae_title: str = FLOOR_AE
    dicom_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dicom_port = ingest.free_port()
        (self.folder / "expected.json").write_text(json.dumps(self.expected))
        log = (self.folder / "floor.log").open("wb")
        self.process = subprocess.Popen([sys.executable, __file__, "--serve-floor", str(self.dicom_port),
                                         str(self.folder / "expected.json")], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=ROOT, env=ingest.nodelay_env(), start_new_session=True)
        ingest.wait_for_port(self.dicom_port, self.process, self.folder / "floor.log", 30)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return ingest.process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def serve_floor(port: int, expected_path: str) -> None:
    """The archive's own AE (:func:`pacs.archive.ae.make_ae`: library logging off, the same
    patches and presentation contexts, the same connection handler: TCP_NODELAY, stall limits,
    wake-ups), whose C-FIND handler decodes the identifier and sends the number of matches the
    archive holds for the Patient ID, each a pre-encoded answer, through
    :class:`pacs.archive.dimse.PendingSender`."""
    from pynetdicom import evt

    from pacs.archive import dimse
    from pacs.archive.ae import _connection_opened, make_ae
    from pacs.archive.encoding import Encoded
    from pacs.settings import Settings

    expected = json.loads(Path(expected_path).read_text())
    answer = Encoded([(0x00080052, "CS", "STUDY"), (0x00100020, "LO", "P"), (0x0020000D, "UI", "1.2.3.4")], None,
                     ordered=True)

    def handle(event: Any) -> Any:
        patient_id = str(event.identifier.PatientID)
        direct = dimse.PendingSender.for_event(event)
        assert direct is not None
        for _ in range(expected.get(patient_id, 0)):
            if direct.add(answer):
                direct.flush()
        direct.finish()
        yield 0x0000, None

    ae = make_ae(Settings(data_dir=Path(expected_path).parent / "data", ae_title=FLOOR_AE))
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_FIND, handle),
                                                        (evt.EVT_CONN_OPEN, _connection_opened)])


def worktree(rev: str, scratch: Path) -> tuple[Path, str]:
    """A detached worktree of ``rev`` in the scratch folder, and the commit it is."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    path = scratch / f"checkout-{commit}"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT, capture_output=True,
                   check=True)
    return path, commit


def measure(target: Any, expected: dict[str, int], queries: int, seed: int, scratch: Path, label: str,
            figures: Figures) -> None:
    before = target.cpu_seconds()
    result = ingest.c_find_findscu(target, expected, queries, seed, label, scratch, warmup=10)
    spent = target.cpu_seconds() - before
    figures.p50.append(result.pct(50))
    figures.p95.append(result.pct(95))
    figures.cpu.append(spent * 1000 / (queries + 10))  # the warm-up queries were served too
    figures.wrong += result.wrong


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds, the first target alternating (default 4)")
    parser.add_argument("--queries", type=int, default=500, help="queries per target and round (default 500)")
    parser.add_argument("--instances", type=int, default=200, help="instances in the corpus (default 200)")
    parser.add_argument("--per-study", type=int, default=10, help="instances per study (default 10)")
    parser.add_argument("--against", metavar="REV", help="also our archive at this git revision (a worktree)")
    parser.add_argument("--no-orthanc", action="store_true", help="leave Orthanc out")
    parser.add_argument("--index-instances", type=int, default=0,
                        help="also ours on a fresh archive with this many generated instance rows (default 0: not)")
    parser.add_argument("--database-url", help="our archive's database (default: SQLite in its data folder); "
                        "each of ours gets a database of its own on that server")
    parser.add_argument("--floor", action="store_true", help="also the DIMSE stack alone, answers from memory")
    parser.add_argument("--seed", type=int, default=3, help="query order seed")
    parser.add_argument("--serve-floor", nargs=2, metavar=("PORT", "EXPECTED"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _span(counts: Any) -> str:
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{low}-{high}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_floor:
        serve_floor(int(args.serve_floor[0]), args.serve_floor[1])
        return 0
    print("reproduce: .venv/bin/python bench/cfind.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
    print(f"machine: {cpu_model()}; load average {load_average()}; {git_state()}")
    scratch = Path(tempfile.mkdtemp(prefix="pacs-cfind-bench-"))
    cache = Path(tempfile.gettempdir()) / "pacs-bench-ingest"
    databases = ingest.Databases(args.database_url)
    corpus = ingest.make_corpus(cache / f"v{ingest.CORPUS_VERSION}-{args.instances}x{args.per_study}-seed1",
                                args.instances, args.per_study, 1)
    expected = corpus.patient_studies
    targets: list[Any] = []
    failed = False
    try:
        ours = ingest.OurServer(scratch / "ours", databases.new("ours"), processes=None)
        ours.name = "ours"
        targets.append(ours)
        if args.against:
            path, commit = worktree(args.against, scratch)
            other = ingest.OurServer(scratch / "other", databases.new("other"), processes=None, source=path)
            other.name = f"ours@{commit}"
            targets.append(other)
        if not args.no_orthanc:
            targets.append(ingest.Orthanc(scratch / "orthanc"))
        if args.floor:
            targets.append(Floor(scratch / "floor", expected))
        for target in targets:
            target.start()
            if isinstance(target, Floor):
                continue
            sent = ingest.send(target, corpus, 1, scratch / f"{target.name}-store.log", len(corpus.files))
            if not sent.complete:
                raise RuntimeError(f"{target.name}: {sent.failures}")
        print(f"corpus: {len(corpus.files)} instances, {len(corpus.studies)} studies of {len(expected)} patients "
              f"(each query answers {_span(expected.values())} studies); {args.rounds} rounds of {args.queries} "
              f"study-level queries (+10 not counted) from one findscu association per target")
        results = {target.name: Figures(target.name) for target in targets}
        for number in range(args.rounds):
            order = targets[number % len(targets):] + targets[:number % len(targets)]
            for target in order:
                time.sleep(2)
                measure(target, expected, args.queries, args.seed + number, scratch, f"{target.name}-{number}",
                        results[target.name])
            print(f"round {number + 1}: " + "; ".join(
                f"{name} p50 {f.p50[-1]:.2f} ms, p95 {f.p95[-1]:.2f}, server CPU {f.cpu[-1]:.2f} ms/query"
                for name, f in results.items()))
        if args.index_instances:
            for target in targets[:1 + bool(args.against)]:
                target.stop()
            big = ingest.OurServer(scratch / "big", databases.new("big"), processes=None)
            big.name = f"ours at {args.index_instances:,} instances"
            big.data_dir.mkdir(parents=True)
            print(f"writing {args.index_instances:,} instance rows for {big.name} ...")
            index_expected, seconds = ingest.bulk_index(big.url, instances=args.index_instances, per_study=100,
                                                        patients=args.index_instances // 200)
            print(f"  ({seconds:.0f} s)")
            big.start()
            targets.append(big)
            results[big.name] = Figures(big.name)
            for number in range(args.rounds):
                measure(big, index_expected, args.queries, args.seed + number, scratch, f"big-{number}",
                        results[big.name])
                print(f"round {number + 1}: {big.name} p50 {results[big.name].p50[-1]:.2f} ms, "
                      f"server CPU {results[big.name].cpu[-1]:.2f} ms/query")
        print()
        print("| target | findscu p50, ms (rounds) | median | p95 median | server CPU ms/query (rounds) | median |")
        print("|---|---|---:|---:|---|---:|")
        for f in results.values():
            print(f"| {f.name} | {', '.join(f'{v:.2f}' for v in f.p50)} | {statistics.median(f.p50):.2f} | "
                  f"{statistics.median(f.p95):.2f} | {', '.join(f'{v:.2f}' for v in f.cpu)} | "
                  f"{statistics.median(f.cpu):.2f} |")
            if f.wrong:
                failed = True
                print(f"  {f.name}: {len(f.wrong)} wrong answers, e.g. {f.wrong[0]}")
        print(f"load average after: {load_average()}")
    finally:
        for target in targets:
            target.stop()
        databases.drop()
        if args.against:
            for path in scratch.glob("checkout-*"):
                subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True,
                               check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

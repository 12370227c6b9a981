#!/usr/bin/env python
"""The CPU cost of the two hot paths without sockets: the HL7 intake worker and a Q/R C-FIND.

Both run in this process on a fresh data folder (SQLite, as ``pacs serve`` sets it up), so the
figures leave out the network, the event loop and pynetdicom, and vary less than the end-to-end
benchmarks; use them to compare two versions of the code on one machine.

- ``intake``: ``hl7_throughput.py``'s messages (ADT^A04 and ORM^O01 NW, half each) fed to the
  intake worker's cycle in batches of ``--batch``, as eight connections give it under load: each
  cycle commits the previous batch's effects with this batch's raw messages, then parses, maps
  and applies this batch. Prints CPU and wall time per message.
- ``cfind``: ``--instances`` CT instances of ``ingest.py``'s corpus stored through the archive's
  ``store()``, then a Study Root STUDY-level query by Patient ID answered by the query service,
  each answer encoded as pynetdicom sends it. Prints CPU per query.

``--profile`` adds a cProfile table of the measured part (it roughly doubles Python's cost).

Run from the project root::

    .venv/bin/python bench/inprocess.py intake
    .venv/bin/python bench/inprocess.py cfind
    .venv/bin/python bench/inprocess.py intake --messages 4000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pickle
import pstats
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import cpu_model, git_state, load_average  # noqa: E402


def services(folder: Path):  # type: ignore[no-untyped-def]
    from pacs.server import Services
    from pacs.settings import Settings

    return Services.build(Settings(data_dir=folder / "data", archive={"min_free_bytes": 0}))


def intake(args: argparse.Namespace, folder: Path) -> None:
    from hl7_throughput import make_messages

    from pacs.integration.channel import Inbound

    built = services(folder)
    worker = built.intake
    frames = [m.frame[1:-2] for m in make_messages("W", args.warmup, 1)]
    measured = [m.frame[1:-2] for m in make_messages("T", args.messages, 2)]
    connection = built.db.engine.connect()

    def ahead(raws: list[bytes]) -> list[bytes]:
        """With --front, each message as the MLLP front process hands it over: parsed and mapped,
        pickled (unpickled in the measured part, as the main process's relay does)."""
        return [pickle.dumps((raw, built.channel.transform(Inbound(raw=raw)))) if args.front else raw
                for raw in raws]

    def run(batch_of: list[bytes]) -> None:
        processed = None
        for start in range(0, len(batch_of), args.batch):
            batch = [(Inbound(raw=item) if not args.front else Inbound(*_unpickle(item)), Future())
                     for item in batch_of[start:start + args.batch]]
            processed = worker._cycle(batch, processed, connection)
        worker._cycle([], processed, connection)

    def _unpickle(item: bytes) -> tuple[bytes, str, str, None, str, float, object]:
        raw, transformed = pickle.loads(item)
        return raw, "mllp", "", None, "mllp", time.perf_counter(), transformed

    frames, measured = ahead(frames), ahead(measured)
    run(frames)
    profile = cProfile.Profile() if args.profile else None
    wall, cpu = time.perf_counter(), time.process_time()
    if profile:
        profile.enable()
    run(measured)
    if profile:
        profile.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    connection.close()
    print(f"intake{' (parsed and mapped ahead, as by the MLLP front process)' if args.front else ''}: "
          f"{len(measured)} messages in batches of {args.batch}: {cpu / len(measured) * 1000:.3f} ms CPU "
          f"and {wall / len(measured) * 1000:.3f} ms wall per message")
    if profile:
        pstats.Stats(profile).sort_stats(args.sort).print_stats(args.top)
    built.db.dispose()


def cfind(args: argparse.Namespace, folder: Path) -> None:
    import pydicom
    import pynetdicom.service_class as service_class
    from ingest import CORPUS_VERSION, make_corpus  # the C-STORE benchmark's CT corpus
    from pydicom.dataset import Dataset

    from pacs.archive import encoding

    encoding.install()
    cache = Path(tempfile.gettempdir()) / "pacs-bench-ingest" / f"v{CORPUS_VERSION}-300x150-seed1"
    corpus = make_corpus(cache, 300, 150, 1)
    files = corpus.files[:: max(1, len(corpus.files) // args.instances)][: args.instances]
    built = services(folder)
    built.archive.start()
    for path in files:
        built.archive.store(Path(path), calling_ae="BENCH")
    patient_id = str(pydicom.dcmread(files[0], stop_before_pixels=True).PatientID)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
                    "ReferringPhysicianName", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                    "NumberOfStudyRelatedInstances"):
        setattr(query, keyword, None)
    query.PatientID = patient_id

    def once() -> int:
        answers = list(built.queries.archive(query, "FINDSCU", "STUDY"))
        for answer in answers:
            service_class.encode(answer, True, True)
        return len(answers)

    for _ in range(20):
        matches = once()
    profile = cProfile.Profile() if args.profile else None
    cpu = time.process_time()
    if profile:
        profile.enable()
    for _ in range(args.queries):
        once()
    if profile:
        profile.disable()
    cpu = time.process_time() - cpu
    print(f"cfind: study level by Patient ID, {matches} matches, {len(files)} instances stored: "
          f"{cpu / args.queries * 1000:.3f} ms CPU per query ({args.queries} queries)")
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    built.archive.stop()
    built.db.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("intake", "cfind"))
    parser.add_argument("--messages", type=int, default=2000, help="measured messages (intake; default 2000)")
    parser.add_argument("--warmup", type=int, default=400, help="messages before measuring (intake; default 400)")
    parser.add_argument("--batch", type=int, default=4, help="messages per intake cycle (default 4)")
    parser.add_argument("--instances", type=int, default=30, help="instances stored (cfind; default 30)")
    parser.add_argument("--queries", type=int, default=300, help="measured queries (cfind; default 300)")
    parser.add_argument("--front", action="store_true",
                        help="intake: messages parsed and mapped ahead, as the MLLP front process does")
    parser.add_argument("--profile", action="store_true", help="cProfile the measured part")
    parser.add_argument("--top", type=int, default=40, help="functions in the profile table (default 40)")
    parser.add_argument("--sort", default="cumulative", help="profile table order: cumulative or tottime (default cumulative)")
    args = parser.parse_args(argv)
    print(f"reproduce: cd {ROOT} && .venv/bin/python bench/inprocess.py {' '.join(sys.argv[1:])}")
    print(f"machine: {cpu_model()}; load average {load_average()}; code: {git_state()}")
    with tempfile.TemporaryDirectory(prefix="pacs-inprocess-") as scratch:
        (intake if args.what == "intake" else cfind)(args, Path(scratch))
    return 0


if __name__ == "__main__":
    sys.exit(main())

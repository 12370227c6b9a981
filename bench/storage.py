"""Storage tiers: recall time of a 300-instance CT study from nearline (a folder, an S3 bucket on
moto's loopback server) and from offline (a tar container), and migration throughput in MB/s
with and without lossless compression.

    .venv/bin/python bench/storage.py                    # 300 instances of 512×512 CT, SQLite
    .venv/bin/python bench/storage.py --instances 100 --cold
    .venv/bin/python bench/storage.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

The archive is built in-process (the same ``Services.build`` as ``pacs serve``), the study is
filed through ``Archive.store()`` as ``pacs import`` does, and every step goes through the
``StorageManager`` the server uses. ``--cold`` drops the page cache (root only) before each
recall so the source is read from the disk, not from memory. Goals on this machine: nearline
recall under 2 s, offline under 10 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

GOALS = {"nearline": 2.0, "offline": 10.0}


def make_study(folder: Path, count: int, size: int) -> list[Path]:
    """A CT series: a smooth body-like phantom with noise, 16-bit signed, one file per slice."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    body = ((x - size / 2) ** 2 / (0.42 * size) ** 2 + (y - size / 2) ** 2 / (0.33 * size) ** 2) < 1
    paths = []
    for number in range(count):
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID = "BENCH1"
        ds.InstanceNumber = number + 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        slice_ = np.where(body, 40 + 30 * np.sin(x / 17 + number / 9), -1000)
        slice_ = slice_ + rng.normal(0, 12, (size, size))
        ds.PixelData = slice_.astype(np.int16).tobytes()
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moto = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto_server did not start (pip install 'moto[server]')")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows and columns")
    parser.add_argument("--database-url", default=os.environ.get("PACS_DATABASE_URL"),
                        help="PostgreSQL server to create a scratch database on (default: SQLite)")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each recall (root)")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    parser.add_argument("--recall-workers", type=int, default=16, help="[storage] recall_workers")
    parser.add_argument("--only-s3", action="store_true", help="only the S3 round trip (for tuning)")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from sqlalchemy import create_engine, text

    from pacs.archive.storage.manager import StorageManager
    from pacs.server import Services
    from pacs.settings import Settings, StorageSettings

    work = args.tmp / f"pacs-bench-storage-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    moto, moto_url = start_moto()
    database_url, admin, scratch = None, None, None
    if args.database_url:
        scratch = f"pacs_bench_{uuid.uuid4().hex[:8]}"
        admin_url = args.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{scratch}"'))
        database_url = args.database_url.rsplit("/", 1)[0] + "/" + scratch
    rows: list[tuple[str, str]] = []
    try:
        storage = StorageSettings(
            areas=[{"name": "nearline", "kind": "filesystem", "tier": "nearline", "path": work / "nearline"},
                   {"name": "s3", "kind": "s3", "tier": "nearline", "bucket": "bench", "endpoint_url": moto_url,
                    "access_key": "bench", "secret_key": "bench"},
                   {"name": "tape", "kind": "container", "tier": "offline", "path": work / "tape"}],
            rules_interval_seconds=0, scrub_interval_seconds=0, prefetch=False, recall_workers=args.recall_workers)
        settings = Settings(data_dir=work / "data", database_url=database_url, storage=storage,
                            archive={"min_free_bytes": 0})
        services = Services.build(settings)
        services.archive.start()
        manager: StorageManager = services.storage  # type: ignore[assignment]

        print(f"making two studies of {args.instances} CT images of {args.size}x{args.size} ...", flush=True)
        studies = []
        for name in ("a", "b"):  # the second is for JPEG 2000 (the first ends up JPEG-LS)
            paths = make_study(work / name, args.instances, args.size)
            total = sum(p.stat().st_size for p in paths)
            started = time.perf_counter()
            for path in paths:
                result = services.archive.store(path)
                assert result.ok, result
            filed = time.perf_counter() - started
            found = manager.study_id(str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID))
            assert found is not None
            studies.append(found)
            print(f"filed {len(paths)} instances, {total / 1e6:.1f} MB, in {filed:.1f} s", flush=True)
        study = studies[0]

        def migrate(source: str, target: str, method: str = "none") -> None:
            result = manager.migrate_study(study, source, target, compress_with=method)
            assert result.failed == 0 and result.copied == len(paths), result
            label = f"migrate {source} -> {target}" + (f" ({method})" if method != "none" else "")
            extra = (f", {result.bytes_written / 1e6:.1f} MB written (ratio {result.bytes_read / result.bytes_written:.2f})"
                     if method != "none" else "")
            rows.append((label, f"{result.bytes_read / 1e6 / result.seconds:7.1f} MB/s  "
                                f"({result.bytes_read / 1e6:.1f} MB in {result.seconds:.2f} s{extra})"))
            print(f"{rows[-1][0]:42} {rows[-1][1]}", flush=True)

        def recall(what: str, tier: str | None) -> None:
            cold = drop_caches() if args.cold else False
            cpu = os.times()
            moto_cpu = _process_cpu(moto.pid)
            result = manager.recall(study)
            cpu_after = os.times()
            cpu_note = (f"; CPU: this process {cpu_after.user + cpu_after.system - cpu.user - cpu.system:.2f} s, "
                        f"S3 server {_process_cpu(moto.pid) - moto_cpu:.2f} s" if args.only_s3 else "")
            assert result.recalled == len(paths) and result.failed == 0, result
            goal = GOALS.get(tier or "")
            verdict = f"  goal < {goal:.0f} s: {'met' if result.seconds < goal else 'NOT met'}" if goal else ""
            rows.append((f"recall from {what}", f"{result.seconds:7.2f} s      "
                                                 f"({result.bytes / 1e6 / result.seconds:.0f} MB/s"
                                                 f"{', cold cache' if cold else ''}{cpu_note}){verdict}"))
            print(f"{rows[-1][0]:42} {rows[-1][1]}", flush=True)
            manager.config.cache_max_bytes = 0  # evict the recalled copies again
            manager.evict()
            manager.config.cache_max_bytes = None

        if args.only_s3:
            migrate("online", "s3")
            for _ in range(3):
                recall("nearline S3 (moto server)", "nearline")
            raise SystemExit(0)
        migrate("online", "nearline")
        recall("nearline folder", "nearline")
        migrate("nearline", "s3")
        recall("nearline S3 (moto server)", "nearline")
        migrate("s3", "tape")
        recall("offline tar container", "offline")
        migrate("tape", "online")
        migrate("online", "nearline", "jpeg-ls")
        recall("nearline folder, JPEG-LS", "nearline")
        study = studies[1]
        migrate("online", "tape", "jpeg2000")
        recall("offline container, JPEG 2000", "offline")
        services.archive.stop()
        services.close()
    finally:
        moto.terminate()
        if admin is not None:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
            admin.dispose()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"database: {'PostgreSQL' if args.database_url else 'SQLite'}; data under {args.tmp}")
    print(f"study: {args.instances} CT instances of {args.size}x{args.size}, {total / 1e6:.1f} MB")
    for label, value in rows:
        print(f"  {label:40} {value}")
    print("reproduce: .venv/bin/python bench/storage.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

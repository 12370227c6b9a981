"""Nothing acknowledged is lost: the server is SIGKILLed while storescu streams hundreds of
instances; after a restart every instance that got a success status is indexed and its file
holds exactly the bytes sent."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlmodel import Session, select

from pacs.archive.index import Instance, InstanceFile
from pacs.db import Database
from tests.archive.corpus import dataset_bytes
from tests.dicom import needs_dcmtk
from tests.process import ServeProcess

COUNT = 300


def make_instances(folder: Path) -> dict[str, Path]:
    """CT instances whose encoding DCMTK sends unchanged (no trailing padding), by SOP Instance UID."""
    folder.mkdir()
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del base[0xFFFCFFFC]
    study, series = generate_uid(), generate_uid()
    out = {}
    for n in range(COUNT):
        base.StudyInstanceUID = study
        base.SeriesInstanceUID = series
        base.SOPInstanceUID = generate_uid()
        base.file_meta.MediaStorageSOPInstanceUID = base.SOPInstanceUID
        base.InstanceNumber = n + 1
        path = folder / f"ct{n:04d}.dcm"
        base.save_as(path, enforce_file_format=True)
        out[str(base.SOPInstanceUID)] = path
    return out


def assert_kept(database_url: str, storage: Path, acknowledged: list[str], files: dict[str, Path]) -> list[str]:
    """Every acknowledged instance indexed, its file holding the bytes sent; the UIDs indexed."""
    db = Database(database_url)
    try:
        with Session(db.engine) as session:
            for uid in acknowledged:
                key = session.exec(select(InstanceFile.key).join(Instance, Instance.id == InstanceFile.instance)
                                   .where(Instance.sop_instance_uid == uid)).first()
                assert key is not None, f"{uid} was acknowledged but is not indexed"
                assert dataset_bytes(storage / key[:2] / key[2:4] / key) == dataset_bytes(files[uid])
            indexed = list(session.exec(select(Instance.sop_instance_uid)).all())
    finally:
        db.dispose()
    assert set(acknowledged) <= set(indexed)
    return indexed


def verbose_storescu(port: int, paths: list[str]) -> subprocess.Popen[str]:
    """DCMTK storescu sending ``paths``, saying what it sends and what each answer was."""
    return subprocess.Popen(["storescu", "-v", "-aec", "PACS", "127.0.0.1", str(port), *paths],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TCP_NODELAY": "1"})


def successes(sender: subprocess.Popen[str]) -> Iterator[str]:
    """Each file ``sender`` got a success status for, as the status arrives."""
    current = None
    assert sender.stdout is not None
    for line in sender.stdout:
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current:
            yield current


@needs_dcmtk
def test_sigkill_during_storescu(tmp_path, database_url):
    files = make_instances(tmp_path / "in")
    by_path = {str(p): uid for uid, p in files.items()}
    server = ServeProcess(tmp_path / "data", database_url, PACS_ARCHIVE__MIN_FREE_BYTES="0").start()
    sender = verbose_storescu(server.dicom_port, sorted(by_path))
    acknowledged: list[str] = []
    killed = False
    for path in successes(sender):
        acknowledged.append(by_path[path])
        if len(acknowledged) == COUNT // 3 and not killed:
            server.kill()  # mid-stream, with objects in flight
            killed = True
    sender.wait(60)
    assert killed and COUNT // 3 <= len(acknowledged) < COUNT

    restarted = ServeProcess(tmp_path / "data", database_url, PACS_ARCHIVE__MIN_FREE_BYTES="0").start()
    try:
        storage = tmp_path / "data" / "storage"
        indexed = assert_kept(database_url, storage, acknowledged, files)
        assert list((storage / ".incoming").iterdir()) == []  # leftovers of the kill are gone
        # and the archive takes the rest
        rest = [str(files[uid]) for uid in files if uid not in set(indexed)]
        result = subprocess.run(["storescu", "-aec", "PACS", "127.0.0.1", str(restarted.dicom_port), *rest],
                                capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        restarted.stop()

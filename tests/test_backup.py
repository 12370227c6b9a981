"""Backup and restore: a backup of a running archive (corpus and HL7 orders), a wipe, a restore into
a new data folder and database that reproduces the same index rows and byte-identical files, and
``pacs serve`` answering a C-FIND from it with the same studies; incremental backups, --verify
finding damage, and the scheduled backup. On SQLite, and on PostgreSQL when
PACS_TEST_DATABASE_URL is set (pg_dump/pg_restore)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from sqlalchemy import create_engine, text

from pacs.backup import snapshots
from pacs.settings import SHIPPED_MAPPINGS
from tests.archive.corpus import build
from tests.archive.test_store import send_file
from tests.conftest import PG_URL, _pg_admin_url
from tests.helpers import send_all
from tests.process import ServeProcess

INDEX_TABLES = ("patient", "patient_identifier", "visit", "imaging_order", "procedure_step", "order_event",
                "study", "series", "instance", "instance_file", "message")
ORDERS = ["adt_a01_ihe.hl7", "orm_o01_nw_ihe.hl7", "orm_o01_nw2_ihe.hl7", "adt_a04_prior_ihe.hl7",
          "orm_o01_nw_prior_ihe.hl7"]


def pacs(*args: str, database_url: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PACS_DATABASE_URL": database_url, "PACS_MAPPINGS_DIR": str(SHIPPED_MAPPINGS)}
    result = subprocess.run([sys.executable, "-m", "pacs.cli", *args], capture_output=True, text=True, env=env,
                            timeout=300)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def _engine(url: str):  # type: ignore[no-untyped-def]
    return create_engine(_pg_admin_url(url))


def rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the index and registry tables, in id order."""
    engine = _engine(url)
    out = {}
    try:
        with engine.connect() as connection:
            for table in INDEX_TABLES:
                out[table] = [dict(r._mapping) for r in connection.execute(text(f'SELECT * FROM "{table}" ORDER BY id'))]
    finally:
        engine.dispose()
    return out


def stored_files(url: str, storage: Path) -> dict[str, bytes]:
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            keys = [r[0] for r in connection.execute(text("SELECT key FROM instance_file ORDER BY id"))]
    finally:
        engine.dispose()
    return {key: (storage / key[:2] / key[2:4] / key).read_bytes() for key in keys}


def studies_by_cfind(port: int) -> set[tuple[str, str]]:
    ae = AE(ae_title="CHECK")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientID = ""
    query.AccessionNumber = ""
    found = {(str(ds.StudyInstanceUID), str(ds.PatientID))
             for status, ds in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
             if status.Status in (0xFF00, 0xFF01)}
    assoc.release()
    return found


@pytest.fixture
def empty_database(database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A database to restore into: a new SQLite file, or a new empty PostgreSQL database."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'restored-db' / 'pacs.db'}"
        return
    assert PG_URL
    name = f"pacs_restore_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(_pg_admin_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_backup_wipe_restore_round_trip(server, settings, database_url, empty_database, tmp_path):
    # an archive in use: orders from the HIS, a varied corpus, some of it for those orders
    assert {a["code"] for a in send_all(server.mllp_port, ORDERS)} == {"AA"}
    corpus = build(tmp_path / "corpus")
    for item in corpus:
        assert send_file(server.dicom_port, item.path, syntax=item.transfer_syntax).Status == 0, item.source
    dest = tmp_path / "backup"

    # backed up while it runs; a second backup copies nothing new
    first = json.loads(pacs("backup", str(dest), "--data-dir", str(settings.data_dir), "--json",
                            database_url=database_url).stdout)
    assert first["files"] == len(corpus) and first["copied"] == len(corpus) and first["problems"] == []
    again = json.loads(pacs("backup", str(dest), "--data-dir", str(settings.data_dir), "--json",
                            database_url=database_url).stdout)
    assert again["copied"] == 0 and again["files"] == len(corpus)
    assert len(snapshots(dest)) == 2
    verified = pacs("backup", "--verify", str(dest), database_url=database_url)
    assert "OK" in verified.stdout

    before_rows = rows(database_url)
    before_files = stored_files(database_url, settings.storage_dir)
    before_studies = {(c.study_instance_uid) for c in corpus}
    assert len(before_rows["instance"]) == len(corpus) and before_rows["imaging_order"]

    # wiped: a new data folder and a fresh database; the backup alone brings everything back
    restored_dir = tmp_path / "restored"
    done = pacs("restore", str(dest), "--data-dir", str(restored_dir), "--quiet", database_url=empty_database)
    assert f"{len(corpus)} object(s)" in done.stdout
    assert rows(empty_database) == before_rows
    assert stored_files(empty_database, restored_dir / "storage") == before_files

    # a restore never overwrites
    refused = pacs("restore", str(dest), "--data-dir", str(restored_dir), database_url=empty_database, check=False)
    assert refused.returncode == 1 and "not empty" in refused.stderr

    # and the restored archive serves: the same studies by C-FIND
    served = ServeProcess(restored_dir, empty_database).start()
    try:
        found = studies_by_cfind(served.dicom_port)
    finally:
        served.terminate()
    assert {uid for uid, _patient in found} == before_studies
    patients = {r["id"]: r["patient_id"] for r in before_rows["patient"]}
    expected = {(s["study_instance_uid"], patients[s["patient"]]) for s in before_rows["study"]}
    assert found == expected
    # the restore is audited (Import) in the restored log; the backups (Export) in the original
    engine = _engine(empty_database)
    with engine.connect() as connection:
        events = [r[0] for r in connection.execute(text("SELECT event_id FROM audit_event ORDER BY id"))]
    engine.dispose()
    assert events.count("110106") == 1 and "110107" in events  # the first backup (in the second), the restore
    if not empty_database.startswith("sqlite"):  # pg_dump has no statistics: the restore gathers them
        engine = _engine(empty_database)
        with engine.connect() as connection:
            unanalyzed = connection.execute(text(
                "SELECT relname FROM pg_stat_user_tables WHERE relname IN ('instance', 'message', 'patient') "
                "AND last_analyze IS NULL AND last_autoanalyze IS NULL")).scalars().all()
        engine.dispose()
        assert unanalyzed == []


def test_verify_finds_damage(server, settings, database_url, tmp_path):
    corpus = build(tmp_path / "corpus", [("CT_small.dcm", ""), ("MR_small_RLE.dcm", "-xr")])
    for item in corpus:
        assert send_file(server.dicom_port, item.path, syntax=item.transfer_syntax).Status == 0
    dest = tmp_path / "backup"
    pacs("backup", str(dest), "--data-dir", str(settings.data_dir), database_url=database_url)
    objects = sorted(p for p in (dest / "objects").glob("??/??/*") if p.is_file())
    assert len(objects) == 2
    damaged = bytearray(objects[0].read_bytes())
    damaged[-1] ^= 0xFF
    objects[0].write_bytes(bytes(damaged))
    quick = pacs("backup", "--verify", "--quick", str(dest), database_url=database_url)  # sizes only
    assert "OK" in quick.stdout
    result = pacs("backup", "--verify", str(dest), database_url=database_url, check=False)
    assert result.returncode == 1 and "damaged" in result.stdout
    objects[1].unlink()
    result = pacs("backup", "--verify", "--quick", str(dest), database_url=database_url, check=False)
    assert result.returncode == 1 and "missing" in result.stdout
    # a damaged database copy
    [name] = snapshots(dest)
    database = next((dest / "snapshots" / name).glob("database.*"))
    database.write_bytes(database.read_bytes()[:-100])
    result = pacs("backup", "--verify", str(dest), database_url=database_url, check=False)
    assert "does not match its recorded SHA-256" in result.stdout
    # a damaged copy in the archive is reported, and the backup says it is incomplete
    key = next(p for p in settings.storage_dir.glob("??/??/*") if p.is_file())
    flipped = bytearray(key.read_bytes())
    flipped[-1] ^= 0xFF
    key.write_bytes(bytes(flipped))
    result = pacs("backup", str(tmp_path / "second"), "--data-dir", str(settings.data_dir), database_url=database_url,
                  check=False)
    assert result.returncode == 1 and "no longer match the SHA-256 recorded at storage" in result.stdout
    assert "when backed up" in pacs("backup", "--verify", str(tmp_path / "second"), database_url=database_url,
                                    check=False).stdout


def test_backup_refuses_a_folder_of_something_else(settings, database_url, tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"\xff\xd8")
    result = pacs("backup", str(other), "--data-dir", str(settings.data_dir), database_url=database_url, check=False)
    assert result.returncode == 1 and "not a pacs backup folder" in result.stderr


def test_old_snapshots_go_with_the_objects_only_they_need(server, settings, database_url, tmp_path):
    dest = tmp_path / "backup"
    first = build(tmp_path / "one", [("CT_small.dcm", "")])[0]
    assert send_file(server.dicom_port, first.path).Status == 0
    pacs("backup", str(dest), "--data-dir", str(settings.data_dir), "--keep", "1", database_url=database_url)
    retention = server.server.services.retention
    from datetime import timedelta

    from sqlmodel import Session, select

    from pacs.archive.index import Instance
    from pacs.archive.retention import reject
    from pacs.audit import codes
    from pacs.db import utcnow

    with Session(server.db.engine) as session:
        reject(session, list(session.exec(select(Instance.id)).all()), codes.REJECTED_FOR_QUALITY)
        session.commit()
    retention.purge(now=utcnow() + timedelta(days=365))
    second = build(tmp_path / "two", [("MR_small.dcm", "")])[0]
    assert send_file(server.dicom_port, second.path).Status == 0
    result = json.loads(pacs("backup", str(dest), "--data-dir", str(settings.data_dir), "--keep", "1", "--json",
                             database_url=database_url).stdout)
    assert len(result["pruned_snapshots"]) == 1 and result["pruned_objects"] == 1
    assert len(snapshots(dest)) == 1 and len(list((dest / "objects").glob("??/??/*"))) == 1


def test_scheduled_backup(start_server, tmp_path):
    dest = tmp_path / "scheduled"
    server = start_server(backup={"dest": dest, "interval_hours": 24})
    corpus = build(tmp_path / "corpus", [("CT_small.dcm", "")])
    assert send_file(server.dicom_port, corpus[0].path).Status == 0
    housekeeping = server.server.services.housekeeping
    assert "backup" in housekeeping.run_due()  # no snapshot yet: due at once
    assert len(snapshots(dest)) == 1
    assert "backup" not in housekeeping.run_due()  # the next one in 24 hours
    services = server.server.services
    services.audit.flush()
    with services.db.engine.connect() as connection:
        [(target, outcome)] = list(connection.execute(text(
            "SELECT target, outcome FROM audit_event WHERE event_id = '110106'")))
    assert target == str(dest) and outcome == 0

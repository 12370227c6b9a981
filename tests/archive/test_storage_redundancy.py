"""Redundancy and integrity: every object written to two areas (a folder and an S3 bucket on
moto's server), the replicator catching up after a restart, and the scrubber repairing a corrupt
copy and re-creating a missing one from a good copy."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import update
from sqlmodel import Session, col, func, select

from pacs.archive.storage.tables import PendingReplica
from tests.archive.s3server import free_port, moto_s3  # noqa: F401  (fixture)
from tests.archive.storage_helpers import (
    areas_of,
    cget,
    copies,
    dataset_of,
    good_copies,
    make_study,
    send,
    storage,
    storage_config,
)
from tests.conftest import RunningServer


def wait_for(condition, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def pending(server) -> int:
    with Session(server.db.engine) as session:
        return session.exec(select(func.count()).select_from(PendingReplica)).one()


def test_every_object_is_written_to_two_areas(start_server, tmp_path, moto_s3):  # noqa: F811
    server = start_server(storage=storage_config(tmp_path, moto_s3, write=["online", "s3"]))
    study = make_study(tmp_path / "study", 8, size=64)
    send(server.dicom_port, study.paths)
    wait_for(lambda: pending(server) == 0 and all(
        len(group) == 2 for group in copies(server, study.study_uid).values()), what="replicas")
    assert areas_of(server, study.study_uid) == {"online", "s3"}
    assert all(n == 2 for n in good_copies(server, study.study_uid).values())
    manager = storage(server)
    for group in copies(server, study.study_uid).values():
        online, replica = sorted(group, key=lambda c: c.area != "online")
        assert manager.areas["s3"].read(replica.key) == manager.areas["online"].read(online.key)
    status = manager.status()
    assert status["areas"]["s3"]["copies"] == status["areas"]["online"]["copies"] == 8
    assert status["pending_replicas"] == {}


def test_the_replicator_catches_up_after_a_restart(settings, start_server, tmp_path, moto_s3):  # noqa: F811
    down = storage_config(tmp_path, None, write=["online", "s3"],
                          areas=[{"name": "s3", "kind": "s3", "tier": "nearline", "bucket": "later",
                                  "endpoint_url": f"http://127.0.0.1:{free_port()}", "access_key": "x",
                                  "secret_key": "x"}])
    server = RunningServer(settings.model_copy(update={"storage": down})).start()
    study = make_study(tmp_path / "study", 4, size=64)
    send(server.dicom_port, study.paths)  # the ACK does not wait for the second area
    assert pending(server) == 4
    wait_for(lambda: storage(server).status()["pending_replicas"].get("s3", {}).get("max_attempts", 0) >= 1,
             what="a failed attempt")
    server.stop()
    up = storage_config(tmp_path, None, write=["online", "s3"],
                        areas=[moto_s3.area_settings("s3", "later")])
    again = start_server(storage=up)  # the same data folder and database
    # Retry now rather than after the backoff; in one statement, as the restarted replicator
    # may take a row meanwhile.
    with Session(again.db.engine) as session:
        session.execute(update(PendingReplica).values(next_attempt_at=col(PendingReplica.created_at)))
        session.commit()
    # Two more replicators at once, beside the restarted one: each replica is written once.
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: storage(again).replicate_pending(), range(2)))
    wait_for(lambda: pending(again) == 0, what="the replicas")
    assert areas_of(again, study.study_uid) == {"online", "s3"}
    assert all(n == 2 for n in good_copies(again, study.study_uid).values()), good_copies(again, study.study_uid)


def test_scrubber_repairs_a_corrupt_replica_and_recreates_a_missing_one(start_server, tmp_path, moto_s3):  # noqa: F811
    server = start_server(storage=storage_config(tmp_path, moto_s3, write=["online", "s3"]))
    study = make_study(tmp_path / "study", 4, size=64)
    send(server.dicom_port, study.paths)
    wait_for(lambda: pending(server) == 0 and len(areas_of(server, study.study_uid)) == 2, what="replicas")
    manager = storage(server)
    online, s3 = manager.areas["online"], manager.areas["s3"]
    groups = list(copies(server, study.study_uid).values())
    by_area = [{c.area: c for c in group} for group in groups]
    # 1: the online copy's bytes rot; 2: the S3 replica is damaged; 3: the S3 replica is gone
    path = online.path(by_area[0]["online"].key)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    s3.client.put_object(Bucket=s3.bucket, Key=s3.prefix + by_area[1]["s3"].key, Body=b"not what was stored")
    s3.remove(by_area[2]["s3"].key)

    run = manager.scrub()
    assert (run.checked, run.corrupt, run.missing, run.repaired, run.unrepairable) == (8, 2, 1, 3, 0)
    assert all(n == 2 for n in good_copies(server, study.study_uid).values())
    for index in (0, 1, 2):
        group = {c.area: c for c in copies(server, study.study_uid)[study.sop_instance_uids[index]]}
        assert dataset_of(online.read(group["online"].key)) == dataset_of(study.paths[index].read_bytes())
        assert s3.read(group["s3"].key) == online.read(group["online"].key)
    assert manager.scrub().corrupt == 0
    status = manager.status()["last_scrub"]
    assert status["checked"] == 8 and status["repaired"] == 0 and status["finished_at"]


def test_no_good_copy_left_is_reported_not_hidden(start_server, tmp_path):
    server = start_server(storage=storage_config(tmp_path))
    study = make_study(tmp_path / "study", 2, size=64)
    send(server.dicom_port, study.paths)
    manager = storage(server)
    [copy] = copies(server, study.study_uid)[study.sop_instance_uids[0]]
    manager.areas["online"].path(copy.key).write_bytes(b"rotten")
    run = manager.scrub()
    assert (run.corrupt, run.repaired, run.unrepairable) == (1, 0, 1)
    received, final = cget(server.dicom_port, study.study_uid, [ExplicitVRLittleEndian])
    assert final.NumberOfCompletedSuboperations == 1  # the intact one still goes out


def test_objects_the_index_does_not_know_are_counted(start_server, tmp_path):
    server = start_server(storage=storage_config(tmp_path))
    manager = storage(server)
    manager.areas["nearline"].put_bytes(b"left behind by a crash between write and index")
    assert manager.scrub().orphans == 1

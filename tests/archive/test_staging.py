"""Objects answered once durable (``[archive] acknowledge = "durable"``) and indexed after.

store() stages the object and answers; the index writer files and indexes it. What a process
ending at the wrong moment leaves staged is indexed at the next start (Archive.recover), exactly
once; an object the writer cannot index yet stays staged and is tried again."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pydicom
from sqlmodel import Session, func, select

from pacs.archive import store as store_module
from pacs.archive.index import Instance, InstanceFile
from pacs.archive.status import Status
from pacs.archive.store import Outcome
from pacs.server import Services
from tests.archive.corpus import build


def received(tmp_path: Path, number: int) -> tuple[Path, str]:
    """A copy of a CT object where pynetdicom would spool it (the area's incoming folder)."""
    source = build(tmp_path / f"src-{number}", [("CT_small.dcm", "")])[0].path
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.78.{number}"
    path = tmp_path / f"ct-{number}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds.SOPInstanceUID


def spool(services: Services, path: Path) -> Path:
    target = services.archive.area.incoming / path.name  # type: ignore[attr-defined]
    shutil.copy(path, target)
    return target


def indexed(services: Services) -> dict[str, str]:
    with Session(services.db.engine) as session:
        rows = session.exec(select(Instance.sop_instance_uid, InstanceFile.key)
                            .join(InstanceFile, InstanceFile.instance == Instance.id)).all()
    return dict(rows)


def staged(services: Services) -> list[str]:
    return sorted(p.name for p in services.archive.area.staging.iterdir())  # type: ignore[attr-defined]


def test_answered_before_indexed_and_indexed_at_the_next_start(settings, tmp_path):
    first = Services.build(settings)  # its index writer never starts: the process "ends" here
    sent = {}
    for number in range(3):
        path, uid = received(tmp_path, number)
        result = first.archive.store(spool(first, path), calling_ae="CT1", move=True, early=True)
        assert (result.outcome, result.status) == (Outcome.STORED, Status.SUCCESS) and result.pending is not None
        sent[uid] = path
    assert indexed(first) == {} and len(staged(first)) == 3
    again = first.archive.store(spool(first, sent[uid]), calling_ae="CT1", move=True, early=True)
    assert again.status == store_module.WARNING_DUPLICATE  # waiting for the index, yet already held
    first.db.dispose()

    second = Services.build(settings)
    second.archive.start()
    try:
        assert second.archive.recover() == 3
    finally:
        second.archive.stop()
    rows = indexed(second)
    assert set(rows) == set(sent) and staged(second) == []
    for uid, key in rows.items():
        filed = second.archive.area.local_path(key)
        assert filed.read_bytes() == sent[uid].read_bytes()
        with Session(second.db.engine) as session:
            checksum = session.exec(select(Instance.checksum).where(Instance.sop_instance_uid == uid)).one()
        assert checksum == hashlib.sha256(filed.read_bytes()).hexdigest()
    with Session(second.db.engine) as session:
        assert session.exec(select(Instance.id).join(InstanceFile, InstanceFile.instance == Instance.id)
                            .where(InstanceFile.key == next(iter(rows.values())))).all()
    second.db.dispose()


def test_indexed_and_still_staged_is_not_indexed_twice(settings, tmp_path):
    services = Services.build(settings)
    services.archive.start()
    path, uid = received(tmp_path, 1)
    result = services.archive.store(spool(services, path), calling_ae="CT1", move=True, early=True)
    assert result.pending is not None and result.pending.result(10).outcome == Outcome.STORED
    services.archive.stop()
    assert staged(services) == []  # forgotten once the filed name was synced
    key = indexed(services)[uid]
    # the process ended after the commit and before forgetting the staged name
    area = services.archive.area
    area.staging.joinpath(f"{key}.{'CT1'.encode().hex()}").hardlink_to(area.local_path(key))  # type: ignore[attr-defined]
    services.archive.start()
    try:
        assert services.archive.recover() == 0
    finally:
        services.archive.stop()
    assert staged(services) == [] and indexed(services) == {uid: key}
    with Session(services.db.engine) as session:
        assert session.exec(select(func.count()).select_from(Instance)).one() == 1
    services.db.dispose()


def test_an_object_the_writer_cannot_index_yet_stays_staged_and_is_tried_again(settings, tmp_path, monkeypatch):
    services = Services.build(settings)
    archive = services.archive
    failures = []
    index = archive._index

    def failing_once(session, job, counts):  # type: ignore[no-untyped-def]
        if not failures:
            failures.append(job.stored.key)
            raise RuntimeError("the database went away")
        return index(session, job, counts)

    monkeypatch.setattr(archive, "_index", failing_once)
    monkeypatch.setattr(store_module, "RETRY_MAX_SECONDS", 0.2)
    archive.start()
    try:
        path, uid = received(tmp_path, 1)
        result = archive.store(spool(services, path), calling_ae="CT1", move=True, early=True)
        assert result.status == Status.SUCCESS
        time.sleep(0.1)
        assert failures and indexed(services) == {} and len(staged(services)) == 1
        assert result.pending is not None and result.pending.result(10).outcome == Outcome.STORED
        assert uid in indexed(services)
    finally:
        archive.stop()
    assert staged(services) == []
    services.db.dispose()


def test_a_summary_reads_the_staged_header_only_for_what_it_lacks(tmp_path, monkeypatch):
    """What a receiver sends the main process's index writer (store.Summary): the values every
    instance is indexed by, the whole header read from the staged file only when asked for more."""
    path, uid = received(tmp_path, 1)
    ds = pydicom.dcmread(path)
    values = store_module.summary_of(ds)
    reads: list[Path] = []
    read_header = store_module.read_header
    monkeypatch.setattr(store_module, "read_header", lambda p: reads.append(p) or read_header(p))
    summary = store_module.Summary(values, path)
    assert store_module._text(summary, "SOPInstanceUID") == uid
    assert store_module._int(summary, "Rows") == ds.Rows and "StudyInstanceUID" in summary
    assert reads == []
    assert store_module._text(summary, "PatientID") == ds.PatientID and summary.PatientName == ds.PatientName
    assert reads == [path]  # once, then kept


def test_objects_answered_already_share_a_commit_unless_the_process_is_receiving(settings, tmp_path, monkeypatch):
    services = Services.build(settings)
    archive = services.archive
    batches: list[int] = []
    index_batch = archive._index_batch
    monkeypatch.setattr(archive, "_index_batch", lambda batch: batches.append(len(batch)) or index_batch(batch))
    archive.start()
    try:
        for receiving in (0, 1):
            archive.receiving = lambda receiving=receiving: receiving
            batches.clear()
            pending = []
            paths = [received(tmp_path, 10 * receiving + number)[0] for number in range(5)]  # made beforehand:
            # only the pause below between two objects, whatever the machine's load. Gathering waits
            # GATHER_SECONDS for more: objects 5 ms apart share a batch then; objects half of that
            # apart would share one two by two, and without the wait each has its own.
            pause = store_module.GATHER_SECONDS * 0.5 if receiving else 0.005
            for path in paths:  # answered one after the other, as over one association
                pending.append(archive.store(spool(services, path), calling_ae="CT1", move=True, early=True).pending)
                time.sleep(pause)
            assert all(future is not None and future.result(10).outcome == Outcome.STORED for future in pending)
            assert sum(batches) == 5
            if receiving:
                assert len(batches) >= 4  # as they come: a larger batch would hold up the receiving
            else:
                assert len(batches) <= 2  # gathered
    finally:
        archive.stop()
    assert len(indexed(services)) == 10
    services.db.dispose()


def test_an_object_its_receiver_could_not_get_to_disk_is_not_stored(settings, tmp_path):
    """The receiving side's write or fsync failed (HashingSpool.sync False): store() answers
    a failure and nothing is staged or indexed; a spool that got there is stored."""
    import os

    from pacs.archive.spool import HashingSpool

    services = Services.build(settings)
    services.archive.start()
    try:
        incoming = services.archive.area.incoming  # type: ignore[attr-defined]
        results = []
        for number, fail in [(0, True), (1, False)]:
            path, _ = received(tmp_path, number)
            file = HashingSpool(dir=str(incoming))
            file.write(path.read_bytes())
            if fail:  # a descriptor that cannot be written or synced: the last write or the fsync fails
                readonly = os.open(os.devnull, os.O_RDONLY)
                os.dup2(readonly, file.file.fileno())
                os.close(readonly)
            results.append(services.archive.store(Path(file.name), calling_ae="CT1", move=True, early=True,
                                                  spooled=file))
            file.close()
        assert results[0].status == Status.OUT_OF_RESOURCES and results[0].outcome == Outcome.FAILED
        assert results[1].status == Status.SUCCESS
        results[1].pending.result(30)
        assert list(indexed(services)) == ["1.2.826.0.1.3680043.8.498.78.1"]
    finally:
        services.archive.stop()
        services.close()


def test_the_duplicate_look_up_goes_while_the_receiving_side_syncs(settings, tmp_path, monkeypatch):
    """store() looks the object up in the index (a round trip on PostgreSQL) before it waits for
    the receiving side's fsync, which runs meanwhile in the DUL thread; a second copy still gets
    the duplicate's answer."""
    from pacs.archive.spool import HashingSpool

    services = Services.build(settings)
    services.archive.start()
    steps: list[str] = []
    held = services.archive._held
    monkeypatch.setattr(services.archive, "_held", lambda uid: steps.append("look-up") or held(uid))
    try:
        incoming = services.archive.area.incoming  # type: ignore[attr-defined]
        path, _ = received(tmp_path, 7)
        results = []
        for _copy in range(2):
            file = HashingSpool(dir=str(incoming))
            file.write(path.read_bytes())
            sync = file.sync
            monkeypatch.setattr(file, "sync", lambda sync=sync: steps.append("sync") or sync())
            results.append(services.archive.store(Path(file.name), calling_ae="CT1", move=True, early=True,
                                                  spooled=file))
            file.close()
            if results[-1].pending is not None:
                results[-1].pending.result(30)
        assert steps == ["look-up", "sync"] * 2
        assert [r.outcome for r in results] == [Outcome.STORED, Outcome.ALREADY_STORED]
        assert results[1].status == store_module.WARNING_DUPLICATE
    finally:
        services.archive.stop()
        services.close()

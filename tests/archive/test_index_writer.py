"""The index writer's batches: the new instances of series already filed are indexed together
(one look-up, the rows in a few statements); whatever cannot go with them, and all of them when
a statement fails, are indexed one by one, each under its own savepoint, with the counts right."""

from __future__ import annotations

import queue
from pathlib import Path

import pydicom
import pytest
from sqlmodel import Session, select

from pacs.archive import store as store_module
from pacs.archive.index import Instance, Series, Study
from pacs.archive.store import IndexJob, Outcome, summary_of
from pacs.server import Services
from tests.archive.corpus import build
from tests.archive.test_staging import indexed, spool

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.79.1", "1.2.826.0.1.3680043.8.498.79.1.1"


def received(tmp_path: Path, number: int) -> Path:
    """Object ``number`` of one CT series, where pynetdicom would spool it."""
    ds = pydicom.dcmread(build(tmp_path / f"src-{number}", [("CT_small.dcm", "")])[0].path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.SOPInstanceUID = f"{SERIES}.{number}"
    ds.InstanceNumber = number + 1
    path = tmp_path / f"ct-{number}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def answered(services: Services, tmp_path: Path, numbers: range) -> list[IndexJob]:
    """Objects of one CT series, answered once staged; their jobs, taken from the writer's queue
    (its thread is not started: the test hands the batches over itself)."""
    for number in numbers:
        path = received(tmp_path, number)
        result = services.archive.store(spool(services, path), calling_ae="CT1", move=True, early=True)
        assert result.outcome == Outcome.STORED and result.pending is not None
    return drain(services)


def drain(services: Services) -> list[IndexJob]:
    jobs = []
    while True:
        try:
            jobs.append(services.archive._queue.get_nowait())
        except queue.Empty:
            return jobs


def second_copy(services: Services, tmp_path: Path, number: int) -> IndexJob:
    """Another copy of object ``number``, staged by a receiver process and handed to this
    writer (the receiver's duplicate check saw the index before the first copy was in it)."""
    path = received(tmp_path / "again", number)
    target = spool(services, path)
    stored = services.archive.area.stage(target, "CT2", checksum="", synced=False)  # type: ignore[attr-defined]
    ds = pydicom.dcmread(services.archive.area.staged_path(stored.key, "CT2"), stop_before_pixels=True)  # type: ignore[attr-defined]
    services.archive.index_staged(stored.key, "CT2", summary_of(ds), str(ds.file_meta.TransferSyntaxUID),
                                  stored.size)
    [job] = drain(services)
    return job


def alone_spy(services: Services, monkeypatch: pytest.MonkeyPatch) -> list[IndexJob]:
    alone: list[IndexJob] = []
    index_one = services.archive._index_one
    monkeypatch.setattr(services.archive, "_index_one",
                        lambda session, job, counts: alone.append(job) or index_one(session, job, counts))
    return alone


def counts(services: Services) -> tuple[int, int, int, int]:
    with Session(services.db.engine) as session:
        series = session.exec(select(Series)).one()
        study = session.exec(select(Study)).one()
        return series.number_of_instances, study.number_of_instances, study.number_of_series, study.size_bytes


def sizes(services: Services) -> int:
    with Session(services.db.engine) as session:
        return sum(session.exec(select(Instance.size)).all())


def test_new_instances_of_a_known_series_are_indexed_together(settings, tmp_path, monkeypatch):
    services = Services.build(settings)
    jobs = answered(services, tmp_path, range(6))
    services.archive._index_batch(jobs[:1])  # files the study and the series
    alone = alone_spy(services, monkeypatch)
    services.archive._index_batch(jobs[1:])
    assert alone == []
    results = [job.future.result(0) for job in jobs]
    assert {r.outcome for r in results} == {Outcome.STORED}
    with Session(services.db.engine) as session:  # each answer names its own object's row
        uids = dict(session.exec(select(Instance.id, Instance.sop_instance_uid)).all())
    assert [uids[r.instance] for r in results] == [f"{SERIES}.{number}" for number in range(6)]
    assert set(indexed(services)) == set(uids.values())
    assert counts(services) == (6, 6, 1, sizes(services))
    services.db.dispose()


def test_a_copy_indexed_already_goes_alone_and_the_rest_together(settings, tmp_path, monkeypatch):
    services = Services.build(settings)
    jobs = answered(services, tmp_path, range(4))
    services.archive._index_batch(jobs[:1])
    copy = second_copy(services, tmp_path, 0)
    alone = alone_spy(services, monkeypatch)
    services.archive._index_batch([jobs[1], copy, *jobs[2:]])
    assert alone == [copy]
    assert copy.future.result(0).outcome == Outcome.ALREADY_STORED
    assert [job.future.result(0).outcome for job in jobs] == [Outcome.STORED] * 4
    assert counts(services) == (4, 4, 1, sizes(services))
    services.db.dispose()


def test_a_batch_whose_insert_fails_is_indexed_one_by_one(settings, tmp_path, monkeypatch):
    """The look-up misses a copy another writer indexed (made blind here): the batch's INSERT
    breaks the unique key, everything it did is undone, and each object is indexed alone: the
    copy answered as one, the others stored, each counted once."""
    services = Services.build(settings)
    jobs = answered(services, tmp_path, range(4))
    services.archive._index_batch(jobs[:1])
    copy = second_copy(services, tmp_path, 0)
    monkeypatch.setattr(store_module, "_indexed_already", lambda connection, uids: [])
    alone = alone_spy(services, monkeypatch)
    batch = [jobs[1], jobs[2], copy, jobs[3]]
    services.archive._index_batch(batch)
    assert alone == batch
    assert copy.future.result(0).outcome == Outcome.ALREADY_STORED
    assert [job.future.result(0).outcome for job in jobs] == [Outcome.STORED] * 4
    assert counts(services) == (4, 4, 1, sizes(services))
    assert len(indexed(services)) == 4
    services.db.dispose()

"""Tiers: migrate → recall round trips on every kind of area, lossless compression on the way,
C-GET and C-MOVE of nearline and offline studies working without the client noticing, rules,
cache eviction, and crash safety of migration."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless
from sqlmodel import Session

from pacs.archive.index import Study
from pacs.db import utcnow
from pacs.settings import Peer, StorageRule
from tests.archive.s3server import free_port, moto_s3  # noqa: F401  (fixture)
from tests.archive.storage_helpers import (
    StoreSCP,
    areas_of,
    cget,
    cmove,
    copies,
    dataset_of,
    good_copies,
    make_study,
    online_bytes,
    send,
    storage,
    storage_config,
    study_id,
)


@pytest.fixture
def tiered(start_server, tmp_path, moto_s3):  # noqa: F811
    return start_server(storage=storage_config(tmp_path, moto_s3))


@pytest.mark.parametrize("target", ["nearline", "s3", "tape"])
def test_migrate_then_recall_is_byte_identical(tiered, tmp_path, target):
    study = make_study(tmp_path / "study", 6, size=64)
    send(tiered.dicom_port, study.paths)
    sid = study_id(tiered, study.study_uid)
    manager = storage(tiered)

    result = manager.migrate_study(sid, "online", target)
    assert (result.copied, result.removed, result.failed) == (6, 6, 0)
    assert areas_of(tiered, study.study_uid) == {target}
    assert not any(manager.areas["online"].exists(c.key) for g in copies(tiered, study.study_uid).values()
                   for c in g if c.area == "online")
    if target == "tape":
        assert len({c.key.split("/")[0] for g in copies(tiered, study.study_uid).values() for c in g}) == 1

    recalled = manager.recall(sid)
    assert recalled.recalled == 6 and recalled.failed == 0
    assert areas_of(tiered, study.study_uid) == {target, "online"}
    got = online_bytes(tiered, study.study_uid)
    for path, uid in zip(study.paths, study.sop_instance_uids, strict=True):
        assert dataset_of(got[uid]) == dataset_of(path.read_bytes())  # byte for byte
    assert manager.recall(sid).recalled == 0  # already online: nothing to do


def test_down_the_tiers_and_back(tiered, tmp_path):
    study = make_study(tmp_path / "study", 4, size=64)
    send(tiered.dicom_port, study.paths)
    sid = study_id(tiered, study.study_uid)
    manager = storage(tiered)
    manager.migrate_study(sid, "online", "nearline")
    manager.migrate_study(sid, "nearline", "s3")
    manager.migrate_study(sid, "s3", "tape")
    assert areas_of(tiered, study.study_uid) == {"tape"}
    assert manager.default_sources(sid, "online") == ["tape"]
    manager.migrate_study(sid, manager.default_sources(sid, "online"), "online")  # back for good
    assert areas_of(tiered, study.study_uid) == {"online"}
    got = online_bytes(tiered, study.study_uid)
    assert [dataset_of(got[u]) for u in study.sop_instance_uids] == [dataset_of(p.read_bytes()) for p in study.paths]
    assert not any(c.cached for g in copies(tiered, study.study_uid).values() for c in g)


@pytest.mark.parametrize(("method", "syntax"), [("jpeg-ls", JPEGLSLossless), ("jpeg2000", JPEG2000Lossless)])
def test_lossless_compression_on_the_way_is_bit_exact(tiered, tmp_path, method, syntax):
    study = make_study(tmp_path / "study", 3, size=512)
    send(tiered.dicom_port, study.paths)
    sid = study_id(tiered, study.study_uid)
    manager = storage(tiered)
    result = manager.migrate_study(sid, "online", "nearline", compress_with=method)
    assert result.compressed == 3 and result.bytes_written < result.bytes_read
    for group in copies(tiered, study.study_uid).values():
        assert [c.transfer_syntax_uid for c in group] == [syntax]

    # a viewer that takes only uncompressed data: recalled, decoded on the way, pixels bit-exact
    received, final = cget(tiered.dicom_port, study.study_uid, [ExplicitVRLittleEndian])
    assert final.Status == 0 and final.NumberOfCompletedSuboperations == 3
    originals = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in study.paths}
    for ds in received:
        original = originals[str(ds.SOPInstanceUID)]
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, original.pixel_array)
        assert ds.PatientID == original.PatientID and ds.StudyInstanceUID == original.StudyInstanceUID
    # one that takes the compressed syntax gets it as kept
    received, final = cget(tiered.dicom_port, study.study_uid, [str(syntax), ExplicitVRLittleEndian])
    assert final.Status == 0 and {str(ds.file_meta.TransferSyntaxUID) for ds in received} == {str(syntax)}
    for ds in received:
        assert np.array_equal(ds.pixel_array, originals[str(ds.SOPInstanceUID)].pixel_array)


@pytest.mark.parametrize("tier_area", ["nearline", "s3", "tape"])
def test_c_get_of_a_study_not_online_is_transparent(tiered, tmp_path, tier_area):
    study = make_study(tmp_path / "study", 5, size=64)
    send(tiered.dicom_port, study.paths)
    sid = study_id(tiered, study.study_uid)
    storage(tiered).migrate_study(sid, "online", tier_area)
    received, final = cget(tiered.dicom_port, study.study_uid, [ExplicitVRLittleEndian])
    assert final.Status == 0 and final.NumberOfCompletedSuboperations == 5
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(study.sop_instance_uids)
    assert areas_of(tiered, study.study_uid) == {tier_area, "online"}
    with Session(tiered.db.engine) as session:
        assert session.get(Study, sid).last_accessed_at is not None


def test_c_move_of_an_offline_study_is_transparent(start_server, tmp_path):
    port = free_port()
    receiver = StoreSCP(port)
    try:
        server = start_server(storage=storage_config(tmp_path),
                              peers=[Peer(ae_title="WORKSTATION", host="127.0.0.1", port=port)])
        study = make_study(tmp_path / "study", 5, size=64)
        send(server.dicom_port, study.paths)
        sid = study_id(server, study.study_uid)
        storage(server).migrate_study(sid, "online", "tape")
        final = cmove(server.dicom_port, study.study_uid, "WORKSTATION")
        assert final.Status == 0 and final.NumberOfCompletedSuboperations == 5
        by_uid = {str(ds.SOPInstanceUID): ds for ds in receiver.received}
        for path in study.paths:
            original = pydicom.dcmread(path)
            assert by_uid[str(original.SOPInstanceUID)].PixelData == original.PixelData
    finally:
        receiver.stop()


def test_rules_pick_studies_by_age_modality_size_and_access(start_server, tmp_path):
    rules = [StorageRule(name="old-ct", **{"from": "online"}, to="nearline", older_than_days=365, modality=["CT"]),
             StorageRule(name="big", **{"from": "online"}, to="tape", min_study_bytes=200_000),
             StorageRule(name="unread", **{"from": "nearline"}, to="tape", not_accessed_days=30)]
    server = start_server(storage=storage_config(tmp_path, rules=rules))
    old_ct = make_study(tmp_path / "a", 2, size=64, study_date="20200101")
    new_ct = make_study(tmp_path / "b", 2, size=64, study_date=utcnow().strftime("%Y%m%d"))
    old_mr = make_study(tmp_path / "c", 2, size=64, modality="MR", study_date="20200101")
    big = make_study(tmp_path / "d", 2, size=256, modality="MR", study_date=utcnow().strftime("%Y%m%d"))
    for study in (old_ct, new_ct, old_mr, big):
        send(server.dicom_port, study.paths)
    manager = storage(server)
    [old_rule, big_rule, unread_rule] = rules
    assert manager.candidates(old_rule) == [study_id(server, old_ct.study_uid)]
    assert manager.candidates(big_rule) == [study_id(server, big.study_uid)]
    dry = manager.apply_rule(old_rule, dry_run=True)
    assert [r.copied for r in dry] == [2] and areas_of(server, old_ct.study_uid) == {"online"}
    manager.run_scheduled()
    assert areas_of(server, old_ct.study_uid) == {"nearline"}
    assert areas_of(server, big.study_uid) == {"tape"}
    assert areas_of(server, new_ct.study_uid) == areas_of(server, old_mr.study_uid) == {"online"}
    # not accessed for 30 days: the old CT arrived just now, so not yet; as if it was long ago:
    assert manager.candidates(unread_rule) == []
    later = manager.candidates(unread_rule, now=utcnow().replace(year=utcnow().year + 1))
    assert later == [study_id(server, old_ct.study_uid)]


def test_free_space_watermark_rule(start_server, tmp_path):
    server = start_server(storage=storage_config(tmp_path))
    studies = [make_study(tmp_path / f"s{n}", 1, size=64, seed=n) for n in range(3)]
    for study in studies:
        send(server.dicom_port, study.paths)
    manager = storage(server)
    online = manager.areas["online"]
    assert manager.apply_rule(StorageRule(**{"from": "online"}, to="nearline", when_free_below_bytes=1)) == []
    free = online.free_bytes()
    moved = manager.apply_rule(StorageRule(**{"from": "online"}, to="nearline", when_free_below_bytes=free * 2))
    assert len(moved) == 3  # never reaches twice the disk's free space: everything that may move, moves


def test_cache_evicts_least_recently_used_recalls_never_a_last_copy(start_server, tmp_path):
    studies = [make_study(tmp_path / f"s{n}", 1, size=64, seed=n) for n in range(3)]
    size = max(study.paths[0].stat().st_size for study in studies)
    server = start_server(storage=storage_config(tmp_path, cache_max_bytes=int(2.5 * size)))  # room for two
    manager = storage(server)
    ids = []
    for study in studies:
        send(server.dicom_port, study.paths)
        ids.append(study_id(server, study.study_uid))
        manager.migrate_study(ids[-1], "online", "tape")
    fresh = make_study(tmp_path / "fresh", 1, size=64, seed=9)  # online only, never cached
    send(server.dicom_port, fresh.paths)
    for sid in ids:
        manager.recall(sid)
    # the first recall was evicted when the third came in; the others fit
    assert areas_of(server, studies[0].study_uid) == {"tape"}
    assert areas_of(server, studies[1].study_uid) == areas_of(server, studies[2].study_uid) == {"tape", "online"}
    assert areas_of(server, fresh.study_uid) == {"online"}
    received, final = cget(server.dicom_port, studies[0].study_uid, [ExplicitVRLittleEndian])
    assert final.NumberOfCompletedSuboperations == 1  # recalled again
    assert areas_of(server, studies[0].study_uid) == {"tape", "online"}
    assert areas_of(server, studies[1].study_uid) == {"tape"}  # now the least recently used


class Crash(BaseException):
    """The process dying at this point (no ``except Exception`` runs)."""


def _crash_after(calls: int, function):
    count = 0

    def wrapper(*args, **kwargs):
        nonlocal count
        count += 1
        if count > calls:
            raise Crash()
        return function(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("stage", ["writing", "verifying", "indexing", "removing"])
@pytest.mark.parametrize("target", ["nearline", "tape"])
def test_a_crash_during_migration_leaves_a_good_copy(tiered, tmp_path, monkeypatch, stage, target):
    study = make_study(tmp_path / "study", 5, size=64)
    send(tiered.dicom_port, study.paths)
    sid = study_id(tiered, study.study_uid)
    manager = storage(tiered)
    area, source = manager.areas[target], manager.areas["online"]
    if stage == "writing":
        name = "put_many" if target == "tape" else "put_file"
        monkeypatch.setattr(area, name, _crash_after(0 if target == "tape" else 2, getattr(area, name)))
    elif stage == "verifying":
        monkeypatch.setattr(area, "checksum", _crash_after(3, area.checksum))
    elif stage == "indexing":
        monkeypatch.setattr(manager, "_record_migration", _crash_after(0, manager._record_migration))
    else:
        monkeypatch.setattr(source, "remove", _crash_after(2, source.remove))
    with pytest.raises(Crash):
        manager.migrate_study(sid, "online", target)
    assert all(n >= 1 for n in good_copies(tiered, study.study_uid).values())
    assert len(good_copies(tiered, study.study_uid)) == 5
    monkeypatch.undo()
    manager.migrate_study(sid, "online", target)  # run again: completes
    assert areas_of(tiered, study.study_uid) == {target}
    assert all(n == 1 for n in good_copies(tiered, study.study_uid).values())
    received, final = cget(tiered.dicom_port, study.study_uid, [ExplicitVRLittleEndian])
    assert final.NumberOfCompletedSuboperations == 5

"""Storage SCP: DCMTK storescu sends a varied corpus; every object kept byte for byte and indexed;
bad objects refused with the right status, nothing half-stored, the AE still serving."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import MRImageStorage
from sqlmodel import Session, func, select

from pacs.archive.index import Instance, InstanceFile, Series, Study
from tests.archive.corpus import build, dataset_bytes, storescu
from tests.dicom import needs_dcmtk

PACS = str(Path(sys.executable).parent / "pacs")


def count(db, model) -> int:
    with Session(db.engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def stored_path(server, sop_instance_uid: str) -> Path:
    with Session(server.db.engine) as session:
        key = session.exec(select(InstanceFile.key).join(Instance, Instance.id == InstanceFile.instance)
                           .where(Instance.sop_instance_uid == sop_instance_uid)).one()
    return server.settings.storage_dir / key[:2] / key[2:4] / key


def storage_files(server) -> list[Path]:
    return [p for p in server.settings.storage_dir.glob("??/??/*") if p.is_file()]


@needs_dcmtk
def test_storescu_corpus_is_kept_byte_for_byte(server, tmp_path):
    corpus = build(tmp_path / "corpus")
    result = storescu(server.dicom_port, corpus)
    assert result.returncode == 0, result.stdout + result.stderr
    assert count(server.db, Instance) == len(corpus) == count(server.db, Study)
    with Session(server.db.engine) as session:
        for item in corpus:
            row = session.exec(select(Instance).where(Instance.sop_instance_uid == item.sop_instance_uid)).one()
            assert row.transfer_syntax_uid == item.transfer_syntax, item.source  # kept as received
            assert row.sop_class_uid == item.sop_class_uid
    for item in corpus:  # DCMTK re-encodes what it sends (it drops trailing padding, for one)
        stored = pydicom.dcmread(stored_path(server, item.sop_instance_uid))
        assert stored.PixelData == pydicom.dcmread(item.path).PixelData, item.source
    assert list((server.settings.storage_dir / ".incoming").iterdir()) == []


def test_objects_are_kept_exactly_as_received(server, tmp_path):
    """pynetdicom sends each file's data set bytes unchanged; the archive must keep them so."""
    corpus = build(tmp_path / "corpus")
    for item in corpus:
        assert send_file(server.dicom_port, item.path, syntax=item.transfer_syntax).Status == 0, item.source
    for item in corpus:
        assert dataset_bytes(stored_path(server, item.sop_instance_uid)) == dataset_bytes(item.path), item.source


@needs_dcmtk
@pytest.mark.parametrize("acknowledge", ["indexed", "durable"])
def test_received_objects_are_hashed(start_server, tmp_path, monkeypatch, acknowledge):
    """The SHA-256 the index keeps of each object received by C-STORE is the stored file's,
    computed from the bytes as they arrived, whenever the answer goes out: no stored or staged
    file is read back to hash it."""
    import hashlib

    from pacs.archive import storage, store

    server = start_server(archive={"acknowledge": acknowledge})
    read_back: list[Path] = []
    original = storage.sha256_file
    monkeypatch.setattr(storage, "sha256_file", lambda path: read_back.append(path) or original(path))
    monkeypatch.setattr(store, "sha256_file", lambda path: read_back.append(path) or original(path))
    corpus = build(tmp_path / "corpus")
    result = storescu(server.dicom_port, corpus)
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_back == []
    with Session(server.db.engine) as session:
        rows = session.exec(select(Instance.sop_instance_uid, Instance.checksum, InstanceFile.checksum)
                            .join(InstanceFile, InstanceFile.instance == Instance.id)).all()
    assert len(rows) == len(corpus)
    for uid, checksum, file_checksum in rows:
        assert checksum == file_checksum == hashlib.sha256(stored_path(server, uid).read_bytes()).hexdigest()


@needs_dcmtk
def test_same_instance_twice_is_ignored_with_a_warning(server, tmp_path):
    corpus = build(tmp_path / "corpus", [("CT_small.dcm", "")])
    assert storescu(server.dicom_port, corpus).returncode == 0
    again = subprocess.run(["storescu", "-v", "-aec", "PACS", "127.0.0.1", str(server.dicom_port), str(corpus[0].path)],
                           capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"})
    assert "Warning" in again.stdout + again.stderr
    assert count(server.db, Instance) == 1 and len(storage_files(server)) == 1
    with Session(server.db.engine) as session:
        kept = set(session.exec(select(InstanceFile.key)).all())
    staged = {p.name.partition(".")[0] for p in (server.settings.storage_dir / ".staged").iterdir()}
    assert staged <= kept  # the ignored copy's staged name went with it (the first's goes once synced)


def send_file(port: int, path: Path, *, context: str | None = None, syntax: str = ExplicitVRLittleEndian):
    """pynetdicom as an SCU sending a file's bytes as they are (chunked send), whatever they hold."""
    ae = AE(ae_title="BADSCU")
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    ae.add_requested_context(context or meta.MediaStorageSOPClassUID, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()
    return status


def ct(tmp_path: Path, name: str = "ct.dcm", **changes) -> Path:
    ds = pydicom.dcmread(build(tmp_path / f"src-{name}", [("CT_small.dcm", "")])[0].path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def assert_nothing_kept(server) -> None:
    assert count(server.db, Instance) == 0 and count(server.db, Study) == 0 and count(server.db, Series) == 0
    assert storage_files(server) == []
    assert list((server.settings.storage_dir / ".incoming").iterdir()) == []
    assert list((server.settings.storage_dir / ".staged").iterdir()) == []  # nothing a restart would index


def still_serving(server, tmp_path) -> None:
    good = ct(tmp_path, "good.dcm")
    assert send_file(server.dicom_port, good).Status == 0


def test_pixel_data_shorter_than_its_rows_and_columns(server, tmp_path):
    """Checked against its declared length: the pixels themselves are not read to index it."""
    path = ct(tmp_path, Rows=256)  # 128 x 128 x 16 bits sent, 256 x 128 announced
    status = send_file(server.dicom_port, path)
    assert status.Status == 0xC000 and "Pixel Data holds 32768 of 65536 bytes" in status.ErrorComment
    assert_nothing_kept(server)
    still_serving(server, tmp_path)


def test_truncated_dataset(server, tmp_path):
    path = ct(tmp_path)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(path.read_bytes()[:-4000])
    status = send_file(server.dicom_port, truncated)
    assert status.Status == 0xC000 and "truncated" in status.ErrorComment
    assert_nothing_kept(server)
    still_serving(server, tmp_path)


@pytest.mark.parametrize(("change", "comment"), [
    ({"StudyInstanceUID": None}, "StudyInstanceUID is missing"),
    ({"SeriesInstanceUID": "1.2.abc.4"}, "not a valid UID"),
    ({"StudyInstanceUID": "1.2.0003.4"}, "not a valid UID"),
])
def test_missing_or_invalid_uids(server, tmp_path, change, comment):
    status = send_file(server.dicom_port, ct(tmp_path, **change))
    assert status.Status == 0xC000 and comment in status.ErrorComment
    assert_nothing_kept(server)
    still_serving(server, tmp_path)


def test_wrong_vr_of_an_identifying_attribute(server, tmp_path):
    path = ct(tmp_path)
    ds = pydicom.dcmread(path)
    uid = ds.SeriesInstanceUID
    del ds.SeriesInstanceUID
    ds.add_new(0x0020000E, "LO", uid)  # Series Instance UID is UI
    ds.save_as(path, enforce_file_format=True)
    status = send_file(server.dicom_port, path)
    assert status.Status == 0xC000 and "VR LO" in status.ErrorComment
    assert_nothing_kept(server)


def test_sop_class_not_matching_the_context(server, tmp_path):
    """A CT data set sent under an MR Image Storage context (a low-level C-STORE request)."""
    from io import BytesIO

    from pydicom.filewriter import write_dataset
    from pynetdicom.dimse_primitives import C_STORE

    ds = pydicom.dcmread(ct(tmp_path))
    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    encoded = BytesIO()
    write_dataset(pydicom.filebase.DicomFileLike(encoded), ds)
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = MRImageStorage  # announced: MR
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(encoded.getvalue())  # holds: CT
    # As pynetdicom's own send_c_store does: pause the association's reactor so that the
    # response waits for us instead of being taken as unexpected.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    assoc.dimse.send_msg(request, context.context_id)
    _, response = assoc.dimse.get_msg(block=True)
    assoc._reactor_checkpoint.set()
    assoc.release()
    assert response.Status == 0xA900
    assert_nothing_kept(server)
    still_serving(server, tmp_path)


def test_full_storage_is_out_of_resources(start_server, tmp_path):
    server = start_server(archive={"min_free_bytes": 1 << 60})  # no disk is that free
    status = send_file(server.dicom_port, ct(tmp_path))
    assert status.Status == 0xA700
    assert_nothing_kept(server)
    assert server.server.services.db is not None


def test_reject_policy_refuses_the_second_copy(start_server, tmp_path):
    server = start_server(archive={"duplicates": "reject"})
    path = ct(tmp_path)
    assert send_file(server.dicom_port, path).Status == 0
    assert send_file(server.dicom_port, path).Status == 0x0111


def test_keep_newer_policy_replaces_the_file(start_server, tmp_path):
    server = start_server(archive={"duplicates": "keep_newer"})
    path = ct(tmp_path)
    assert send_file(server.dicom_port, path).Status == 0
    first = storage_files(server)
    ds = pydicom.dcmread(path)
    ds.ImageComments = "corrected at the console"
    ds.save_as(path, enforce_file_format=True)
    assert send_file(server.dicom_port, path).Status == 0
    [only] = storage_files(server)
    assert only not in first
    assert pydicom.dcmread(only).ImageComments == "corrected at the console"
    assert count(server.db, Instance) == 1 and count(server.db, InstanceFile) == 1


def test_import_command_uses_the_same_store(settings, tmp_path, database_url):
    corpus = build(tmp_path / "corpus")
    (tmp_path / "corpus" / "notes.txt").write_text("not DICOM")
    env = {**os.environ, "PACS_DATABASE_URL": database_url, "PACS_DATA_DIR": str(settings.data_dir),
           "PACS_ARCHIVE__MIN_FREE_BYTES": "0"}
    result = subprocess.run([PACS, "import",
                             str(tmp_path / "corpus"), "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(corpus)} stored" in result.stdout and "1 refused" in result.stdout
    again = subprocess.run([PACS, "import", str(tmp_path / "corpus"), "--quiet"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert f"{len(corpus)} already stored" in again.stdout


def test_import_dicomdir(settings, tmp_path, database_url):
    from pydicom.fileset import FileSet

    corpus = build(tmp_path / "corpus", [("CT_small.dcm", ""), ("MR_small_implicit.dcm", "")])
    fileset = FileSet()
    for item in corpus:
        fileset.add(item.path)
    fileset.write(tmp_path / "media")
    env = {**os.environ, "PACS_DATABASE_URL": database_url, "PACS_DATA_DIR": str(settings.data_dir),
           "PACS_ARCHIVE__MIN_FREE_BYTES": "0"}
    result = subprocess.run([PACS, "import", str(tmp_path / "media" / "DICOMDIR"),
                             "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "2 stored" in result.stdout, result.stdout + result.stderr


def test_a_uid_with_bytes_no_uid_may_hold(server, tmp_path):
    """A SOP Instance UID with a non-ASCII byte, in the data set and so in the C-STORE-RQ
    command: refused as invalid with 0xC000, the AE still serving."""
    path = ct(tmp_path, "bad-uid.dcm")
    raw = path.read_bytes()
    uid = str(pydicom.dcmread(path).SOPInstanceUID).encode()
    bad = uid[:-1] + b"\xe9"  # same length, the last digit a Latin-1 é
    path.write_bytes(raw.replace(uid, bad))
    status = send_file(server.dicom_port, path)
    assert status.Status == 0xC000 and status.ErrorComment.startswith("SOPInstanceUID")  # "... is not a valid UID"
    assert_nothing_kept(server)
    still_serving(server, tmp_path)


def test_an_object_that_comes_as_the_archive_stops_fails_rather_than_waits(server, tmp_path):
    """store() queued after the index writer took its STOP (a report's delivery in flight when
    the server stops) used to wait for good, holding what its caller held (the outbox's lock on
    its queue): once the writer has ended it is answered with a failure, its file removed."""
    from pacs.archive.store import Outcome

    archive = server.server.services.archive
    archive.stop()
    [item] = build(tmp_path / "corpus", [("CT_small.dcm", "")])
    result = archive.store(item.path, calling_ae="REPORTS")
    assert (result.outcome, result.comment) == (Outcome.FAILED, "the archive is stopping")
    assert storage_files(server) == [] and count(server.db, Instance) == 0
    assert item.path.exists()  # not moved: the caller still has it

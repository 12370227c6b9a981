"""What store() answers Success for is what the index writer can read: an element of an unknown
VR, an attribute the archive indexes encoded with another VR than the data dictionary's, or a
sequence that can't be taken apart is refused with 0xC000 and an Error Comment before the
answer, on the fast path (part10.scan) and on pydicom's alike; anything answered Success is
indexed, found and retrieved as it came."""

from __future__ import annotations

import time

import httpx
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom.sop_class import CTImageStorage
from sqlmodel import Session, select

from pacs.archive import part10, store
from pacs.archive.index import Instance
from pacs.archive.retrieve import correct
from tests.archive.raw import RawStorer, part10_file, plain_ct, with_value, with_vr

SUCCESS, CANNOT_UNDERSTAND = 0x0000, 0xC000
CHARSET, PATIENT_NAME, STUDY_ID, SLICE_THICKNESS = 0x00080005, 0x00100010, 0x00200010, 0x00180050


def indexed(server, uid: str) -> bool:  # type: ignore[no-untyped-def]
    with Session(server.db.engine) as session:
        return session.exec(select(Instance.id).where(Instance.sop_instance_uid == uid)).first() is not None


def nothing_staged(server) -> bool:  # type: ignore[no-untyped-def]
    staging = server.settings.storage_dir / ".staged"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not staging.exists() or not any(p.is_file() for p in staging.rglob("*")):
            return True
        time.sleep(0.05)
    return False


# (tag, the VR a careless encoder wrote, words of the Error Comment)
REFUSED = [
    (CHARSET, "AT", "cannot read the data set"),
    (CHARSET, "US", "cannot read the data set"),
    (STUDY_ID, "SQ", "sequence (0020,0010) cannot be read"),
    (STUDY_ID, "XX", "(0020,0010) has VR 'XX', which PS3.5 does not define"),
    (PATIENT_NAME, "AT", "PatientName (0010,0010) has VR AT, not PN"),
    (PATIENT_NAME, "SQ", "PatientName (0010,0010)"),
    (SLICE_THICKNESS, "XX", "(0018,0050) has VR 'XX'"),
]


@pytest.mark.parametrize(("tag", "vr", "words"), REFUSED, ids=[f"{t:08X}-{v}" for t, v, _ in REFUSED])
def test_an_element_the_index_could_not_read_is_refused_before_the_answer(server, tmp_path, tag, vr, words):
    ds, data = plain_ct(tmp_path)
    assert part10.scan(part10_file(ds, data), len(part10_file(ds, data))) is not None  # the fast path's kind
    with RawStorer(server.dicom_port, [CTImageStorage]) as scu:
        status = scu.store(CTImageStorage, ds.SOPInstanceUID, with_vr(data, tag, vr))
        again = scu.store(CTImageStorage, ds.SOPInstanceUID, data)  # the association goes on
    assert status.Status == CANNOT_UNDERSTAND, status
    assert words in str(status.ErrorComment)
    assert again.Status == SUCCESS
    assert indexed(server, ds.SOPInstanceUID)  # the good copy
    assert nothing_staged(server)  # and nothing stranded


@pytest.mark.parametrize(("tag", "vr", "words"), REFUSED, ids=[f"{t:08X}-{v}" for t, v, _ in REFUSED])
def test_store_and_part10_scan_agree_on_what_is_readable(tmp_path, tag, vr, words):
    """The fast path hands pydicom whatever it does not vouch for; pydicom's path refuses it."""
    ds, data = plain_ct(tmp_path)
    raw = part10_file(ds, with_vr(data, tag, vr))
    assert part10.scan(raw, len(raw)) is None
    path = tmp_path / "mutated.dcm"
    path.write_bytes(raw)
    with pytest.raises(store.Refused) as refused:
        header = store.read_header(path)
        store.check_identity(header)
        store.check_values(header)
    assert refused.value.status == CANNOT_UNDERSTAND and words in refused.value.comment


def test_an_element_the_archive_does_not_index_keeps_its_odd_vr_and_is_retrieved_as_sent(server, tmp_path):
    ds, data = plain_ct(tmp_path)
    odd = with_vr(data, SLICE_THICKNESS, "AT")  # "5.000000" read as tags: nothing indexes it
    with RawStorer(server.dicom_port, [CTImageStorage]) as scu:
        assert scu.store(CTImageStorage, ds.SOPInstanceUID, odd).Status == SUCCESS
    assert indexed(server, ds.SOPInstanceUID) and nothing_staged(server)
    base = f"{server.http_url}/dicomweb/studies/{ds.StudyInstanceUID}"
    with httpx.Client(timeout=30) as http:
        found = http.get(f"{server.http_url}/dicomweb/instances", params={"SOPInstanceUID": ds.SOPInstanceUID})
        assert found.status_code == 200 and len(found.json()) == 1
        whole = http.get(base, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert whole.status_code == 200 and odd in whole.content
        metadata = http.get(f"{base}/metadata")
        assert metadata.status_code == 200 and metadata.json()[0]["00100010"]["vr"] == "PN"


def test_a_nul_in_an_indexed_value_is_indexed_on_every_database(server, tmp_path):
    """PostgreSQL's text holds no NUL: the index keeps U+FFFD in its place, the file the byte."""
    ds, data = plain_ct(tmp_path)
    sent = with_value(data, STUDY_ID, b"A\0B\0")
    sent = with_value(sent, PATIENT_NAME, b"Li\0^Lei\0")
    with RawStorer(server.dicom_port, [CTImageStorage]) as scu:
        assert scu.store(CTImageStorage, ds.SOPInstanceUID, sent).Status == SUCCESS
    assert indexed(server, ds.SOPInstanceUID) and nothing_staged(server)
    with httpx.Client(timeout=30) as http:
        [study] = http.get(f"{server.http_url}/dicomweb/studies",
                           params={"StudyInstanceUID": ds.StudyInstanceUID}).json()
    assert study["00200010"]["Value"] == ["A\ufffdB"]


def test_corrected_values_replace_elements_of_any_vr():
    """A retrieve puts the index's patient into the object it sends: an element the modality
    wrote with another VR is written anew with the dictionary's."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.add(DataElement(PATIENT_NAME, "AT", [0x6F43706D]))
    ds.PatientID = "P1"
    correct(ds, {"PatientName": "张^三", "PatientID": "P10001"})
    assert ds[PATIENT_NAME].VR == "PN" and str(ds.PatientName) == "张^三" and ds.PatientID == "P10001"
    assert ds.SpecificCharacterSet == "ISO_IR 192"


def test_a_long_value_nothing_reads_is_kept_whatever_its_length(server, tmp_path):
    """A private FD of 2,068 bytes (no multiple of 8) is longer than the header's deferred
    values: the index writer once decoded it, failed, and retried the object for ever."""
    ds, data = plain_ct(tmp_path, private={0x00091011: ("FD", [1.0] * 258)})
    odd = with_value(data, 0x00091011, bytes(range(256)) * 8 + b"\x01\x02\x03\x04")
    assert part10.scan(part10_file(ds, odd), len(part10_file(ds, odd))) is not None  # the fast path's kind
    with RawStorer(server.dicom_port, [CTImageStorage]) as scu:
        assert scu.store(CTImageStorage, ds.SOPInstanceUID, odd).Status == SUCCESS
    assert indexed(server, ds.SOPInstanceUID) and nothing_staged(server)
    with httpx.Client(timeout=30) as http:
        metadata = http.get(f"{server.http_url}/dicomweb/studies/{ds.StudyInstanceUID}/metadata")
    assert metadata.status_code == 200 and "00091011" not in metadata.json()[0]  # left out, not fatal


def test_an_attribute_the_archive_reads_with_more_values_than_its_vm_is_refused(server, tmp_path):
    ds, data = plain_ct(tmp_path)
    two = with_value(data, 0x00280100, b"\x10\x00\x10\x00")  # Bits Allocated 16\16
    with RawStorer(server.dicom_port, [CTImageStorage]) as scu:
        status = scu.store(CTImageStorage, ds.SOPInstanceUID, two)
    assert status.Status == CANNOT_UNDERSTAND and "BitsAllocated (0028,0100) has 2 values" in status.ErrorComment
    assert not indexed(server, ds.SOPInstanceUID)

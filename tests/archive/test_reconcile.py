"""Images reconciled with their order and the registry (IHE PIR): the index holds the truth,
the file keeps what the modality sent, retrieves carry the corrected values."""

from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlmodel import Session, select

from pacs.archive.index import Study
from tests.archive.test_qr import cfind, cget
from tests.archive.test_store import send_file, stored_path
from tests.helpers import MLLPClient, ack_fields, load, send_all

STUDY_UID = "1.2.840.113619.2.55.3.1234567.20261125.1"  # fixed at scheduling by orm_o01_nw_ihe.hl7


def ct_for(tmp_path, name="ct.dcm", **values) -> str:
    from tests.archive.corpus import build

    ds = pydicom.dcmread(build(tmp_path / f"c-{name}", [("CT_small.dcm", "")])[0].path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def study_query(uid: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    ds.PatientBirthDate = ""
    return ds


def get_study(port: int, uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = uid
    received, final = cget(port, identifier, {CTImageStorage: [ExplicitVRLittleEndian]})
    assert final.Status == 0, final
    [got] = received
    return got


def test_typed_in_patient_is_corrected_from_the_order(server, tmp_path):
    assert [a["code"] for a in send_all(server.mllp_port, ["adt_a01_ihe.hl7", "orm_o01_nw_ihe.hl7"])] == ["AA", "AA"]
    # The radiographer typed the wrong ID and a misspelt name at the console; the study UID came
    # from the worklist.
    path = ct_for(tmp_path, StudyInstanceUID=STUDY_UID, PatientID="WRONG123", PatientName="ZHNG^SAN",
                  AccessionNumber="", PatientBirthDate="19910101")
    assert send_file(server.dicom_port, path).Status == 0

    [study] = cfind(server.dicom_port, study_query(STUDY_UID))[0]
    assert study.PatientID == "P10001" and str(study.PatientName) == "ZHANG^SAN=张^三"
    assert study.AccessionNumber == "ACC0001" and study.PatientBirthDate == "19900101"

    with Session(server.db.engine) as session:
        row = session.exec(select(Study).where(Study.study_instance_uid == STUDY_UID)).one()
    assert row.received["PatientID"] == "WRONG123" and row.reconciled_by == "study_uid"
    stored = pydicom.dcmread(stored_path(server, pydicom.dcmread(path).SOPInstanceUID))
    assert stored.PatientID == "WRONG123"  # the file keeps what the modality sent

    got = get_study(server.dicom_port, STUDY_UID)
    assert got.PatientID == "P10001" and str(got.PatientName) == "ZHANG^SAN=张^三"
    assert got.AccessionNumber == "ACC0001" and got.SpecificCharacterSet == "ISO_IR 192"

    import httpx

    [order] = httpx.get(server.http_url + "/api/orders", params={"accession_number": "ACC0001"}).json()["items"]
    assert order["status"] == "images_received"
    assert order["events"][-1]["by"] == "archive:BADSCU"


def test_matched_by_accession_number(server, tmp_path):
    send_all(server.mllp_port, ["orm_o01_nw_ihe.hl7"])
    path = ct_for(tmp_path, AccessionNumber="ACC0001", PatientID="X")
    assert send_file(server.dicom_port, path).Status == 0
    [study] = cfind(server.dicom_port, study_query(pydicom.dcmread(path).StudyInstanceUID))[0]
    assert study.PatientID == "P10001"


def test_adt_update_and_merge_change_answers_without_touching_files(server, tmp_path):
    send_all(server.mllp_port, ["adt_a04_prior_ihe.hl7", "adt_a01_ihe.hl7"])
    path = ct_for(tmp_path, PatientID="P10009", PatientName="ZHANG^SAN", IssuerOfPatientID="HOSP")
    uid = pydicom.dcmread(path).StudyInstanceUID
    assert send_file(server.dicom_port, path).Status == 0
    [before] = cfind(server.dicom_port, study_query(uid))[0]
    assert before.PatientID == "P10009" and str(before.PatientName) == "ZHANG^SAN=张^叁"
    stored = stored_path(server, pydicom.dcmread(path).SOPInstanceUID)
    original = stored.read_bytes()

    with MLLPClient(server.mllp_port) as mllp:  # A40: P10009 merged into P10001
        assert ack_fields(mllp.send(load("adt_a40_ihe.hl7")))["code"] == "AA"
    [after] = cfind(server.dicom_port, study_query(uid))[0]
    assert after.PatientID == "P10001" and str(after.PatientName) == "ZHANG^SAN=张^三"
    assert get_study(server.dicom_port, uid).PatientID == "P10001"
    by_old_id = study_query("")
    by_old_id.PatientID = "P10001"
    assert uid in {m.StudyInstanceUID for m in cfind(server.dicom_port, by_old_id)[0]}
    assert stored.read_bytes() == original  # no file rewritten


def test_device_without_worklist_by_room(start_server, tmp_path):
    """DR_OLD can't query the worklist; devices.yaml ties its images to the patient checked in at DR1."""
    import httpx

    server = start_server()
    send_all(server.mllp_port, ["orm_o01_nw_prior_ihe.hl7"])  # a DR0001 chest X-ray at DR1, 14:00
    [order] = httpx.get(server.http_url + "/api/orders").json()["items"]
    assert httpx.post(f"{server.http_url}/api/orders/{order['id']}/arrive", json={"by": "user:desk"}).status_code == 200
    path = ct_for(tmp_path, PatientID="", PatientName="", AccessionNumber="", Modality="DX",
                  StudyDate="20261125", StudyTime="140500")
    ae = AE(ae_title="DR_OLD")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
    assoc.release()
    [study] = cfind(server.dicom_port, study_query(pydicom.dcmread(path).StudyInstanceUID))[0]
    assert study.PatientID == "P10009" and study.AccessionNumber == "ACC0009"
    with Session(server.db.engine) as session:
        row = session.exec(select(Study)).one()
    assert row.reconciled_by.startswith("device rule room")

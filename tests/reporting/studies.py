"""A CT order from the HIS (ORM^O01 over MLLP) and its images from the modality (C-STORE with
pynetdicom), then the order's status read back over HTTP: what a radiologist finds to read."""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pydicom
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlmodel import Session

from pacs.auth import accounts
from tests.helpers import MLLPClient, ack_fields

PASSWORD = "correct horse 1"
HOSPITAL = ZoneInfo("Asia/Shanghai")


def today() -> str:
    return datetime.now(HOSPITAL).strftime("%Y%m%d")


def add_user(server, username: str, roles: list[str], display_name: str = "") -> None:  # type: ignore[no-untyped-def]
    with Session(server.db.engine) as session:
        accounts.add_user(session, username=username, password=PASSWORD, roles=roles, display_name=display_name)
        session.commit()


def ct_order(number: int, patient_id: str, name: tuple[str, str, str], *, priority: str = "R",
             patient_class: str = "O", code: str = "CT0001^胸部CT平扫", birth: str = "19700315",
             sex: str = "M") -> tuple[bytes, str]:
    """ORM^O01 NW for a CT today, with the study UID the order fixes (ZDS); and that UID."""
    family, given, pinyin = name
    family_py, given_py = pinyin.split()
    day = today()
    uid = generate_uid()
    message = (f"MSH|^~\\&|HIS|IHE_OP|PACS|RADIOLOGY|{day}080000||ORM^O01|RPT{number}|P|2.3.1|||AL|NE|CHN|UNICODE UTF-8\r"
               f"PID|1||{patient_id}^^^HOSP^PI||{family}^{given}^^^^^L^I~{family_py}^{given_py}^^^^^L^A||{birth}|{sex}\r"
               f"PV1|1|{patient_class}|OPD^^^HOSP||||||||||||||||V{patient_id}\r"
               f"ORC|NW|PL{number}^HIS|||SC||^^^{day}090000^^{priority}||{day}080000|||D002^王^五|||||RAD^放射科\r"
               f"OBR|1|PL{number}^HIS||{code}^HOSP||||||||||||D002^王^五||ACC{number}|RP{number}|SPS{number}||||CT|||"
               f"^^^{day}090000^^{priority}||||^咳嗽两周\r"
               f"ZDS|{uid}^HIS^Application^DICOM\r").encode()
    return message, uid


def send_hl7(server, *messages: bytes) -> None:  # type: ignore[no-untyped-def]
    with MLLPClient(server.mllp_port) as mllp:
        for message in messages:
            assert ack_fields(mllp.send(message))["code"] == "AA"


def store_ct(port: int, *, study_uid: str, accession: str, patient_id: str, images: int = 4) -> list[tuple[str, str]]:
    """``images`` CT images of one series in the study (pydicom's CT_small, made unique); the
    (series UID, SOP instance UID) of each."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = generate_uid()
    sent = []
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        for number in range(1, images + 1):
            ds = source.copy()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.AccessionNumber, ds.PatientID, ds.InstanceNumber = accession, patient_id, number
            ds.StudyDate, ds.BodyPartExamined, ds.SeriesNumber = today(), "CHEST", 2
            status = assoc.send_c_store(ds)
            assert status.Status == 0x0000, hex(status.Status)
            sent.append((series, str(ds.SOPInstanceUID)))
    finally:
        assoc.release()
    return sent


def order_of(server, accession: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    answer = requests.get(f"{server.http_url}/api/orders", params={"accession_number": accession},
                          auth=("admin", "test-admin-password"), timeout=30)
    answer.raise_for_status()
    [order] = answer.json()["items"]
    return order  # type: ignore[no-any-return]


def wait_for_status(server, accession: str, status: str, seconds: float = 30) -> dict:  # type: ignore[no-untyped-def,type-arg]
    deadline = time.monotonic() + seconds
    while True:
        order = order_of(server, accession)
        if order["status"] == status or time.monotonic() > deadline:
            assert order["status"] == status, order
            return order
        time.sleep(0.2)


def ct_study(server, number: int, patient_id: str, name: tuple[str, str, str], **order) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """An ordered chest CT whose images are in: the order as /api/orders shows it, with the
    images sent as ``sent``."""
    message, uid = ct_order(number, patient_id, name, **order)
    send_hl7(server, message)
    sent = store_ct(server.dicom_port, study_uid=uid, accession=f"ACC{number}", patient_id=patient_id)
    found = wait_for_status(server, f"ACC{number}", "images_received")
    return {**found, "sent": sent}

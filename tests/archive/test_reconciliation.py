"""The reconciliation list (IHE PIR): a study the device rules find no order, or more than one,
for waits with the reason and the candidate orders; a person attaches it to an order or a
patient (API, command line), audited in their name; a new order or an ADT merge that makes it
unambiguous resolves it by itself. C-FIND (DCMTK findscu) then answers with the order's
accession number and the registry's name; the stored file is never rewritten."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import generate_uid
from sqlmodel import Session, select

from pacs.archive.index import Study
from pacs.archive.reconciliation import ReconciliationItem
from pacs.audit.service import Filters, as_json, search
from pacs.auth import accounts
from tests.archive.corpus import source_path
from tests.archive.test_qr import findscu
from tests.archive.test_store import stored_path
from tests.auth.test_access import basic
from tests.dicom import needs_dcmtk
from tests.helpers import MLLPClient, ack_fields, load

DAY = "20261125"
PASSWORD = "correct horse 1"


def us_order(patient_id: str, family: str, given: str, pinyin: str, number: int, hour: int) -> bytes:
    """ORM^O01 NW: an abdominal ultrasound (US0001, room US1) on :data:`DAY` at ``hour``."""
    family_py, given_py = pinyin.split()
    when = f"{DAY}{hour:02d}0000"
    return (f"MSH|^~\\&|HIS|IHE_OP|PACS|RADIOLOGY|{DAY}080000||ORM^O01|ORM{number}|P|2.3.1|||AL|NE|CHN|UNICODE UTF-8\r"
            f"PID|1||{patient_id}^^^HOSP^PI||{family}^{given}^^^^^L^I~{family_py}^{given_py}^^^^^L^A||19800101|F\r"
            f"PV1|1|O|OPD^^^HOSP||||||||||||||||V{patient_id}\r"
            f"ORC|NW|PL{number}^HIS|||SC||^^^{when}^^R||{DAY}080000|||D002^王^五\r"
            f"OBR|1|PL{number}^HIS||US0001^腹部超声^HOSP||||||||||||||ACC{number}|RP{number}|SPS{number}||||US|||"
            f"^^^{when}^^R\r").encode()


def hl7(server, *messages: bytes) -> None:  # type: ignore[no-untyped-def]
    with MLLPClient(server.mllp_port) as mllp:
        for message in messages:
            assert ack_fields(mllp.send(message))["code"] == "AA"


def ultrasound(tmp_path: Path, *, patient_id: str, accession: str = "", name: str = "TYPED^NAME") -> Path:
    """What the ward's portable ultrasound sends: the typed Patient ID, no worklist's UIDs."""
    ds = pydicom.dcmread(source_path("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName, ds.AccessionNumber = patient_id, name, accession
    ds.Modality, ds.StudyDate, ds.StudyTime = "US", DAY, "103000"
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def storescu(port: int, path: Path, calling: str = "US_PORTABLE") -> None:
    result = subprocess.run(["storescu", "-aet", calling, "-aec", "PACS", "127.0.0.1", str(port), str(path)],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "TCP_NODELAY": "1"})
    assert result.returncode == 0, result.stdout + result.stderr


def study_as_found(port: int, uid: str, out: Path) -> pydicom.Dataset:
    [found] = findscu(port, "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}", "PatientID",
                                   "PatientName", "AccessionNumber", "SpecificCharacterSet=ISO_IR 192"], out)
    return found


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def audit_entries(server, **filters) -> list[dict]:  # type: ignore[no-untyped-def]
    services = server.server.services
    services.audit.flush()
    with services.db.engine.connect() as connection:
        return [as_json(r) for r in search(connection, Filters(**filters), limit=100)[1]]


@needs_dcmtk
def test_two_orders_wait_for_a_person_who_attaches_one(guarded_server, tmp_path):
    server = guarded_server
    with Session(server.db.engine) as session:
        accounts.add_user(session, username="tech", password=PASSWORD, roles=["technologist"])
        accounts.add_user(session, username="doc", password=PASSWORD, roles=["clinician"])
        session.commit()
    tech = basic("tech", PASSWORD)
    hl7(server, us_order("P30001", "赵", "丽", "ZHAO LI", 3001, 10), us_order("P30001", "赵", "丽", "ZHAO LI", 3002, 11))
    path = ultrasound(tmp_path, patient_id="P30001")
    storescu(server.dicom_port, path)
    uid = uid_of(path)
    stored = stored_path(server, str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
    original = stored.read_bytes()

    url = f"{server.http_url}/api/reconciliation"
    assert httpx.get(url, headers=basic("doc", PASSWORD)).status_code == 403
    listed = httpx.get(url, headers=tech).json()
    assert listed["total"] == 1
    [item] = listed["items"]
    assert "Patient ID P30001 has 2 open US orders on 2026-11-25" in item["reason"]
    assert item["device"].endswith("(US_PORTABLE)") and item["calling_ae"] == "US_PORTABLE"
    assert [c["accession_number"] for c in item["candidates"]] == ["ACC3001", "ACC3002"]
    assert item["study"]["study_instance_uid"] == uid and item["received"]["patient_name"] == "TYPED^NAME"
    before = study_as_found(server.dicom_port, uid, tmp_path / "before")
    assert before.AccessionNumber == "" and before.PatientID == "P30001"

    attached = httpx.post(f"{url}/{item['id']}/attach", json={"accession_number": "ACC3002"}, headers=tech)
    assert attached.status_code == 200, attached.text
    assert attached.json()["status"] == "attached" and attached.json()["resolved_by"] == "tech"
    assert httpx.get(url, headers=tech).json()["total"] == 0
    again = httpx.post(f"{url}/{item['id']}/attach", json={"accession_number": "ACC3001"}, headers=tech)
    assert again.status_code == 409 and "attached already" in again.json()["detail"]

    after = study_as_found(server.dicom_port, uid, tmp_path / "after")
    assert after.AccessionNumber == "ACC3002" and after.PatientID == "P30001"
    assert str(after.PatientName) == "ZHAO^LI=赵^丽"
    with Session(server.db.engine) as session:
        study = session.exec(select(Study).where(Study.study_instance_uid == uid)).one()
    assert study.received["PatientName"] == "TYPED^NAME" and study.reconciled_by == "reconciliation list (tech)"
    assert stored.read_bytes() == original  # no file rewritten
    order = httpx.get(f"{server.http_url}/api/orders", params={"accession_number": "ACC3002"},
                      headers=tech).json()["items"][0]
    assert order["status"] == "images_received" and order["events"][-1]["by"] == "tech"
    [entry] = [e for e in audit_entries(server, event_id="110103", action="U") if e["user"] == "tech"]
    assert entry["studies"] == [uid] and entry["details"]["accession_number"] == "ACC3002"
    assert entry["details"]["reconciliation_item"] == item["id"]


def test_a_new_order_with_the_typed_accession_resolves_it(server, tmp_path):
    path = ultrasound(tmp_path, patient_id="P40001", accession="ACC4001")
    storescu(server.dicom_port, path)
    [item] = httpx.get(f"{server.http_url}/api/reconciliation").json()["items"]
    assert "no order has accession number ACC4001" in item["reason"] and item["candidates"] == []

    hl7(server, us_order("P40001", "钱", "七", "QIAN QI", 4001, 9))  # the HIS's order arrives late
    assert httpx.get(f"{server.http_url}/api/reconciliation").json()["total"] == 0
    [done] = httpx.get(f"{server.http_url}/api/reconciliation", params={"all": "true"}).json()["items"]
    assert done["status"] == "resolved" and done["resolved_by"].startswith("mllp:HIS/IHE_OP#ORM4001")
    assert "accession number ACC4001 is order" in done["resolution"]
    found = study_as_found(server.dicom_port, uid_of(path), tmp_path / "found")
    assert found.AccessionNumber == "ACC4001" and str(found.PatientName) == "QIAN^QI=钱^七"
    [entry] = audit_entries(server, event_id="110103", action="U")
    assert entry["user_kind"] == "system" and entry["details"]["order"] == done["order"]

    # images that carry their order's accession number never wait
    storescu(server.dicom_port, ultrasound(tmp_path, patient_id="P40001", accession="ACC4001"))
    with Session(server.db.engine) as session:
        assert len(session.exec(select(ReconciliationItem)).all()) == 1


def test_a_merge_that_leaves_one_order_resolves_it(server, tmp_path):
    hl7(server, load("adt_a04_prior_ihe.hl7"), load("adt_a01_ihe.hl7"),
        us_order("P10001", "张", "三", "ZHANG SAN", 5001, 10))
    path = ultrasound(tmp_path, patient_id="P10009")  # typed the old record's number
    storescu(server.dicom_port, path)
    [item] = httpx.get(f"{server.http_url}/api/reconciliation").json()["items"]
    assert "Patient ID P10009 has no open US order on 2026-11-25" in item["reason"]
    assert item["patient"]["patient_id"] == "P10009"

    hl7(server, load("adt_a40_ihe.hl7"))  # P10009 merged into P10001, who has one US order that day
    [done] = httpx.get(f"{server.http_url}/api/reconciliation", params={"all": "true"}).json()["items"]
    assert done["status"] == "resolved" and done["patient"]["patient_id"] == "P10001"
    found = study_as_found(server.dicom_port, uid_of(path), tmp_path / "found")
    assert found.AccessionNumber == "ACC5001" and found.PatientID == "P10001"


def test_attached_to_a_patient_from_the_command_line(server, tmp_path, settings, monkeypatch, capsys):
    hl7(server, load("adt_a01_ihe.hl7"))
    path = ultrasound(tmp_path, patient_id="UNKNOWN7", name="")
    storescu(server.dicom_port, path)
    monkeypatch.setenv("PACS_DATABASE_URL", settings.database_url)
    from pacs.cli import main

    common = ["--data-dir", str(settings.data_dir)]
    assert main(["reconcile", "list", "--json", *common]) == 0
    [item] = json.loads(capsys.readouterr().out)
    assert item["received"]["patient_id"] == "UNKNOWN7"
    assert main(["reconcile", "list", *common]) == 0
    table = capsys.readouterr().out
    assert f"{item['id']}" in table and "UNKNOWN7" in table and "no order found" in table

    assert main(["reconcile", "attach", str(item["id"]), "--patient-id", "NOSUCH", *common]) == 1
    assert "no patient has Patient ID NOSUCH" in capsys.readouterr().err
    assert main(["reconcile", "attach", str(item["id"]), "--patient-id", "P10001", "--issuer", "HOSP", *common]) == 0
    assert "attached to patient P10001" in capsys.readouterr().out
    found = study_as_found(server.dicom_port, uid_of(path), tmp_path / "found")
    assert found.PatientID == "P10001" and str(found.PatientName) == "ZHANG^SAN=张^三" and found.AccessionNumber == ""
    [entry] = audit_entries(server, event_id="110103", action="U")
    assert entry["user_kind"] == "user" and entry["user"] and entry["patients"] == ["P10001", "UNKNOWN7"]
    assert main(["reconcile", "list", "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_attached_to_an_order_from_the_command_line_the_his_hears(server, tmp_path, settings, monkeypatch, capsys):
    from pacs.integration.outbox import OutboxItem

    hl7(server, load("adt_a01_ihe.hl7"), us_order("P10001", "张", "三", "ZHANG SAN", 5101, 9))
    path = ultrasound(tmp_path, patient_id="UNKNOWN8")
    storescu(server.dicom_port, path)
    monkeypatch.setenv("PACS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PACS_HIS__HOST", "127.0.0.1")
    monkeypatch.setenv("PACS_HIS__PORT", "9")  # nobody answers there: the item waits in the outbox
    monkeypatch.setenv("PACS_HIS__NOTIFY_IMAGES_AVAILABLE", "true")
    from pacs.cli import main

    common = ["--data-dir", str(settings.data_dir)]
    assert main(["reconcile", "list", "--json", *common]) == 0
    [item] = json.loads(capsys.readouterr().out)
    assert main(["reconcile", "attach", str(item["id"]), "--accession", "ACC5101", *common]) == 0
    with Session(server.db.engine) as session:
        sent = session.exec(select(OutboxItem).where(OutboxItem.destination == "his")).all()
    assert [i.description for i in sent if "ACC5101" in i.description], [i.description for i in sent]
    assert any("ORC|SC|" in i.payload and "ACC5101" in i.payload for i in sent)

"""The audit log: an entry for each event type (PS3.15 A.5 / PS3.16 CID 400), in the DICOM audit
message format, searchable over /api/audit and the command line, exportable, purged after its
retention, forwarded to a loopback syslog collector that parses RFC 5424, and never failing what
it audits."""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import threading
import time
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from xml.etree import ElementTree as ET

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityWorklistInformationFind,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlmodel import Session, select

from pacs.audit import Event, codes
from pacs.audit.service import Filters, as_json, effective_settings, purge, record_all, search
from pacs.audit.tables import AuditEvent, AuditObject
from pacs.db import Database, utcnow
from pacs.registry.models import Patient
from pacs.settings import Peer, Settings
from tests.archive.corpus import build
from tests.helpers import MLLPClient, ack_fields, load
from tests.process import free_port


def entries(server, **filters) -> list[dict]:
    services = server.server.services
    services.audit.flush()
    with services.db.engine.connect() as connection:
        _total, rows = search(connection, Filters(**filters), limit=1000)
    return [as_json(r) for r in rows]


def wait_for_entries(server, timeout: float = 10.0, where=None, **filters) -> list[dict]:
    """Entries as soon as there are some (those ``where`` accepts): an association's entry is
    written when its connection closes, an HTTP request's after its response has gone."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in entries(server, **filters) if where is None or where(e)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


class StoreSCP:
    """A loopback storage SCP to move to."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[str] = []
        ae = AE(ae_title="DEST")
        for context in (CTImageStorage, MRImageStorage):
            ae.add_supported_context(context, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):  # type: ignore[no-untyped-def]
        self.received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def send_files(port: int, paths: list[Path], calling: str = "MODALITY") -> list[int]:
    """Several objects over one association."""
    ae = AE(ae_title=calling)
    for context in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(context, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def find(port: int, identifier: Dataset, model=PatientRootQueryRetrieveInformationModelFind) -> list[Dataset]:
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    found = [ds for status, ds in assoc.send_c_find(identifier, model) if status.Status in (0xFF00, 0xFF01)]
    assoc.release()
    return found


def uncompressed_corpus(tmp_path: Path, patient_id: str) -> list:
    return build(tmp_path / "corpus", [("CT_small.dcm", ""), ("MR_small_implicit.dcm", "-xi")], patient_id=patient_id)


def test_an_entry_for_each_event_type(start_server, tmp_path, settings, monkeypatch):
    destination = StoreSCP()
    try:
        server = start_server(peers=[Peer(ae_title="DEST", host="127.0.0.1", port=destination.port)])
        base = server.http_url

        # Application Activity: start (110100/110120); first configuration and mappings (110113)
        [start] = entries(server, event_id="110100")
        assert start["event_type"][0]["code"] == "110120" and start["action"] == "E"
        config = entries(server, event_id="110113", user="configuration")
        assert config and config[0]["details"]["settings"]["ae_title"] == "PACS"
        assert entries(server, event_id="110113", user="mappings")

        # Patient Record (110110) and Order Record (110109) from HL7: created, updated, merged
        with MLLPClient(server.mllp_port) as mllp:
            for name in ("adt_a01_ihe.hl7", "adt_a08_ihe.hl7", "orm_o01_nw_ihe.hl7", "adt_a04_prior_ihe.hl7",
                         "adt_a40_ihe.hl7"):
                assert ack_fields(mllp.send(load(name)))["code"] == "AA", name
        patient = entries(server, event_id="110110", patient_id="P10001")
        assert [e["action"] for e in reversed(patient)][:2] == ["C", "U"]
        assert patient[-1]["user"] == "HIS/IHE_OP" and patient[-1]["user_kind"] == "hl7"
        assert patient[-1]["address"] == "127.0.0.1" and patient[-1]["details"]["control_id"] == "ADT0001"
        [merge] = [e for e in patient if e["details"].get("merged")]
        assert merge["action"] == "U" and merge["details"]["merged"] == ["P10009"] and "P10009" in merge["patients"]
        [order] = entries(server, event_id="110109")
        assert order["action"] == "C" and order["details"]["accession_numbers"] == ["ACC0001"]
        assert order["patients"] == ["P10001"] and order["details"]["message_type"] == "ORM^O01"

        # Query (110112) of the worklist: its matches counted, though its answers are written
        # directly rather than handed to pynetdicom
        worklist = Dataset()
        worklist.PatientID = "P10001"
        worklist.AccessionNumber = ""
        assert len(find(server.dicom_port, worklist, ModalityWorklistInformationFind)) == 1
        [listed] = wait_for_entries(server, event_id="110112", user="VIEWER")
        assert listed["description"] == "C-FIND WORKLIST: 1 match(es)" and listed["details"]["matches"] == 1

        # DICOM Instances Transferred (110104, C): one entry per association, not per instance
        corpus = uncompressed_corpus(tmp_path, "P10001")
        assert send_files(server.dicom_port, [c.path for c in corpus]) == [0, 0]
        [stored] = wait_for_entries(server, event_id="110104", action="C")
        assert stored["user"] == "MODALITY" and stored["user_kind"] == "dicom" and stored["address"] == "127.0.0.1"
        assert sorted(stored["studies"]) == sorted(c.study_instance_uid for c in corpus)
        assert stored["patients"] == ["P10001"] and stored["details"]["instances"] == 2
        assert sum(n for classes in stored["details"]["sop_classes"].values() for n in classes.values()) == 2

        # Query (110112): the identifier as sent, the patient asked for
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = "P10001"
        query.StudyInstanceUID = ""
        assert len(find(server.dicom_port, query)) == 2
        [found] = wait_for_entries(server, event_id="110112", user="VIEWER",
                                   where=lambda e: e["description"].startswith("C-FIND STUDY"))
        assert found["patients"] == ["P10001"] and found["details"]["matches"] == 2
        sent = read_dataset(BytesIO(base64.b64decode(found["details"]["query"])), True, True)
        assert sent.PatientID == "P10001" and sent.QueryRetrieveLevel == "STUDY"

        # C-MOVE and C-GET: Instances Transferred (110104, R) with the destination
        move = Dataset()
        move.QueryRetrieveLevel = "STUDY"
        move.StudyInstanceUID = corpus[0].study_instance_uid
        ae = AE(ae_title="VIEWER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
        assert list(assoc.send_c_move(move, "DEST", StudyRootQueryRetrieveInformationModelMove))[-1][0].Status == 0
        assoc.release()
        [moved] = wait_for_entries(server, event_id="110104", action="R", user="VIEWER")
        assert moved["target"] == "DEST" and moved["details"]["completed"] == 1 and moved["outcome"] == 0
        assert moved["studies"] == [corpus[0].study_instance_uid] and moved["patients"] == ["P10001"]

        get = Dataset()
        get.QueryRetrieveLevel = "STUDY"
        get.StudyInstanceUID = corpus[1].study_instance_uid
        ae = AE(ae_title="GETTER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS", ext_neg=[build_role(MRImageStorage,
                                                                                                   scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
        assert list(assoc.send_c_get(get, StudyRootQueryRetrieveInformationModelGet))[-1][0].Status == 0
        assoc.release()
        [got] = wait_for_entries(server, event_id="110104", action="R", user="GETTER")
        assert got["details"]["service"] == "C-GET" and got["details"]["completed"] == 1

        # DICOMweb: QIDO-RS a Query, WADO-RS Instances Accessed (110103), STOW-RS Instances Transferred
        assert httpx.get(f"{base}/dicomweb/studies", params={"PatientID": "P10001"}).status_code == 200
        assert httpx.get(f"{base}/dicomweb/studies/{corpus[0].study_instance_uid}/metadata").status_code == 200
        assert httpx.get(f"{base}/dicomweb/studies/{corpus[0].study_instance_uid}/metadata").status_code == 200
        qido = wait_for_entries(server, event_id="110112", user="127.0.0.1",
                                where=lambda e: e["details"]["service"] == "QIDO-RS")
        assert qido and qido[0]["patients"] == ["P10001"] and "PatientID=P10001" in qido[0]["details"]["query"]
        time.sleep(0.3)
        [wado] = wait_for_entries(server, event_id="110103", action="R")  # the second read is coalesced
        assert wado["studies"] == [corpus[0].study_instance_uid] and wado["patients"] == ["P10001"]
        stow_file = build(tmp_path / "stow", [("CT_small.dcm", "")], patient_id="P10001")[0]
        boundary = "AUDITBOUNDARY"
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + stow_file.path.read_bytes()
                + f"\r\n--{boundary}--\r\n".encode())
        response = httpx.post(f"{base}/dicomweb/studies", content=body, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert response.status_code == 200, response.text
        [stow] = wait_for_entries(server, event_id="110104", action="C", where=lambda e: e["user_kind"] == "http")
        assert stow["studies"] == [stow_file.study_instance_uid] and stow["patients"] == ["P10001"]

        # FHIR: a Patient read is a Patient Record read, a search a Query
        with Session(server.db.engine) as session:
            patient_row = session.exec(select(Patient).where(Patient.patient_id == "P10001")).one()
        assert httpx.get(f"{base}/fhir/Patient/{patient_row.id}").status_code == 200
        assert httpx.get(f"{base}/fhir/ImagingStudy", params={"patient": f"Patient/{patient_row.id}"}).status_code == 200
        [read] = wait_for_entries(server, event_id="110110", action="R")
        assert read["patients"] == ["P10001"] and read["user_kind"] == "http"
        assert wait_for_entries(server, event_id="110112", where=lambda e: e["details"]["service"] == "FHIR ImagingStudy search")

        # Audit Log Used (110101) when the log is searched
        assert httpx.get(f"{base}/api/audit", params={"event": "Query"}).status_code == 200
        assert wait_for_entries(server, event_id="110101")

        # User Authentication (110114): ready for when logins exist
        server.server.services.audit.login("desk1", address="10.0.0.5", success=False, reason="bad password")
        [login] = entries(server, event_id="110114")
        assert login["event_type"][0]["code"] == "110122" and login["outcome"] == 4 and login["user"] == "desk1"

        # Import (110107): pacs import, as the command does it
        monkeypatch.setenv("PACS_DATABASE_URL", settings.database_url)
        monkeypatch.setenv("PACS_MAPPINGS_DIR", str(settings.mappings_dir))
        from pacs.cli import main

        more = build(tmp_path / "import", [("CT_small.dcm", "")], patient_id="P10001")
        assert main(["import", str(tmp_path / "import"), "--data-dir", str(tmp_path / "import-data"), "--quiet"]) == 0
        [imported] = entries(server, event_id="110107")
        assert imported["studies"] == [more[0].study_instance_uid] and imported["patients"] == ["P10001"]
        assert imported["details"]["counts"] == {"stored": 1}

    finally:
        destination.stop()


def test_application_start_and_stop(settings):
    from tests.conftest import RunningServer

    server = RunningServer(settings).start()
    db = server.db
    server.stop()
    with db.engine.connect() as connection:
        _total, rows = search(connection, Filters(event_id="110100"), limit=10)
    assert [r["event_type"] for r in rows] == ["110121", "110120"]  # stop, start (newest first)
    assert rows[0]["user_kind"] == "system" and rows[0]["details"]["pid"] == rows[1]["details"]["pid"]


def test_configuration_change_is_recorded_with_its_differences(settings):
    from tests.conftest import RunningServer

    def run(**changes):  # type: ignore[no-untyped-def]
        update = {k: getattr(settings, k).model_copy(update=v) for k, v in changes.items()}
        server = RunningServer(settings.model_copy(update=update)).start()
        found = entries(server, event_id="110113", user="configuration")
        server.stop()
        return found

    assert len(run()) == 1
    assert len(run()) == 1  # nothing changed, nothing recorded
    latest = run(hl7={"facility": "IMAGING"}, dicom={"require_called_ae_title": True})[0]
    changes = latest["details"]["changes"]
    assert changes == {"hl7.facility": {"from": "RADIOLOGY", "to": "IMAGING"},
                       "dicom.require_called_ae_title": {"from": False, "to": True}}
    assert {t["code"] for t in latest["event_type"]} == {"110131", "110129"}  # software, security configuration
    assert latest["description"] == "configuration changed: dicom.require_called_ae_title, hl7.facility"


def test_secrets_are_masked():
    settings = Settings(database_url="postgresql://pacs:s3cret@db.hospital/pacs",
                        storage={"areas": [{"name": "cold", "kind": "s3", "bucket": "b", "secret_key": "K3Y",
                                            "access_key": "AKIA"}]})
    flat = effective_settings(settings)
    assert "s3cret" not in json.dumps(flat) and "K3Y" not in json.dumps(flat) and "AKIA" not in json.dumps(flat)
    assert flat["storage.areas[0].secret_key"] == "***" and flat["database_url"].startswith("postgresql://pacs:***@")


@pytest.fixture
def mappings_dir(tmp_path: Path) -> Path:
    from tests.conftest import mappings_dir_default

    copy = tmp_path / "mappings"
    shutil.copytree(mappings_dir_default(), copy)
    return copy


def test_mapping_changes_and_refusals(server, mappings_dir):
    facilities = mappings_dir / "facilities.yaml"
    facilities.write_text(facilities.read_text() + "\n# reviewed\n")
    reloaded = wait_for_entries(server, event_id="110113", user="mappings", outcome=0, timeout=15,
                                where=lambda e: e["description"] == "mappings reloaded")
    assert reloaded and reloaded[0]["details"]["changes"] == ["facilities.yaml"]
    assert reloaded[0]["event_type"][0]["code"] == "110131"
    (mappings_dir / "hl7v2" / "ihe.yaml").write_text("rows: [unclosed\n")
    refused = wait_for_entries(server, event_id="110113", user="mappings", outcome=4, timeout=15)
    assert refused and refused[0]["details"]["problems"] and refused[0]["details"]["changes"] == ["hl7v2/ihe.yaml"]
    assert refused[0]["description"].startswith("mappings refused")


def test_search_filters_paging_and_export(server, tmp_path, settings, monkeypatch, capsys):
    audit = server.server.services.audit
    old = utcnow() - timedelta(days=3)
    for n in range(5):
        audit.record(Event(codes.PATIENT_RECORD, "R", user=f"user{n % 2}", user_kind="user", patients=[f"P{n}"],
                           studies=[f"1.2.3.{n}"], at=old + timedelta(minutes=n), outcome=4 if n == 4 else 0))
    audit.flush()
    api = f"{server.http_url}/api/audit"
    page = httpx.get(api, params={"event": "110110", "limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and [i["patients"] for i in page["items"]] == [["P3"], ["P2"]]  # newest first
    assert httpx.get(api, params={"patient_id": "P2"}).json()["total"] == 1
    assert httpx.get(api, params={"study_uid": "1.2.3.4", "outcome": 4}).json()["total"] == 1
    assert httpx.get(api, params={"user": "user1", "event": "Patient Record"}).json()["total"] == 2
    window = {"since": (old + timedelta(minutes=1)).isoformat(), "until": (old + timedelta(minutes=3)).isoformat()}
    assert httpx.get(api, params={**window, "event": "110110"}).json()["total"] == 2
    assert httpx.get(api, params={"since": "2026-01-01T00:00:00"}).status_code == 422  # a zone is needed

    lines = httpx.get(f"{api}/export", params={"event": "110110"}).text.splitlines()
    assert [json.loads(line)["patients"] for line in lines] == [[f"P{n}"] for n in range(5)]  # oldest first
    document = ET.fromstring(httpx.get(f"{api}/export", params={"format": "xml", "event": "110110"}).content)
    messages = document.findall("AuditMessage")
    assert len(messages) == 5
    ident = messages[0].find("EventIdentification")
    assert ident.get("EventActionCode") == "R" and ident.find("EventID").get("csd-code") == "110110"
    assert ident.find("EventID").get("codeSystemName") == "DCM"
    participants = messages[0].findall("ActiveParticipant")
    assert participants[0].get("UserID") == "user0" and participants[0].get("UserIsRequestor") == "true"
    assert messages[0].find("AuditSourceIdentification").get("AuditSourceID") == "PACS"
    objects = messages[0].findall("ParticipantObjectIdentification")
    patient = next(o for o in objects if o.get("ParticipantObjectTypeCode") == "1")
    assert patient.get("ParticipantObjectID") == "P0" and patient.get("ParticipantObjectTypeCodeRole") == "1"
    study = next(o for o in objects if o.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180")
    assert study.get("ParticipantObjectID") == "1.2.3.0"
    assert messages[4].find("EventIdentification").get("EventOutcomeIndicator") == "4"

    monkeypatch.setenv("PACS_DATABASE_URL", settings.database_url)
    from pacs.cli import main

    capsys.readouterr()
    assert main(["audit", "search", "--data-dir", str(settings.data_dir), "--patient-id", "P1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"][0]["patients"] == ["P1"]
    assert main(["audit", "search", "--data-dir", str(settings.data_dir), "--event-action", "R", "--user", "user0"]) == 0
    assert "3 of 3 entries" in capsys.readouterr().out
    out = tmp_path / "audit.xml"
    assert main(["audit", "export", "--data-dir", str(settings.data_dir), "--format", "xml", "--event", "110110",
                 "-o", str(out)]) == 0
    assert len(ET.parse(out).getroot().findall("AuditMessage")) == 5
    assert wait_for_entries(server, event_id="110101", where=lambda e: e["details"].get("object") == str(out))


def test_retention_purges_old_entries(server):
    services = server.server.services
    old = utcnow() - timedelta(days=400)
    services.audit.record(Event(codes.QUERY, "E", user="OLD", patients=["P1"], at=old))
    services.audit.record(Event(codes.QUERY, "E", user="NEW", patients=["P1"]))
    services.audit.flush()
    services.settings.audit.retention_days = 365
    assert services.housekeeping.purge_audit() == 1
    assert not entries(server, user="OLD") and entries(server, user="NEW")
    with Session(server.db.engine) as session:
        events = set(session.exec(select(AuditEvent.id)).all())
        assert set(session.exec(select(AuditObject.event)).all()) <= events
    assert entries(server, event_id="110101", action="D")  # the purge is itself audited
    assert purge(services.db, 0) == 0  # 0 keeps everything


SYSLOG = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|\[[^\]]*\]) (.*)$", re.S)


def parse_rfc5424(message: bytes) -> dict:
    match = SYSLOG.match(message)
    assert match, message[:200]
    pri, stamp, host, app, procid, msgid, structured, body = match.groups()
    assert body.startswith(b"\xef\xbb\xbf"), "MSG must be UTF-8 with a BOM (RFC 5424 6.4)"
    return {"pri": int(pri), "timestamp": stamp.decode(), "host": host.decode(), "app": app.decode(),
            "msgid": msgid.decode(), "sd": structured.decode(), "xml": ET.fromstring(body[3:].decode("utf-8"))}


class UDPCollector:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.messages: list[dict] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, _ = self.sock.recvfrom(65535)
            except OSError:
                continue
            self.messages.append(parse_rfc5424(data))

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


class TCPCollector:
    """RFC 6587 octet counting: MSG-LEN SP SYSLOG-MSG."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.messages: list[dict] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        buffer = b""
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self.messages.append(parse_rfc5424(rest[:int(length)]))
                    buffer = rest[int(length):]

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_syslog_forwarding(start_server, transport):
    collector = UDPCollector() if transport == "udp" else TCPCollector()
    try:
        server = start_server(audit={"syslog": f"{transport}://127.0.0.1:{collector.port}", "syslog_poll_seconds": 0.1})
        server.server.services.audit.record(Event(codes.PATIENT_RECORD, "U", user="HIS/IHE_OP", user_kind="hl7",
                                                  address="10.1.1.1", patients=["张三-P1"]))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                m["xml"].find("EventIdentification/EventID").get("csd-code") == "110110" for m in collector.messages):
            time.sleep(0.05)
        ids = [m["xml"].find("EventIdentification/EventID").get("csd-code") for m in collector.messages]
        assert ids[:1] == ["110100"] and "110110" in ids  # from this start on, in order
        message = collector.messages[ids.index("110110")]
        assert message["pri"] == 85 and message["msgid"] == "DICOM+RFC3881" and message["app"] == "pacs"
        assert message["timestamp"].endswith("Z") and message["sd"].startswith("[origin@pacs")
        patient = message["xml"].find("ParticipantObjectIdentification")
        assert patient.get("ParticipantObjectID") == "张三-P1"  # UTF-8 intact
        requestor = message["xml"].find("ActiveParticipant")
        assert requestor.get("NetworkAccessPointID") == "10.1.1.1" and requestor.get("NetworkAccessPointTypeCode") == "2"
    finally:
        collector.close()


def test_auditing_never_fails_the_clinical_action(server, tmp_path, monkeypatch):
    import pacs.audit.service as service

    def broken(connection, events):  # type: ignore[no-untyped-def]
        raise RuntimeError("audit table unavailable")

    monkeypatch.setattr(service, "write", broken)
    with MLLPClient(server.mllp_port) as mllp:
        assert ack_fields(mllp.send(load("adt_a01_ihe.hl7")))["code"] == "AA"
    with Session(server.db.engine) as session:
        assert session.exec(select(Patient).where(Patient.patient_id == "P10001")).first() is not None
    corpus = uncompressed_corpus(tmp_path, "P10001")
    assert send_files(server.dicom_port, [c.path for c in corpus]) == [0, 0]
    assert httpx.get(f"{server.http_url}/dicomweb/studies").status_code == 200
    monkeypatch.undo()
    assert not entries(server, event_id="110110")  # nothing was written, and nothing failed


def test_procedure_steps_are_procedure_records(server):
    """MPPS N-CREATE and N-SET: Procedure Record (110111), C then U."""
    from pynetdicom.sop_class import ModalityPerformedProcedureStep

    from tests.dicom import client, completion, mpps_attributes

    study = "1.2.840.113619.2.55.3.1234567.20261125.1"
    with MLLPClient(server.mllp_port) as mllp:
        assert ack_fields(mllp.send(load("orm_o01_nw_ihe.hl7")))["code"] == "AA"
    assoc = client("CT1").associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    uid = "1.2.826.0.1.3680043.8.498.1001"
    status, _ = assoc.send_n_create(mpps_attributes(study_uid=study, accession="ACC0001", sps_id="SPS0001",
                                                    patient_id="P10001"), ModalityPerformedProcedureStep, uid)
    assert status.Status == 0
    status, _ = assoc.send_n_set(completion(), ModalityPerformedProcedureStep, uid)
    assert status.Status == 0
    assoc.release()
    created, updated = reversed(wait_for_entries(server, event_id="110111",
                                                 where=lambda e: True) or [None, None])
    assert created["action"] == "C" and updated["action"] == "U" and created["user"] == "CT1"
    assert created["studies"] == [study] and created["patients"] == ["P10001"]
    assert created["details"]["accession_numbers"] == ["ACC0001"] and updated["details"]["status"] == "COMPLETED"


def test_a_refused_association_is_a_node_authentication_alert(start_server):
    server = start_server(dicom={"accept_unknown_peers": False},
                          peers=[Peer(ae_title="CT1", host="127.0.0.1", port=104)])
    ae = AE(ae_title="NOBODY")
    ae.add_requested_context(Verification)
    assert ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS").is_rejected
    known = AE(ae_title="CT1")
    known.add_requested_context(Verification)
    assoc = known.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert assoc.is_established
    assoc.release()
    [alert] = wait_for_entries(server, event_id="110113", user="NOBODY")
    assert [t["code"] for t in alert["event_type"]] == ["110126"]  # Node Authentication
    assert alert["outcome"] == 4 and alert["address"] == "127.0.0.1"
    assert alert["details"] == {"calling_ae": "NOBODY", "called_ae": "PACS"}
    assert not entries(server, event_id="110113", user="CT1")  # an accepted peer raises nothing


def test_details_json_does_not_know_are_written_once_as_text(database_url):
    """Every entry of a batch is written once, in order, even when one's details hold a value
    JSON does not know (it is written as its text)."""
    db = Database(database_url)
    events = [Event(codes.QUERY, "E", user="first", patients=["P1"], details={"n": 1}),
              Event(codes.QUERY, "E", user="second", patients=["P2"], details={"when": Path("/x"), "n": 2}),
              Event(codes.QUERY, "E", user="third", details={"n": 3})]
    with db.session() as session:
        assert record_all(session, events)
    with db.engine.connect() as connection:
        total, rows = search(connection, Filters(), limit=10)
    db.dispose()
    found = sorted((as_json(r) for r in rows), key=lambda e: e["id"])
    assert total == 3
    assert [e["user"] for e in found] == ["first", "second", "third"]
    assert [e["details"] for e in found] == [{"n": 1}, {"when": "/x", "n": 2}, {"n": 3}]
    assert [e["patients"] for e in found] == [["P1"], ["P2"], []]

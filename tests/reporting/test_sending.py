"""A signed report's outputs: ORU^R01 to a loopback HIS, DiagnosticReport to a loopback
platform, SR, KOS and Encapsulated PDF into the archive; each version P, F, C in turn."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from sqlmodel import select

from pacs.integration import mllp
from pacs.integration.hl7v2 import parse
from pacs.integration.outbox import OutboxItem, OutboxStatus
from pacs.registry.models import ImagingOrder, OrderStatus
from pacs.reporting import sending
from pacs.reporting.models import Report, ReportStatus, ReportVersion
from pacs.settings import HISDestination, OutboxSettings, PublishSettings
from tests.archive.test_store import send_file
from tests.helpers import CR, FS, VT, send_all
from tests.integration.test_publisher import FakePlatform, image

STUDY = "1.2.840.113619.2.55.3.1234567.20261125.1"
FINDINGS = "双肺纹理清晰，走行自然。\n右肺上叶见一约8mm结节影，边界清楚。"
IMPRESSION = "右肺上叶结节，建议3个月后复查。"
SERIES = "1.2.840.113619.2.55.3.1234567.20261125.1.1"


class FakeHIS:
    """An MLLP receiver that decodes what it gets per MSH-18, keeps it and answers AA; while
    ``accepting`` is False it drops every connection (the HIS is down)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.received: list[str] = []
        self.raw: list[bytes] = []
        self.accepting = True
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            if not self.accepting:
                return
            buffer = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while FS + CR in buffer:
                    frame, _, buffer = buffer.partition(FS + CR)
                    raw = frame[frame.index(VT) + 1:]
                    text, _charset = mllp.decode(raw, "ASCII")
                    self.raw.append(raw)
                    self.received.append(text)
                    control = parse(text).control_id
                    ack = f"MSH|^~\\&|HIS|HOSP|PACS|RAD|20261206||ACK|A{control}|P|2.4\rMSA|AA|{control}\r"
                    conn.sendall(VT + ack.encode() + FS + CR)

    def results(self) -> list[str]:
        return [text for text in self.received if parse(text).message_type.startswith("ORU")]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def his():
    fake = FakeHIS()
    yield fake
    fake.close()


@pytest.fixture
def platform():
    fake = FakePlatform()
    yield fake
    fake.close()


def wait_for(predicate, timeout: float = 60.0, describe=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met in {timeout} s {describe()}")


def reporting_server(start_server, his, platform, *, version="2.4", charset="UNICODE UTF-8"):
    return start_server(his=HISDestination(host="127.0.0.1", port=his.port, version=version, charset=charset),
                        publish=PublishSettings(fhir_base_url=platform.url, stable_after_seconds=0.3),
                        outbox=OutboxSettings(base_delay_seconds=0.1, max_delay_seconds=0.5),
                        report={"hospital": "市第一人民医院", "department": "放射科"})


def imaged_order(server, tmp_path: Path) -> int:
    """The golden ORM's order (张三, CT, ACC0001) with one CT image in the archive."""
    assert [a["code"] for a in send_all(server.mllp_port, ["orm_o01_nw_ihe.hl7"])] == ["AA"]
    ct = image(tmp_path, "ct.dcm", AccessionNumber="ACC0001", SeriesInstanceUID=SERIES,
               SOPInstanceUID=SERIES + ".1")
    ct_ds = pydicom.dcmread(ct)
    ct_ds.file_meta.MediaStorageSOPInstanceUID = ct_ds.SOPInstanceUID
    ct_ds.save_as(ct, enforce_file_format=True)
    assert send_file(server.dicom_port, ct).Status == 0
    with server.db.session() as session:
        order = session.exec(select(ImagingOrder).where(ImagingOrder.accession_number == "ACC0001")).one()
        return order.id


KEY_IMAGES = [{"series": SERIES, "sop": SERIES + ".1", "sop_class": "1.2.840.10008.5.1.4.1.1.2"}]


def sign(server, order_id: int, status: str, **fields) -> int:
    """A signed version written as the reading service writes it, and its outputs enqueued in
    the same transaction."""
    with server.db.session() as session:
        order = session.get_one(ImagingOrder, order_id)
        report = session.exec(select(Report).where(Report.order == order_id)).first()
        if report is None:
            report = Report(order=order_id, study_instance_uid=order.study_instance_uid)
            session.add(report)
            session.flush()
        number = report.current_version + 1
        values = {"findings": FINDINGS, "impression": IMPRESSION, "author": "li", "author_name": "李住院",
                  "key_images": KEY_IMAGES} | fields
        version = ReportVersion(report=report.id, number=number, status=status, **values)
        session.add(version)
        report.current_version = number
        report.status = {"P": ReportStatus.PRELIMINARY, "F": ReportStatus.FINAL, "C": ReportStatus.CORRECTED}[status]
        session.add(report)
        sending.enqueue(session, order, report, version)
        return version.id


def outbox(server, destination: str) -> list[OutboxItem]:
    with server.db.session(read_only=True) as session:
        return list(session.exec(select(OutboxItem).where(OutboxItem.destination == destination)
                                 .order_by(OutboxItem.id)).all())


def strictly_valid(text: str) -> None:
    """hl7apy's strict validation of the whole message (structure, fields, data types, lengths)."""
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()


def pdf_text(data: bytes) -> str:
    return subprocess.run(["pdftotext", "-layout", "-", "-"], input=data, capture_output=True, check=True,
                          timeout=60).stdout.decode()


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_preliminary_final_corrected_reach_his_platform_and_archive(start_server, his, platform, tmp_path,
                                                                    installed_assets):
    server = reporting_server(start_server, his, platform)
    order_id = imaged_order(server, tmp_path)
    wait_for(lambda: platform.latest(STUDY) is not None)  # the ImagingStudy, before any report
    signed = datetime.now(UTC)
    sign(server, order_id, "P", signed_at=signed)
    sign(server, order_id, "F", signed_at=signed, verifier="wang", verifier_name="王主任",
         verified_at=signed + timedelta(minutes=30), critical=True, critical_told="护士 陈静",
         critical_told_at=signed + timedelta(minutes=5))
    sign(server, order_id, "C", impression="右肺上叶结节，建议6个月后复查。", author="wang", author_name="王主任",
         signed_at=signed + timedelta(hours=2), verifier="wang", verifier_name="王主任",
         verified_at=signed + timedelta(hours=2), reason="复查间隔更正")

    # the HIS: three ORU^R01, P then F then C, each valid under hl7apy's strict validation
    wait_for(lambda: len(his.results()) == 3, describe=lambda: [i.last_error for i in outbox(server, "his")])
    results = his.results()
    assert [parse(t).get("OBR-25") for t in results] == ["P", "F", "C"]
    for text in results:
        strictly_valid(text)
        message = parse(text)
        assert message.get("MSH-9") == "ORU^R01^ORU_R01" and message.get("MSH-18") == "UNICODE UTF-8"
        assert message.get("PID-3.1") == "P10001" and message.get("PID-5.1") == "张"
        assert message.get("OBR-2.1") == "PL0001" and message.get("OBR-3.1") == "ACC0001"
        assert message.get("OBR-18") == "ACC0001"
        obx = [line.split("|") for line in text.split("\r") if line.startswith("OBX|")]
        assert obx[0][2:6] == ["HD", "110180^Study Instance UID^DCM", "1", STUDY]
        lines = [o[5] for o in obx if o[3].startswith("18782-3")]
        assert lines == FINDINGS.split("\n")
        assert {o[11] for o in obx} == {message.get("OBR-25")}
    final, corrected = parse(results[1]), parse(results[2])
    assert final.get("OBR-32.1.2") == "王主任" and final.get("OBR-33.1.2") == "李住院"
    assert "危急值，已通知护士 陈静" in results[1]
    assert [line for line in results[2].split("\r") if line.startswith("OBX|")][-1].split("|")[5] \
        == "右肺上叶结节，建议6个月后复查。"
    assert corrected.get("OBR-32.1.2") == "王主任"
    assert "更正原因：复查间隔更正" in results[2]

    # the platform: three DiagnosticReports, each a valid R4 resource with the PDF
    def reports() -> list[dict]:
        return [body for _identifier, body in platform.received if body["resourceType"] == "DiagnosticReport"]

    wait_for(lambda: len(reports()) == 3, describe=lambda: [i.last_error for i in outbox(server, "platform")])
    assert [r["status"] for r in reports()] == ["preliminary", "final", "corrected"]
    keys = [identifier for identifier, body in platform.received if body["resourceType"] == "DiagnosticReport"]
    [key] = set(keys)  # one report, updated
    assert key.startswith("urn:dicom:uid|urn:oid:2.25.")
    assert {"system": "urn:dicom:uid", "value": key.split("|")[1]} in reports()[0]["identifier"]
    for body in reports():
        DiagnosticReport.model_validate(body)
        assert body["code"]["coding"][0]["code"] == "18748-4"
        assert body["subject"]["identifier"]["value"] == "P10001"
        assert body["basedOn"][0]["identifier"]["value"] == "PL0001"
        assert body["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{STUDY}"
        [form] = body["presentedForm"]
        assert form["contentType"] == "application/pdf" and form["language"] == "zh-CN"
        assert base64.b64decode(form["data"]).startswith(b"%PDF-")
    first, last = reports()[0], reports()[2]
    assert first["conclusion"] == IMPRESSION and last["conclusion"] == "右肺上叶结节，建议6个月后复查。"
    assert [i["display"] for i in reports()[1]["resultsInterpreter"]] == ["王主任", "李住院"]
    text = pdf_text(base64.b64decode(last["presentedForm"][0]["data"]))
    for words in ("市第一人民医院", "更正报告", "张三", "ZHANG SAN", "右肺上叶见一约8mm结节影", "复查间隔更正", "王主任",
                  "ACC0001"):
        assert words in text
    assert "初步报告" in pdf_text(base64.b64decode(first["presentedForm"][0]["data"]))

    # the archive: SR and PDF per version, a KOS per version (key images marked)
    wait_for(lambda: [i.status for i in outbox(server, "archive")] == [OutboxStatus.SENT] * 3,
             describe=lambda: [(i.status, i.last_error) for i in outbox(server, "archive")])
    with server.db.session(read_only=True) as session:
        versions = session.exec(select(ReportVersion).order_by(ReportVersion.number)).all()
        assert all(v.sr_sop_instance_uid and v.pdf_sop_instance_uid for v in versions)
        assert session.get_one(ImagingOrder, order_id).status == OrderStatus.IMAGES_RECEIVED  # not moved by the SR
    web = DICOMwebClient(server.http_url + "/dicomweb")
    modalities = sorted(s["00080060"]["Value"][0] for s in web.search_for_series(study_instance_uid=STUDY))
    assert modalities == ["CT", "DOC", "KO", "SR"]
    srs = web.search_for_instances(study_instance_uid=STUDY, search_filters={"Modality": "SR"})
    assert len(srs) == 3
    for number, version in enumerate(versions, 1):
        sr = web.retrieve_instance(STUDY, srs[0]["0020000E"]["Value"][0], version.sr_sop_instance_uid)
        assert sr.PatientID == "P10001" and sr.AccessionNumber == "ACC0001" and sr.SpecificCharacterSet == "ISO_IR 192"
        assert sr.PatientName.ideographic == "张^三"
        assert sr.CompletionFlag == ("PARTIAL" if number == 1 else "COMPLETE")
        assert sr.VerificationFlag == ("UNVERIFIED" if number == 1 else "VERIFIED")
        texts = [item.TextValue for section in sr.ContentSequence if section.ValueType == "CONTAINER"
                 for item in section.ContentSequence]
        assert texts[0] == FINDINGS and texts[1] == version.impression
        if number > 1:
            assert "VerifyingObserverSequence" in sr
            previous = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
            assert previous.ReferencedSOPInstanceUID == versions[number - 2].sr_sop_instance_uid
        path = tmp_path / f"sr{number}.dcm"
        sr.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []
    pdf_series = web.search_for_series(study_instance_uid=STUDY, search_filters={"Modality": "DOC"})[0]
    document = web.retrieve_instance(STUDY, pdf_series["0020000E"]["Value"][0], versions[2].pdf_sop_instance_uid)
    assert document.MIMETypeOfEncapsulatedDocument == "application/pdf"
    data = bytes(document.EncapsulatedDocument)[:document.EncapsulatedDocumentLength]
    assert data == base64.b64decode(last["presentedForm"][0]["data"])  # the same PDF everywhere
    document.save_as(tmp_path / "pdf.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "pdf.dcm") == []
    kos_series = web.search_for_series(study_instance_uid=STUDY, search_filters={"Modality": "KO"})[0]
    kos = web.retrieve_series(STUDY, kos_series["0020000E"]["Value"][0])
    assert len(kos) == 3
    kos[0].save_as(tmp_path / "kos.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "kos.dcm") == []
    assert kos[0].CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == SERIES + ".1"

    # the ImagingStudy published again once the objects are in: still the order's, still 张三's
    wait_for(lambda: (platform.latest(STUDY) or {}).get("numberOfInstances") == 10)
    study = platform.latest(STUDY)
    ImagingStudy.model_validate(study)
    assert study["subject"]["identifier"]["value"] == "P10001"
    assert study["basedOn"][0]["identifier"]["value"] == "PL0001" and study["status"] == "available"
    assert sorted(s["modality"]["code"] for s in study["series"]) == ["CT", "DOC", "KO", "SR"]


def test_his_down_delays_the_report_but_loses_nothing(start_server, his, platform, tmp_path, installed_assets):
    his.accepting = False
    server = reporting_server(start_server, his, platform, version="2.5.1", charset="GB 18030-2000")
    order_id = imaged_order(server, tmp_path)
    sign(server, order_id, "P", signed_at=datetime.now(UTC))
    sign(server, order_id, "F", signed_at=datetime.now(UTC), verifier="wang", verifier_name="王主任",
         verified_at=datetime.now(UTC))
    wait_for(lambda: any(i.attempts >= 3 for i in outbox(server, "his")))
    assert his.results() == []
    waiting = [i for i in outbox(server, "his") if i.description.startswith("ORU")]
    assert len(waiting) == 2 and all(i.status != OutboxStatus.SENT for i in waiting)
    assert waiting[0].last_error
    # the archive and the platform did not wait for the HIS
    wait_for(lambda: [i.status for i in outbox(server, "archive")] == [OutboxStatus.SENT] * 2)
    his.accepting = True
    wait_for(lambda: len(his.results()) == 2)
    assert [parse(t).get("OBR-25") for t in his.results()] == ["P", "F"]  # still in order
    for text, raw in zip(his.results(), [r for r in his.raw if b"ORU^R01" in r], strict=True):
        strictly_valid(text)
        assert parse(text).get("MSH-18") == "GB 18030-2000"
        assert "张".encode("gb18030") in raw and IMPRESSION.encode("gb18030") in raw


def test_a_delivery_run_twice_sends_and_stores_once(start_server, his, platform, tmp_path, installed_assets):
    """A crash after the work but before the outbox recorded it: the item runs again."""
    server = reporting_server(start_server, his, platform)
    order_id = imaged_order(server, tmp_path)
    sign(server, order_id, "F", signed_at=datetime.now(UTC), author="wang", author_name="王主任")
    wait_for(lambda: [i.status for i in outbox(server, "archive")] == [OutboxStatus.SENT])
    wait_for(lambda: len(his.results()) == 1)
    deliver = server.server.services.outbox.deliverers
    [fan_out] = outbox(server, sending.DESTINATION)
    assert deliver[sending.DESTINATION](fan_out).response == "queued before"
    [archived] = outbox(server, sending.ARCHIVE)
    with server.db.session(read_only=True) as session:
        from pacs.archive.index import Instance

        before = len(session.exec(select(Instance)).all())
    again = deliver[sending.ARCHIVE](archived)
    assert again.response.count("stored") == 1 and "SR " in again.response
    with server.db.session(read_only=True) as session:
        assert len(session.exec(select(Instance)).all()) == before == 4  # the CT, SR, KO, PDF
    time.sleep(1.0)
    assert len(his.results()) == 1
    assert len(outbox(server, "his")) == 1 and len(outbox(server, "archive")) == 1


def test_the_pdf_renders_with_its_hanzi(start_server, his, platform, tmp_path, installed_assets):
    server = reporting_server(start_server, his, platform)
    order_id = imaged_order(server, tmp_path)
    sign(server, order_id, "F", signed_at=datetime.now(UTC), author="wang", author_name="王主任", critical=True,
         critical_told="护士 陈静", critical_told_at=datetime.now(UTC))
    wait_for(lambda: [i.status for i in outbox(server, "archive")] == [OutboxStatus.SENT])
    [item] = outbox(server, "archive")
    data = base64.b64decode(json.loads(item.payload)["pdf"])
    text = pdf_text(data)
    for words in ("市第一人民医院", "放射科 影像诊断报告", "正式报告", "张三（ZHANG SAN）", "检查所见", "诊断意见",
                  "危急值", "已通知 护士 陈静", "报告医师：王主任", "P10001", "胸部CT平扫"):
        assert words in text, words
    fonts = subprocess.run(["pdffonts", "-"], input=data, capture_output=True, check=True, timeout=60).stdout.decode()
    assert "NotoSansSC" in fonts and " yes " in fonts  # embedded (a subset)
    subprocess.run(["pdftoppm", "-r", "100", "-png", "-singlefile", "-", str(tmp_path / "report")], input=data,
                   check=True, timeout=60)
    from PIL import Image

    page = Image.open(tmp_path / "report.png")
    assert page.size == (827, 1170)  # A4 at 100 dpi
    assert page.convert("L").getextrema()[0] < 64  # something is drawn
    assert data.rstrip().endswith(b"%%EOF")
    # the cloud-film link, as the patient's phone reads it from the printed QR code
    read = subprocess.run(["zbarimg", "--raw", "-q", str(tmp_path / "report.png")], capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()
    from pacs.auth import links

    token = read.rsplit("/s/", 1)[1]
    key = links.secret_key(server.settings)
    grant = links.read_token(key, token)
    assert grant is not None and grant.purpose == links.FILM and grant.study_instance_uid == STUDY


def test_sign_verify_amend_through_the_reading_service(start_server, his, platform, tmp_path, installed_assets):
    """A resident signs (P), an attending verifies (F) and amends (C), each by the reading
    service's own functions: the HIS, the platform and the archive get every version."""
    from pacs.reporting import service
    from pacs.reporting.service import Draft, Reader

    server = reporting_server(start_server, his, platform)
    order_id = imaged_order(server, tmp_path)
    resident = Reader(name="li", display_name="李住院")
    attending = Reader(name="wang", display_name="王主任", attending=True)
    notify = server.server.services.notify
    with server.db.session() as session:
        report = service.claim(session, order_id, reader=resident)
        service.save_draft(session, order_id, Draft(revision=report.draft_revision, findings=FINDINGS,
                                                    impression=IMPRESSION, key_images=KEY_IMAGES), reader=resident)
        assert service.sign(session, order_id, reader=resident, notify=notify).status == "P"
    with server.db.session() as session:
        assert service.verify(session, order_id, reader=attending, notify=notify).status == "F"
    with server.db.session() as session:
        report = service.claim(session, order_id, reader=attending)
        service.save_draft(session, order_id, Draft(revision=report.draft_revision, findings=FINDINGS,
                                                    impression="右肺上叶结节，建议6个月后复查。"), reader=attending)
        assert service.amend(session, order_id, reason="复查间隔更正", reader=attending, notify=notify).status == "C"

    wait_for(lambda: len(his.results()) == 3, describe=lambda: [i.last_error for i in outbox(server, "his")])
    assert [parse(t).get("OBR-25") for t in his.results()] == ["P", "F", "C"]
    for text in his.results():
        strictly_valid(text)
    assert parse(his.results()[1]).get("OBR-32.1.2") == "王主任" and parse(his.results()[1]).get("OBR-33.1.2") == "李住院"

    def reports() -> list[dict]:
        return [body for _identifier, body in platform.received if body["resourceType"] == "DiagnosticReport"]

    wait_for(lambda: len(reports()) == 3)
    assert [r["status"] for r in reports()] == ["preliminary", "final", "corrected"]
    for body in reports():
        DiagnosticReport.model_validate(body)
    wait_for(lambda: [i.status for i in outbox(server, "archive")] == [OutboxStatus.SENT] * 3)
    web = DICOMwebClient(server.http_url + "/dicomweb")
    assert len(web.search_for_instances(study_instance_uid=STUDY, search_filters={"Modality": "SR"})) == 3
    assert len(web.search_for_instances(study_instance_uid=STUDY, search_filters={"Modality": "DOC"})) == 3
    with server.db.session(read_only=True) as session:
        assert session.get_one(ImagingOrder, order_id).status == OrderStatus.VERIFIED  # storing left it there
        versions = session.exec(select(ReportVersion).order_by(ReportVersion.number)).all()
        assert [v.reason for v in versions] == ["", "", "复查间隔更正"]
        assert all(v.sr_sop_instance_uid for v in versions)
    last = reports()[2]
    assert "复查间隔更正" in pdf_text(base64.b64decode(last["presentedForm"][0]["data"]))
    # the same report read at /fhir, with the PDF the archive holds
    with server.db.session(read_only=True) as session:
        report_id = session.exec(select(Report.id)).one()
    served = httpx.get(f"{server.http_url}/fhir/DiagnosticReport/{report_id}").json()
    DiagnosticReport.model_validate(served)
    assert served["status"] == "corrected" and served["basedOn"] == [{"reference": f"ServiceRequest/{order_id}"}]
    assert served["presentedForm"][0]["data"] == last["presentedForm"][0]["data"]


def test_without_the_font_the_report_waits_then_goes(start_server, his, platform, tmp_path, installed_assets):
    """No CJK font, no PDF: the version waits whole in the outbox, saying why, and nothing of it
    is sent; once the font is installed, everything goes."""
    import shutil

    from pacs import assets

    empty = tmp_path / "assets"
    empty.mkdir()
    server = start_server(his=HISDestination(host="127.0.0.1", port=his.port),
                          outbox=OutboxSettings(base_delay_seconds=0.1, max_delay_seconds=0.5), assets={"dir": empty})
    order_id = imaged_order(server, tmp_path)
    sign(server, order_id, "F", signed_at=datetime.now(UTC), author="wang", author_name="王主任")
    wait_for(lambda: any(i.attempts >= 2 for i in outbox(server, sending.DESTINATION)))
    [waiting] = outbox(server, sending.DESTINATION)
    assert waiting.status == OutboxStatus.RETRYING and "pacs assets install" in waiting.last_error
    assert his.results() == [] and outbox(server, "archive") == []
    shutil.copytree(assets.folder(installed_assets, assets.NOTO_SANS_SC), assets.folder(empty, assets.NOTO_SANS_SC))
    wait_for(lambda: len(his.results()) == 1)
    wait_for(lambda: [i.status for i in outbox(server, "archive")] == [OutboxStatus.SENT])

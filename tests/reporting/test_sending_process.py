"""A real `pacs serve`: versions signed while it is down (the signing committed, nothing
delivered yet, as after a crash) are sent and stored once it is back, and DICOMweb serves them."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pydicom
from dicomweb_client.api import DICOMwebClient
from requests import Session as HTTPSession
from sqlmodel import Session, create_engine, select

from pacs.archive.index import Instance
from pacs.integration.hl7v2 import parse
from pacs.integration.outbox import OutboxItem, OutboxStatus
from pacs.registry.models import ImagingOrder
from pacs.reporting import sending
from pacs.reporting.models import Report, ReportStatus, ReportVersion
from tests.archive.test_store import send_file
from tests.conftest import ADMIN_PASSWORD, ASSETS_DIR
from tests.helpers import send_all
from tests.integration.test_publisher import image
from tests.process import ServeProcess
from tests.reporting.test_sending import (
    FINDINGS,
    IMPRESSION,
    KEY_IMAGES,
    SERIES,
    STUDY,
    FakeHIS,
    dciodvfy_errors,
    strictly_valid,
    wait_for,
)


def test_versions_signed_before_a_restart_are_sent_and_stored_once(tmp_path, installed_assets):
    his = FakeHIS()
    database = f"sqlite:///{tmp_path / 'pacs.db'}"
    env = {"PACS_HIS__HOST": "127.0.0.1", "PACS_HIS__PORT": str(his.port), "PACS_HIS__VERSION": "2.5.1",
           "PACS_OUTBOX__BASE_DELAY_SECONDS": "0.2", "PACS_OUTBOX__MAX_DELAY_SECONDS": "1",
           "PACS_ADMIN_PASSWORD": ADMIN_PASSWORD, "PACS_ASSETS__DIR": str(ASSETS_DIR),
           "PACS_REPORT__HOSPITAL": "市第一人民医院", "PACS_MLLP__FRONT_PROCESS": "false"}
    server = ServeProcess(tmp_path / "data", database, **env).start()
    try:
        assert [a["code"] for a in send_all(server.mllp_port, ["orm_o01_nw_ihe.hl7"])] == ["AA"]
        ct = image(tmp_path, "ct.dcm", AccessionNumber="ACC0001", SeriesInstanceUID=SERIES, SOPInstanceUID=SERIES + ".1")
        ds = pydicom.dcmread(ct)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(ct, enforce_file_format=True)
        assert send_file(server.dicom_port, ct).Status == 0
        engine = create_engine(database)
        wait_for(lambda: _order_status(engine) == "images_received")
        server.kill()  # down, as after a crash

        with Session(engine) as session:  # two versions signed and committed meanwhile
            order = session.exec(select(ImagingOrder)).one()
            report = Report(order=order.id, study_instance_uid=order.study_instance_uid, status=ReportStatus.FINAL)
            session.add(report)
            session.flush()
            for number, status in ((1, "P"), (2, "F")):
                version = ReportVersion(report=report.id, number=number, status=status, findings=FINDINGS,
                                        impression=IMPRESSION, author="li", author_name="李住院",
                                        signed_at=datetime.now(UTC), key_images=KEY_IMAGES,
                                        verifier="wang" if status == "F" else "",
                                        verifier_name="王主任" if status == "F" else "",
                                        verified_at=datetime.now(UTC) if status == "F" else None)
                session.add(version)
                report.current_version = number
                sending.enqueue(session, order, report, version)
            session.commit()

        server.start()
        wait_for(lambda: len(his.results()) == 2)
        assert [parse(t).get("OBR-25") for t in his.results()] == ["P", "F"]
        for text in his.results():
            strictly_valid(text)

        def archived() -> list[str]:
            with Session(engine) as session:
                return [i.status for i in session.exec(select(OutboxItem).where(OutboxItem.destination == "archive"))]

        wait_for(lambda: archived() == [OutboxStatus.SENT] * 2)
        with Session(engine) as session:
            # 1 CT + (SR, KOS, PDF) per version, each once
            assert len(session.exec(select(Instance)).all()) == 7
        http = HTTPSession()
        http.auth = ("admin", ADMIN_PASSWORD)
        web = DICOMwebClient(f"http://127.0.0.1:{server.http_port}/dicomweb", session=http)
        found = {s["00080060"]["Value"][0]: s["0020000E"]["Value"][0] for s in web.search_for_series(STUDY)}
        assert sorted(found) == ["CT", "DOC", "KO", "SR"]
        reports = web.retrieve_series(STUDY, found["SR"])
        assert sorted(r.VerificationFlag for r in reports) == ["UNVERIFIED", "VERIFIED"]
        final = next(r for r in reports if r.VerificationFlag == "VERIFIED")
        assert final.ContentSequence[-1].ContentSequence[0].TextValue == IMPRESSION
        assert final.VerifyingObserverSequence[0].VerifyingObserverName.ideographic.split("^")[0] == "王主任"
        final.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
        assert dciodvfy_errors(tmp_path / "sr.dcm") == []
        time.sleep(1)
        assert len(his.results()) == 2  # sent once
    finally:
        server.stop()
        his.close()


def _order_status(engine) -> str:
    with Session(engine) as session:
        order = session.exec(select(ImagingOrder)).first()
        return order.status if order is not None else ""

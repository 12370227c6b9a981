"""Shared links in a browser: a radiologist shares a study for a consultation, the outside
expert opens it without an account and sees that study in the viewer and nothing else, the
radiologist revokes it; a patient opens cloud film (the final report and its key images) on a
phone. Every opening is in the audit log with the client's address."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

import httpx
from playwright.sync_api import Browser
from pydicom.uid import generate_uid
from sqlmodel import Session, select

from pacs.audit.tables import AuditEvent
from pacs.registry.models import ImagingOrder
from pacs.reporting.models import Report, ReportStatus, ReportVersion
from pacs.web.i18n import catalogue
from tests.conftest import ADMIN_PASSWORD
from tests.reporting.studies import ct_order, send_hl7, store_ct
from tests.web import test_viewer
from tests.web.conftest import Steps
from tests.web.test_desk import add_user
from tests.web.test_viewer import LOAD_TIMEOUT_MS, OVERLAY_TOP_LEFT, log_in, overlay
from tests.web.viewer_studies import ct_phantom, part10, stow

ZH = catalogue("zh-CN")
gl_browser = test_viewer.gl_browser  # the viewer tests' fixtures: a browser with WebGL, its page
viewer_steps = test_viewer.viewer_steps
ADMIN = ("admin", ADMIN_PASSWORD)
RADIOLOGIST = ("lidoc", "correct horse 1")


def audit_of(server, user: str) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while True:
        with Session(server.db.engine) as session:
            rows = list(session.exec(select(AuditEvent).where(AuditEvent.user_id == user)).all())
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_a_consultation_link_opens_one_study_until_revoked(guarded_server, installed_viewer, viewer_steps: Steps,
                                                           gl_browser: Browser) -> None:
    shared, other = generate_uid(), generate_uid()
    stow(guarded_server.http_url, [*ct_phantom(4, 128, study_uid=shared), *ct_phantom(2, 64, study_uid=other)],
         auth=ADMIN)
    add_user(guarded_server, "lidoc", ["radiologist"], "李医生")
    page = viewer_steps.page

    # the radiologist, in the viewer on the study: the film and share buttons
    log_in(page, guarded_server, "lidoc", f"/viewer/viewer?StudyInstanceUIDs={shared}")
    page.wait_for_selector(OVERLAY_TOP_LEFT, timeout=LOAD_TIMEOUT_MS)
    page.wait_for_selector("#pacs-tool-share", state="visible")
    assert page.locator("#pacs-tool-film").inner_text().startswith(ZH["viewer.tools.film"])
    viewer_steps.shot("viewer-with-tools")
    with page.context.expect_page() as opened:
        page.keyboard.press("Alt+s")
    share = opened.value
    share.wait_for_load_state()
    assert share.url.endswith(f"/share?StudyInstanceUIDs={shared}")
    assert "张三" in share.locator("#patient").inner_text()
    share.select_option("select[name=hours]", "4")
    share.keyboard.press("Alt+n")
    share.wait_for_selector("#made:not([hidden])")
    url = share.input_value("#url")
    assert re.fullmatch(re.escape(guarded_server.http_url) + r"/c/[A-Za-z0-9_.\-]+", url), url
    share.wait_for_selector("#links tbody tr .revoke")
    share.wait_for_function("document.querySelector('#qr img').complete && "
                            "document.querySelector('#qr img').naturalWidth > 0")
    Steps(share, viewer_steps.folder).shot("link-made")
    code = viewer_steps.folder / "qr.png"
    share.locator("#qr img").screenshot(path=str(code))
    read = subprocess.run(["zbarimg", "--raw", "-q", str(code)], capture_output=True, text=True, timeout=60)
    assert read.stdout.strip() == url  # the QR code a phone scans is the link

    # the expert, with no account: the viewer on that study
    expert = gl_browser.new_context(viewport={"width": 1400, "height": 900}, locale="zh-CN",
                                    timezone_id="Asia/Shanghai")
    errors: list[str] = []
    shown = expert.new_page()
    shown.on("pageerror", lambda error: errors.append(str(error)))
    shown.goto(url)
    shown.wait_for_url(re.compile(re.escape(f"/viewer/viewer?StudyInstanceUIDs={shared}")))
    shown.wait_for_selector(OVERLAY_TOP_LEFT, timeout=LOAD_TIMEOUT_MS)
    assert "张三" in overlay(shown)
    assert shown.locator("#pacs-tools").count() == 0  # no film, no further sharing
    Steps(shown, viewer_steps.folder).shot("expert-sees-the-study")
    # the link's page does not change study in place (what the worklist's window does)
    assert shown.evaluate(f"window.pacsViewer.open({other!r})") is False
    assert shown.url.endswith(f"/viewer/viewer?StudyInstanceUIDs={shared}")
    assert errors == []

    # ... and nothing else
    api = expert.request
    assert api.get(f"{guarded_server.http_url}/dicomweb/studies/{shared}/series").status == 200
    assert api.get(f"{guarded_server.http_url}/dicomweb/studies?StudyInstanceUID={shared}").status == 200
    for path in ("/dicomweb/studies", f"/dicomweb/studies?StudyInstanceUID={other}",
                 f"/dicomweb/studies/{other}/series", "/dicomweb/studies?PatientID=P30001", "/api/orders",
                 "/fhir/ImagingStudy", "/api/links?study=" + shared):
        assert api.get(guarded_server.http_url + path).status == 403, path
    boundary = uuid.uuid4().hex
    body = (b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
            + part10(ct_phantom(1, 32, study_uid=shared)[0]) + b"\r\n--" + boundary.encode() + b"--\r\n")
    stowed = api.post(f"{guarded_server.http_url}/dicomweb/studies", data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert stowed.status == 403
    desk = api.get(f"{guarded_server.http_url}/desk", max_redirects=0)
    assert desk.status in (303, 403)

    # revoked: the next request is refused, the link opens a page saying so
    share.locator("#links .revoke").first.click()
    share.wait_for_selector(f"#links td:text('{ZH['share.revoked']}')")
    Steps(share, viewer_steps.folder).shot("link-revoked")
    assert api.get(f"{guarded_server.http_url}/dicomweb/studies/{shared}/series").status == 401
    gone = expert.new_page()
    answer = gone.goto(url)
    assert answer is not None and answer.status == 410
    assert ZH["link.gone.title"] in gone.inner_text("h1")
    Steps(gone, viewer_steps.folder).shot("link-gone")
    expert.close()

    link_id = next(row for row in audit_of(guarded_server, "lidoc") if row.target.startswith("link:")).target
    opened_rows = audit_of(guarded_server, link_id)
    assert any(r.event_id == "110114" and r.address == "127.0.0.1" for r in opened_rows)  # the opening
    assert any(r.event_id == "110103" for r in opened_rows)  # the images it read
    assert any(r.outcome == 4 and "not valid" in r.description for r in audit_of(guarded_server, "link"))


def final_report(server, accession: str, series_sop: list[tuple[str, str]]) -> None:  # type: ignore[no-untyped-def]
    with server.db.session() as session:
        order = session.exec(select(ImagingOrder).where(ImagingOrder.accession_number == accession)).one()
        report = Report(order=order.id, study_instance_uid=order.study_instance_uid, status=ReportStatus.FINAL,
                        current_version=1)
        session.add(report)
        session.flush()
        session.add(ReportVersion(report=report.id, number=1, status="F", findings="右肺上叶见一结节，直径约8毫米。",
                                  impression="右肺上叶结节，建议随访。", author="lidoc", author_name="李医生",
                                  key_images=[{"series": series, "sop": sop, "sop_class": "1.2.840.10008.5.1.4.1.1.2"}
                                              for series, sop in series_sop]))


def test_cloud_film_on_a_phone(guarded_server, browser: Browser, tmp_path: Path) -> None:
    message, study = ct_order(7, "P70001", ("赵", "丽", "ZHAO LI"))
    send_hl7(guarded_server, message)
    images = store_ct(guarded_server.dicom_port, study_uid=study, accession="ACC7", patient_id="P70001", images=3)
    add_user(guarded_server, "lidoc", ["radiologist"], "李医生")
    with httpx.Client(base_url=guarded_server.http_url, auth=RADIOLOGIST, timeout=30) as client:
        made = client.post("/api/links", json={"study_instance_uid": study, "purpose": "film", "hours": 720})
        assert made.status_code == 201, made.text
        url = made.json()["url"]
        assert "/s/" in url
        assert client.post("/api/links", json={"study_instance_uid": "1.2.3.999", "purpose": "film"}).status_code == 404
        assert client.post("/api/links", json={"study_instance_uid": study, "purpose": "print"}).status_code == 422
        assert client.post("/api/links", json={"study_instance_uid": study, "hours": 0.01}).status_code == 422
    clerk_token = httpx.post(f"{guarded_server.http_url}/api/links", auth=ADMIN, timeout=30,
                             json={"study_instance_uid": study, "purpose": "film"})
    assert clerk_token.status_code == 201  # admin may; a clerk may not:
    add_user(guarded_server, "desk1", ["registrar"], "王登记")
    assert httpx.post(f"{guarded_server.http_url}/api/links", auth=("desk1", "correct horse 1"), timeout=30,
                      json={"study_instance_uid": study}).status_code == 403

    folder = tmp_path / "cloud-film"
    folder.mkdir()
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                has_touch=True, locale="zh-CN", timezone_id="Asia/Shanghai")
    page = phone.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    steps = Steps(page, folder)

    # before the report is final: the exam, no report
    page.goto(url)
    assert "赵丽" in page.inner_text("h2#exam-title")
    assert page.locator("#pending").inner_text() == ZH["cloud.pending"]
    assert page.locator("#report").count() == 0
    steps.shot("cloud-film-pending")

    final_report(guarded_server, "ACC7", images[:2])
    page.reload()
    assert "右肺上叶结节" in page.inner_text("#report")
    page.wait_for_function("[...document.querySelectorAll('#key-images img')].length === 2 && "
                           "[...document.querySelectorAll('#key-images img')].every(i => i.complete && i.naturalWidth > 0)")
    steps.shot("cloud-film-report")
    # the link's cookie reads this study's images, nothing else
    assert phone.request.get(f"{guarded_server.http_url}/dicomweb/studies").status == 403
    assert errors == []
    phone.close()
    print(f"screenshots: {folder}")

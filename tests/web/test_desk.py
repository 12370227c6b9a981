"""The registration desk in a real browser: a registrar's day, from the keyboard."""

from __future__ import annotations

import re
import subprocess
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from playwright.sync_api import Page
from pynetdicom.sop_class import ModalityPerformedProcedureStep
from sqlmodel import Session, select

from pacs.auth import accounts
from pacs.registry.models import ImagingOrder, Patient
from pacs.web.i18n import catalogue
from tests.dicom import client, mpps_attributes
from tests.helpers import MLLPClient, ack_fields
from tests.integration.test_his_outbox import FakeHIS
from tests.integration.test_pdq import HISPatient, PDQSupplier

ZH = catalogue("zh-CN")


def add_user(server, username: str, roles: list[str], display_name: str = "") -> None:  # type: ignore[no-untyped-def]
    with Session(server.db.engine) as session:
        accounts.add_user(session, username=username, password="correct horse 1", roles=roles,
                          display_name=display_name)
        session.commit()


def log_in(page, server, username: str, target: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server.http_url}{target}")
    page.fill("#username", username)
    page.fill("#password", "correct horse 1")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(re.escape(server.http_url + target)))



def choose_slot(page: Page, at: str, *, enter: bool = True) -> None:
    """The slot list focused, ArrowDown to ``at``, Enter: as a clerk books without the mouse."""
    page.locator("#slots").focus()
    for _ in range(SLOTS_A_DAY):
        if page.locator("#slots li[aria-selected='true']").inner_text().startswith(at):
            break
        page.keyboard.press("ArrowDown")
    assert page.evaluate("document.getElementById('slots').contains(document.activeElement)"), \
        "the slot list lost the focus while the clerk chose a time"
    if enter:
        page.keyboard.press("Enter")

def test_the_desk_opens_for_a_registrar_and_shows_its_keys(guarded_server, steps):
    add_user(guarded_server, "zhangsan", ["registrar"], "张三")
    page = steps.page
    log_in(page, guarded_server, "zhangsan", "/desk")
    assert page.locator("label.search-label").inner_text().startswith(ZH["desk.search.label"])
    assert page.evaluate("document.activeElement.id") == "search"
    steps.shot("desk")
    page.keyboard.press("F1")
    assert page.locator("dialog#keys").is_visible()
    assert ZH["desk.key.F9"] in page.locator("dialog#keys").inner_text()
    steps.shot("keys")
    page.keyboard.press("Escape")
    assert not page.locator("dialog#keys").is_visible()


def test_a_role_without_the_desk_is_told_so(guarded_server, steps):
    add_user(guarded_server, "li", ["clinician"])
    page = steps.page
    log_in(page, guarded_server, "li", "/desk")
    assert page.locator("h1").inner_text() == ZH["error.forbidden"]
    steps.shot("denied")


# -- a day at the desk ---------------------------------------------------------------------------

HOSPITAL = ZoneInfo("Asia/Shanghai")  # the settings fixture's time zone
SLOTS_A_DAY = 96  # quarter hours: more ArrowDown presses than any room's day has slots
CARD = "12345678"


def adt(control: str, pid: str, family: str, given: str, alphabetic: str, sex: str, birth: str,
        card: str = "") -> bytes:
    cards = f"~{card}^^^HOSP^HC" if card else ""
    return (f"MSH|^~\\&|HIS|HOSP|PACS|RADIOLOGY|20261206080000||ADT^A04^ADT_A01|{control}|P|2.5|||AL|NE|CHN|"
            f"UNICODE UTF-8\rEVN|A04|20261206080000\rPID|1||{pid}^^^HOSP^PI{cards}||{family}^{given}^^^^^L^I~"
            f"{alphabetic}^^^^^L^A||{birth}|{sex}\rPV1|1|O\r").encode()


def orm(control: str, pid: str, family: str, given: str, placer: str, accession: str, code: str, text: str,
        patient_class: str, department: str, at: str = "") -> bytes:
    """An order from the HIS; ``at`` (HH:MM) schedules it today, in ORC-7 and OBR-27."""
    timing = f"^^^{datetime.now(HOSPITAL).strftime('%Y%m%d')}{at.replace(':', '')}00^^R" if at else ""
    return (f"MSH|^~\\&|HIS|HOSP|PACS|RADIOLOGY|20261206080000||ORM^O01|{control}|P|2.3.1|||AL|NE|CHN|UNICODE UTF-8\r"
            f"PID|1||{pid}^^^HOSP^PI||{family}^{given}^^^^^L^I\rPV1|1|{patient_class}|||||||||||||||||V{control}\r"
            f"ORC|NW|{placer}^HIS|||SC||{timing}||20261206080000|||D002^王^五|||||{department}^{department}\r"
            f"OBR|1|{placer}^HIS||{code}^{text}^HOSP||||||||||||D002^王^五||{accession}|RP{accession}|"
            f"SPS{accession}||||CT|||{timing}||||^复查\r").encode()


def send_hl7(server, *messages: bytes) -> None:  # type: ignore[no-untyped-def]
    with MLLPClient(server.mllp_port) as mllp:
        for message in messages:
            assert ack_fields(mllp.send(message))["code"] == "AA", message


def order_row(server, accession: str) -> ImagingOrder:  # type: ignore[no-untyped-def]
    with Session(server.db.engine) as session:
        return session.exec(select(ImagingOrder).where(ImagingOrder.accession_number == accession)).one()


def wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def status_of(page, accession: str) -> str:  # type: ignore[no-untyped-def]
    return page.locator(f"#exams li:has-text('{accession}') .badge").inner_text()


def test_a_day_at_the_desk_from_the_keyboard(start_server, steps, installed_assets, tmp_path):
    his = FakeHIS()
    pdq = PDQSupplier([HISPatient(["P900001^^^HOSP^PI"], "李四", phone="13511112222")]).start()
    try:
        server = start_server(guarded=True, his={"pdq": pdq.url, "host": "127.0.0.1", "port": his.port},
                              outbox={"base_delay_seconds": 0.1, "max_delay_seconds": 0.5})
        add_user(server, "zhangsan", ["registrar"], "张三")
        send_hl7(server,
                 adt("D1", "P20001", "张", "伟", "ZHANG^WEI", "M", "19800101", CARD),
                 adt("D2", "P20002", "王", "小明", "WANG^XIAOMING", "M", "20000202"),
                 orm("D3", "P20001", "张", "伟", "PL9001", "A9001", "CT0001", "胸部CT平扫", "O", "呼吸科", "23:30"),
                 orm("D4", "P20002", "王", "小明", "PL9002", "A9002", "CT0101", "头颅CT平扫", "E", "急诊科", "23:45"))
        page = steps.page
        log_in(page, server, "zhangsan", "/desk")

        # a card swipe: the reader types ;number? fast, the search field takes it for a card
        page.keyboard.type(f";{CARD}?", delay=3)
        page.wait_for_function("document.getElementById('patient-name').textContent === '张伟'")
        assert ZH["desk.scan.card"].format(value=CARD) == page.locator("#search-status").inner_text()
        page.wait_for_selector("#exams li:has-text('A9001')")
        steps.shot("card-swipe")

        # pinyin initials, typed by a person
        page.keyboard.press("F2")
        page.keyboard.type("wxm", delay=120)
        page.wait_for_selector("#results li:has-text('王小明')")
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('patient-name').textContent === '王小明'")
        steps.shot("initials")

        # unknown here: found at the HIS by PDQ and taken into the registry
        page.keyboard.press("F2")
        page.keyboard.type("P900001", delay=60)
        page.wait_for_selector(f"#search-status:has-text('{ZH['desk.search.none'].format(q='P900001')}')")
        assert not pdq.queries  # typing searches the registry alone
        page.keyboard.press("Enter")  # Enter asks the HIS too
        page.wait_for_selector("#results li:has-text('李四')")
        assert ZH["desk.search.from_his"] in page.locator("#results").inner_text()
        assert pdq.queries, "the HIS was asked"
        steps.shot("found-at-the-his")

        # two pending requisitions checked in, Enter each
        page.keyboard.press("F3")
        page.wait_for_selector("#requisitions li:has-text('A9001')")
        assert page.locator("#requisitions li").count() == 2
        page.keyboard.press("Enter")  # the first: it leaves the list of those waiting
        wait_for(lambda: order_row(server, "A9001").status == "arrived")
        page.wait_for_function("document.querySelectorAll('#requisitions li').length === 1")
        assert "A9002" in page.locator("#requisitions").inner_text()
        page.keyboard.press("Enter")  # the next
        wait_for(lambda: order_row(server, "A9002").status == "arrived")
        page.wait_for_selector(f"#requisitions li:has-text('{ZH['desk.requisitions.none']}')")
        assert ZH["desk.requisitions.checked_in"].format(name="王小明", exam="头颅CT平扫") in \
            page.locator("#message").inner_text()
        steps.shot("checked-in")

        # a walk-in while the HIS is down for registration: a temporary ID
        page.keyboard.press("F7")
        page.keyboard.type("赵")
        page.keyboard.press("Tab")
        page.keyboard.type("敏")
        page.keyboard.press("Tab")
        page.keyboard.press("ArrowDown")  # female
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('patient-name').textContent === '赵敏'")
        page.wait_for_selector(f"#exams li:has-text('{ZH['desk.exams.none']}')")
        walk_in = page.locator("#patient-facts dd").first.inner_text()
        steps.shot("walk-in")

        # booked on CT2 tomorrow at 9:00
        tomorrow = (datetime.now(HOSPITAL) + timedelta(days=1)).date()
        page.keyboard.press("F4")
        page.select_option("#book-procedure", "CT0001")
        page.select_option("#book-room", "CT2")
        page.fill("#book-date", tomorrow.isoformat())
        page.dispatch_event("#book-date", "change")
        page.wait_for_selector("#slots li:has-text('09:00')")
        choose_slot(page, "09:00")
        page.wait_for_selector("#message:has-text('已预约')")
        assert "CT2 " in page.locator("#message").inner_text()
        page.wait_for_selector("#exams li:has-text('09:00')")
        booked = page.locator("#exams li").first.inner_text()
        assert f"{tomorrow.isoformat()} 09:00" in booked
        steps.shot("booked")

        # the same slot for another patient: full, refused, nothing saved
        page.keyboard.press("F2")
        page.keyboard.type("wangxiaoming", delay=60)
        page.wait_for_selector("#results li:has-text('王小明')")
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('patient-name').textContent === '王小明'")
        page.keyboard.press("F4")
        page.select_option("#book-room", "CT2")
        page.fill("#book-date", tomorrow.isoformat())
        page.dispatch_event("#book-date", "change")
        page.wait_for_selector("#slots li.full:has-text('09:00')")
        choose_slot(page, "09:00", enter=False)
        # the list refreshed meanwhile (a slower answer to an earlier change): the time stays
        with page.expect_response(lambda r: "/api/desk/slots" in r.url):
            page.dispatch_event("#book-room", "change")
        page.wait_for_timeout(100)
        assert page.locator("#slots li[aria-selected='true']").inner_text().startswith("09:00")
        page.keyboard.press("Enter")
        page.wait_for_selector("#message.error")
        assert ZH["desk.refused.full"] in page.locator("#message").inner_text()
        with Session(server.db.engine) as session:
            assert len(session.exec(select(ImagingOrder).join(Patient, Patient.id == ImagingOrder.patient)
                                    .where(Patient.patient_id == "P20002")).all()) == 1  # only the requisition
        steps.shot("full-slot")

        # the walk-in's exam cancelled with a reason; the HIS hears of it
        page.keyboard.press("F2")
        page.keyboard.type(walk_in, delay=30)
        page.wait_for_selector(f"#results li:has-text('{walk_in}')")
        page.keyboard.press("Enter")
        page.wait_for_selector("#exams li:has-text('09:00') .badge")
        page.wait_for_function("document.activeElement.id === 'exams'")
        page.keyboard.press("F9")
        page.wait_for_selector("dialog#cancel[open]")
        page.keyboard.type("患者要求改期")
        page.keyboard.press("Enter")
        page.wait_for_selector(f"#exams li:has-text('{ZH['desk.status.cancelled']}')")
        wait_for(lambda: any("|OC|" in m and "患者要求改期" in m for m in his.received))
        steps.shot("cancelled")

        # 张伟's label: printed from the exam's row (F8); its barcode reads back the accession
        page.keyboard.press("F2")
        page.keyboard.type(f";{CARD}?", delay=3)
        page.wait_for_function("document.getElementById('patient-name').textContent === '张伟'")
        page.wait_for_selector("#exams li:has-text('A9001')")
        page.wait_for_function("document.activeElement.id === 'exams'")
        with page.expect_popup() as popup:
            page.keyboard.press("F8")
        label_url = popup.value.url
        popup.value.close()
        assert label_url.endswith(f"/api/orders/{order_row(server, 'A9001').id}/label.pdf")
        pdf = page.context.request.get(label_url)
        assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
        (tmp_path / "label.pdf").write_bytes(pdf.body())
        subprocess.run(["pdftoppm", "-r", "300", "-png", str(tmp_path / "label.pdf"), str(tmp_path / "label")],
                       check=True)
        [png] = list(tmp_path.glob("label*.png"))
        decoded = subprocess.run(["zbarimg", "--quiet", "--raw", str(png)], capture_output=True, text=True)
        assert decoded.stdout.strip() == "A9001"
        assert "张伟" in subprocess.run(["pdftotext", str(tmp_path / "label.pdf"), "-"], capture_output=True,
                                        text=True).stdout

        # the modality starts the exam: the open page shows it without a reload
        order = order_row(server, "A9001")
        assoc = client("CT1").associate("127.0.0.1", server.dicom_port, ae_title="PACS")
        started = mpps_attributes(study_uid=order.study_instance_uid, accession="A9001", sps_id="SPSA9001",
                                  patient_id="P20001")
        assert assoc.send_n_create(started, ModalityPerformedProcedureStep, "1.2.826.0.1.3680043.8.498.9001")[0].Status == 0
        assoc.release()
        page.wait_for_selector("#exams li:has-text('A9001') .badge[data-status='in_progress']", timeout=10_000)
        steps.shot("in-progress-live")

        # today's totals
        page.keyboard.press("F6")
        page.wait_for_selector("#today-totals")
        totals = page.locator("#today-totals").inner_text()
        assert f"{ZH['desk.today.registered']} 1" in totals  # A9002 (A9001 is being examined)
        assert f"{ZH['desk.today.examined']} 1" in totals
        by_room = page.locator("table[data-by='by_room']").inner_text()
        assert "CT1" in by_room or "CT" in by_room
        steps.shot("today")
    finally:
        pdq.stop()
        his.close()


def test_bad_input_at_the_desk_is_told_plainly_and_saves_nothing(start_server, steps):
    server = start_server(guarded=True)
    add_user(server, "zhangsan", ["registrar"], "张三")
    send_hl7(server, adt("B1", "P30001", "钱", "多", "QIAN^DUO", "F", "19700303", "87654321"),
             orm("B2", "P30001", "钱", "多", "PL9101", "A910101", "CT0001", "胸部CT平扫", "O", "呼吸科", "23:50"))
    with MLLPClient(server.mllp_port) as mllp:  # the HIS cancels the order
        cancel = orm("B3", "P30001", "钱", "多", "PL9101", "A910101", "CT0001", "胸部CT平扫", "O", "呼吸科")
        assert ack_fields(mllp.send(cancel.replace(b"ORC|NW|", b"ORC|CA|")))["code"] == "AA"
    page = steps.page
    log_in(page, server, "zhangsan", "/desk")

    page.keyboard.type(";99999999?", delay=3)  # a card no one has
    page.wait_for_selector(f"#message.error:has-text('{ZH['desk.scan.unknown_card'].format(value='99999999')}')")
    steps.shot("unknown-card")

    page.keyboard.press("F2")
    page.keyboard.type("A910101", delay=3)  # a scanned barcode of a cancelled order
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#message.error:has-text('{ZH['desk.scan.cancelled_order'].format(value='A910101')}')")
    steps.shot("cancelled-order")

    page.keyboard.press("F7")  # a walk-in whose name is only spaces
    page.keyboard.type("   ")
    page.keyboard.press("Enter")
    page.wait_for_selector("#walkin-error:not([hidden])")
    assert page.locator("dialog#walkin").is_visible()
    steps.shot("name-of-spaces")
    page.keyboard.press("Escape")

    page.keyboard.press("F2")  # a booking in the past
    page.keyboard.type(";87654321?", delay=3)
    page.wait_for_function("document.getElementById('patient-name').textContent === '钱多'")
    page.keyboard.press("F4")
    page.select_option("#book-procedure", "CT0001")
    page.select_option("#book-room", "CT2")
    yesterday = (datetime.now(HOSPITAL) - timedelta(days=1)).date()
    page.fill("#book-date", yesterday.isoformat())
    page.dispatch_event("#book-date", "change")
    # the list of that day (not today's, shown before it): every time has passed
    page.wait_for_function("(() => { const all = document.querySelectorAll('#slots li');"
                           " return all.length > 0 && [...all].every(li => li.classList.contains('full')); })()")
    page.locator("#slots").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#message.error:has-text('{ZH['desk.refused.past']}')")
    steps.shot("past")
    with Session(server.db.engine) as session:
        assert len(session.exec(select(Patient)).all()) == 1  # no walk-in of spaces
        assert len(session.exec(select(ImagingOrder)).all()) == 1  # no booking in the past

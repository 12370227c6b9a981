"""The interface analysts' console at /engine, over HTTP as an analyst's browser uses it (HL7 sent
over real MLLP, a loopback HIS, the mappings a copy of the shipped ones in a temporary folder),
and the proof flow in a real browser."""

from __future__ import annotations

import re
import shutil
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect
from sqlmodel import Session, col, func, select

from pacs.integration.message_store import StoredMessage
from pacs.registry.models import ImagingOrder
from pacs.settings import HISDestination, OutboxSettings
from pacs.web.i18n import catalogue
from tests.archive.test_reconciliation import audit_entries
from tests.conftest import ADMIN_PASSWORD, mappings_dir_default
from tests.helpers import MLLPClient, ack_fields, load
from tests.integration.test_his_outbox import FakeHIS, run_procedure, wait_for
from tests.web.test_desk import add_user, log_in

ZH = catalogue("zh-CN")
PASSWORD = "correct horse 1"
PRIORITY_FIX = "紧急,stat,what the outpatient HIS sends for an urgent exam\n"


@pytest.fixture
def mappings_dir(tmp_path: Path) -> Path:
    """A copy of the shipped mappings the bench may save into."""
    folder = tmp_path / "mappings"
    shutil.copytree(mappings_dir_default(), folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.fixture
def his():
    fake = FakeHIS()
    yield fake
    fake.close()


def urgent_orm(number: int) -> bytes:
    """The IHE ORM with the outpatient HIS's word for urgent (紧急) as its priority: a code the
    shipped priority table does not hold, so the message is refused (AE)."""
    return (load("orm_o01_nw_ihe.hl7").replace(b"ORM0001", f"ORM{number:04d}".encode())
            .replace(b"PL0001", f"PL{number:04d}".encode()).replace(b"ACC0001", f"ACC{number:04d}".encode())
            .replace(b"SPS0001", f"SPS{number:04d}".encode())
            .replace(b".20261125.1^HIS", f".20261125.{1000 + number}^HIS".encode())
            .replace(b"^^R", "^^紧急".encode()))


def send(server, *messages: bytes) -> list[dict]:  # type: ignore[no-untyped-def]
    with MLLPClient(server.mllp_port) as mllp:
        return [ack_fields(mllp.send(m), "gb18030" if b"GB 18030" in m[:200] or b"HIS_CN" in m[:60] else "utf-8")
                for m in messages]


def analyst(server, name: str = "lina") -> httpx.Client:  # type: ignore[no-untyped-def]
    add_user(server, name, ["analyst"], "李娜")
    return httpx.Client(base_url=server.http_url, auth=(name, PASSWORD), timeout=60, follow_redirects=False)


def shown_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'id="message-(\d+)"', html)]


def admin(server) -> httpx.Client:  # type: ignore[no-untyped-def]
    return httpx.Client(base_url=server.http_url, auth=("admin", ADMIN_PASSWORD), timeout=30)


def test_the_browser_finds_messages_by_every_key(guarded_server):
    server = guarded_server
    unsupported = urgent_orm(98).replace(b"|P|2.3.1|", b"|P|2.9|").replace(b"P10001", b"P10098")
    acks = send(server, load("orm_o01_nw_ihe.hl7"), load("adt_a04_china_gb18030.hl7"), urgent_orm(99), unsupported)
    assert [a["code"] for a in acks] == ["AA", "AA", "AE", "AR"]
    with server.db.session() as session:
        stored = {m.control_id: m for m in session.exec(select(StoredMessage)).all()}
        ids = {control_id: m.id for control_id, m in stored.items()}
        # Refused at mapping (AE) or at its header (AR): the keys its raw text holds are kept in
        # the indexed columns, as for a message that was applied.
        assert (stored["ORM0099"].patient_id, stored["ORM0099"].accession_number) == ("P10001", "ACC0099")
        assert (stored["ORM0098"].patient_id, stored["ORM0098"].accession_number) == ("P10098", "ACC0098")
        assert stored["ORM0098"].status == "ERROR" and stored["ORM0098"].mapped is None
        session.delete(session.get_one(StoredMessage, ids.pop("ORM0098")))
        session.commit()
    orm, adt, refused = ids["ORM0001"], ids["CN0001"], ids["ORM0099"]
    with analyst(server) as http:
        def found(**params: str) -> list[int]:
            response = http.get("/engine/messages", params=params)
            assert response.status_code == 200, response.text
            assert re.fullmatch(r"search;dur=\d+\.\d\d, page;dur=\d+\.\d\d", response.headers["server-timing"])
            return shown_ids(response.text)

        assert found() == [refused, adt, orm]  # newest first
        assert found(control_id="ORM0001") == [orm]
        assert found(type="ADT") == [adt]
        assert found(type="ORM^O01", status="ERROR") == [refused]
        assert found(status="PROCESSED") == [adt, orm]
        assert found(sender="WINNING") == [adt] and found(sender="IHE_OP") == [refused, orm]
        assert found(patient_id="P10001") == [refused, orm]  # the refused one has it too
        assert found(accession="ACC0001") == [orm]
        assert found(accession="ACC0099") == [refused]  # never mapped: its raw text's accession kept
        assert found(text="欧阳娜娜") == [adt]  # sent in GB18030
        assert found(text="咳嗽两周") == [refused, orm]
        assert found(text="100%") == []  # LIKE's wildcards are only text
        assert found(since="2000-01-01T00:00", until="2000-01-02T00:00") == []
        assert found(since="2000-01-01T00:00") == [refused, adt, orm]
        bad = http.get("/engine/messages", params={"since": "yesterday"})
        assert bad.status_code == 200 and 'id="error"' in bad.text

        detail = http.get(f"/engine/messages/{adt}")
        assert detail.status_code == 200
        assert 'title="PID-5 Patient Name"' in detail.text and "欧阳娜娜" in detail.text  # GB18030 shown right
        assert 'title="MSH-10 Message Control Id"' in detail.text
        refused_page = http.get(f"/engine/messages/{refused}").text
        assert "code &#39;紧急&#39; is not in table priority" in refused_page
        assert ZH["engine.message.field_in_error"].format(field="OBR-27 Quantity/timing") in refused_page \
            or "OBR-27 Quantity" in refused_page
        assert 'class="field in-error"' in refused_page
        assert http.get("/engine/messages/99999").status_code == 404

        exported = http.get("/engine/messages/export", params=[("id", orm), ("id", adt)])
        assert exported.status_code == 200
        assert exported.content == load("orm_o01_nw_ihe.hl7").rstrip(b"\r") + b"\r\n" + \
            load("adt_a04_china_gb18030.hl7").rstrip(b"\r") + b"\r\n"
    [read] = [e for e in audit_entries(server, event_id="110110", user="lina")
              if e["details"].get("message") == adt]
    assert read["action"] == "R"
    add_user(server, "zhangsan", ["registrar"])
    with httpx.Client(base_url=server.http_url, auth=("zhangsan", PASSWORD)) as registrar:
        assert registrar.get("/engine/messages").status_code == 403
        assert registrar.post("/engine/messages/reprocess", data={"id": orm}).status_code == 403


def test_reprocess_one_or_a_selection_each_a_new_message(guarded_server):
    server = guarded_server
    send(server, load("orm_o01_nw_ihe.hl7"), urgent_orm(98))
    with server.db.session() as session:
        ids = {m.control_id: m.id for m in session.exec(select(StoredMessage)).all()}
    with analyst(server) as http:
        answer = http.post("/engine/messages/reprocess", data={"id": [ids["ORM0001"], ids["ORM0098"]]})
        assert answer.status_code == 303
        listing = http.get(answer.headers["location"]).text
        done = re.search(r'id="done"[^>]*>([^<]*)<', listing).group(1)
        assert done.startswith(ZH["engine.reprocess.done"].split("{")[0] + "2") \
            and ZH["engine.status.PROCESSED"] in done and ZH["engine.status.ERROR"] in done
        one = http.post("/engine/messages/reprocess", data={"id": ids["ORM0098"]})
        assert one.status_code == 303 and re.search(r"/engine/messages/\d+\?done=", one.headers["location"])
    with server.db.session() as session:
        again = session.exec(select(StoredMessage).where(col(StoredMessage.reprocess_of).is_not(None))
                             .order_by(col(StoredMessage.id))).all()
    assert [(m.reprocess_of, m.status) for m in again] == [
        (ids["ORM0001"], "PROCESSED"), (ids["ORM0098"], "ERROR"), (ids["ORM0098"], "ERROR")]
    entries = audit_entries(server, event_id="110107", user="lina")
    assert sorted(e["details"]["message"] for e in entries) == sorted([ids["ORM0001"], ids["ORM0098"], ids["ORM0098"]])


def counts(server) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with Session(server.db.engine) as session:
        return (session.exec(select(func.count()).select_from(StoredMessage)).one(),
                session.exec(select(func.count()).select_from(ImagingOrder)).one())


def test_the_bench_writes_nothing_and_saves_a_clean_draft(guarded_server, mappings_dir):
    server = guarded_server
    send(server, urgent_orm(97))
    with server.db.session() as session:
        [refused] = session.exec(select(StoredMessage.id)).all()
    table = mappings_dir / "codes" / "priority.csv"
    shipped = table.read_text(encoding="utf-8")
    before = counts(server)
    with analyst(server) as http:
        opened = http.get("/engine/bench", params={"message": refused, "file": "codes/priority.csv"})
        assert opened.status_code == 200 and "急诊,stat," in opened.text
        based_on = re.search(r'name="based_on" value="([0-9a-f]+)"', opened.text).group(1)

        broken = http.post("/engine/bench", data={"message_id": refused, "file": "codes/priority.csv",
                                                   "draft": shipped + "急,routine,\n", "based_on": based_on})
        assert broken.status_code == 200
        assert re.search(r"codes/priority\.csv:\d+: ", broken.text)
        assert 'id="bench-save"' not in broken.text

        tried = http.post("/engine/bench", data={"message_id": refused, "file": "codes/priority.csv",
                                                  "draft": shipped + PRIORITY_FIX, "based_on": based_on})
        assert tried.status_code == 200
        in_force, drafted = tried.text.split('id="result-in_force"')[1].split('id="result-drafted"')
        assert "is not in table priority" in in_force and "MSA|AE" not in in_force.replace("</span>", "")
        assert ZH["engine.bench.applies"] in drafted and "ACC0097" in drafted
        assert ZH["engine.bench.clean"] in tried.text and 'id="bench-save"' in tried.text
        assert counts(server) == before  # trying wrote nothing
        assert table.read_text(encoding="utf-8") == shipped

        pasted = http.post("/engine/bench", data={"raw": urgent_orm(96).decode().replace("\r", "\n")})
        assert "is not in table priority" in pasted.text and counts(server) == before
        fhir = (Path(__file__).parents[1] / "data" / "fhir" / "servicerequest_contained.json").read_text()
        tried_fhir = http.post("/engine/bench", data={"raw": fhir})
        assert ZH["engine.bench.applies"] in tried_fhir.text.split('id="result-in_force"')[1]
        assert counts(server) == before

        saved = http.post("/engine/bench/save", data={"file": "codes/priority.csv", "based_on": based_on,
                                                       "draft": shipped + PRIORITY_FIX, "message_id": refused})
        assert saved.status_code == 200 and 'id="done"' in saved.text
        assert table.read_text(encoding="utf-8") == shipped + PRIORITY_FIX
        [kept] = (mappings_dir / ".previous" / "codes").glob("priority.csv.*")
        assert kept.read_text(encoding="utf-8") == shipped

        stale = http.post("/engine/bench/save", data={"file": "codes/priority.csv", "based_on": based_on,
                                                       "draft": shipped, "message_id": refused})
        assert stale.status_code == 409 and table.read_text(encoding="utf-8") == shipped + PRIORITY_FIX
        escape = http.post("/engine/bench/save", data={"file": "../../etc/passwd", "based_on": based_on,
                                                        "draft": "x"})
        assert escape.status_code == 404
        downloaded = http.post("/engine/bench/download", data={"file": "codes/priority.csv", "draft": "code,value\n"})
        assert downloaded.content == b"code,value\n"
        assert downloaded.headers["content-disposition"] == 'attachment; filename="priority.csv"'
        assert http.post("/engine/bench/download", data={"file": 'x"\r\nSet-Cookie: a=b', "draft": "x"}).status_code == 404
    [entry] = [e for e in audit_entries(server, event_id="110113", user="lina") if e["outcome"] == 0]
    assert entry["details"]["object"] == "codes/priority.csv"
    assert entry["details"]["previous"].startswith(".previous/codes/priority.csv.")
    assert send(server, urgent_orm(95))[0]["code"] == "AA"  # in force at once

    table.write_text(shipped + "急,routine,\n", encoding="utf-8")  # saved by hand, broken: refused
    with analyst(server, "wangqiang") as http:
        refused_note = ZH["engine.mappings.refused"].format(count=1)
        # The poller may read the file half written first (a header missing, also one problem),
        # and the whole file at its next look: wait for the problem of the file as saved.
        twice = r"codes/priority\.csv:\d+: code &#39;急&#39; appears twice"
        wait_for(lambda: re.search(twice, http.get("/engine").text))
        assert refused_note in http.get("/engine").text


def test_an_analyst_fixes_a_refused_order_and_retries_the_his(start_server, his, steps, mappings_dir):
    """The issue's proof: last night's AE'd ORM found by accession, why read (the field named),
    the code table fixed in a draft, the bench shows it would apply, the mapping saved, the message
    reprocessed and applied; a dead outbox item sent again once the HIS is back."""
    his.answer = "AE"  # the HIS refuses what it is told, for now
    server = start_server(guarded=True, his=HISDestination(host="127.0.0.1", port=his.port),
                          outbox=OutboxSettings(base_delay_seconds=0.1, max_delay_seconds=0.3))
    assert send(server, urgent_orm(42))[0]["code"] == "AE"
    with server.db.session() as session:  # it came last night, 20 hours ago
        message = session.exec(select(StoredMessage)).one()
        message.received_at -= timedelta(hours=20)
        session.add(message)
    run_procedure(server, complete=False)  # an exam started: the HIS is told, and refuses
    with admin(server) as http:
        wait_for(lambda: http.get("/api/outbox", params={"status": "DEAD"}).json()["total"] == 1)
    add_user(server, "lina", ["analyst"], "李娜")
    page = steps.page
    log_in(page, server, "lina", "/engine")
    assert page.locator("#queues tr[data-destination=his] .dead").inner_text() == "1"
    assert page.locator("#traffic tr[data-type='ORM^O01'] .errored").nth(1).inner_text() == "1"  # the last day's
    assert page.locator("#traffic tr[data-type='ORM^O01'] .errored").nth(0).inner_text() == "0"  # not the last hour's
    steps.shot("dashboard")
    assert send(server, urgent_orm(43))[0]["code"] == "AE"  # another one now: the page counts it by itself
    expect(page.locator("#traffic tr[data-type='ORM^O01'] .errored").nth(0)).to_have_text("1", timeout=15_000)
    steps.shot("dashboard-live")

    page.get_by_role("link", name=ZH["engine.tab.messages"]).click()
    page.fill("#search-accession", "ACC0042")
    page.keyboard.press("Enter")
    page.wait_for_url("**/engine/messages?*accession=ACC0042*")
    rows = page.locator("table.messages tbody tr")
    assert rows.count() == 1 and ZH["engine.status.ERROR"] in rows.inner_text()
    steps.shot("found-by-accession")
    rows.locator("a").first.click()
    assert "code '紧急' is not in table priority" in page.locator("#why").inner_text()
    assert "OBR-27" in page.locator("#error-field").inner_text()
    error_field = page.locator("pre.hl7 .field.in-error").first
    assert error_field.get_attribute("title").startswith("OBR-27 ")
    error_field.hover()
    steps.shot("why-refused")

    page.locator("#to-bench").click()
    page.select_option("#bench-file", "codes/priority.csv")
    page.locator("#bench-load").click()
    page.wait_for_load_state()
    draft = page.locator("#bench-draft")
    draft.press("Control+End")
    draft.type(PRIORITY_FIX)  # typed as an analyst would
    page.locator("#bench-try").click()
    page.wait_for_load_state()
    assert ZH["engine.bench.applies"] in page.locator("#result-drafted .verdict").inner_text()
    assert "紧急" in page.locator("#result-in_force .verdict").inner_text()
    assert ZH["engine.bench.clean"] in page.locator("#problems").inner_text()
    steps.shot("bench-side-by-side")
    page.locator("#bench-save").click()
    page.wait_for_load_state()
    assert "codes/priority.csv" in page.locator("#done").inner_text()
    steps.shot("saved")

    page.goto(f"{server.http_url}/engine/messages?accession=ACC0042")
    page.locator("table.messages tbody tr a").first.click()
    page.locator("#reprocess").focus()
    page.keyboard.press("Enter")  # from the keyboard
    page.wait_for_url(re.compile(r".*/engine/messages/\d+\?done=.*"))
    assert page.locator("#status").inner_text() == ZH["engine.status.PROCESSED"]
    assert "ACC0042" in page.locator("#applied").inner_text()
    steps.shot("reprocessed-applied")

    page.keyboard.press("Alt+2")  # the messages tab, from the keyboard
    page.wait_for_url("**/engine/messages")
    page.select_option("select[name=status]", "ERROR")
    page.fill("#search-accession", "")
    page.locator("#search button[type=submit]").click()
    page.wait_for_url("**/engine/messages?*status=ERROR*")
    errored = page.locator("table.messages tbody tr")
    assert errored.count() == 2  # the one fixed above as first received, and the one sent since
    page.locator("#select-all").check()
    with page.expect_download() as downloaded:
        page.keyboard.press("Alt+E")
    exported = Path(downloaded.value.path()).read_bytes()
    assert exported.count(b"MSH|") == 2 and b"ORM0042" in exported and b"ORM0043" in exported
    page.locator("table.messages tbody tr", has_text="ORM0042").locator("input[name=id]").uncheck()
    steps.shot("selection")
    page.keyboard.press("Alt+R")  # the selection (ORM0043 alone) reprocessed
    page.wait_for_url("**/engine/messages?done=*")
    assert re.search(r"#\d+ → #\d+ " + ZH["engine.status.PROCESSED"], page.locator("#done").inner_text())
    assert page.locator("#done").inner_text().count("→") == 1
    steps.shot("selection-reprocessed")

    his.answer = "AA"  # the HIS is back
    page.get_by_role("link", name=ZH["engine.tab.outbox"]).click()
    dead = page.locator("table.outbox tr.status-dead")
    assert dead.count() == 1
    dead.locator("summary").click()  # what was sent, and the HIS's answer
    assert dead.locator("pre").nth(0).inner_text().startswith("MSH|")
    assert "MSA|AE" in dead.locator("pre").nth(1).inner_text()
    assert dead.locator("pre").nth(1).locator(".field[title^='MSA-1 ']").inner_text() == "AE"  # named
    steps.shot("outbox-dead")
    page.locator("button.retry-all").click()
    page.wait_for_url("**/engine/outbox?done=*")
    wait_for(lambda: len(his.received) >= 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        page.goto(f"{server.http_url}/engine/outbox?status=DEAD")
        if page.locator("table.outbox tbody tr").count() == 0:
            break
        time.sleep(0.2)
    assert page.locator("table.outbox tbody tr").count() == 0
    page.goto(f"{server.http_url}/engine")
    assert page.locator("#queues tr[data-destination=his] .dead").inner_text() == "0"
    steps.shot("his-back")
    entries = audit_entries(server, user="lina")
    assert {e["description"] for e in entries} >= {"message read", "mapping file saved", "message reprocessed",
                                                   "outbox item sent again", "messages exported"}


def test_a_long_outbox_payload_shows_its_start_and_downloads_whole(guarded_server):
    """A report's ORU carries its PDF: the outbox page shows the start of each payload, says how
    much is left out and links the whole text, so a page of a hundred items stays small."""
    from pacs.integration import outbox as outbox_module
    from pacs.web.engine import PART_SHOWN

    server = guarded_server
    payload = "MSH|^~\\&|PACS|RAD|HIS|HOSP|20261207||ORU^R01|X1|P|2.5\r" + "OBX|1|ED|PDF^Report||" + "A" * 40_000
    with server.db.session() as session:
        item = outbox_module.enqueue(session, destination="nowhere", kind="hl7", payload=payload, description="long")
        session.flush()
        item_id = item.id
    with analyst(server) as http:
        page = http.get("/engine/outbox")
        assert page.status_code == 200, page.text
        assert f"/engine/outbox/{item_id}/payload" in page.text
        assert str(len(payload) - PART_SHOWN) in page.text and "A" * (PART_SHOWN + 1) not in page.text
        assert len(page.content) < len(payload)
        whole = http.get(f"/engine/outbox/{item_id}/payload")
        assert whole.status_code == 200 and whole.text == payload
        assert "attachment" in whole.headers["content-disposition"]
        assert http.get(f"/engine/outbox/{item_id}/nothing").status_code == 404
        assert http.get("/engine/outbox/999999/payload").status_code == 404
    with httpx.Client(base_url=server.http_url, timeout=30, follow_redirects=False) as anonymous:
        assert anonymous.get(f"/engine/outbox/{item_id}/payload").status_code in (302, 303, 401)

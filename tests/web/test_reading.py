"""The reading pages in a real browser, from the keyboard: a resident claims a chest CT from the
worklist (a STAT head CT above it, the patient's prior report beside it), writes from its
template, inserts a phrase, marks two key images and signs (preliminary); an attending verifies
it (final); an amendment with a reason follows (corrected). Every version stays readable and the
order moves to reported, then verified."""

from __future__ import annotations

import re

import requests

from pacs.web.i18n import catalogue
from tests.archive.test_reconciliation import audit_entries
from tests.reporting.studies import PASSWORD, add_user, ct_study, order_of
from tests.web.test_desk import log_in

ZH = catalogue("zh-CN")


def api(server, user: str, method: str, path: str, body=None):  # type: ignore[no-untyped-def]
    answer = requests.request(method, f"{server.http_url}/api{path}", json=body, auth=(user, PASSWORD), timeout=30)
    assert answer.status_code < 300, answer.text
    return answer.json()


def wait_text(page, element: str, text: str) -> None:  # type: ignore[no-untyped-def]
    """Wait until the element's text holds ``text``."""
    page.wait_for_function("([id, text]) => document.getElementById(id).textContent.includes(text)",
                           arg=[element, text])


def wait_saved(page) -> None:  # type: ignore[no-untyped-def]
    """The autosave has answered: the line says when the draft was saved."""
    wait_text(page, "saved", ZH["reading.editor.saved"].split("{")[0])


def test_a_ct_read_signed_verified_and_amended_from_the_keyboard(guarded_server, steps):
    server = guarded_server
    add_user(server, "liyi", ["radiologist"], "李医生")
    add_user(server, "wangzr", ["attending"], "王主任")
    # the patient's prior chest CT, read and signed final last time
    prior = ct_study(server, 7300, "P73001", ("张", "三", "ZHANG SAN"))
    api(server, "wangzr", "POST", f"/reports/{prior['id']}/claim", {})
    api(server, "wangzr", "PUT", f"/reports/{prior['id']}/draft",
        {"revision": 0, "findings": "右肺上叶见一小结节，直径约4mm。", "impression": "右肺上叶小结节，建议年度复查。"})
    api(server, "wangzr", "POST", f"/reports/{prior['id']}/sign")
    api(server, "wangzr", "POST", f"/reports/{prior['id']}/release")
    today = ct_study(server, 7301, "P73001", ("张", "三", "ZHANG SAN"))
    ct_study(server, 7302, "P73002", ("王", "五", "WANG WU"), priority="S", patient_class="E",
             code="CT0101^头颅CT平扫", sex="F")

    page = steps.page
    log_in(page, server, "liyi", "/reading")
    rows = page.locator("#rows tr")
    rows.first.wait_for()
    assert rows.count() == 2
    assert "ACC7302" in rows.nth(0).inner_text() and ZH["reading.priority.emergency"] in rows.nth(0).inner_text()
    assert page.evaluate("document.activeElement.id") == "rows"
    steps.shot("worklist")
    page.keyboard.press("F1")
    assert ZH["reading.keys.open"] in page.locator("dialog#keys").inner_text()
    steps.shot("keys")
    page.keyboard.press("Escape")
    assert not page.locator("dialog#keys").is_visible()
    page.locator("#rows").focus()

    page.keyboard.press("ArrowDown")
    selected = page.locator("#rows tr[aria-selected='true']")
    assert "ACC7301" in selected.inner_text() and "张三 (ZHANG SAN)" in selected.inner_text()
    page.locator("#priors li").first.wait_for()
    assert "ACC7300" in page.locator("#priors").inner_text()
    assert "右肺上叶小结节，建议年度复查。" in page.locator("#priors").inner_text()
    steps.shot("priors")

    page.keyboard.press("Enter")  # claims it and opens the editor
    page.wait_for_url(f"**/reading/{today['id']}")
    page.locator("#thumbs figure").nth(3).wait_for()
    page.wait_for_function("document.getElementById('template').options.length > 1")
    assert page.locator("#h-name").inner_text() == "张三 (ZHANG SAN)"
    assert page.locator("#h-claim").inner_text() == ZH["reading.editor.claimed_by_you"]
    # the editor puts the cursor on the template once templates, images and phrases are in
    page.wait_for_function("document.activeElement.id === 'template'", timeout=10_000)
    steps.shot("editor")

    page.keyboard.press("ArrowDown")  # the procedure's first template
    page.keyboard.press("Enter")
    findings = page.locator("#findings")
    assert findings.input_value().startswith("张三，男，") and "胸部CT平扫" in findings.input_value()
    assert page.evaluate("document.activeElement.id") == "findings"
    page.keyboard.press("Enter")
    page.keyboard.type("右肺上叶结节较前未见明显变化。")
    page.keyboard.press("Alt+K")  # a phrase, by its abbreviation
    assert page.locator("dialog#phrases").is_visible()
    page.keyboard.type("jyfc")
    assert page.locator("#phrase-list li").count() == 1
    steps.shot("phrase")
    page.keyboard.press("Enter")
    assert findings.input_value().endswith("右肺上叶结节较前未见明显变化。建议定期复查。")
    assert page.evaluate("document.activeElement.id") == "findings"
    page.keyboard.press("Alt+I")
    page.keyboard.press("Control+End")
    page.keyboard.type("右肺上叶小结节，同前。")

    page.keyboard.press("Alt+G")  # the thumbnails: Space marks, arrows move
    page.keyboard.press("Space")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Space")
    assert page.locator("#thumbs figure.key").count() == 2
    assert page.locator("#key-count").inner_text() == ZH["reading.editor.key_count"].format(count=2)
    wait_saved(page)
    steps.shot("written")

    with page.context.expect_page() as opened:
        page.keyboard.press("Alt+V")  # the viewer in a window of its own
    viewer = opened.value
    viewer.wait_for_url(f"**/viewer/viewer?StudyInstanceUIDs={today['study_instance_uid']}")
    viewer.close()

    page.keyboard.press("Alt+S")
    wait_text(page, "message", ZH["reading.version.P"])
    assert page.locator("#h-status").inner_text() == ZH["reading.report.preliminary"]
    assert order_of(server, "ACC7301")["status"] == "reported"
    assert api(server, "liyi", "GET", f"/reports/{today['id']}")["template"] == "CT0001:胸部CT平扫（正常）"
    steps.shot("signed-preliminary")

    # the attending: the preliminary waits in the list; Enter, then Alt+Y verifies it
    page.context.clear_cookies()
    log_in(page, server, "wangzr", "/reading")
    rows.first.wait_for()
    page.keyboard.press("ArrowDown")
    assert ZH["reading.report.preliminary"] in page.locator("#rows tr[aria-selected='true']").inner_text()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/reading/{today['id']}")
    page.locator("#verify").wait_for()
    page.keyboard.press("Alt+Y")
    wait_text(page, "message", ZH["reading.editor.verified"].split("：")[0])
    assert page.locator("#h-status").inner_text() == ZH["reading.report.final"]
    assert order_of(server, "ACC7301")["status"] == "verified"
    steps.shot("verified")

    # an amendment: claim again, change the impression, give the reason
    page.keyboard.press("Alt+L")
    page.wait_for_function("!document.getElementById('impression').disabled")
    page.keyboard.press("Alt+I")
    page.keyboard.press("Control+End")
    page.keyboard.type("建议三个月后复查。")
    wait_saved(page)
    page.keyboard.press("Alt+A")
    assert page.locator("dialog#amend-dialog").is_visible()
    page.keyboard.press("Enter")  # no reason: refused in the page, nothing sent
    assert page.locator("#amend-error").inner_text() == ZH["reading.amend.reason_needed"]
    page.keyboard.type("补充随访建议")
    steps.shot("amend-reason")
    page.keyboard.press("Enter")
    wait_text(page, "message", ZH["reading.editor.amended"].split("：")[0])
    assert page.locator("#h-status").inner_text() == ZH["reading.report.corrected"]

    # every version readable, from the keyboard
    page.keyboard.press("Alt+H")
    links = page.locator("#versions button")
    assert links.count() == 3
    texts = [links.nth(i).inner_text() for i in range(3)]
    assert ZH["reading.version.P"] in texts[0] and "李医生" in texts[0]
    assert ZH["reading.version.F"] in texts[1] and "王主任" in texts[1]
    assert ZH["reading.version.C"] in texts[2]
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('version').dataset.number === '1'")
    assert "建议三个月后复查" not in page.locator("#version-impression").inner_text()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('version').dataset.number === '3'")
    assert page.locator("#version-impression").inner_text().endswith("建议三个月后复查。")
    assert "补充随访建议" in page.locator("#version-reason").inner_text()
    steps.shot("versions")

    versions = api(server, "liyi", "GET", f"/reports/{today['id']}/versions")
    assert [(v["status"], v["author"], v["verifier"]) for v in versions] == [
        ("P", "liyi", ""), ("F", "liyi", "wangzr"), ("C", "wangzr", "")]
    sent = {(s, u) for s, u in today["sent"]}
    assert len(versions[0]["key_images"]) == 2
    assert all((k["series"], k["sop"]) in sent and k["sop_class"] == "1.2.840.10008.5.1.4.1.1.2"
               for k in versions[0]["key_images"])
    assert versions[0]["findings"].endswith("建议定期复查。")
    events = [e["to_status"] for e in order_of(server, "ACC7301")["events"]]
    assert events[-2:] == ["reported", "verified"]
    said = {(e["user"], e["details"].get("what")) for e in audit_entries(server, event_id="110111")}
    assert {("liyi", "claim"), ("liyi", "sign"), ("wangzr", "verify"), ("wangzr", "amend")} <= said


def test_the_editor_refuses_what_cannot_be_signed_and_a_stale_tab(guarded_server, steps):
    server = guarded_server
    add_user(server, "liyi", ["radiologist"], "李医生")
    add_user(server, "zhaoyi", ["radiologist"], "赵医生")
    study = ct_study(server, 7310, "P73101", ("赵", "丽", "ZHAO LI"), sex="F")
    api(server, "zhaoyi", "POST", f"/reports/{study['id']}/claim", {})
    page = steps.page
    log_in(page, server, "liyi", "/reading")
    page.locator("#rows tr").first.wait_for()
    assert "赵医生" in page.locator("#rows tr").first.inner_text()
    page.keyboard.press("Enter")  # someone else reads it: said, and the list stays
    page.wait_for_function("!document.getElementById('message').hidden")
    assert "赵医生" in page.locator("#message").inner_text()
    assert re.search(r"/reading$", page.url)
    steps.shot("claimed-by-another")

    api(server, "zhaoyi", "POST", f"/reports/{study['id']}/release")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/reading/{study['id']}")
    page.locator("#sign").wait_for()
    page.keyboard.press("Alt+S")  # nothing written yet
    page.wait_for_function("document.getElementById('message').classList.contains('error')")
    said = page.locator("#message").inner_text()
    assert said.startswith(ZH["reading.editor.sign_refused"].split("{")[0]) and "empty" in said
    assert api(server, "liyi", "GET", f"/reports/{study['id']}/versions") == []
    steps.shot("empty-refused")

    # another tab saves first: this one's next save is refused and says so
    page.keyboard.press("Alt+F")
    page.keyboard.type("肝脏大小正常。")
    wait_saved(page)
    revision = api(server, "liyi", "GET", f"/reports/{study['id']}")["draft_revision"]
    api(server, "liyi", "PUT", f"/reports/{study['id']}/draft", {"revision": revision, "findings": "另一标签页"})
    page.keyboard.type("胆囊未见异常。")
    wait_text(page, "message", ZH["reading.editor.stale"].split("，")[0])
    assert api(server, "liyi", "GET", f"/reports/{study['id']}")["findings"] == "另一标签页"
    steps.shot("stale")


def test_a_critical_result_is_signed_only_with_whom_was_told_and_when(guarded_server, steps):
    server = guarded_server
    add_user(server, "wangzr", ["attending"], "王主任")
    study = ct_study(server, 7320, "P73201", ("孙", "七", "SUN QI"))
    page = steps.page
    log_in(page, server, "wangzr", "/reading")
    page.locator("#rows tr").first.wait_for()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/reading/{study['id']}")
    page.wait_for_function("document.getElementById('template').options.length > 1")
    page.keyboard.press("Alt+F")
    page.keyboard.type("右侧大量气胸，右肺压缩约70%。")
    page.keyboard.press("Alt+I")
    page.keyboard.type("右侧大量气胸。")
    page.keyboard.press("Alt+X")  # flagged: the focus goes to whom was told
    assert page.locator("#critical").is_checked()
    assert page.evaluate("document.activeElement.id") == "critical-told"
    wait_saved(page)
    page.keyboard.press("Alt+S")
    wait_text(page, "message", "危急值")
    assert api(server, "wangzr", "GET", f"/reports/{study['id']}/versions") == []
    steps.shot("critical-refused")

    page.keyboard.type("急诊科 刘医生")
    page.fill("#critical-told-at", "2026-12-06T10:05")
    wait_saved(page)
    page.keyboard.press("Alt+S")
    wait_text(page, "message", ZH["reading.version.F"])
    [signed] = api(server, "wangzr", "GET", f"/reports/{study['id']}/versions")
    assert signed["status"] == "F" and signed["critical"] and signed["critical_told"] == "急诊科 刘医生"
    assert signed["critical_told_at"].startswith("2026-12-06T02:05")  # 10:05 in Shanghai, kept in UTC
    steps.shot("critical-signed")

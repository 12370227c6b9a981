"""The technologist's page in a real browser: a study from the ward's portable ultrasound that
found two orders waits on the reconciliation list; the technologist attaches it to the right
one from the keyboard, and C-FIND (DCMTK findscu) then answers with the order's accession number
and the registry's name."""

from __future__ import annotations

from pacs.web.i18n import catalogue
from tests.archive.test_reconciliation import (
    audit_entries,
    hl7,
    storescu,
    study_as_found,
    uid_of,
    ultrasound,
    us_order,
)
from tests.dicom import needs_dcmtk
from tests.web.test_desk import add_user, log_in

ZH = catalogue("zh-CN")


@needs_dcmtk
def test_a_technologist_attaches_an_unmatched_study_to_its_order(guarded_server, steps, tmp_path):
    server = guarded_server
    add_user(server, "wangfang", ["technologist"], "王芳")
    page = steps.page
    log_in(page, server, "wangfang", "/technologist")
    assert ZH["technologist.reconcile.empty"] in page.locator("#reconciliation").inner_text()
    steps.shot("nothing-waits")

    hl7(server, us_order("P30001", "赵", "丽", "ZHAO LI", 3001, 10), us_order("P30001", "赵", "丽", "ZHAO LI", 3002, 11))
    path = ultrasound(tmp_path, patient_id="P30001")  # two abdominal ultrasounds today: which one?
    storescu(server.dicom_port, path)
    page.reload()
    item = page.locator("article.item")
    assert item.count() == 1
    assert "Patient ID P30001 has 2 open US orders" in item.locator(".reason").inner_text()
    candidates = item.locator("button.candidate")
    assert candidates.count() == 2
    assert "ACC3001" in candidates.nth(0).inner_text() and "赵丽 (ZHAO LI)" in candidates.nth(0).inner_text()
    assert page.evaluate("document.activeElement.value") == candidates.nth(0).get_attribute("value")
    steps.shot("two-candidates")

    page.keyboard.press("Tab")  # the 11:00 one, ACC3002
    assert "ACC3002" in page.evaluate("document.activeElement.textContent")
    page.keyboard.press("Enter")
    page.wait_for_url("**/technologist?attached=*")
    assert page.locator("#done").inner_text() == ZH["technologist.reconcile.attached_order"].format(
        id=1, accession="ACC3002", name="赵丽 (ZHAO LI)")
    assert page.locator("article.item").count() == 0
    steps.shot("attached")

    found = study_as_found(server.dicom_port, uid_of(path), tmp_path / "found")
    assert found.AccessionNumber == "ACC3002" and found.PatientID == "P30001"
    assert str(found.PatientName) == "ZHAO^LI=赵^丽"
    [entry] = [e for e in audit_entries(server, event_id="110103", action="U") if e["user"] == "wangfang"]
    assert entry["details"]["accession_number"] == "ACC3002"

    # the next study of the patient finds the one order left by itself; a Patient ID no one has
    # waits, and a wrong accession number typed for it is told plainly, and nothing changes
    storescu(server.dicom_port, ultrasound(tmp_path, patient_id="P30001"))
    storescu(server.dicom_port, ultrasound(tmp_path, patient_id="NOBODY1"))
    page.goto(f"{server.http_url}/technologist")
    page.fill("input[name=accession_number]", "NOSUCH")
    page.keyboard.press("Enter")
    assert "NOSUCH" in page.locator("#error").inner_text()
    assert page.locator("article.item").count() == 1 and page.locator("article.item .typed-id").inner_text() == "NOBODY1"
    steps.shot("wrong-accession")

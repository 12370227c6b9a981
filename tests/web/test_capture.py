"""The capture page in a real browser: a technologist picks today's exam from the keyboard, picks
two photos and a PDF, sees their thumbnails, sends them, and the exam's study holds them (QIDO);
an accession number that names no exam is told plainly and nothing is stored."""

from __future__ import annotations

import io
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import numpy as np
from PIL import Image

from pacs.web.i18n import catalogue
from tests.archive.test_reconciliation import hl7
from tests.auth.test_access import basic
from tests.capture.test_api import PDF, order_of
from tests.web.test_desk import add_user, log_in

ZH = catalogue("zh-CN")


def todays_order(patient_id: str, family: str, given: str, pinyin: str, number: int, hour: int) -> bytes:
    """ORM^O01 NW: a gastroscopy (ES) today, in the server's zone, at ``hour``."""
    day = datetime.now(ZoneInfo("Asia/Shanghai")).strftime("%Y%m%d")
    family_py, given_py = pinyin.split()
    when = f"{day}{hour:02d}0000"
    return (f"MSH|^~\\&|HIS|IHE_OP|PACS|RADIOLOGY|{day}080000||ORM^O01|ORM{number}|P|2.3.1|||AL|NE|CHN|UNICODE UTF-8\r"
            f"PID|1||{patient_id}^^^HOSP^PI||{family}^{given}^^^^^L^I~{family_py}^{given_py}^^^^^L^A||19800101|F\r"
            f"PV1|1|O|OPD^^^HOSP||||||||||||||||V{patient_id}\r"
            f"ORC|NW|PL{number}^HIS|||SC||^^^{when}^^R||{day}080000|||D002^王^五\r"
            f"OBR|1|PL{number}^HIS||ES0001^胃镜检查^HOSP||||||||||||||ACC{number}|RP{number}|SPS{number}||||ES|||"
            f"^^^{when}^^R\r").encode()


def photo(seed: int, colour: tuple[int, int, int]) -> bytes:
    pixels = np.zeros((240, 320, 3), dtype=np.uint8)
    pixels[...] = colour
    pixels[60:180, 80:240] = np.random.default_rng(seed).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_a_technologist_sends_two_photos_and_a_pdf_for_todays_exam(guarded_server, steps, tmp_path):
    server = guarded_server
    add_user(server, "liuyang", ["technologist"], "刘洋")
    hl7(server, todays_order("P40001", "陈", "静", "CHEN JING", 4001, 9),
        todays_order("P40002", "林", "峰", "LIN FENG", 4002, 10))
    files = {"胃窦_1.jpg": photo(1, (200, 80, 80)), "胃体_2.jpg": photo(2, (80, 160, 80)), "知情同意书.pdf": PDF}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    page = steps.page
    log_in(page, server, "liuyang", "/capture")
    exams = page.locator("label.exam")
    assert exams.count() == 2
    assert "陈静 (CHEN JING)" in exams.nth(0).inner_text() and "ACC4001" in exams.nth(0).inner_text()
    assert page.evaluate("document.activeElement.id") == "accession"  # a scanner can type at once
    steps.shot("todays-exams")

    page.keyboard.press("Tab")  # to the list of exams: the first one
    page.keyboard.press("ArrowDown")  # the second: LIN FENG, ACC4002
    assert page.evaluate("document.activeElement.dataset.accession") == "ACC4002"
    assert page.locator("input[name=order]:checked").get_attribute("data-accession") == "ACC4002"
    page.set_input_files("#files", [str(tmp_path / name) for name in files])  # the file dialog itself is the OS's
    previews = page.locator("#previews li")
    assert previews.count() == 3
    assert page.locator("#previews img.thumb").count() == 2
    page.wait_for_function("Array.from(document.querySelectorAll('#previews img')).every(i => i.naturalWidth > 0)")
    assert ZH["capture.pdf"] in previews.nth(2).inner_text()
    steps.shot("thumbnails")

    page.focus("#send")
    page.keyboard.press("Enter")
    page.wait_for_selector("#done")
    assert page.locator("#done").inner_text() == ZH["capture.stored"].format(count=3, accession="ACC4002")
    assert page.locator("#stored li").count() == 3
    steps.shot("stored")
    order = order_of(server, "ACC4002")
    found = dicomweb_as(server).search_for_instances(order.study_instance_uid)
    assert len(found) == 3
    assert sorted(i["00080016"]["Value"][0] for i in found) == [
        "1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.77.1.4"]

    # A scanned accession number that names no exam: told plainly, nothing stored
    page.fill("#accession", "NOSUCH")
    page.set_input_files("#files", [str(tmp_path / "胃窦_1.jpg")])
    page.keyboard.press("Enter")
    page.wait_for_selector("#error")
    assert "NOSUCH" in page.locator("#error").inner_text()
    assert page.locator("#done").count() == 0
    assert page.input_value("#accession") == "NOSUCH"  # kept, to be corrected
    steps.shot("unknown-accession")
    assert len(dicomweb_as(server).search_for_instances(order.study_instance_uid)) == 3


def dicomweb_as(server):  # type: ignore[no-untyped-def]
    """DICOMweb as the administrator (the server asks who is calling)."""
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    from tests.conftest import ADMIN_PASSWORD

    return DICOMwebClient(url=server.http_url + "/dicomweb",
                          session=create_session_from_user_pass("admin", ADMIN_PASSWORD))


def test_a_photo_that_found_no_exam_is_attached_from_the_technologists_page(guarded_server, steps, tmp_path):
    server = guarded_server
    add_user(server, "liuyang", ["technologist"], "刘洋")
    hl7(server, todays_order("P40003", "黄", "河", "HUANG HE", 4003, 11))
    picture = photo(3, (80, 80, 200))
    response = httpx.post(f"{server.http_url}/api/capture", headers=basic("liuyang", "correct horse 1"),
                          files=[("file", ("IMG_0042.jpg", picture, "image/jpeg"))])
    assert response.status_code == 202, response.text  # no exam named, none found: it waits
    [queued] = response.json()["queued"]

    page = steps.page
    log_in(page, server, "liuyang", "/technologist")
    item = page.locator(f"#item-{queued['item']}")
    assert item.locator(".file-name").inner_text() == "IMG_0042.jpg · image/jpeg"
    assert "devices.yaml" in item.inner_text()  # the rule that found no order, as for a study
    steps.shot("file-waits")
    item.locator("input[name=accession_number]").focus()
    page.keyboard.type("ACC4003")
    page.keyboard.press("Enter")
    page.wait_for_url("**/technologist?attached=*")
    page.wait_for_selector("#done")  # the page again, saying what was attached
    assert page.locator("article.item").count() == 0
    steps.shot("file-attached")
    order = order_of(server, "ACC4003")
    [instance] = dicomweb_as(server).search_for_instances(order.study_instance_uid)
    assert instance["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.77.1.4"]

"""The capture page in a real browser: a technologist picks today's exam from the keyboard, picks
two photos and a PDF, sees their thumbnails, sends them, and the exam's study holds them (QIDO);
an accession number that names no exam is told plainly and nothing is stored."""

from __future__ import annotations

import io
import json
import subprocess
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import numpy as np
from PIL import Image
from pydicom.encaps import generate_frames

from pacs.web.i18n import catalogue
from tests.archive.test_reconciliation import hl7
from tests.auth.test_access import basic
from tests.capture.test_api import PDF, order_of
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, STEP_TIMEOUT_MS, Steps
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
    assert page.locator("#error").inner_text() == ZH["capture.failed"].format(
        reason=ZH["capture.reason.unknown_accession"].format(accession="NOSUCH"))  # in Chinese
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


def test_photos_and_a_clip_from_the_tablets_camera_reach_the_study(guarded_server, playwright, tmp_path):
    """The camera on a tablet-sized page (Chromium's fake camera): a photo and a 2-second clip,
    checked as thumbnails, sent, and found in the exam's study; the clip, recorded as WebM
    (VP8/VP9), is stored as H.264 in MP4 (DICOM has no WebM transfer syntax) that ffprobe reads
    as about 2 seconds long."""
    server = guarded_server
    add_user(server, "liuyang", ["technologist"], "刘洋")
    hl7(server, todays_order("P40005", "周", "杰", "ZHOU JIE", 4005, 14))
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
        *CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
    try:
        context = browser.new_context(viewport={"width": 820, "height": 1180}, is_mobile=True, has_touch=True,
                                      locale="zh-CN", timezone_id="Asia/Shanghai", accept_downloads=False)
        context.grant_permissions(["camera"], origin=server.http_url)
        # A browser that records WebM alone (Firefox; Chromium before MP4 recording): the page's
        # first choice, MP4, refused, as such a browser answers.
        context.add_init_script("""{
            const supported = MediaRecorder.isTypeSupported.bind(MediaRecorder);
            MediaRecorder.isTypeSupported = (type) => !type.startsWith("video/mp4") && supported(type);
        }""")
        page = context.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        steps = Steps(page, tmp_path / "camera")
        steps.folder.mkdir()
        log_in(page, server, "liuyang", "/capture")
        page.locator("label.exam", has_text="ACC4005").locator("input[name=order]").check()
        page.keyboard.press("Alt+C")  # the camera on
        page.wait_for_function("document.getElementById('camera-view').videoWidth > 0")
        steps.shot("camera-on")
        page.keyboard.press("Alt+P")  # a photo
        page.wait_for_selector("#previews li.captured img.thumb")
        page.keyboard.press("Alt+V")  # a clip of about two seconds
        expect_text = ZH["capture.camera.recording"]
        assert page.locator("#camera-state").inner_text() == expect_text
        page.wait_for_timeout(2_200)
        page.keyboard.press("Alt+S")
        page.wait_for_selector("#previews li.captured video.thumb")
        page.wait_for_function("Array.from(document.querySelectorAll('#previews img')).every(i => i.naturalWidth > 0)")
        names = page.locator("#previews li.captured .file-name").all_inner_texts()
        assert len(names) == 2 and names[0].endswith(".jpg") and names[1].endswith(".webm")
        steps.shot("thumbnails")
        page.locator("#send").click()
        page.wait_for_selector("#done", timeout=120_000)  # the clip transcoded on a loaded machine
        assert page.locator("#done").inner_text() == ZH["capture.stored"].format(count=2, accession="ACC4005")
        steps.shot("stored")
        assert errors == []
        context.close()
    finally:
        browser.close()
    client = dicomweb_as(server)
    order = order_of(server, "ACC4005")
    found = client.search_for_instances(order.study_instance_uid)
    classes = sorted(i["00080016"]["Value"][0] for i in found)
    assert classes == ["1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.77.1.4.1"]  # VL and Video Photographic
    [clip] = [i for i in found if i["00080016"]["Value"][0].endswith(".1.4.1")]
    ds = client.retrieve_instance(order.study_instance_uid, clip["0020000E"]["Value"][0], clip["00080018"]["Value"][0])
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    assert "transcoded from vp" in ds.DerivationDescription
    [stream] = list(generate_frames(ds.PixelData, number_of_frames=1))
    (tmp_path / "clip.mp4").write_bytes(stream)
    probed = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
                             "stream=codec_name,nb_read_frames:format=duration,format_name", "-of", "json",
                             str(tmp_path / "clip.mp4")], capture_output=True, text=True, check=True, timeout=60)
    info = json.loads(probed.stdout)
    assert info["streams"][0]["codec_name"] == "h264" and "mp4" in info["format"]["format_name"]
    assert 1.0 <= float(info["format"]["duration"]) <= 4.0
    assert int(info["streams"][0]["nb_read_frames"]) == int(ds.NumberOfFrames) > 10

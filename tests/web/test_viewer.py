"""The diagnostic viewer (/viewer): OHIF's build served by the server, on the archive's own
DICOMweb, for the roles that read studies; and a radiologist reading a CT phantom in Chromium.

The browser is Debian's Chromium, headless, with WebGL2 from SwiftShader (the viewer draws with
WebGL). The phantom's Hounsfield units are known (water 0, bone 1000, air −1000), so the probe's
reading is checked against them; screenshots of each step go where ``steps`` puts them."""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import pydicom
import pytest
from PIL import Image
from playwright.sync_api import Browser, Playwright
from pydicom.uid import generate_uid

from pacs import assets
from pacs.web.i18n import catalogue
from tests.conftest import ADMIN_PASSWORD
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, STEP_TIMEOUT_MS, Steps
from tests.web.test_desk import add_user
from tests.web.viewer_studies import (
    BONE_HU,
    INSERT_RADIUS,
    PATIENT_ID,
    PIXEL_MM,
    WATER_HU,
    ct_phantom,
    rgb_photo,
    stow,
    ultrasound_cine,
)

ZH = catalogue("zh-CN")
# WebGL2 in a headless Chromium without a GPU: SwiftShader, Chromium's software renderer.
GL_ARGS = [a for a in CHROMIUM_ARGS if a != "--disable-gpu"] + [
    "--use-gl=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
VIEWPORT = '[data-cy="viewport-pane"]'
OVERLAY_TOP_LEFT = '[data-cy="viewport-overlay-top-left"]'
OVERLAY_BOTTOM_LEFT = '[data-cy="viewport-overlay-bottom-left"]'
OVERLAY_BOTTOM_RIGHT = '[data-cy="viewport-overlay-bottom-right"]'
STUDY_LIST_SEARCH = "table input"  # the filter row: name, dates, modalities, description, accession
STUDY_ROWS = "tbody tr"
PRESETS_MENU = "模态窗口预设"  # OHIF's zh menu entry of the W/L menu: the modality's window presets
MENU_ITEM = "div.cursor-pointer"  # an item of OHIF's menus
HU_TOLERANCE = 2
PHANTOM_SIZE = 256  # pixels a side
LENGTH_MM = 0.6 * PHANTOM_SIZE * PIXEL_MM  # from 0.2 to 0.8 of the image's width
LOAD_TIMEOUT_MS = 60_000  # the first load parses 17 MB of script on a busy machine
ADMIN = ("admin", ADMIN_PASSWORD)


@pytest.fixture(scope="module")
def gl_browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=GL_ARGS)
    yield launched
    launched.close()


@pytest.fixture
def viewer_steps(gl_browser: Browser, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Steps]:
    folder = Path(os.environ.get("PACS_SCREENSHOTS", tmp_path)) / request.node.name.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    context = gl_browser.new_context(viewport={"width": 1400, "height": 900}, locale="zh-CN",
                                     timezone_id="Asia/Shanghai")
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    taken = Steps(page, folder)
    yield taken
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        taken.shot("failed")
        print(f"screenshots of {request.node.name}: {folder}")
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def log_in(page, server, username: str, target: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server.http_url}{target}")
    page.fill("#username", username)
    page.fill("#password", "correct horse 1")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(re.escape(server.http_url + target.split("?")[0])))


def viewport_image(page) -> Image.Image:  # type: ignore[no-untyped-def]
    """What the viewport shows, as the screen has it (the WebGL canvas is not read back)."""
    return Image.open(io.BytesIO(page.locator(VIEWPORT).first.screenshot())).convert("RGB")


def image_box(page) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """Where the (square) image is drawn: left, top and side in page pixels (fit to the
    viewport's canvas, centred)."""
    box = page.locator(f"{VIEWPORT} canvas").first.bounding_box()
    side = min(box["width"], box["height"])
    return box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2, side


def probe_texts(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.evaluate(f"[...document.querySelectorAll('{VIEWPORT} svg text')].map(t => t.textContent)")


def probe(page, x: float, y: float) -> float:  # type: ignore[no-untyped-def]
    """Click the probe at (x, y) of the image (fractions of its side); the value it shows."""
    left, top, side = image_box(page)
    before = len(probe_texts(page))
    page.mouse.click(left + x * side, top + y * side)
    page.wait_for_function(f"document.querySelectorAll('{VIEWPORT} svg text').length > {before}")
    text = probe_texts(page)[-1]
    found = re.search(r"(-?\d+(?:\.\d+)?)\s*HU", text)
    assert found, f"the probe shows {text!r}, no HU"
    return float(found.group(1))


def ellipse(page, x: float, y: float, radius: float) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """Drag the elliptical ROI from its centre (x, y) of the image to ``radius`` beside it on
    both axes (fractions of its side); the mean, minimum and maximum it shows, in HU."""
    left, top, side = image_box(page)
    before = len(probe_texts(page))
    page.mouse.move(left + x * side, top + y * side)
    page.mouse.down()
    page.mouse.move(left + (x + radius) * side, top + (y + radius) * side, steps=5)
    page.mouse.up()
    page.wait_for_function(f"[...document.querySelectorAll('{VIEWPORT} svg text')].slice({before})"
                           ".some(t => t.textContent.includes('Mean'))")
    text = [t for t in probe_texts(page)[before:] if "Mean" in t][-1]
    numbers = {key: float(value) for key, value in re.findall(r"(Mean|Min|Max):\s*(-?\d+(?:\.\d+)?)\s*HU", text)}
    assert set(numbers) == {"Mean", "Min", "Max"}, f"the ellipse shows {text!r}"
    return numbers["Mean"], numbers["Min"], numbers["Max"]


def length(page, x0: float, x1: float, y: float) -> float:  # type: ignore[no-untyped-def]
    """Draw the length tool from (x0, y) to (x1, y) of the image; the millimetres it shows."""
    left, top, side = image_box(page)
    before = len(probe_texts(page))
    page.mouse.move(left + x0 * side, top + y * side)
    page.mouse.down()
    page.mouse.move(left + x1 * side, top + y * side, steps=8)
    page.mouse.up()
    page.wait_for_function(f"[...document.querySelectorAll('{VIEWPORT} svg text')].slice({before})"
                           ".some(t => / mm$/.test(t.textContent))")
    shown = None
    while True:  # the label follows the drag a frame behind: read it once it has settled
        page.wait_for_timeout(300)
        texts = [t for t in probe_texts(page) if t.endswith(" mm")]
        if texts and texts == shown:
            return float(texts[-1].split()[0])
        shown = texts


def multipart_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """The parts of a multipart/related answer: their Content-Type and body."""
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"]).group(1)  # type: ignore[union-attr]
    parts = []
    for chunk in response.content.split(b"--" + boundary.encode())[1:-1]:
        head, _, body = chunk.partition(b"\r\n\r\n")
        kind = re.search(rb"Content-Type:\s*([^\r\n]+)", head, re.IGNORECASE)
        parts.append(((kind.group(1).decode() if kind else ""), body[:-2]))
    return parts


def numeric_values(report: pydicom.Dataset, unit: str) -> list[float]:
    """Every NUM content item's value in ``unit`` (its Measurement Units Code Value), in order
    (PS3.3 C.18.1, TID 300)."""
    found: list[float] = []
    for item in report.get("ContentSequence", []):
        for measured in item.get("MeasuredValueSequence", []):
            units = measured.MeasurementUnitsCodeSequence[0].CodeValue
            if units == unit:
                found.append(float(measured.NumericValue))
        found += numeric_values(item, unit)
    return found


def overlay(page, where: str = OVERLAY_TOP_LEFT) -> str:  # type: ignore[no-untyped-def]
    return page.locator(where).first.inner_text()


def test_a_radiologist_finds_a_study_by_its_hanzi_name_and_reads_it(guarded_server, installed_viewer,
                                                                     viewer_steps):
    study = generate_uid()
    slices = ct_phantom(12, PHANTOM_SIZE, study_uid=study)
    stow(guarded_server.http_url, [*slices, rgb_photo(study), ultrasound_cine(study)], auth=ADMIN)
    add_user(guarded_server, "lidoc", ["radiologist"], "李医生")
    page = viewer_steps.page

    # logged out: the login form, then back to the study list
    log_in(page, guarded_server, "lidoc", "/viewer")
    page.wait_for_selector("text=张三 (ZHANG SAN)", timeout=LOAD_TIMEOUT_MS)
    # the list's own words in Chinese, those OHIF's zh resources leave in English too
    page.wait_for_selector(f"text={ZH['viewer.study_list']}")
    page.wait_for_selector(f"text={ZH['viewer.list.launch']}")
    shown_text = page.inner_text("body")
    for english in ("Study List", "Launch workflow", "Select a study", "Reset", "1-1 of 1"):
        assert english not in shown_text, english
    assert "共 1 条" in shown_text
    viewer_steps.shot("study-list")

    # the list's search, typed in Hanzi: the archive's QIDO matches the ideographic group
    search = page.locator(STUDY_LIST_SEARCH).first  # the list's first filter: the patient's name
    search.fill("张")
    page.wait_for_url(re.compile(r"patientName=%E5%BC%A0"))
    row = page.locator(STUDY_ROWS, has_text="张三 (ZHANG SAN)")
    row.wait_for()
    assert page.locator(STUDY_ROWS, has_text="A30001").count() == 1
    viewer_steps.shot("searched-zhang")

    # opened from the list (a double click launches the basic viewer)
    row.dblclick()
    page.wait_for_url(re.compile(r"/viewer/viewer\?StudyInstanceUIDs=" + re.escape(study)), timeout=LOAD_TIMEOUT_MS)
    page.wait_for_selector(f"{VIEWPORT} canvas", timeout=LOAD_TIMEOUT_MS)
    page.wait_for_function(f"document.querySelector('{OVERLAY_TOP_LEFT}')?.innerText.includes('张三')",
                           timeout=LOAD_TIMEOUT_MS)
    page.wait_for_function(f"/W:\\s*400/.test(document.querySelector('{OVERLAY_BOTTOM_LEFT}')?.innerText)")
    page.wait_for_timeout(500)  # the first frame drawn
    assert "张三 (ZHANG SAN)" in overlay(page)
    assert "P30001" in overlay(page)
    viewer_steps.shot("opened")

    # the canvas shows the phantom: the bone insert bright, water grey, air black (W 400 / L 40)
    shown = viewport_image(page)
    left, top, side = image_box(page)
    pane = page.locator(VIEWPORT).first.bounding_box()

    def at(x: float, y: float) -> int:
        return sum(shown.getpixel((int(left - pane["x"] + x * side), int(top - pane["y"] + y * side)))) // 3

    bone, water, air = at(0.65, 0.5), at(0.35, 0.5), at(0.02, 0.02)
    assert bone > water > air, (bone, water, air)
    assert bone > 200 and air < 20

    # the probe reads Hounsfield units on two slices
    page.click('[data-cy="MoreTools-split-button-secondary"]')
    page.click('[data-cy="Probe"]')
    first_slice = overlay(page, OVERLAY_BOTTOM_RIGHT)
    assert abs(probe(page, 0.65, 0.5) - BONE_HU) <= HU_TOLERANCE
    assert abs(probe(page, 0.35, 0.5) - WATER_HU) <= HU_TOLERANCE
    viewer_steps.shot("probe-slice-1")
    for _ in range(5):
        page.keyboard.press("ArrowDown")
    page.wait_for_function(f"document.querySelector('[data-cy=\"viewport-overlay-bottom-right\"]').innerText "
                           f"!== {first_slice!r}")
    # another slice: OHIF 3.13.2's probe shows no value on a stack's slices but the first (it
    # reads the image at the slice's index as if the stack were one volume), so there the
    # ellipse's statistics read the Hounsfield units
    page.click('[data-cy="MeasurementTools-split-button-secondary"]')
    page.click('[data-cy="EllipticalROI"]')
    bone_mean, bone_low, bone_high = ellipse(page, 0.65, 0.5, INSERT_RADIUS * 0.4)
    assert abs(bone_mean - BONE_HU) <= HU_TOLERANCE and bone_low == bone_high == BONE_HU
    water_mean, water_low, water_high = ellipse(page, 0.35, 0.5, INSERT_RADIUS * 0.4)
    assert abs(water_mean - WATER_HU) <= HU_TOLERANCE and water_low == water_high == WATER_HU
    viewer_steps.shot("ellipse-slice-6")

    # W/L by dragging: the window changes, and so does what is drawn
    before = viewport_image(page)
    page.click('[data-cy="WindowLevel"]')
    page.mouse.move(left + 0.3 * side, top + 0.3 * side)
    page.mouse.down()
    page.mouse.move(left + 0.5 * side, top + 0.6 * side, steps=10)
    page.mouse.up()
    page.wait_for_function(f"!/W:\\s*400\\s+L:\\s*40\\b/.test(document.querySelector('{OVERLAY_BOTTOM_LEFT}')"
                           ".innerText)")
    after = viewport_image(page)
    assert before.tobytes() != after.tobytes()
    viewer_steps.shot("window-dragged")

    # the W/L menu: the image's own window first, the presets for the chest next (mappings'
    # window_presets.yaml, BodyPartExamined CHEST), then the rest; a preset sets the window
    page.click('[data-cy="windowLevelMenu-btn"]')
    page.get_by_text(PRESETS_MENU).click()
    items = page.locator(MENU_ITEM, has_text=re.compile(r"-?\d+ / -?\d+$"))
    items.first.wait_for()
    shown = [" ".join(text.split()) for text in items.all_inner_texts()]
    assert shown[:4] == [f"{ZH['viewer.overlay.own_window']} 400 / 40", "肺窗 · CHEST/LUNG 1500 / -600",
                         "纵隔窗 · CHEST 350 / 40", "骨窗 · CHEST/SPINE/HEAD/PELVIS/EXTREMITY 2000 / 500"], shown
    assert any(text.startswith("脑窗") for text in shown[4:])
    viewer_steps.shot("window-presets")
    items.nth(1).click()
    page.wait_for_function(f"/W:\\s*1500\\s+L:\\s*-600\\b/.test(document.querySelector('{OVERLAY_BOTTOM_LEFT}')"
                           ".innerText)")
    page.keyboard.press("Escape")
    viewer_steps.shot("lung-window")

    # the colour photograph of the same study, from the study panel
    page.locator('[data-cy="study-browser-thumbnail"]', has_text="彩色照片").dblclick()
    page.wait_for_function(f"document.querySelector('{OVERLAY_TOP_LEFT}')?.innerText.includes('彩色照片')")
    page.wait_for_timeout(500)
    photo = viewport_image(page)
    colours = photo.resize((32, 32)).getcolors(32 * 32) or []
    reds = sum(n for n, (r, g, b) in colours if r > 150 and g < 80 and b < 80)
    greens = sum(n for n, (r, g, b) in colours if g > 150 and r < 80 and b < 80)
    blues = sum(n for n, (r, g, b) in colours if b > 150 and r < 80 and g < 80)
    assert reds and greens and blues, colours[:10]
    viewer_steps.shot("colour-photo")

    # the ultrasound loop plays by itself at its frame rate (Frame Time 33.3 ms: 30 frames/s),
    # and stops when paused
    page.locator('[data-cy="study-browser-thumbnail"]', has_text="超声动态").dblclick()
    page.wait_for_function(f"document.querySelector('{OVERLAY_TOP_LEFT}')?.innerText.includes('超声动态')")
    page.wait_for_function(f"/\\(([2-9]|[1-3]\\d)\\/30\\)/.test(document.querySelector('{OVERLAY_BOTTOM_RIGHT}')"
                           ".innerText)")  # past the first frame without anyone pressing play
    frames = set()
    for _ in range(10):
        frames.add(overlay(page, OVERLAY_BOTTOM_RIGHT))
        page.wait_for_timeout(100)
    assert len(frames) >= 3, frames
    viewer_steps.shot("cine-playing")
    page.hover(VIEWPORT)
    page.click('[data-cy="cine-player-play-pause"]')
    paused = overlay(page, OVERLAY_BOTTOM_RIGHT)
    page.wait_for_timeout(500)
    assert overlay(page, OVERLAY_BOTTOM_RIGHT) == paused
    viewer_steps.shot("cine-paused")

    # a length between two points of known distance, kept as a DICOM SR in the archive
    page.locator('[data-cy="study-browser-thumbnail"]', has_text="CT phantom").dblclick()
    page.wait_for_function(f"document.querySelector('{OVERLAY_TOP_LEFT}')?.innerText.includes('CT phantom')")
    page.click('[data-cy="Length"]')
    shown_mm = length(page, 0.2, 0.8, 0.5)
    assert abs(shown_mm - LENGTH_MM) <= PIXEL_MM, shown_mm  # within a pixel
    page.click('[data-cy="prompt-begin-tracking-yes-btn"]')
    page.click('[data-cy="trackedMeasurements-btn"]')
    page.get_by_role("button", name="Create SR").click()
    page.fill('[data-cy="dialog-input"]', "测量报告")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/dicomweb/studies")) as posted:
        page.get_by_role("button", name="Save").click()
    assert posted.value.status == 200
    viewer_steps.shot("sr-saved")
    with httpx.Client(base_url=guarded_server.http_url + "/dicomweb", auth=ADMIN, timeout=30) as archive:
        [series] = archive.get(f"/studies/{study}/series", params={"Modality": "SR"}).json()
        assert series["0008103E"]["Value"] == ["测量报告"]
        found = archive.get(f"/studies/{study}/series/{series['0020000E']['Value'][0]}",
                            headers={"Accept": 'multipart/related; type="application/dicom"'})
    [(_, body)] = multipart_parts(found)
    report = pydicom.dcmread(io.BytesIO(body))
    assert report.Modality == "SR" and report.PatientID == PATIENT_ID
    [kept_mm] = numeric_values(report, "mm")  # the length as measured; the viewport rounds it
    assert abs(kept_mm - shown_mm) <= 0.5 and abs(kept_mm - LENGTH_MM) <= PIXEL_MM

    # the study opened again: the report's series is there, and shows the length on its image
    page.goto(f"{guarded_server.http_url}/viewer/viewer?StudyInstanceUIDs={study}")
    page.get_by_text("测量报告").dblclick(timeout=LOAD_TIMEOUT_MS)  # the SR's row in the study panel
    # OHIF may first ask whether to go on tracking this study's measurements (as it does when a
    # session of the study had tracking on): the radiologist says yes, and the report is drawn.
    drawn = f"[...document.querySelectorAll('{VIEWPORT} svg text')].length > 0"
    go_on = page.get_by_role("button", name="Yes")
    deadline = time.monotonic() + LOAD_TIMEOUT_MS / 1000
    while not page.evaluate(drawn) and time.monotonic() < deadline:
        if go_on.is_visible():
            go_on.click()
        page.wait_for_timeout(250)
    assert page.evaluate(drawn), "the report was not drawn on its image"  # its first image: the probes
    viewer_steps.shot("sr-opened")
    left, top, side = image_box(page)
    page.mouse.click(left + side / 2, top + side / 2)  # the viewport takes the keys
    for _ in range(12):  # to the slice the length was drawn on (the sixth, as at the start)
        if "(6/12)" in overlay(page, OVERLAY_BOTTOM_RIGHT):
            break
        page.keyboard.press("ArrowDown")
        page.wait_for_timeout(200)
    assert "(6/12)" in overlay(page, OVERLAY_BOTTOM_RIGHT)
    # as the report gives it (123.07 mm), or rounded as a tracked measurement (123 mm)
    page.wait_for_function(f"[...document.querySelectorAll('{VIEWPORT} svg text')].some(t => "
                           f"t.textContent.includes('{kept_mm:.2f} mm') || t.textContent.includes('{kept_mm:.0f} mm'))",
                           timeout=LOAD_TIMEOUT_MS)
    viewer_steps.shot("sr-reopened")

    # the layout: 2×2, each viewport given a series of the study
    page.click('[data-cy="Layout"]')
    page.click('[data-cy="Layout-1-1"]')  # column 2, row 2 of the layout picker
    page.wait_for_function(f"document.querySelectorAll('{VIEWPORT}').length === 4")
    viewer_steps.shot("layout-2x2")


# -- serving: who may open it, and how its files go out (no browser) -----------------------------

@contextmanager
def browser_client(server, username: str) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    """An HTTP client logged in through the login form, as a browser is (the session cookie)."""
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        form = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        done = client.post("/login", data={"username": username, "password": "correct horse 1", "next": "/",
                                           "csrf_token": token})
        assert done.status_code == 303, done.text
        yield client


def test_the_viewer_is_a_page_for_the_roles_that_read_studies(guarded_server, installed_viewer):
    add_user(guarded_server, "lidoc", ["radiologist"])
    add_user(guarded_server, "tech", ["technologist"])
    add_user(guarded_server, "desk", ["registrar"])
    target = "/viewer/viewer?StudyInstanceUIDs=1.2.3"
    with httpx.Client(base_url=guarded_server.http_url) as anonymous:
        answer = anonymous.get(target)
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/login?next={quote(target, safe='/')}"
    for username in ("lidoc", "tech"):
        with browser_client(guarded_server, username) as client:
            for path in ("/viewer", target, "/viewer/segmentation"):
                page = client.get(path)
                assert page.status_code == 200, path
                assert page.headers["cache-control"] == "no-store"
                assert 'window.PUBLIC_URL="/viewer/static/"' in page.text
                assert "window.pacsViewer=" in page.text and '"肺窗"' in page.text
    with browser_client(guarded_server, "desk") as client:
        denied = client.get(target)
        assert denied.status_code == 403 and ZH["error.forbidden"] in denied.text
        home = client.get("/")
        assert 'href="/viewer"' not in home.text
    with browser_client(guarded_server, "lidoc") as client:
        assert 'href="/viewer"' in client.get("/").text


def test_the_files_go_out_precompressed_and_cached(guarded_server, installed_viewer):
    build = assets.viewer_path(installed_viewer)
    assert build is not None
    bundle = next(build.glob("app.bundle.*.js")).name
    wasm = next(build.glob("*.wasm")).name
    with httpx.Client(base_url=guarded_server.http_url + "/viewer/static") as client:  # no login: no patient data
        plain = client.get(f"/{bundle}", headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200 and "content-encoding" not in plain.headers
        assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert plain.headers["content-type"] == "text/javascript; charset=utf-8"
        assert plain.headers["vary"] == "Accept-Encoding"
        assert b'__webpack_require__.p = "/viewer/static/";' in plain.content
        brotli = client.get(f"/{bundle}", headers={"Accept-Encoding": "gzip, deflate, br"})
        assert brotli.headers["content-encoding"] == "br"
        assert int(brotli.headers["content-length"]) < len(plain.content) / 4
        gzipped = client.get(f"/{bundle}", headers={"Accept-Encoding": "gzip"})
        assert gzipped.headers["content-encoding"] == "gzip" and gzipped.content == plain.content
        again = client.get(f"/{bundle}", headers={"Accept-Encoding": "gzip", "If-None-Match": gzipped.headers["etag"]})
        assert again.status_code == 304 and not again.content
        binary = client.get(f"/{wasm}", headers={"Accept-Encoding": "br"})
        assert binary.headers["content-type"] == "application/wasm"
        config = client.get("/app-config.js")
        assert config.status_code == 200 and config.headers["cache-control"] == "no-cache"
        assert "window.config" in config.text and "singlepart: false" in config.text
        css = client.get("/app.bundle.css")
        assert css.headers["cache-control"] == "no-cache" and "url(/viewer/static/" in css.text
        for path in ("/index.html", "/../../etc/passwd", "/%2e%2e/app-config.js", "/.integrity", "/ort/ort.js",
                     "/nothing.js"):
            assert client.get(path).status_code == 404, path
        assert client.post("/app-config.js").status_code == 405


def test_without_its_files_the_viewer_says_how_to_install_them(start_server, tmp_path):
    server = start_server(guarded=True, assets={"dir": tmp_path / "none"})
    add_user(server, "lidoc", ["radiologist"])
    with browser_client(server, "lidoc") as client:
        answer = client.get("/viewer")
        assert answer.status_code == 503
        assert "pacs assets install" in answer.text and ZH["viewer.missing"] in answer.text


def test_an_exam_row_at_the_desk_opens_its_images(guarded_server, installed_viewer, viewer_steps: Steps):
    """A desk user whose roles may view images gets the exam's images from its row (a link,
    Alt+V), in a window of its own; the next exam's images come into that same window without
    the viewer loading again; a registrar alone gets no such link."""
    from tests.reporting.studies import ct_order, send_hl7, store_ct

    studies = {}
    for number in (9, 10):
        message, studies[number] = ct_order(number, "P90009", ("孙", "七", "SUN QI"))
        send_hl7(guarded_server, message)
        store_ct(guarded_server.dicom_port, study_uid=studies[number], accession=f"ACC{number}",
                 patient_id="P90009", images=2)
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=guarded_server.http_url, auth=ADMIN, timeout=30) as api:
        while any(api.get("/api/orders", params={"accession_number": f"ACC{n}"}).json()["items"][0]["status"]
                  not in ("in_progress", "completed", "images_received", "reported") for n in studies):
            assert time.monotonic() < deadline, "the orders never saw their images"
            time.sleep(0.2)
    add_user(guarded_server, "deskdoc", ["registrar", "clinician"], "赵医生")
    add_user(guarded_server, "desk1", ["registrar"], "王登记")
    steps = viewer_steps
    page = steps.page

    log_in(page, guarded_server, "deskdoc", "/desk")
    page.fill("#search", "P90009")
    page.keyboard.press("Enter")
    page.wait_for_selector("#results li:has-text('P90009')")
    page.locator("#results").focus()
    page.keyboard.press("Enter")  # the patient chosen: their exams
    page.wait_for_selector("#exams li:has-text('ACC9') a.images")
    page.wait_for_selector("#exams li:has-text('ACC10') a.images")
    assert page.locator("#exams li:has-text('ACC9') a.images").inner_text() == ZH["desk.exams.images"]
    steps.shot("desk-exam-with-images")

    def shows(viewer, study: str) -> None:  # type: ignore[no-untyped-def]
        viewer.wait_for_url(re.compile(f"/viewer/viewer\\?StudyInstanceUIDs={re.escape(study)}$"),
                            timeout=LOAD_TIMEOUT_MS)
        viewer.wait_for_function(
            "(uid) => window.cornerstone && cornerstone.getEnabledElements().some(e => "
            "(e.viewport.getCurrentImageId?.() || '').includes(uid))", arg=study, timeout=LOAD_TIMEOUT_MS)
        viewer.wait_for_function(f"document.querySelector('{OVERLAY_TOP_LEFT}')?.innerText.includes('孙七')",
                                 timeout=LOAD_TIMEOUT_MS)

    def select_exam(accession: str) -> None:
        page.bring_to_front()
        page.locator("#exams").focus()
        page.keyboard.press("ArrowUp")
        page.keyboard.press("ArrowUp")  # above the first of the two: none selected
        for _ in range(2):
            page.keyboard.press("ArrowDown")
            if accession in page.locator("#exams li[aria-selected='true']").inner_text():
                return
        raise AssertionError(f"no exam {accession} to select")

    select_exam("ACC9")
    with page.context.expect_page() as opened:
        page.keyboard.press("Alt+v")
    viewer = opened.value
    shows(viewer, studies[9])
    viewer.screenshot(path=str(steps.folder / "viewer-first-exam.png"))
    viewer.evaluate("window.pacsLoadedOnce = true")  # gone if the page loads again

    select_exam("ACC10")
    page.keyboard.press("Alt+v")
    shows(viewer, studies[10])
    assert viewer.evaluate("window.pacsLoadedOnce") is True, "the viewer loaded again for the second exam"
    viewer.screenshot(path=str(steps.folder / "viewer-second-exam-in-place.png"))
    page.bring_to_front()
    page.locator("#exams li:has-text('ACC9') a.images").click()  # the link itself: the same window, in place
    shows(viewer, studies[9])
    assert viewer.evaluate("window.pacsLoadedOnce") is True, "the viewer loaded again from the link"
    assert len(page.context.pages) == 2
    viewer.close()

    page.context.clear_cookies()
    log_in(page, guarded_server, "desk1", "/desk")
    page.fill("#search", "P90009")
    page.keyboard.press("Enter")
    page.wait_for_selector("#results li:has-text('P90009')")
    page.locator("#results").focus()
    page.keyboard.press("Enter")  # the patient chosen: their exams
    page.wait_for_selector("#exams li:has-text('ACC9')")
    assert page.locator("#exams a.images").count() == 0
    steps.shot("desk-exam-registrar")

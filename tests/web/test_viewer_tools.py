"""The viewer's tools beyond reading values, each used on a CT phantom in Chromium: the
magnifier, an arrow with its text, the angle, the freehand ROI with its Hounsfield statistics,
slices of two series scrolled together, and a 4 × 4 layout. Screenshots of each step."""

from __future__ import annotations

import math
import re
import time

from pydicom.uid import generate_uid

from tests.web import test_viewer
from tests.web.conftest import Steps
from tests.web.test_desk import add_user
from tests.web.test_viewer import (
    ADMIN,
    HU_TOLERANCE,
    LOAD_TIMEOUT_MS,
    OVERLAY_BOTTOM_RIGHT,
    OVERLAY_TOP_LEFT,
    VIEWPORT,
    WATER_HU,
    image_box,
    log_in,
    probe_texts,
)
from tests.web.viewer_studies import ct_phantom, stow

gl_browser = test_viewer.gl_browser  # the viewer tests' fixtures: a browser with WebGL, its page
viewer_steps = test_viewer.viewer_steps
SLICES = 12


def two_series(study: str) -> list:  # type: ignore[type-arg]
    """Two CT series of one study over the same slices (one frame of reference): an acquisition
    and its reconstruction, as a radiologist compares them."""
    first = ct_phantom(SLICES, 128, study_uid=study)
    second = ct_phantom(SLICES, 128, study_uid=study)
    for ds, twin in zip(second, first, strict=True):
        ds.FrameOfReferenceUID = twin.FrameOfReferenceUID
        ds.SeriesNumber = 3
        ds.SeriesDescription = "重建 CT phantom"
    return first + second


def texts_since(page, before: int) -> list[str]:  # type: ignore[no-untyped-def]
    return probe_texts(page)[before:]


def test_magnifier_arrow_angle_freehand_sync_and_4x4(guarded_server, installed_viewer, viewer_steps: Steps) -> None:
    study = generate_uid()
    stow(guarded_server.http_url, two_series(study), auth=ADMIN)
    add_user(guarded_server, "lidoc", ["radiologist"], "李医生")
    page = viewer_steps.page
    log_in(page, guarded_server, "lidoc", f"/viewer/viewer?StudyInstanceUIDs={study}")
    page.wait_for_selector(f"{VIEWPORT} canvas", timeout=LOAD_TIMEOUT_MS)
    page.wait_for_function(f"document.querySelector('{OVERLAY_TOP_LEFT}')?.innerText.includes('张三')",
                           timeout=LOAD_TIMEOUT_MS)
    page.wait_for_timeout(500)
    left, top, side = image_box(page)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + x * side, top + y * side

    # the magnifier: a magnified view follows the pointer while the button is held
    page.click('[data-cy="MoreTools-split-button-secondary"]')
    page.click('[data-cy="Magnify"]')
    canvases = page.locator(f"{VIEWPORT} canvas").count()
    page.mouse.move(*at(0.6, 0.5))
    page.mouse.down()
    page.wait_for_function(f"document.querySelectorAll('{VIEWPORT} canvas').length > {canvases}")
    viewer_steps.shot("magnifier")
    page.mouse.up()
    page.wait_for_function(f"document.querySelectorAll('{VIEWPORT} canvas').length === {canvases}")

    # an arrow with its text (OHIF asks for the text when the arrow is drawn)
    page.click('[data-cy="MeasurementTools-split-button-secondary"]')
    page.click('[data-cy="ArrowAnnotate"]')
    before = len(probe_texts(page))
    page.mouse.move(*at(0.35, 0.3))
    page.mouse.down()
    page.mouse.move(*at(0.6, 0.45), steps=8)
    page.mouse.up()
    page.fill('[data-cy="dialog-input"]', "骨性结节")
    page.keyboard.press("Enter")
    page.wait_for_function(f"[...document.querySelectorAll('{VIEWPORT} svg text')].some(t => "
                           "t.textContent.includes('骨性结节'))")
    viewer_steps.shot("arrow-with-text")
    tracking = page.locator('[data-cy="prompt-begin-tracking-yes-btn"]')
    if tracking.is_visible():
        tracking.click()

    # the angle: two arms drawn at a right angle read 90°
    page.click('[data-cy="MoreTools-split-button-secondary"]')
    page.click('[data-cy="Angle"]')
    before = len(probe_texts(page))
    page.mouse.move(*at(0.2, 0.85))
    page.mouse.down()
    page.mouse.move(*at(0.5, 0.85), steps=8)
    page.mouse.up()
    page.mouse.click(*at(0.5, 0.55))
    page.wait_for_function(f"[...document.querySelectorAll('{VIEWPORT} svg text')].slice({before})"
                           ".some(t => t.textContent.includes('°'))")
    shown = [t for t in texts_since(page, before) if "°" in t][-1]
    degrees = float(re.search(r"(\d+(?:\.\d+)?)\s*°", shown).group(1))  # type: ignore[union-attr]
    assert abs(degrees - 90) <= 1, shown
    viewer_steps.shot("angle")
    page.keyboard.press("Escape")  # the angle done with: no handle of it follows the pointer any more

    # the freehand ROI: a closed loop in the water reads 0 HU, with its area
    page.click('[data-cy="MeasurementTools-split-button-secondary"]')
    page.click('[data-cy="PlanarFreehandROI"]')
    before = len(probe_texts(page))
    cx, cy, r = 0.3, 0.5, 0.07
    page.mouse.move(*at(cx + r, cy))
    page.mouse.down()
    for step in range(1, 41):
        angle = 2 * math.pi * step / 40
        page.mouse.move(*at(cx + r * math.cos(angle), cy + r * math.sin(angle)))
    page.mouse.up()
    page.wait_for_function(f"[...document.querySelectorAll('{VIEWPORT} svg text')].slice({before})"
                           ".some(t => t.textContent.includes('Mean'))")
    text = " ".join(texts_since(page, before))
    mean = float(re.search(r"Mean:\s*(-?\d+(?:\.\d+)?)\s*HU", text).group(1))  # type: ignore[union-attr]
    assert abs(mean - WATER_HU) <= HU_TOLERANCE, text
    assert re.search(r"Area:\s*\d", text), text
    viewer_steps.shot("freehand-roi")

    # the annotations' font and colour: OHIF's yellow 15 px, then large, then large and cyan (Alt+A)
    arrow_text = (f"[...document.querySelectorAll('{VIEWPORT} svg text')].filter(t => "
                  "t.textContent.includes('骨性结节')).map(t => t.outerHTML).join(' ')")
    assert page.locator("#pacs-tool-style").inner_text().startswith("标注：标准")
    assert "15px" in page.evaluate(arrow_text)
    page.keyboard.press("Alt+A")
    page.wait_for_function(f"({arrow_text}).includes('20px')")
    page.keyboard.press("Alt+A")
    page.wait_for_function(f"({arrow_text}).includes('rgb(0, 255, 255)')")
    assert page.locator("#pacs-tool-style").inner_text().startswith("标注：大字青色")
    viewer_steps.shot("annotations-large-cyan")

    # two series side by side, their slices scrolled together (OHIF's image slice sync)
    page.click('[data-cy="Layout"]')
    page.click('[data-cy="Layout-1-0"]')  # column 2, row 1 of the layout picker: 1 × 2
    page.wait_for_function(f"document.querySelectorAll('{VIEWPORT}').length === 2")
    page.wait_for_function(f"document.querySelectorAll('{OVERLAY_BOTTOM_RIGHT}').length === 2 && "
                           f"[...document.querySelectorAll('{OVERLAY_TOP_LEFT}')].some(o => o.innerText.includes('重建'))",
                           timeout=LOAD_TIMEOUT_MS)
    page.click('[data-cy="MoreTools-split-button-secondary"]')
    page.click('[data-cy="ImageSliceSync"]')
    page.keyboard.press("Escape")
    panes = page.locator(VIEWPORT)
    box = panes.nth(0).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    positions = page.locator(OVERLAY_BOTTOM_RIGHT)
    start = [positions.nth(i).inner_text() for i in range(2)]
    page.mouse.wheel(0, 400)  # scroll the left series
    page.wait_for_function(f"document.querySelectorAll('{OVERLAY_BOTTOM_RIGHT}')[0].innerText !== {start[0]!r}")
    page.wait_for_timeout(500)
    moved = [positions.nth(i).inner_text() for i in range(2)]
    left_slice = re.search(r"\((\d+)/", moved[0]).group(1)  # type: ignore[union-attr]
    assert moved[1] != start[1], (start, moved)
    assert f"({left_slice}/{SLICES})" in moved[1], moved
    viewer_steps.shot("slices-in-sync")

    # the layout picker offers up to 4 × 4
    page.click('[data-cy="Layout"]')
    page.click('[data-cy="Layout-3-3"]')
    page.wait_for_function(f"document.querySelectorAll('{VIEWPORT}').length === 16")
    viewer_steps.shot("layout-4x4")

    # the patient has no other study: Alt+P says so, and leaves no empty window open
    page.keyboard.press("Alt+P")
    page.wait_for_function("document.querySelector('#pacs-tool-prior').innerText.startsWith('无前次检查')")
    deadline = time.monotonic() + 10
    while len(page.context.pages) > 1 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert [p.url for p in page.context.pages] == [page.url]


def sorted_series(study: str) -> list:  # type: ignore[type-arg]
    """Two CT series of one study whose images' three orders differ: slice position (along z),
    instance number and acquisition time each give another sequence."""
    series = two_series(study)
    for ds in series:
        n = int(ds.InstanceNumber)  # the phantom numbers its slices along z
        ds.InstanceNumber = (n * 7 + 2) % SLICES + 1
        ds.AcquisitionDate = "20261206"
        ds.AcquisitionTime = f"1000{(n * 5 + 3) % SLICES:02d}"
    return series


def instance_numbers(series: list, key) -> list[int]:  # type: ignore[no-untyped-def,type-arg]
    return [int(ds.InstanceNumber) for ds in sorted(series[:SLICES], key=key)]


def shown_instances(page, count: int) -> list[int]:  # type: ignore[no-untyped-def]
    """The instance numbers of the first ``count`` images of the active viewport's series, in the
    order the viewer shows them (the overlay's "I:" while stepping with the arrow key)."""
    numbers = []
    for step in range(count):
        page.wait_for_function(f"/\\({step + 1}\\/{SLICES}\\)/.test(document.querySelector('{OVERLAY_BOTTOM_RIGHT}')"
                               ".innerText)")
        shown = page.locator(OVERLAY_BOTTOM_RIGHT).first.inner_text()
        numbers.append(int(re.search(r"I:\s*(\d+)", shown).group(1)))  # type: ignore[union-attr]
        page.keyboard.press("ArrowDown")
    return numbers


# Each viewport, left to right, as cornerstone has it: its window (lower, upper), zoom, rotation
# and the index of the image it shows.
VIEWPORT_STATE = """() => cornerstone.getEnabledElements()
  .sort((a, b) => a.viewport.element.getBoundingClientRect().left - b.viewport.element.getBoundingClientRect().left)
  .map(e => { const v = e.viewport; const p = v.getProperties();
              return [p.voiRange.lower, p.voiRange.upper, v.getZoom(), v.getRotation(), v.getCurrentImageIdIndex()]; })"""
SCOPE_BUTTON = "#pacs-tool-link"
PRIOR_DATE = "20251120"


def prior_study() -> list:  # type: ignore[type-arg]
    """The same patient's CT a year before, a study of its own."""
    older = ct_phantom(4, 64, study_uid=generate_uid())
    for ds in older:
        ds.StudyDate = PRIOR_DATE
        ds.StudyDescription = "胸部CT平扫（前次）"
        ds.AccessionNumber = "A29999"
    return older


def wait_state(page, holds, what: str) -> list:  # type: ignore[no-untyped-def,type-arg]
    """The viewports' state once ``holds`` says it is as expected (the viewer draws a changed image
    asynchronously); the assertion names ``what`` with the last state seen."""
    deadline = time.monotonic() + LOAD_TIMEOUT_MS / 1000
    state = page.evaluate(VIEWPORT_STATE)
    while not holds(state) and time.monotonic() < deadline:
        page.wait_for_timeout(100)
        state = page.evaluate(VIEWPORT_STATE)
    assert holds(state), (what, state)
    return state


def scope_is(page, text: str) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_function(f"document.querySelector('{SCOPE_BUTTON}').innerText.startsWith({text!r})")


def test_images_reordered_window_linked_and_a_second_window(guarded_server, installed_viewer,
                                                            viewer_steps: Steps) -> None:
    study = generate_uid()
    series = sorted_series(study)
    prior = prior_study()
    stow(guarded_server.http_url, series + prior, auth=ADMIN)
    add_user(guarded_server, "lidoc", ["radiologist"], "李医生")
    page = viewer_steps.page
    log_in(page, guarded_server, "lidoc", f"/viewer/viewer?StudyInstanceUIDs={study}")
    page.wait_for_selector(f"{VIEWPORT} canvas", timeout=LOAD_TIMEOUT_MS)
    page.wait_for_function(f"document.querySelector('{OVERLAY_TOP_LEFT}')?.innerText.includes('张三')",
                           timeout=LOAD_TIMEOUT_MS)
    box = page.locator(VIEWPORT).first.bounding_box()
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*centre)

    # a window set on the first image alone (Alt+W) before any was set on the series: the next
    # slice keeps the window of its own header (as cornerstone computes it), the first its own
    headers = wait_state(page, lambda s: len(s) == 1 and s[0][4] == 0, "the first slice shown")
    page.keyboard.press("Alt+W")
    scope_is(page, "窗宽/缩放/旋转：本图像")
    page.mouse.move(*centre)
    page.mouse.down()
    page.mouse.move(centre[0] + 60, centre[1] + 30, steps=8)
    page.mouse.up()
    first_own = wait_state(page, lambda s: s[0][:2] != headers[0][:2], "the first image's own window")
    page.keyboard.press("ArrowDown")
    wait_state(page, lambda s: s[0][4] == 1 and s[0][:2] == headers[0][:2], "the next slice in its header's window")
    assert page.evaluate("cornerstone.getEnabledElements()[0].viewport.getProperties().isComputedVOI")
    page.keyboard.press("ArrowUp")
    wait_state(page, lambda s: s[0][4] == 0 and s[0][:2] == first_own[0][:2], "the first image in its own window")

    # the images of a series in three orders: slice position (the default), instance number,
    # acquisition time; Alt+O goes to the next and shows the study again in it
    by_position = instance_numbers(series, lambda ds: ds.ImagePositionPatient[2])
    assert page.locator("#pacs-tool-sort").inner_text().startswith("排序：层面位置")
    shown = shown_instances(page, 3)
    assert shown in (by_position[:3], by_position[::-1][:3]), (shown, by_position)
    viewer_steps.shot("order-by-position")
    for name, key in (("instance", lambda ds: int(ds.InstanceNumber)), ("time", lambda ds: ds.AcquisitionTime)):
        page.keyboard.press("Alt+O")
        page.wait_for_function(f"document.querySelector('#pacs-tool-sort')?.innerText.startsWith("
                               f"{('排序：图像号' if name == 'instance' else '排序：采集时间')!r})", timeout=LOAD_TIMEOUT_MS)
        page.wait_for_selector(f"{VIEWPORT} canvas", timeout=LOAD_TIMEOUT_MS)
        page.wait_for_function(f"document.querySelector('{OVERLAY_BOTTOM_RIGHT}')?.innerText.includes('/{SLICES})')",
                               timeout=LOAD_TIMEOUT_MS)
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expected = instance_numbers(series, key)
        assert shown_instances(page, 3) == expected[:3], (name, expected)
        viewer_steps.shot(f"order-by-{name}")

    # each change of order reloaded the page: the scope is still this image, and the first image
    # (wherever the order put it now) still shows its own window, marked
    scope_is(page, "窗宽/缩放/旋转：本图像")
    own_index = page.evaluate("""() => {
        const own = Object.keys(JSON.parse(sessionStorage.getItem('pacs.viewer.ownViews') || '{}'));
        return own.length === 1 ? cornerstone.getEnabledElements()[0].viewport.getImageIds().indexOf(own[0]) : -1; }""")
    assert own_index >= 0
    page.evaluate(f"cornerstone.getEnabledElements()[0].viewport.setImageIdIndex({own_index})")
    wait_state(page, lambda s: s[0][4] == own_index and s[0][:2] == first_own[0][:2],
               "the first image in its own window after the reloads")
    page.locator(VIEWPORT).first.locator(".pacs-own-view").wait_for(state="visible")
    viewer_steps.shot("own-window-after-reload")
    page.keyboard.press("Alt+W")
    scope_is(page, "窗宽/缩放/旋转：全部视窗")
    page.keyboard.press("Alt+W")
    scope_is(page, "窗宽/缩放/旋转：本序列")

    # two series side by side: a window change applies to its own series, until Alt+L links
    # every viewport (window, zoom, pan and rotation)
    page.click('[data-cy="Layout"]')
    page.click('[data-cy="Layout-1-0"]')
    page.wait_for_function(f"document.querySelectorAll('{VIEWPORT}').length === 2 && "
                           "cornerstone.getEnabledElements().length === 2 && "
                           "cornerstone.getEnabledElements().every(e => e.viewport.getImageIds().length > 0)",
                           timeout=LOAD_TIMEOUT_MS)
    page.wait_for_timeout(500)
    left = page.locator(VIEWPORT).nth(0).bounding_box()
    middle = (left["x"] + left["width"] / 2, left["y"] + left["height"] / 2)

    def drag(dx: float, dy: float, button: str = "left") -> None:
        page.mouse.move(*middle)
        page.mouse.down(button=button)  # type: ignore[arg-type]
        page.mouse.move(middle[0] + dx, middle[1] + dy, steps=8)
        page.mouse.up(button=button)  # type: ignore[arg-type]
        page.wait_for_timeout(300)

    before = page.evaluate(VIEWPORT_STATE)
    drag(80, 40)  # W/L on the left series alone
    alone = page.evaluate(VIEWPORT_STATE)
    assert alone[0][:2] != before[0][:2] and alone[1] == before[1], (before, alone)
    assert page.locator(SCOPE_BUTTON).inner_text().startswith("窗宽/缩放/旋转：本序列")
    page.keyboard.press("Alt+L")
    scope_is(page, "窗宽/缩放/旋转：全部视窗")
    drag(-60, 90)  # W/L: both series now
    linked = page.evaluate(VIEWPORT_STATE)
    assert linked[0][:2] != alone[0][:2] and linked[1][:2] == linked[0][:2], (alone, linked)
    drag(0, -120, button="right")  # zoom (OHIF's right button): both series
    zoomed = page.evaluate(VIEWPORT_STATE)
    assert zoomed[0][2] != linked[0][2] and abs(zoomed[1][2] - zoomed[0][2]) < 1e-6, (linked, zoomed)
    viewer_steps.shot("window-and-zoom-linked")
    page.keyboard.press("Alt+L")
    scope_is(page, "窗宽/缩放/旋转：本序列")
    drag(50, 50)
    unlinked = page.evaluate(VIEWPORT_STATE)
    assert unlinked[0][:2] != zoomed[0][:2] and unlinked[1] == zoomed[1], (zoomed, unlinked)

    # this image alone (Alt+W from the series): a window and a rotation set on the image shown
    # stay on it, the next slice shows the series' own, and coming back shows them again
    page.keyboard.press("Alt+W")
    scope_is(page, "窗宽/缩放/旋转：本图像")
    page.mouse.move(*middle)
    series_view = page.evaluate(VIEWPORT_STATE)
    here = series_view[0][4]
    step, back = ("ArrowDown", "ArrowUp") if here < SLICES - 1 else ("ArrowUp", "ArrowDown")
    drag(70, -50)
    page.keyboard.press("r")  # OHIF's rotation to the right
    own = wait_state(page, lambda s: s[0][3] == 90, "this image rotated")
    assert own[0][:2] != series_view[0][:2] and own[1] == series_view[1], (series_view, own)
    own_mark = page.locator(VIEWPORT).nth(0).locator(".pacs-own-view")  # "本图像单独窗宽/视图"
    own_mark.wait_for(state="visible")
    viewer_steps.shot("this-image-window-and-rotation")
    page.keyboard.press(step)
    wait_state(page, lambda s: s[0][4] != here and s[0][:2] == series_view[0][:2] and s[0][3] == 0,
               "the next slice in the series' window, not rotated")
    own_mark.wait_for(state="hidden")
    viewer_steps.shot("next-slice-the-series-window")
    page.keyboard.press(back)
    wait_state(page, lambda s: s[0][4] == here and s[0][:2] == own[0][:2] and s[0][3] == 90,
               "the image again in its own window and rotation")
    own_mark.wait_for(state="visible")

    # every viewport (Alt+W again): a rotation turns the other series too
    page.keyboard.press("Alt+W")
    scope_is(page, "窗宽/缩放/旋转：全部视窗")
    page.mouse.move(*middle)
    page.keyboard.press("r")
    turned = wait_state(page, lambda s: s[0][3] == 180 and s[1][3] == 180, "both viewports rotated")
    viewer_steps.shot("rotation-linked")

    # the series (Alt+W a third time): a window set on the image with a window of its own is
    # every slice's, that image's too; the other series keeps its own
    page.keyboard.press("Alt+W")
    scope_is(page, "窗宽/缩放/旋转：本序列")
    drag(-40, 60)
    series_wide = wait_state(page, lambda s: s[0][:2] != own[0][:2], "the series' new window")
    assert series_wide[1] == turned[1], (turned, series_wide)
    page.keyboard.press(step)
    wait_state(page, lambda s: s[0][4] != here and s[0][:2] == series_wide[0][:2] and s[0][3] == 180,
               "the next slice in the series' new window")
    page.keyboard.press(back)
    wait_state(page, lambda s: s[0][4] == here and s[0][:2] == series_wide[0][:2], "the image in it too")
    own_mark.wait_for(state="hidden")
    viewer_steps.shot("series-window")

    # a second window (another monitor) on the study with the series after the active one
    page.mouse.click(*middle)  # the left viewport active
    reconstruction_left = "重建" in page.locator(OVERLAY_TOP_LEFT).first.inner_text()
    following = series[0 if reconstruction_left else SLICES].SeriesInstanceUID  # the other series
    with page.context.expect_page() as opened:
        page.keyboard.press("Alt+N")
    second = opened.value
    second.set_default_timeout(LOAD_TIMEOUT_MS)
    second.wait_for_url(re.compile(f"StudyInstanceUIDs={re.escape(study)}"))
    assert f"initialSeriesInstanceUID={following}" in second.url, second.url
    second.wait_for_selector(f"{OVERLAY_TOP_LEFT}")
    try:
        second.wait_for_function(f"document.querySelector('{OVERLAY_TOP_LEFT}')?.innerText.includes('重建') === "
                                 f"{'false' if reconstruction_left else 'true'}")
    finally:
        second.screenshot(path=str(viewer_steps.folder / "second-window.png"))
    viewer_steps.shot("first-window")

    # the patient's prior study in that second window (Alt+P), to compare the two side by side,
    # shown in place: the second window's viewer does not load again
    second.evaluate("window.pacsLoadedOnce = true")
    page.keyboard.press("Alt+P")
    try:
        second.wait_for_url(re.compile(f"StudyInstanceUIDs={re.escape(prior[0].StudyInstanceUID)}"))
        second.wait_for_function(f"document.querySelector('{OVERLAY_TOP_LEFT}')?.innerText.includes('2025-11-20')")
        second.wait_for_selector(f"{VIEWPORT} canvas")
        assert second.evaluate("window.pacsLoadedOnce") is True, "the second window loaded the viewer again"
    finally:
        second.screenshot(path=str(viewer_steps.folder / "prior-in-second-window.png"))
    second.close()

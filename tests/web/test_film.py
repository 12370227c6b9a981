"""The film page in a browser: from the viewer (Alt+F) to a film printed on DCMTK's dcmprscp."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from pacs.web.i18n import catalogue
from tests.conftest import ADMIN_PASSWORD
from tests.film.printer import FilmPrinter, film_printer
from tests.web import test_viewer
from tests.web.conftest import Steps
from tests.web.test_desk import add_user
from tests.web.test_viewer import LOAD_TIMEOUT_MS, OVERLAY_TOP_LEFT, log_in
from tests.web.viewer_studies import ct_phantom, stow

ZH = catalogue("zh-CN")
gl_browser = test_viewer.gl_browser  # the viewer tests' fixtures: a browser with WebGL, its page
viewer_steps = test_viewer.viewer_steps


@pytest.fixture
def printer(tmp_path: Path) -> Iterator[FilmPrinter]:
    with film_printer(tmp_path / "printer") as running:
        yield running


def test_a_radiologist_prints_a_2x2_film_from_the_viewer(start_server, printer: FilmPrinter, installed_viewer,  # type: ignore[no-untyped-def]
                                                         viewer_steps: Steps) -> None:
    server = start_server(guarded=True, printers=[printer.printer_settings()])
    study = generate_uid()
    stow(server.http_url, ct_phantom(4, 128, study_uid=study), auth=("admin", ADMIN_PASSWORD))
    add_user(server, "lidoc", ["radiologist"], "李医生")
    page = viewer_steps.page
    log_in(page, server, "lidoc", f"/viewer/viewer?StudyInstanceUIDs={study}")
    page.wait_for_selector(OVERLAY_TOP_LEFT, timeout=LOAD_TIMEOUT_MS)
    page.wait_for_selector("#pacs-tool-film", state="visible")
    with page.context.expect_page() as opened:
        page.keyboard.press("Alt+f")
    film = opened.value
    film.wait_for_load_state()
    shots = Steps(film, viewer_steps.folder)
    assert "张三" in film.inner_text("#patient")
    assert film.locator("input[name=series]:checked").count() == 1
    assert film.locator("select[name=layout]").input_value() == "2x2"
    lung = [o for o in film.locator("select[name=window] option").all_inner_texts() if "肺窗" in o]
    assert lung, "the CT presets of window_presets.yaml are offered"
    assert film.locator("input[name=annotate]").is_checked()
    film.select_option("select[name=window]", label=lung[0])
    level, width = (float(v) for v in film.locator("select[name=window]").input_value().split(","))
    shots.shot("film-page")
    film.keyboard.press("Alt+p")
    film.wait_for_selector("#result[data-state=printed], #result[data-state=failed]")
    text = film.inner_text("#result")
    assert "1 张胶片" in text and "4 幅图像" in text and "CT 胶片" in text, text
    shots.shot("film-printed")

    [stored] = printer.stored_prints()
    assert stored.FilmBoxContentSequence[0].ImageDisplayFormat == "STANDARD\\2,2"
    films = printer.films()
    assert len(films) == 4
    # printed through the lung window chosen (water light grey), not the image's own soft-tissue one
    expected = min(max((0 - (level - 0.5)) / (width - 1) + 0.5, 0.0), 1.0) * 4095  # PS3.3 C.11.2.1.2.1
    water = float(films[0].pixel_array[64, 40])
    assert abs(water - expected) <= 2 and water > 0.75 * 4095, (water, expected)
    assert (films[0].pixel_array[:28, :48] == 4095).sum() > 20  # the patient burnt in, top left

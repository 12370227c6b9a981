"""Film printing end to end: a CT stored in the archive, printed through POST /api/film on
DCMTK's dcmprscp (a real Basic Grayscale Print Management SCP, PS3.4 Annex H) on loopback, and
the film session it kept read back with pydicom."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from pacs.settings import Printer
from tests.conftest import RunningServer
from tests.film.printer import AE_TITLE, FilmPrinter, film_printer
from tests.process import free_port
from tests.web.viewer_studies import BONE_HU, WATER_HU, ct_phantom, stow

CENTER, WIDTH = 40.0, 400.0  # a soft-tissue window, HU


def printed_value(hu: float, bits: int = 12) -> float:
    """Where PS3.3 C.11.2.1.2.1's linear window puts ``hu`` on 0 … 2^bits − 1."""
    top = 2 ** bits - 1
    x = (hu - (CENTER - 0.5)) / (WIDTH - 1) + 0.5
    return min(max(x, 0.0), 1.0) * top


@pytest.fixture
def printer(tmp_path: Path) -> Iterator[FilmPrinter]:
    with film_printer(tmp_path / "printer") as running:
        yield running


@pytest.fixture
def printing_server(start_server, printer: FilmPrinter) -> RunningServer:  # type: ignore[no-untyped-def]
    return start_server(printers=[printer.printer_settings(), Printer(ae_title="DOWN", host="127.0.0.1",
                                                                             port=free_port(), name="停用的打印机")])


def test_a_2x2_film_of_a_ct_is_printed(printing_server: RunningServer, printer: FilmPrinter) -> None:
    slices = ct_phantom(slices=5, size=128)
    stow(printing_server.http_url, slices)
    study = slices[0].StudyInstanceUID
    with httpx.Client(base_url=printing_server.http_url, timeout=120) as client:
        answer = client.post("/api/film", json={"study_instance_uid": study, "series": [slices[0].SeriesInstanceUID],
                                                "layout": "2x2", "window": {"center": CENTER, "width": WIDTH},
                                                "copies": 2, "printer": AE_TITLE})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["films"], body["images"], body["printer"]) == (2, 5, "CT 胶片")
        printers = client.get("/api/film/printers").json()
    assert [p["ae_title"] for p in printers] == [AE_TITLE, "DOWN"]

    [first, second] = printer.stored_prints()
    for stored in (first, second):
        [box] = stored.FilmBoxContentSequence
        assert box.ImageDisplayFormat == "STANDARD\\2,2"
        assert box.FilmSizeID == "14INX17IN" and box.FilmOrientation == "PORTRAIT"
    assert sorted(len(stored.ImageBoxContentSequence) for stored in (first, second)) == [1, 4]
    shown = printer.films()  # a Hardcopy Grayscale Image per image box given an image
    assert len(shown) == 5 and {f.Rows for f in shown} == {128}
    for film in shown:
        assert film.PhotometricInterpretation == "MONOCHROME2" and film.BitsStored == 12
        pixels = film.pixel_array.astype(float)
        water = pixels[64, 40]  # inside the cylinder, away from the insert
        bone = pixels[64, 83]  # the insert at (0.65, 0.5)
        air = pixels[64, 1]  # left of the cylinder, between the corners' text
        assert abs(water - printed_value(WATER_HU)) <= 2, water
        assert bone == printed_value(BONE_HU) == 4095
        assert air == 0
        # the corners burnt in, white on the air: the patient top left, the window bottom left
        assert (pixels[:28, :48] == 4095).sum() > 20
        assert (pixels[100:, :48] == 4095).sum() > 20
    assert np.ptp(shown[0].pixel_array) == 4095


def test_the_image_s_own_window_in_8_bits(start_server, printer: FilmPrinter) -> None:  # type: ignore[no-untyped-def]
    running = start_server(printers=[printer.printer_settings(bits=8, film_size="8INX10IN", medium="PAPER")])
    slices = ct_phantom(slices=1, size=64)
    for ds in slices:
        ds.WindowCenter, ds.WindowWidth = 0, 2000  # water mid-grey (127), air black
    stow(running.http_url, slices)
    sop = slices[0].SOPInstanceUID
    answer = httpx.post(f"{running.http_url}/api/film", timeout=120, json={
        "study_instance_uid": slices[0].StudyInstanceUID, "layout": "1x1", "annotate": False,
        "images": [{"series": slices[0].SeriesInstanceUID, "instance": sop, "frame": 1}]})
    assert answer.status_code == 200, answer.text
    [film] = printer.films()
    assert film.BitsStored == 8
    assert abs(int(film.pixel_array[32, 20]) - 127) <= 1
    assert int(film.pixel_array[1, 1]) == 0
    assert int(film.pixel_array[:4, :].max()) == 0  # no text asked for: the air above the cylinder stays black
    [stored] = printer.stored_prints()
    assert stored.FilmBoxContentSequence[0].FilmSizeID == "8INX10IN"


def test_a_printer_down_or_refusing_says_why(printing_server: RunningServer, printer: FilmPrinter) -> None:
    slices = ct_phantom(slices=1, size=64)
    stow(printing_server.http_url, slices)
    study = slices[0].StudyInstanceUID
    with httpx.Client(base_url=printing_server.http_url, timeout=120) as client:
        down = client.post("/api/film", json={"study_instance_uid": study, "printer": "DOWN"})
        assert down.status_code == 503
        assert "停用的打印机" in down.json()["detail"]
        refused = client.post("/api/film", json={"study_instance_uid": study, "layout": "5x6"})
        assert refused.status_code == 502
        assert "film box N-CREATE" in refused.json()["detail"] and "0x" in refused.json()["detail"]
        assert client.post("/api/film", json={"study_instance_uid": study, "layout": "9x9"}).status_code == 422
        assert client.post("/api/film", json={"study_instance_uid": study, "printer": "NOPE"}).status_code == 422
        assert client.post("/api/film", json={"study_instance_uid": study, "copies": 0}).status_code == 422
        missing = client.post("/api/film", json={"study_instance_uid": "1.2.3.4.5"})
        assert missing.status_code == 404
        wrong = client.post("/api/film", json={"study_instance_uid": study, "images": [
            {"series": slices[0].SeriesInstanceUID, "instance": slices[0].SOPInstanceUID, "frame": 2}]})
        assert wrong.status_code == 422 and "frame" in wrong.json()["detail"]
        # the printer that refused is still there, and prints what it can
        assert client.post("/api/film", json={"study_instance_uid": study}).status_code == 200
    assert len(printer.stored_prints()) == 1


def test_no_printer_configured(server: RunningServer) -> None:
    answer = httpx.post(f"{server.http_url}/api/film", json={"study_instance_uid": "1.2.3"}, timeout=30)
    assert answer.status_code == 422
    assert "[[printers]]" in answer.json()["detail"]

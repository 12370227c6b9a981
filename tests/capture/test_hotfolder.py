"""Hot folders on a loopback server: a JPEG written slowly in pieces is taken only once whole,
stored under the order its name starts with and moved to done/; a file that is no image goes to
error/ with its reason; one naming no order waits on the reconciliation list. capture.yaml is
checked by ``pacs mappings check`` with ``file:line: what``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
from pydicom.encaps import generate_frames
from sqlmodel import Session, select

from pacs.archive.index import Instance
from pacs.archive.reconciliation import ReconciliationItem
from pacs.capture.hotfolder import Watch
from pacs.settings import SHIPPED_MAPPINGS
from tests.archive.test_dicomweb import dicomweb
from tests.archive.test_reconciliation import hl7, us_order
from tests.capture.test_api import jpeg, order_of
from tests.integration.test_mapping import pacs

SETTLE = 1.0


@pytest.fixture
def mappings_dir(tmp_path: Path) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(SHIPPED_MAPPINGS, target)
    (target / "capture.yaml").write_text(f"""devices:
  - name: ENDO9
    kind: endoscope
    manufacturer: Olympus
    hot_folder: {tmp_path / 'hot'}
    settle_seconds: {SETTLE}
""", encoding="utf-8")
    return target


def wait_for(condition, seconds: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def instances(server) -> list[Instance]:
    with Session(server.db.engine) as session:
        return list(session.exec(select(Instance)).all())


def test_a_file_written_slowly_is_taken_once_whole(server, tmp_path):
    hl7(server, us_order("P200", "吴", "十", "WU SHI", 21, 10))
    order = order_of(server, "ACC21")
    hot = tmp_path / "hot"
    wait_for(hot.is_dir)  # made by the server
    photo = jpeg(5, size=(640, 480))
    path = hot / "ACC21_1.jpg"
    pieces = [photo[i:i + len(photo) // 6 + 1] for i in range(0, len(photo), len(photo) // 6 + 1)]
    with path.open("wb") as out:  # a slow copy: a piece every 0.6 s, well past three looks each
        for piece in pieces:
            out.write(piece)
            out.flush()
            time.sleep(0.6)
            assert path.exists() and instances(server) == [], "taken before it was whole"
    wait_for(lambda: (hot / "done" / "ACC21_1.jpg").exists())
    assert not path.exists()
    [instance] = instances(server)
    assert instance.sop_class_uid == "1.2.840.10008.5.1.4.1.1.77.1.1"  # VL Endoscopic
    ds = dicomweb(server).retrieve_instance(order.study_instance_uid, instance_series(server, instance),
                                            instance.sop_instance_uid, media_types=(("application/dicom", "*"),))
    [frame] = list(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame[:len(photo)] == photo  # the whole file, not the part seen first
    assert ds.Modality == "ES" and ds.StationName == "ENDO9" and ds.Manufacturer == "Olympus"
    assert ds.AccessionNumber == "ACC21" and ds.PatientName.ideographic == "吴^十"


def test_files_dropped_together_are_one_series_and_a_bad_one_alone_goes_to_error(server, tmp_path):
    hl7(server, us_order("P201", "冯", "五", "FENG WU", 23, 11))
    hot = tmp_path / "hot"
    wait_for(hot.is_dir)
    staging = tmp_path / "staging"
    staging.mkdir()
    names = [f"ACC23_{n}.jpg" for n in range(6)]
    for n, name in enumerate(names):
        (staging / name).write_bytes(jpeg(n))
    (staging / "ACC23_cut.jpg").write_bytes(jpeg(9)[:500])  # a JPEG cut short, among them
    for path in staging.iterdir():
        path.rename(hot / path.name)  # all whole at once
    wait_for(lambda: len(list((hot / "done").glob("*.jpg"))) == len(names)
             and (hot / "error" / "ACC23_cut.jpg.reason.txt").exists())
    assert "cannot be read" in (hot / "error" / "ACC23_cut.jpg.reason.txt").read_text()
    stored = instances(server)
    assert len(stored) == len(names) and len({i.series for i in stored}) == 1


def instance_series(server, instance: Instance) -> str:
    from pacs.archive.index import Series

    with Session(server.db.engine) as session:
        return session.get_one(Series, instance.series).series_instance_uid


def test_what_cannot_be_converted_goes_to_error_with_its_reason(server, tmp_path):
    hot = tmp_path / "hot"
    wait_for(hot.is_dir)
    (hot / "ACC22_notes.txt").write_text("not an image\n")
    (hot / "copying.jpg.part").write_bytes(jpeg())  # a copy tool's name before its rename: not looked at
    reason = wait_for(lambda: (hot / "error" / "ACC22_notes.txt.reason.txt").exists()
                      and (hot / "error" / "ACC22_notes.txt.reason.txt").read_text())
    assert "not a JPEG, PNG, BMP, TIFF, PDF or MP4" in reason
    # the site's language (zh-CN) first, then English
    assert reason.splitlines()[0].startswith("ACC22_notes.txt：不是 JPEG、PNG、BMP、TIFF、PDF") and "“txt”" in reason
    assert (hot / "error" / "ACC22_notes.txt").read_text() == "not an image\n"
    time.sleep(SETTLE * 2)
    assert (hot / "copying.jpg.part").exists() and instances(server) == []
    # A file naming no order is kept on the reconciliation list, and moved to done/ as well
    (hot / "IMG_7.jpg").write_bytes(jpeg())
    wait_for(lambda: (hot / "done" / "IMG_7.jpg").exists())
    listed = httpx.get(f"{server.http_url}/api/reconciliation").json()["items"]
    assert [(i["kind"], i["file"]["file_name"], i["calling_ae"]) for i in listed] == [("file", "IMG_7.jpg", "ENDO9")]
    with Session(server.db.engine) as session:
        assert len(session.exec(select(ReconciliationItem)).all()) == 1


def test_watch_waits_for_size_and_time_to_settle(tmp_path):
    watch, folder = Watch(), tmp_path
    path = folder / "a.jpg"
    path.write_bytes(b"x")
    assert watch.settled(folder, 1.0, 100.0) == []  # first seen
    assert watch.settled(folder, 1.0, 100.5) == []  # not long enough
    with path.open("ab") as out:
        out.write(b"y")
    assert watch.settled(folder, 1.0, 101.2) == []  # grew: the clock starts again
    assert watch.settled(folder, 1.0, 102.0) == []
    assert watch.settled(folder, 1.0, 102.3) == [path]
    (folder / "empty.jpg").write_bytes(b"")
    assert watch.settled(folder, 1.0, 103.0) == [path] and watch.settled(folder, 1.0, 110.0) == [path]  # empty: never


def test_mappings_check_reports_capture_yaml_problems(tmp_path):
    target = tmp_path / "mappings"
    shutil.copytree(SHIPPED_MAPPINGS, target)
    assert pacs("mappings", "check", "--dir", str(target)).returncode == 0
    (target / "capture.yaml").write_text("""devices:
  - name: ENDO1
    kind: endoscop
  - name: WAY_TOO_LONG_A_NAME_FOR_AN_AE
    kind: photo
    settle_seconds: 5
  - name: CAM
    kind: photo
    hot_folder: capture/cam
    settle_seconds: 0
    colour: red
""", encoding="utf-8")
    result = pacs("mappings", "check", "--dir", str(target))
    assert result.returncode == 1
    out = result.stdout
    assert f"{target / 'capture.yaml'}:2: kind 'endoscop' is not one of photo, endoscope" in out
    assert ":4: name 'WAY_TOO_LONG_A_NAME_FOR_AN_AE' must be an AE title" in out
    assert ":4: settle_seconds needs a hot_folder" in out
    assert ":7: settle_seconds 0: give a number of seconds" in out
    assert ":7: unknown key 'colour'" in out

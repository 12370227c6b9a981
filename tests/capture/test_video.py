"""Videos (pacs.capture.video): an H.264 MP4 is kept byte for byte under the MPEG-4 AVC/H.264
transfer syntax, an H.264 MOV copied into MP4 with its frames unchanged, an MPEG-4 Part 2 AVI
transcoded once; dciodvfy finds no error; through POST /api/capture the stored video comes back
from WADO and ffprobe reads its duration and frame count."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import MPEG4HP41, MPEG4HP422D

from pacs.capture.convert import Equipment, Kind, Target, Unconvertible, inspect, to_dataset
from pacs.capture.video import transfer_syntax
from tests.archive.test_dicomweb import dicomweb
from tests.archive.test_reconciliation import hl7, us_order
from tests.capture.test_api import order_of, post
from tests.capture.test_convert import dciodvfy_errors, written

pytestmark = pytest.mark.skipif(not shutil.which("ffmpeg"), reason="ffmpeg is not installed (apt-get install ffmpeg)")
SECONDS, RATE = 2, 25
TARGET = Target(patient_id="P1", name_alphabetic="ZHANG^SAN", name_ideographic="张^三", accession_number="A0017",
                body_part="STOMACH")


def make(path: Path, *codec: str) -> bytes:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={RATE}",
                    "-t", str(SECONDS), *codec, str(path)], check=True, timeout=120)
    return path.read_bytes()


def frame_hashes(path: Path) -> list[str]:
    """The MD5 of each coded frame, as ffmpeg copies them (the stream, not the container)."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "framemd5",
                          "-"], capture_output=True, text=True, check=True, timeout=120).stdout
    return [line.rsplit(",", 1)[-1].strip() for line in out.splitlines() if line and not line.startswith("#")]


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=codec_name,nb_read_frames,width,height:format=duration", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return json.loads(out)


def stream_of(ds) -> bytes:  # type: ignore[no-untyped-def]
    [fragment] = list(generate_frames(ds.PixelData, number_of_frames=1))
    return fragment


H264 = ("-c:v", "libx264", "-profile:v", "high", "-pix_fmt", "yuv420p")


def test_mp4_kept_mov_copied_avi_transcoded(tmp_path):
    mp4 = make(tmp_path / "a.mp4", *H264)
    ds = written(to_dataset(inspect(mp4, "a.mp4"), target=TARGET, device=Equipment("ENDO2", Kind.ENDOSCOPE),
                            now=datetime.now()), tmp_path / "mp4.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.1.1" and ds.Modality == "ES"  # Video Endoscopic
    assert ds.file_meta.TransferSyntaxUID == MPEG4HP41
    assert stream_of(ds)[:len(mp4)] == mp4  # byte for byte
    assert (ds.NumberOfFrames, float(ds.FrameTime), ds.Rows, ds.Columns) == (SECONDS * RATE, 40.0, 240, 320)
    assert ds.PhotometricInterpretation == "YBR_PARTIAL_420" and ds.LossyImageCompressionMethod == "ISO_14496_10"
    assert ds.AnatomicRegionSequence[0].CodeValue == "69695003"  # the order's body part, STOMACH
    assert "DerivationDescription" not in ds

    mov_path = tmp_path / "b.mov"
    mov = make(mov_path, *H264)
    ds = written(to_dataset(inspect(mov, "b.mov"), target=TARGET, device=Equipment("CAM"), now=datetime.now()),
                 tmp_path / "mov.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.4.1" and ds.file_meta.TransferSyntaxUID == MPEG4HP41
    copied = tmp_path / "copied.mp4"
    copied.write_bytes(stream_of(ds))
    assert frame_hashes(copied) == frame_hashes(mov_path)  # the same coded frames: not transcoded
    assert "DerivationDescription" not in ds

    avi = make(tmp_path / "c.avi", "-c:v", "mpeg4")
    ds = written(to_dataset(inspect(avi, "c.avi"), target=TARGET, device=Equipment("SCOPE", Kind.MICROSCOPE),
                            now=datetime.now()), tmp_path / "avi.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.2.1" and ds.file_meta.TransferSyntaxUID == MPEG4HP41
    assert "transcoded from mpeg4" in ds.DerivationDescription and ds.NumberOfFrames == SECONDS * RATE
    if shutil.which("dciodvfy"):
        for name in ("mp4.dcm", "mov.dcm", "avi.dcm"):
            assert dciodvfy_errors(tmp_path / name) == [], name


def test_which_streams_dicom_holds_as_they_are():
    h264 = {"codec_name": "h264", "profile": "High", "pix_fmt": "yuv420p", "width": 1920, "height": 1080}
    assert transfer_syntax({**h264, "level": 41, "avg_frame_rate": "30/1"}) == MPEG4HP41
    assert transfer_syntax({**h264, "level": 42, "avg_frame_rate": "60/1"}) == MPEG4HP422D
    assert transfer_syntax({**h264, "level": 51, "avg_frame_rate": "30/1"}) is None  # above 4.2: transcoded
    assert transfer_syntax({**h264, "level": 41, "avg_frame_rate": "30/1", "pix_fmt": "yuv422p"}) is None
    assert transfer_syntax({**h264, "level": 41, "avg_frame_rate": "30/1", "width": 3840, "height": 2160}) is None
    assert transfer_syntax({"codec_name": "mpeg4", "profile": "Simple Profile", "level": 1}) is None


def test_a_video_through_the_api_plays_back_from_wado(server, tmp_path):
    hl7(server, us_order("P300", "郑", "一", "ZHENG YI", 31, 9))
    order = order_of(server, "ACC31")
    mp4 = make(tmp_path / "colon.mp4", *H264)
    response = post(server, [("结肠镜.mp4", mp4)], accession_number="ACC31", device="ENDO2")
    assert response.status_code == 201, response.text
    [stored] = response.json()["stored"]
    assert stored["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.77.1.1.1"
    ds = dicomweb(server).retrieve_instance(order.study_instance_uid, stored["series_instance_uid"],
                                            stored["sop_instance_uid"], media_types=(("application/dicom", "*"),))
    assert ds.file_meta.TransferSyntaxUID == MPEG4HP41 and ds.PatientName.ideographic == "郑^一"
    back = tmp_path / "back.mp4"
    back.write_bytes(stream_of(ds)[:len(mp4)])
    assert back.read_bytes() == mp4
    probed = ffprobe(back)
    assert float(probed["format"]["duration"]) == pytest.approx(SECONDS, abs=0.05)
    assert int(probed["streams"][0]["nb_read_frames"]) == SECONDS * RATE

    # A video cut short is refused with the reason, nothing stored
    response = post(server, [("cut.mp4", mp4[:len(mp4) // 3])], accession_number="ACC31", device="ENDO2")
    assert response.status_code == 400 and "video" in response.json()["detail"]
    assert len(dicomweb(server).search_for_instances(order.study_instance_uid)) == 1


def test_inspect_refuses_a_video_without_a_stream(tmp_path):
    audio = tmp_path / "a.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac",
                    str(audio)], check=True, timeout=60)
    with pytest.raises(Unconvertible, match="no video stream"):
        inspect(audio.read_bytes(), "a.mp4")


def test_hevc_is_kept_under_its_own_transfer_syntax(tmp_path):
    from pydicom.uid import HEVCMP51

    hevc = make(tmp_path / "h.mp4", "-c:v", "libx265", "-pix_fmt", "yuv420p", "-tag:v", "hvc1", "-x265-params",
                "log-level=error")
    ds = written(to_dataset(inspect(hevc, "h.mp4"), target=TARGET, device=Equipment("ENDO2", Kind.ENDOSCOPE),
                            now=datetime.now()), tmp_path / "h.dcm")
    assert ds.file_meta.TransferSyntaxUID == HEVCMP51 and ds.LossyImageCompressionMethod == "ISO_23008_2"
    assert stream_of(ds)[:len(hevc)] == hevc and ds.NumberOfFrames == SECONDS * RATE
    # (Debian 12's dicom3tools, 2022, does not know the HEVC transfer syntaxes: it reads the
    # encapsulated pixel data as native and stops, so dciodvfy cannot judge this object.)

"""Videos (MP4, MOV, AVI, MKV, WebM) made ready for a DICOM video object, with ffprobe and ffmpeg from
the distribution (Debian's ``ffmpeg`` package).

The transfer syntax is the video's own codec when DICOM has one for it (PS3.5 8.2.7, 8.2.8,
8.2.10): H.264 of the High, Main or Constrained Baseline profile up to level 4.1 and 1920x1080
(MPEG-4 AVC/H.264 High Profile / Level 4.1), up to level 4.2 (High Profile / Level 4.2 for 2D
video); HEVC Main or Main 10 up to level 5.1. The stream is then not touched:

- an MP4 file is kept byte for byte (what WADO-RS serves back as ``video/mp4``, and a browser's
  ``<video>`` plays);
- an H.264/HEVC stream in another container (MOV, AVI, MKV) is copied into MP4 (``ffmpeg -c
  copy``), its frames unchanged.

Anything else (VP8 or VP9 in WebM, as a browser's MediaRecorder makes it; MPEG-4 Part 2, Motion
JPEG, H.264 above level 4.2, 4:2:2 or 10-bit H.264) is transcoded once to H.264 High Profile / Level 4.1, at most 1920x1080 and 30 frames a second, and
the object says so (Lossy Image Compression, Derivation Description). The bit stream goes in one
fragment, as the non-fragmentable transfer syntaxes ask (PS3.5 A.4.5).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from pydicom.uid import HEVCM10P51, HEVCMP51, MPEG4HP41, MPEG4HP422D, UID

FFPROBE, FFMPEG = "ffprobe", "ffmpeg"
TIMEOUT_SECONDS = 600  # one video's probe or transcoding
MAX_FRAME_RATE_41 = 30.0  # H.264 level 4.1 at 1920x1080 (ITU-T H.264 Table A-1: 245,760 macroblocks/s)
MAX_FRAME_RATE_42 = 60.0  # level 4.2 at 1920x1080 (522,240 macroblocks/s)
MAX_WIDTH, MAX_HEIGHT = 1920, 1080
H264_PROFILES = {"High", "Main", "Constrained Baseline"}  # decodable by a High Profile decoder
H264_LEVEL_41, H264_LEVEL_42 = 41, 42  # ffprobe's level: 10 x the level number
HEVC_LEVEL_51 = 153  # ffprobe's HEVC level: 30 x the level number
MP4_BRANDS = (b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"dash", b"M4V ")
COMPRESSION_METHOD = {"h264": "ISO_14496_10", "hevc": "ISO_23008_2"}  # (0028,2114), PS3.3 C.7.6.1.1.5


class VideoError(ValueError):
    """A video that cannot be read or made ready; the message says why."""


@dataclass
class Video:
    """A video ready to be encapsulated: its MP4 bytes and what DICOM says of it."""

    data: bytes
    transfer_syntax: UID
    codec: str  # h264, hevc
    width: int
    height: int
    frames: int
    frame_time_ms: float  # (0018,1063) Frame Time
    frame_rate: float
    duration_s: float
    how: str  # kept, copied into MP4, transcoded from ...


def sniff_video(data: bytes) -> str:
    """The container the first bytes say: ``video/mp4``, ``video/quicktime``, ``video/x-msvideo``,
    ``video/x-matroska``, or ""."""
    if data[4:8] == b"ftyp":
        return "video/quicktime" if data[8:12] == b"qt  " else "video/mp4"
    if data[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        return "video/quicktime"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "video/x-msvideo"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "video/x-matroska"
    return ""


def available() -> bool:
    return shutil.which(FFPROBE) is not None and shutil.which(FFMPEG) is not None


def prepare(data: bytes, media_type: str) -> Video:
    """``data`` (a video file of ``media_type``) as a :class:`Video`: kept, copied into MP4, or
    transcoded, as the module says. Raises :class:`VideoError`."""
    if not available():
        raise VideoError("videos need ffprobe and ffmpeg on the server (Debian: apt-get install ffmpeg)")
    with tempfile.TemporaryDirectory(prefix="capture-video-") as scratch:
        source = Path(scratch) / "source"
        source.write_bytes(data)
        stream, container = probe(source)
        codec = stream.get("codec_name", "")
        syntax = transfer_syntax(stream)
        if syntax is not None:
            if media_type == "video/mp4" and data[8:12] in MP4_BRANDS:
                return _video(data, stream, container, syntax, "kept as sent")
            out = Path(scratch) / "copied.mp4"
            _ffmpeg(["-i", str(source), "-map", "0:v:0", "-map", "0:a?", "-c", "copy", "-movflags", "+faststart",
                     "-f", "mp4", str(out)])
            stream2, container2 = probe(out)
            return _video(out.read_bytes(), stream2, container2, syntax,
                          f"{codec} copied from {media_type} into MP4, not transcoded")
        out = Path(scratch) / "transcoded.mp4"
        rate = _rate(stream)
        fit = (f"scale=w='min(iw,{MAX_WIDTH})':h='min(ih,{MAX_HEIGHT})':force_original_aspect_ratio=decrease,"
               "scale=trunc(iw/2)*2:trunc(ih/2)*2")
        args = ["-i", str(source), "-map", "0:v:0", "-map", "0:a?", "-vf", fit, "-c:v", "libx264",
                "-profile:v", "high", "-level:v", "4.1", "-pix_fmt", "yuv420p", "-crf", "18", "-c:a", "aac",
                "-movflags", "+faststart", "-f", "mp4"]
        # A constant frame rate, at most level 4.1's: a browser's recording (MediaRecorder's
        # WebM) has variable frame timing, which DICOM's Frame Time cannot say.
        args += ["-r", f"{min(rate, MAX_FRAME_RATE_41) if rate > 0 else MAX_FRAME_RATE_41:.6g}", "-fps_mode", "cfr"]
        _ffmpeg([*args, str(out)])
        stream2, container2 = probe(out)
        syntax2 = transfer_syntax(stream2)
        if syntax2 is None:
            raise VideoError(f"transcoding the {codec} video gave no stream DICOM can hold")
        return _video(out.read_bytes(), stream2, container2, syntax2,
                      f"transcoded from {codec} ({stream.get('width')}x{stream.get('height')}) to H.264 High 4.1")


def probe(path: Path) -> tuple[dict, dict]:
    """The first video stream and the container, as ffprobe reports them (packets counted)."""
    result = subprocess.run([FFPROBE, "-v", "error", "-count_packets", "-select_streams", "v:0", "-show_streams",
                             "-show_format", "-of", "json", str(path)],
                            capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
    if result.returncode != 0:
        raise VideoError(f"the video cannot be read: {result.stderr.strip().splitlines()[-1:] or 'ffprobe failed'}")
    found = json.loads(result.stdout or "{}")
    streams = found.get("streams") or []
    if not streams:
        raise VideoError("the file has no video stream")
    return streams[0], found.get("format") or {}


def transfer_syntax(stream: dict) -> UID | None:
    """The transfer syntax that holds ``stream`` as it is, or None (PS3.5 8.2.7-8.2.10)."""
    codec, profile = stream.get("codec_name"), stream.get("profile", "")
    width, height, level = int(stream.get("width") or 0), int(stream.get("height") or 0), int(stream.get("level") or 0)
    pixels = stream.get("pix_fmt", "")
    if width > MAX_WIDTH * 2 or height > MAX_HEIGHT * 2 or width * height > MAX_WIDTH * MAX_HEIGHT:
        return None
    rate = _rate(stream)
    if codec == "h264" and profile in H264_PROFILES and pixels in ("yuv420p", "yuvj420p"):
        if 0 < level <= H264_LEVEL_41 and rate <= MAX_FRAME_RATE_41:
            return MPEG4HP41
        if 0 < level <= H264_LEVEL_42 and rate <= MAX_FRAME_RATE_42:
            return MPEG4HP422D
    if codec == "hevc" and 0 < level <= HEVC_LEVEL_51:
        if profile == "Main" and pixels in ("yuv420p", "yuvj420p"):
            return HEVCMP51
        if profile == "Main 10" and pixels in ("yuv420p", "yuv420p10le"):
            return HEVCM10P51
    return None


def _rate(stream: dict) -> float:
    for key in ("avg_frame_rate", "r_frame_rate"):
        try:
            rate = Fraction(stream.get(key) or "0/1")
        except (ValueError, ZeroDivisionError):
            continue
        if rate > 0:
            return float(rate)
    return 0.0


def _video(data: bytes, stream: dict, container: dict, syntax: UID, how: str) -> Video:
    rate = _rate(stream)
    duration = float(stream.get("duration") or container.get("duration") or 0)
    frames = int(stream.get("nb_frames") or stream.get("nb_read_packets") or round(duration * rate) or 0)
    if frames < 1 or rate <= 0:
        raise VideoError("the video has no frames, or no frame rate")
    return Video(data=data, transfer_syntax=syntax, codec=stream.get("codec_name", ""),
                 width=int(stream["width"]), height=int(stream["height"]), frames=frames,
                 frame_time_ms=1000.0 / rate, frame_rate=rate, duration_s=duration or frames / rate, how=how)


def _ffmpeg(args: list[str]) -> None:
    result = subprocess.run([FFMPEG, "-v", "error", "-nostdin", "-y", *args], capture_output=True, text=True,
                            timeout=TIMEOUT_SECONDS, check=False)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["ffmpeg failed"]
        raise VideoError(f"the video cannot be converted: {tail[0]}")

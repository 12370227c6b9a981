#!/usr/bin/env python
"""Non-DICOM capture against ``pacs serve``: a large H.264 video through ``POST /api/capture``,
and a hot folder's photos per second.

Starts ``pacs serve`` on a temporary data folder (SQLite, or ``--database-url``) with a copy of
the shipped mappings whose ``capture.yaml`` gives the device ENDOB a hot folder
(``settle_seconds`` 0.5), books an order by HL7 (ORM^O01 over MLLP), then:

- ``video``: makes an H.264 High / Level 4.1 MP4 of about ``--video-mb`` MB with ffmpeg
  (1920x1080, constant bit rate padded with filler, so its size is what was asked) and times
  ``POST /api/capture`` of it, from the first byte sent to the 201 (the upload over loopback,
  ffprobe, the encapsulation, the write and the index). Goal: 200 MB in under 10 s.
- ``hotfolder``: writes ``--photos`` 640x480 JPEGs named by the order's accession number as
  ``.part`` files, renames them all into the hot folder at once, and times until the last is in
  ``done/``; photos per second counted from the first taken to the last (the settle time is a
  fixed delay before the first, not a rate), and end to end. Goal: 50 photos/s or more.

Run from the project root::

    .venv/bin/python bench/capture.py                      # both, SQLite
    .venv/bin/python bench/capture.py --video-mb 50 --photos 200
    .venv/bin/python bench/capture.py --database-url postgresql://postgres@127.0.0.1:5432/bench_capture  # empty
"""

from __future__ import annotations

import argparse
import io
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ADMIN_PASSWORD,
    basic,
    cpu_model,
    free_port,
    git_state,
    load_average,
    memory_gb,
)
from pacs.settings import SHIPPED_MAPPINGS

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
ACCESSION = "BENCH1"
SETTLE = 0.5


def order_message(day: str) -> bytes:
    return (f"MSH|^~\\&|HIS|IHE_OP|PACS|RADIOLOGY|{day}080000||ORM^O01|BENCH1|P|2.3.1|||AL|NE|CHN|UNICODE UTF-8\r"
            "PID|1||PB0001^^^HOSP^PI||张^三^^^^^L^I~ZHANG^SAN^^^^^L^A||19800101|M\r"
            "PV1|1|O|OPD^^^HOSP||||||||||||||||VPB0001\r"
            f"ORC|NW|PLB1^HIS|||SC||^^^{day}090000^^R||{day}080000|||D002^王^五\r"
            f"OBR|1|PLB1^HIS||ES0001^胃镜检查^HOSP||||||||||||||{ACCESSION}|RPB1|SPSB1||||ES|||^^^{day}090000^^R\r"
            ).encode()


def mllp_send(port: int, message: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"\x0b" + message + b"\x1c\r")
        answer = b""
        while not answer.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


class Serve:
    def __init__(self, data_dir: Path, mappings: Path, database_url: str | None) -> None:
        self.data_dir, self.mappings, self.database_url = data_dir, mappings, database_url
        self.http_port, self.mllp_port = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
        env.update(PACS_ADMIN_PASSWORD=ADMIN_PASSWORD, PACS_MAPPINGS_DIR=str(self.mappings), PACS_LOG_LEVEL="WARNING",
                   PACS_TIMEZONE="Asia/Shanghai")
        if self.database_url:
            env["PACS_DATABASE_URL"] = self.database_url
        log = (self.data_dir.parent / "server.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pacs.cli", "serve", "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
             "--dicom-port", str(free_port()), "--mllp-port", str(self.mllp_port), "--http-port", str(self.http_port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the server exited; see " + str(self.data_dir.parent / "server.log"))
            try:
                if httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not start in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def make_video(path: Path, megabytes: int) -> float:
    """An H.264 High 4.1 1080p30 MP4 of about ``megabytes`` MB; returns its duration."""
    rate_mbit = 40
    seconds = max(2, round(megabytes * 8 / rate_mbit))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
                    "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-profile:v", "high",
                    "-level:v", "4.1", "-pix_fmt", "yuv420p", "-b:v", f"{rate_mbit}M", "-minrate", f"{rate_mbit}M",
                    "-maxrate", f"{rate_mbit}M", "-bufsize", f"{rate_mbit * 2}M", "-x264-params", "nal-hrd=cbr",
                    str(path)], check=True, timeout=1800)
    return float(seconds)


def photo(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (480 // 8, 640 // 8, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).resize((640, 480)).save(out, "JPEG", quality=85)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video-mb", type=int, default=200)
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--skip", choices=["video", "hotfolder"], default=None)
    args = parser.parse_args()
    if not shutil.which("ffmpeg"):
        print("ffmpeg is needed (apt-get install ffmpeg)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as scratch:
        tmp = Path(scratch)
        mappings = tmp / "mappings"
        shutil.copytree(SHIPPED_MAPPINGS, mappings)
        hot = tmp / "hot"
        (mappings / "capture.yaml").write_text(
            f"devices:\n  - name: ENDOB\n    kind: endoscope\n    hot_folder: {hot}\n    settle_seconds: {SETTLE}\n",
            encoding="utf-8")
        server = Serve(tmp / "data", mappings, args.database_url)
        server.start()
        figures: list[str] = []
        try:
            from zoneinfo import ZoneInfo

            day = datetime.now(ZoneInfo("Asia/Shanghai")).strftime("%Y%m%d")
            assert b"MSA|AA" in mllp_send(server.mllp_port, order_message(day))
            base = f"http://127.0.0.1:{server.http_port}"
            auth = basic("admin", ADMIN_PASSWORD)
            if args.skip != "video":
                video = tmp / "endoscopy.mp4"
                seconds = make_video(video, args.video_mb)
                size = video.stat().st_size
                with video.open("rb") as handle:
                    started = time.perf_counter()
                    response = httpx.post(f"{base}/api/capture", headers=auth, timeout=600,
                                          data={"accession_number": ACCESSION, "device": "ENDOB"},
                                          files=[("file", ("endoscopy.mp4", handle, "video/mp4"))])
                    took = time.perf_counter() - started
                if response.status_code != 201:
                    raise RuntimeError(f"{response.status_code}: {response.text}")
                figures.append(f"video: {size / 1e6:.1f} MB ({seconds:.0f} s of 1080p30 H.264 High 4.1) stored in "
                               f"{took:.2f} s ({size / 1e6 / took:.1f} MB/s); goal < 10 s for 200 MB: "
                               f"{'met' if took < 10 * size / 200e6 else 'not met'}")
            if args.skip != "hotfolder":
                for _ in range(100):
                    if hot.is_dir():
                        break
                    time.sleep(0.1)
                staging = tmp / "staging"
                staging.mkdir()
                names = []
                for number in range(args.photos):
                    name = f"{ACCESSION}_{number:05d}.jpg"
                    (staging / name).write_bytes(photo(number))
                    names.append(name)
                dropped = time.perf_counter()
                for name in names:
                    (staging / name).rename(hot / name)
                done = hot / "done"
                first = None
                while True:
                    count = len(list(done.glob("*.jpg"))) if done.is_dir() else 0
                    if count and first is None:
                        first = time.perf_counter()
                    if count >= len(names):
                        break
                    if time.perf_counter() - dropped > 600:
                        raise RuntimeError(f"only {count} of {len(names)} photos taken in 600 s")
                    time.sleep(0.02)
                last = time.perf_counter()
                errors = list((hot / "error").glob("*")) if (hot / "error").is_dir() else []
                rate = (len(names) - 1) / (last - first) if first is not None and last > first else float("nan")
                figures.append(f"hot folder: {len(names)} photos (640x480 JPEG, {len(photo(0)) / 1024:.0f} KB) taken "
                               f"at {rate:.1f} photos/s (first to last), {len(names) / (last - dropped):.1f} photos/s "
                               f"end to end with settle_seconds {SETTLE}; {len(errors)} in error/; goal >= 50/s: "
                               f"{'met' if rate >= 50 else 'not met'}")
        finally:
            server.stop()
    print("\n".join(figures))
    print(f"machine: {cpu_model()}, {memory_gb():.0f} GB, Python {platform.python_version()}, "
          f"load {load_average()}, {args.database_url and 'PostgreSQL' or 'SQLite'}; {git_state()}")
    print("command: " + shlex.join([".venv/bin/python", "bench/capture.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

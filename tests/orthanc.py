"""An Orthanc (Debian package `orthanc`) of the test's own, as a second DICOM peer."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ORTHANC = shutil.which("Orthanc")
needs_orthanc = pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed (apt-get install orthanc; .ci/run does)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Orthanc:
    def __init__(self, folder: Path, *, aet: str = "ORTHANC", modalities: dict[str, list] | None = None,
                 plugins: list[str] | None = None) -> None:
        self.folder = folder
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.plugins = plugins or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test", "DicomAet": self.aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "StorageDirectory": str(self.folder / "storage"), "IndexDirectory": str(self.folder / "index"),
            "RemoteAccessAllowed": True, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "DicomModalities": self.modalities, "Plugins": self.plugins, "HttpTimeout": 60,
            "DicomScuTimeout": 30, "StableAge": 1,
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config))
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "TCP_NODELAY": "1"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/system", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError((self.folder / "orthanc.log").read_text())

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)

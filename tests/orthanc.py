"""An Orthanc (Debian package `orthanc`) of the test's own, as a second DICOM peer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.process import free_port

ORTHANC = shutil.which("Orthanc")
needs_orthanc = pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed (apt-get install orthanc; .ci/run does)")


HTTP_PORT_ATTEMPTS = 3
PORT_IN_USE = "privileged or already in use"  # what Orthanc logs when it cannot bind a port


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
        """Start it; if its HTTP port was taken between :func:`free_port` and Orthanc's bind (by
        another test's process), again on another (the DICOM port may be a peer's, fixed)."""
        for _attempt in range(HTTP_PORT_ATTEMPTS):
            if self._start_once():
                return self
            self.http_port = free_port()
        raise TimeoutError((self.folder / "orthanc.log").read_text())

    def _start_once(self) -> bool:
        """Whether it answers; False if it stopped because its HTTP port was in use."""
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
        log_path = self.folder / "orthanc.log"
        before = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            self.process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "TCP_NODELAY": "1"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/system", timeout=1).status_code == 200:
                    return True
            except httpx.HTTPError:
                if self.process.poll() is not None:
                    said = log_path.read_bytes()[before:].decode(errors="replace")
                    if PORT_IN_USE in said and f"port = {self.http_port}" in said:
                        return False
                    break
                time.sleep(0.1)
        raise TimeoutError(log_path.read_text())

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)

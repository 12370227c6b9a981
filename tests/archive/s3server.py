"""A loopback S3 server for the storage tests: moto's server mode (``moto_server`` from
``moto[server]``) on a free port, as a separate process."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import free_port

MOTO = Path(sys.executable).parent / "moto_server"


PORT_TRIES = 5  # a free port may be taken by another test's server before moto binds it


class MotoServer:
    def __init__(self) -> None:
        for _ in range(PORT_TRIES):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.process = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(self.port)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._answers():
                return
            self.stop()
        raise RuntimeError(f"moto_server did not start on any of {PORT_TRIES} ports")

    def _answers(self) -> bool:
        """Whether moto serves on the port: its bucket listing, from this process (whatever
        else answers there, or moto gone because the port was taken, is not it)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(self.url, timeout=1) as answer:
                    if b"ListAllMyBucketsResult" in answer.read() and self.process.poll() is None:
                        return True
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        return False

    def area_settings(self, name: str, bucket: str, tier: str = "nearline") -> dict[str, object]:
        return {"name": name, "kind": "s3", "tier": tier, "bucket": bucket, "endpoint_url": self.url,
                "access_key": "testing", "secret_key": "testing", "region": "us-east-1"}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoServer]:
    if not MOTO.exists():
        pytest.skip("moto_server is missing: pip install -e '.[test]' installs moto[server]")
    server = MotoServer()
    yield server
    server.stop()

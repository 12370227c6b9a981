"""HTTPS from the server itself (``[http] tls_cert``, ``tls_port``), plain HTTP beside it or
turned off (``[http] plain = false``), client certificates when ``tls_client_ca`` is set; curl
as the client, with a test CA made for the test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.tls import PKI

CURL_TIMEOUT = 30  # seconds


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    target = tmp_path / "db" / "pacs.db"
    target.parent.mkdir()
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"), client="script")


def curl(url: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "--silent", "--show-error", "--include", "--max-time", str(CURL_TIMEOUT),
                           *options, url], check=False, capture_output=True, text=True, timeout=CURL_TIMEOUT + 5)


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
def test_https_beside_plain_http(start_server, pki):
    server = start_server(http=pki.server_settings(client_ca=False))
    https = f"https://localhost:{server.server.https_port}"
    answer = curl(f"{https}/healthz", "--cacert", str(pki.ca.cert))
    assert answer.returncode == 0 and answer.stdout.startswith("HTTP/1.1 200"), answer.stdout + answer.stderr
    assert curl(f"{server.http_url}/healthz").stdout.startswith("HTTP/1.1 200")  # plain HTTP as it was

    login = curl(f"{https}/login", "--cacert", str(pki.ca.cert))  # cookies marked Secure under HTTPS only
    assert any("secure" in line.lower() for line in login.stdout.splitlines() if line.lower().startswith("set-cookie"))
    plain = curl(f"{server.http_url}/login")
    assert not any("secure" in line.lower() for line in plain.stdout.splitlines()
                   if line.lower().startswith("set-cookie"))
    untrusted = curl(f"{https}/healthz", "--cacert", str(pki.rogue_ca.cert))  # the client checks the server
    assert untrusted.returncode != 0


@needs_curl
def test_https_alone_with_client_certificates(start_server, pki):
    server = start_server(http={**pki.server_settings(), "plain": False})
    assert server.server.http_port == 0  # no plain HTTP port
    https = f"https://localhost:{server.server.https_port}/healthz"
    ok = curl(https, "--cacert", str(pki.ca.cert), "--cert", str(pki.client.cert), "--key", str(pki.client.key))
    assert ok.returncode == 0 and ok.stdout.startswith("HTTP/1.1 200"), ok.stdout + ok.stderr
    without = curl(https, "--cacert", str(pki.ca.cert))
    assert without.returncode != 0 and "HTTP/" not in without.stdout, without.stderr  # closed, no answer
    rogue = curl(https, "--cacert", str(pki.ca.cert), "--cert", str(pki.rogue.cert), "--key", str(pki.rogue.key))
    assert rogue.returncode != 0 and "HTTP/" not in rogue.stdout, rogue.stderr
    plain = curl(f"http://localhost:{server.server.https_port}/healthz")  # plain HTTP to the HTTPS port
    assert "200" not in plain.stdout

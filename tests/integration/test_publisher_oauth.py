"""The platform's FHIR server called with its own credentials: OAuth 2.0 client credentials
(RFC 6749 4.4) from a token endpoint, or a fixed bearer token, over HTTPS with a client
certificate; a small token endpoint and FHIR endpoint on loopback stand in for the platform."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote_plus, urlparse

import httpx
import pytest
from pydantic import SecretStr

from pacs.integration.oauth import TokenError
from pacs.integration.outbox import OutboxItem
from pacs.integration.publisher import fhir_deliverer
from pacs.settings import OutboxSettings, PublishSettings
from tests.archive.test_store import send_file
from tests.helpers import send_all
from tests.integration.test_publisher import STUDY_UID, image, wait_for
from tests.tls import PKI

CLIENT_ID = "pacs"
CLIENT_SECRET = "s3cr et/+:"  # characters the form encoding of RFC 6749 2.3.1 must carry
SCOPE = "system/ImagingStudy.write"


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    target = tmp_path / "db" / "pacs.db"
    target.parent.mkdir()
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"), client="pacs")


class Platform:
    """A token endpoint (``/token``) and a FHIR endpoint (``/fhir``) on one loopback HTTPS port
    that wants a client certificate from the test CA. Tokens live ``lifetime`` seconds; the FHIR
    endpoint takes only the newest token, unless it is ``revoked``."""

    def __init__(self, pki: PKI, lifetime: float = 3600) -> None:
        self.lifetime = lifetime
        self.tokens: list[str] = []
        self.token_requests: list[dict[str, list[str]]] = []
        self.received: list[tuple[str, str]] = []  # (identifier, status)
        self.refused = 0
        self.revoked = False
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                basic = self.headers.get("Authorization", "")
                pair = base64.b64decode(basic.removeprefix("Basic ")).decode() if basic.startswith("Basic ") else ":"
                client, _, secret = pair.partition(":")
                if (unquote_plus(client), unquote_plus(secret)) != (CLIENT_ID, CLIENT_SECRET):
                    self._json(401, {"error": "invalid_client"})
                    return
                platform.token_requests.append(form)
                token = f"token-{len(platform.tokens) + 1}"
                platform.tokens.append(token)
                platform.revoked = False
                self._json(200, {"access_token": token, "token_type": "Bearer", "expires_in": platform.lifetime})

            def do_PUT(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                wanted = f"Bearer {platform.tokens[-1]}" if platform.tokens and not platform.revoked else None
                if self.headers.get("Authorization") != wanted:
                    platform.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Bearer error="invalid_token"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                identifier = parse_qs(urlparse(self.path).query)["identifier"][0]
                platform.received.append((identifier, body["status"]))
                self._json(200, body)

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server.cert, pki.server.key)
        context.load_verify_locations(pki.ca.cert)
        context.verify_mode = ssl.CERT_REQUIRED
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"https://localhost:{self.server.server_address[1]}"

    def close(self) -> None:
        # Closed too, not only stopped: a listening socket left open takes the server's next
        # connection into its backlog, and that request would wait out the client's timeout.
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def platform(pki):
    running = Platform(pki)
    yield running
    running.close()


def publish_settings(pki: PKI, platform: Platform, **changes: object) -> PublishSettings:
    values: dict = {"fhir_base_url": f"{platform.url}/fhir", "stable_after_seconds": 0.5,
                    "oauth_token_url": f"{platform.url}/token", "oauth_client_id": CLIENT_ID,
                    "oauth_client_secret": SecretStr(CLIENT_SECRET), "oauth_scope": SCOPE,
                    "tls_ca": pki.ca.cert, "tls_cert": pki.client.cert, "tls_key": pki.client.key}
    values.update(changes)
    return PublishSettings(**values)


def item(uid: str = "1.2.3") -> OutboxItem:
    return OutboxItem(destination="platform", kind="fhir", payload=json.dumps({
        "method": "PUT", "url": f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{uid}",
        "resource": {"resourceType": "ImagingStudy", "status": "available"}}))


def test_studies_published_with_client_credentials_over_mutual_tls(start_server, pki, platform, tmp_path):
    server = start_server(publish=publish_settings(pki, platform),
                          outbox=OutboxSettings(base_delay_seconds=0.2, max_delay_seconds=0.5))
    send_all(server.mllp_port, ["orm_o01_nw_ihe.hl7"])
    assert send_file(server.dicom_port, image(tmp_path, "one.dcm")).Status == 0
    wait_for(lambda: len(platform.received) == 1)
    assert platform.received[0][0] == f"urn:dicom:uid|urn:oid:{STUDY_UID}"
    assert platform.token_requests == [{"grant_type": ["client_credentials"], "scope": [SCOPE]}]

    assert send_file(server.dicom_port, image(tmp_path, "two.dcm", InstanceNumber=2)).Status == 0
    wait_for(lambda: len(platform.received) == 2)
    assert len(platform.tokens) == 1  # the token is kept while it is valid

    platform.revoked = True  # a token revoked before its time: a 401, a new token, the same request again
    assert send_file(server.dicom_port, image(tmp_path, "three.dcm", InstanceNumber=3)).Status == 0
    wait_for(lambda: len(platform.received) == 3)
    assert len(platform.tokens) == 2 and platform.refused == 1


def test_a_token_is_renewed_before_it_expires(pki):
    platform = Platform(pki, lifetime=2)  # renewed once half its life is gone
    try:
        deliver = fhir_deliverer(publish_settings(pki, platform))
        deliver(item())
        deliver(item())
        assert platform.tokens == ["token-1"]
        time.sleep(1.2)
        deliver(item())
        assert platform.tokens == ["token-1", "token-2"] and platform.refused == 0
        assert len(platform.received) == 3
    finally:
        platform.close()


def test_wrong_credentials_are_retried_not_refused(pki, platform):
    deliver = fhir_deliverer(publish_settings(pki, platform, oauth_client_secret=SecretStr("wrong")))
    with pytest.raises(TokenError, match="401 invalid_client"):  # a ConnectionError: the outbox tries again
        deliver(item())
    assert platform.received == []


def test_a_fixed_bearer_token(pki, platform):
    platform.tokens.append("fixed")
    deliver = fhir_deliverer(publish_settings(pki, platform, oauth_token_url=None, fhir_token=SecretStr("fixed")))
    assert deliver(item()).response.startswith("200")
    assert platform.token_requests == []


def test_without_a_client_certificate_the_platform_refuses(pki, platform):
    deliver = fhir_deliverer(publish_settings(pki, platform, tls_cert=None, tls_key=None))
    with pytest.raises(httpx.TransportError):  # the handshake refused: not DeliveryRefused, so tried again
        deliver(item())
    assert platform.received == [] and platform.token_requests == []

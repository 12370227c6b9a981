"""Single sign-on against an OpenID provider the test runs itself on loopback: its own RSA and
EC keys (made with ``cryptography``), discovery, a JWK Set, an authorization endpoint that logs
a test user in without asking, and a token endpoint that checks the code, the client and the
PKCE verifier (RFC 7636 4.6). Bearer JWTs are accepted only as the provider signed them, for
this server, in time; the browser logs in by the code flow and lands with a session."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from pydantic import SecretStr
from sqlmodel import Session, select

from pacs.audit.tables import AuditEvent
from pacs.auth import accounts
from pacs.auth.oidc import OpenIDConnect
from pacs.auth.roles import role_table
from pacs.settings import OIDCSettings
from pacs.web.i18n import catalogue
from tests.auth.test_access import PUBLIC_ROUTES, add_user, api_routes, bearer

REALM = "/realms/hospital"
CLIENT_ID = "pacs"
CLIENT_SECRET = "client secret of pacs"
LIFETIME = 300  # seconds a token of the test provider lasts
RSA_BITS = 2048
EN = catalogue("en")
USER_AUTHENTICATION = "110114"
SECURITY_ALERT = "110113"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rsa_key(kid: str) -> RSAKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return RSAKey.import_key(pem, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


def ec_key(kid: str) -> ECKey:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ECKey.import_key(pem, parameters={"kid": kid, "use": "sig", "alg": "ES256"})


class Provider:
    """An OpenID provider on 127.0.0.1, shaped like a Keycloak realm: realm roles in the access
    token's ``realm_access.roles`` (not in the ID token, unless ``roles_in_id_token``)."""

    def __init__(self) -> None:
        self.keys: dict[str, RSAKey | ECKey] = {"rsa-1": rsa_key("rsa-1"), "ec-1": ec_key("ec-1")}
        self.user: dict[str, Any] = {"sub": "f3c1-0001", "preferred_username": "wangfang", "name": "王芳",
                                     "realm_access": {"roles": ["registrar", "offline_access"]}}
        self.deny = False  # the user refuses (or may not use) the client: error=access_denied
        self.wrong_nonce = False
        self.roles_in_id_token = False
        self.client_secret: str | None = CLIENT_SECRET
        self.codes: dict[str, dict[str, Any]] = {}
        self.authorizations: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.pkce_refused = 0
        self.jwks_reads = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{REALM}"

    def start(self) -> Provider:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- tokens ---------------------------------------------------------------------------------
    def sign(self, claims: dict[str, Any], kid: str = "rsa-1", **header: Any) -> str:
        key = self.keys[kid]
        return jwt.encode({"alg": key.alg, "kid": kid, **header}, claims, key)

    def claims(self, **changes: Any) -> dict[str, Any]:
        """An access token's claims, for this server (aud = its client id)."""
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "azp": CLIENT_ID, "exp": now + LIFETIME, "iat": now,
                  "typ": "Bearer", **self.user}
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    # -- endpoints ------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:  # OpenID Connect Discovery 1.0, 3
        base = f"{self.issuer}/protocol/openid-connect"
        return {"issuer": self.issuer, "authorization_endpoint": f"{base}/auth", "token_endpoint": f"{base}/token",
                "jwks_uri": f"{base}/certs", "response_types_supported": ["code"],
                "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "code_challenge_methods_supported": ["S256"]}

    def jwks(self) -> dict[str, Any]:
        self.jwks_reads += 1
        return {"keys": [key.as_dict(private=False) for key in self.keys.values()]}

    def authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """RFC 6749 4.1.1: the user is logged in at once; back to redirect_uri with a code."""
        self.authorizations.append(query)
        redirect = query.get("redirect_uri", "")
        if (query.get("client_id") != CLIENT_ID or query.get("response_type") != "code"
                or "openid" not in query.get("scope", "").split() or query.get("code_challenge_method") != "S256"
                or not query.get("code_challenge") or not redirect):
            return 400, ""
        if self.deny:
            return 302, f"{redirect}?{urlencode({'error': 'access_denied', 'state': query.get('state', '')})}"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"challenge": query["code_challenge"], "redirect_uri": redirect,
                            "nonce": query.get("nonce"), "user": dict(self.user)}
        return 302, f"{redirect}?{urlencode({'code': code, 'state': query.get('state', '')})}"

    def token(self, form: dict[str, str], authorization: str) -> tuple[int, dict[str, Any]]:
        """RFC 6749 4.1.3 with RFC 7636 4.6: the client, the code (once) and the verifier."""
        self.token_requests.append({**form, "authorization": authorization})
        if self.client_secret is not None:
            expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{self.client_secret}".encode()).decode()
            if authorization != expected:
                return 401, {"error": "invalid_client"}
        elif form.get("client_id") != CLIENT_ID:
            return 401, {"error": "invalid_client"}
        grant = self.codes.pop(form.get("code", ""), None)
        if form.get("grant_type") != "authorization_code" or grant is None \
                or form.get("redirect_uri") != grant["redirect_uri"]:
            return 400, {"error": "invalid_grant", "error_description": "unknown or used code"}
        verifier = form.get("code_verifier", "")
        if b64url(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]:
            self.pkce_refused += 1
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        user = grant["user"]
        now = int(time.time())
        identity = {k: v for k, v in user.items() if k != "realm_access" or self.roles_in_id_token}
        id_token = self.sign({"iss": self.issuer, "aud": CLIENT_ID, "azp": CLIENT_ID, "exp": now + LIFETIME,
                              "iat": now, "auth_time": now, "typ": "ID",
                              "nonce": "another nonce" if self.wrong_nonce else grant["nonce"], **identity})
        access = self.sign({"iss": self.issuer, "aud": "account", "azp": CLIENT_ID, "exp": now + LIFETIME,
                            "iat": now, "typ": "Bearer", **user})
        return 200, {"access_token": access, "id_token": id_token, "token_type": "Bearer", "expires_in": LIFETIME}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = dict(parse_qsl(url.query))
                if url.path == REALM + "/.well-known/openid-configuration":
                    self.json(200, provider.metadata())
                elif url.path == REALM + "/protocol/openid-connect/certs":
                    self.json(200, provider.jwks())
                elif url.path == REALM + "/protocol/openid-connect/auth":
                    status, location = provider.authorize(query)
                    self.send_response(status)
                    if location:
                        self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                if urlsplit(self.path).path != REALM + "/protocol/openid-connect/token":
                    self.json(404, {"error": "not_found"})
                    return
                self.json(*provider.token(dict(parse_qsl(body)), self.headers.get("Authorization", "")))

            def json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        return Handler


@pytest.fixture
def provider() -> Iterator[Provider]:
    running = Provider().start()
    yield running
    running.stop()


def oidc_settings(provider: Provider, **changes: Any) -> OIDCSettings:
    given: dict[str, Any] = {"issuer": provider.issuer, "client_id": CLIENT_ID,
                             "client_secret": SecretStr(CLIENT_SECRET), **changes}
    return OIDCSettings(**given)


@pytest.fixture
def sso_server(start_server, provider):  # type: ignore[no-untyped-def]
    return start_server(guarded=True, auth={"oidc": oidc_settings(provider)})


def refused(answer: httpx.Response) -> str:
    assert answer.status_code == 401, answer.text
    assert "Bearer" in answer.headers["www-authenticate"]
    return str(answer.json()["detail"])


def audited(server, event_id: str, user: str) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    server.server.services.audit.flush()
    with Session(server.db.engine) as session:
        return list(session.exec(select(AuditEvent).where(AuditEvent.event_id == event_id)
                                 .where(AuditEvent.user_id == user)))


def user_named(server, username: str) -> accounts.User | None:  # type: ignore[no-untyped-def]
    with Session(server.db.engine) as session:
        return accounts.user_by_name(session, username)


# -- bearer JWTs ----------------------------------------------------------------------------------

def test_a_bearer_jwt_reads_with_the_roles_of_its_claim(sso_server, provider):
    provider.user["realm_access"] = {"roles": ["clinician", "offline_access", "uma_authorization"]}
    with httpx.Client(base_url=sso_server.http_url, timeout=30) as http:
        token = provider.sign(provider.claims())
        studies = http.get("/dicomweb/studies", headers=bearer(token))
        assert studies.status_code == 200, studies.text
        assert http.get("/fhir/ImagingStudy", headers=bearer(token)).status_code == 200
        assert http.get("/api/messages", headers=bearer(token)).status_code == 403  # no analyst
        assert http.post("/fhir/ServiceRequest", content="{}", headers={"Content-Type": "application/fhir+json",
                                                                        **bearer(token)}).status_code == 403
        es256 = provider.sign(provider.claims(), kid="ec-1")  # ECDSA P-256 (RFC 7518 3.4)
        assert http.get("/dicomweb/studies", headers=bearer(es256)).status_code == 200
        for _ in range(20):  # kept: the provider's keys are read once
            assert http.get("/dicomweb/studies", headers=bearer(token)).status_code == 200
        assert provider.jwks_reads == 1
        # a token with no role of this server: known, and allowed nothing
        none = provider.sign(provider.claims(realm_access={"roles": ["offline_access"]}))
        assert http.get("/dicomweb/studies", headers=bearer(none)).status_code == 403
        # this server's own tokens still go their way
        assert http.get("/api/orders", headers=bearer("pacs_unknown")).status_code == 401


def test_refused_jwts_get_401_saying_why(sso_server, provider):
    now = int(time.time())
    good = provider.sign(provider.claims(realm_access={"roles": ["registrar"]}))
    header, payload, signature = good.split(".")
    public_pem = provider.keys["rsa-1"].as_pem(private=False)
    hs_input = (b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode()) + "." + payload)
    hs256 = hs_input + "." + b64url(hmac.new(public_pem, hs_input.encode(), hashlib.sha256).digest())
    unsigned = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + payload + "."
    raised = dict(json.loads(base64.urlsafe_b64decode(payload + "==")), realm_access={"roles": ["admin"]})
    tampered = f"{header}.{b64url(json.dumps(raised).encode())}.{signature}"
    stranger = rsa_key("rsa-1")  # a key of the same name that is not the provider's
    forged = jwt.encode({"alg": "RS256", "kid": "rsa-1"}, provider.claims(), stranger)
    cases = {
        "expired": (provider.sign(provider.claims(exp=now - 3600, iat=now - 7200)), "expired"),
        "another audience": (provider.sign(provider.claims(aud="another-client")), "another audience"),
        "another issuer": (provider.sign(provider.claims(iss="http://127.0.0.1:9/realms/other")), "issued by"),
        "not yet valid": (provider.sign(provider.claims(nbf=now + 3600)), "not valid yet"),
        "no expiry": (provider.sign(provider.claims(exp=None)), "no exp claim"),
        "unknown key": (jwt.encode({"alg": "RS256", "kid": "rsa-9"}, provider.claims(), rsa_key("rsa-9")),
                        "signing key 'rsa-9' is unknown"),
        "alg none": (unsigned, "unsigned (alg none)"),
        "HS256 keyed with the public key": (hs256, "signed with alg 'HS256'"),
        "tampered payload": (tampered, "signature does not verify"),
        "another key": (forged, "signature does not verify"),
        "no JWT": ("abc.def", "neither a token of this server nor a signed JWT"),
    }
    with httpx.Client(base_url=sso_server.http_url, timeout=30) as http:
        assert http.get("/api/orders", headers=bearer(good)).status_code == 200
        for name, (token, reason) in cases.items():
            detail = refused(http.get("/api/orders", headers=bearer(token)))
            assert reason in detail, (name, detail)
        web = http.get("/dicomweb/studies", headers=bearer(cases["expired"][0]))  # in DICOMweb's error shape
        assert web.status_code == 401 and "expired" in web.json()["message"]
        fhir = http.get("/fhir/Patient", headers=bearer(cases["another audience"][0]))
        assert fhir.status_code == 401 and fhir.json()["resourceType"] == "OperationOutcome"
    # an unknown kid had the keys read again at most once a minute: not within the first minute
    assert provider.jwks_reads == 1


def test_a_rotated_key_is_picked_up(start_server, provider):
    refetch = 2.0
    server = start_server(guarded=True, auth={"oidc": oidc_settings(provider, jwks_refetch_seconds=refetch)})
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        assert http.get("/api/orders", headers=bearer(provider.sign(provider.claims()))).status_code == 200
        assert provider.jwks_reads == 1
        provider.keys["rsa-2"] = rsa_key("rsa-2")  # the provider rotates: a new key, the old one goes
        del provider.keys["rsa-1"]
        rotated = provider.sign(provider.claims(), kid="rsa-2")
        time.sleep(refetch + 0.2)
        answer = http.get("/api/orders", headers=bearer(rotated))
        assert answer.status_code == 200, answer.text
        assert provider.jwks_reads == 2
        stray = jwt.encode({"alg": "RS256", "kid": "rsa-3"}, provider.claims(), rsa_key("rsa-3"))
        assert "unknown" in refused(http.get("/api/orders", headers=bearer(stray)))
        assert provider.jwks_reads == 2  # read a moment ago: not read again for an unknown kid
        assert http.get("/api/orders", headers=bearer(provider.sign(provider.claims(), kid="rsa-2"))).status_code == 200


def test_the_providers_names_are_mapped_to_roles(start_server, provider):
    mapping = {"PACS-Radiologists": "radiologist", "PACS-Front-Desk": ["registrar"]}
    server = start_server(guarded=True, auth={"oidc": oidc_settings(provider, roles_claim="groups",
                                                                     roles_map=mapping)})
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        reader = provider.sign(provider.claims(groups=["PACS-Radiologists", "Everyone"]))
        assert http.get("/dicomweb/studies", headers=bearer(reader)).status_code == 200
        assert http.get("/api/orders", headers=bearer(reader)).status_code == 200
        assert http.post("/api/orders/999/arrive", json={}, headers=bearer(reader)).status_code == 403
        desk = provider.sign(provider.claims(groups="PACS-Front-Desk"))  # one name, as a string
        assert http.post("/api/orders/999/arrive", json={}, headers=bearer(desk)).status_code == 404
        assert http.get("/dicomweb/studies", headers=bearer(desk)).status_code == 403
        # once a map is given, a name it doesn't list grants nothing, not even a role's own name
        admin = provider.sign(provider.claims(groups=["admin"]))
        assert http.get("/api/audit", headers=bearer(admin)).status_code == 403


def test_a_roles_map_naming_no_role_is_refused(provider):
    with pytest.raises(ValueError, match="no role here"):
        OpenIDConnect(oidc_settings(provider, roles_map={"Doctors": "doctor"}), roles=role_table(), key=b"k" * 32)


def test_an_unreachable_provider_is_503_and_no_login(start_server, provider):
    provider.stop()  # nothing listens at the issuer any more
    server = start_server(guarded=True, auth={"oidc": oidc_settings(provider, timeout_seconds=2)})
    with httpx.Client(base_url=server.http_url, timeout=30, cookies={"pacs_lang": "en"}) as http:
        answer = http.get("/api/orders", headers=bearer("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"))
        assert answer.status_code == 503 and "could not be read" in answer.json()["detail"]
        page = http.get("/login/sso?next=/")
        assert page.status_code == 503 and EN["login.sso_unavailable"].replace("'", "&#39;") in page.text


# -- the browser login ----------------------------------------------------------------------------

@contextmanager
def browser(server) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=server.http_url, timeout=30, cookies={"pacs_lang": "en"}) as client:
        yield client


def to_provider(client: httpx.Client, next: str = "/") -> str:
    """/login/sso: the provider's authorization URL it sends the browser to."""
    answer = client.get("/login/sso", params={"next": next})
    assert answer.status_code == 303, answer.text
    return answer.headers["location"]


def back_from_provider(client: httpx.Client, authorization_url: str) -> str:
    """The provider's redirect back to this server's callback (not followed)."""
    answer = client.get(authorization_url)
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


def test_the_sign_on_pages_are_public(sso_server):
    """Mounted where a provider is named (test_access checks that without one they are not)."""
    public = {route.path for route in api_routes(sso_server.server.app.routes)
              if any(getattr(d.call, "public", False) for d in route.dependant.dependencies)}
    assert public == PUBLIC_ROUTES | {"/login/sso", "/login/callback"}


def test_the_browser_logs_in_by_the_code_flow_with_pkce(sso_server, provider):
    with browser(sso_server) as client:
        form = client.get("/login")
        assert 'href="/login/sso?next=' in form.text
        landed = client.get("/login/sso", params={"next": "/api/orders?limit=5"}, follow_redirects=True)
        assert landed.status_code == 200, landed.text
        assert str(landed.url) == f"{sso_server.http_url}/api/orders?limit=5"  # where the login began
        assert client.get("/api/orders").status_code == 200  # the registrar's session
        assert client.get("/dicomweb/studies").status_code == 403
        assert "王芳" in client.get("/").text
        session = next(c for c in client.cookies.jar if c.name == "pacs_session")
        assert session.has_nonstandard_attr("HttpOnly")
        assert not any(c.name == "pacs_sso" for c in client.cookies.jar)  # the flow's cookie is gone
    asked = provider.authorizations[-1]
    assert asked["redirect_uri"] == f"{sso_server.http_url}/login/callback"
    assert asked["code_challenge_method"] == "S256" and asked["scope"] == "openid profile"
    assert len(asked["state"]) >= 32 and len(asked["nonce"]) >= 32
    sent = provider.token_requests[-1]
    assert sent["authorization"].startswith("Basic ") and "client_secret" not in sent
    assert 43 <= len(sent["code_verifier"]) <= 128 and provider.pkce_refused == 0
    user = user_named(sso_server, "wangfang")
    assert user is not None and user.password_hash == "" and user.roles == ["registrar"]
    assert user.display_name == "王芳" and user.last_login_at is not None
    logins = audited(sso_server, USER_AUTHENTICATION, "wangfang")
    assert [(e.outcome, e.description) for e in logins] == [(0, "single sign-on")]
    made = audited(sso_server, SECURITY_ALERT, "wangfang")
    assert len(made) == 1 and "first single sign-on" in made[0].description


def test_the_providers_roles_replace_a_local_users_unless_it_sends_none(sso_server, provider):
    add_user(sso_server, "wangfang", ["analyst"])  # a local user of the same name, with a password
    provider.roles_in_id_token = True
    provider.user["realm_access"] = {"roles": ["radiologist"]}
    with browser(sso_server) as client:
        assert client.get("/login/sso", follow_redirects=True).status_code == 200
        assert client.get("/dicomweb/studies").status_code == 200
        assert client.get("/api/messages").status_code == 403
    user = user_named(sso_server, "wangfang")
    assert user is not None and user.roles == ["radiologist"] and user.password_hash  # the password stays
    changed = audited(sso_server, SECURITY_ALERT, "wangfang")
    assert [e.description for e in changed] == ["roles of wangfang from the identity provider: analyst -> radiologist"]
    del provider.user["realm_access"]  # no roles claim at all: the user's roles stay as they are
    with browser(sso_server) as client:
        assert client.get("/login/sso", follow_redirects=True).status_code == 200
        assert client.get("/dicomweb/studies").status_code == 200
    assert user_named(sso_server, "wangfang").roles == ["radiologist"]  # type: ignore[union-attr]


def test_a_public_client_logs_in_with_pkce_alone(start_server, provider):
    provider.client_secret = None
    server = start_server(guarded=True, auth={"oidc": oidc_settings(provider, client_secret=None)})
    with browser(server) as client:
        assert client.get("/login/sso", follow_redirects=True).status_code == 200
        assert client.get("/api/orders").status_code == 200
    sent = provider.token_requests[-1]
    assert sent["client_id"] == CLIENT_ID and sent["authorization"] == "" and sent["code_verifier"]


def test_refusals_show_the_login_page_with_a_message(sso_server, provider):
    def says(answer: httpx.Response, key: str, status: int) -> None:
        assert answer.status_code == status, answer.text
        assert EN[key].replace("'", "&#39;") in answer.text and 'name="csrf_token"' in answer.text

    with browser(sso_server) as client:  # the user may not use this client at the provider
        provider.deny = True
        says(client.get("/login/sso", follow_redirects=True), "login.sso_denied", 401)
        provider.deny = False
        assert client.get("/api/orders").status_code == 401
    with browser(sso_server) as client:  # the state is not the one sent
        callback = back_from_provider(client, to_provider(client))
        says(client.get(re.sub(r"state=[^&]+", "state=forged", callback)), "login.sso_state", 400)
    with browser(sso_server) as client:  # the callback in a browser that began no login
        victim = back_from_provider(client, to_provider(client))
    with browser(sso_server) as other:
        says(other.get(victim), "login.sso_state", 400)
    # An intercepted code used from another browser's login: its verifier is not the one whose
    # challenge the victim's request carried, and the provider refuses the code (RFC 7636 1).
    with browser(sso_server) as victim_browser:
        stolen = dict(parse_qsl(urlsplit(back_from_provider(victim_browser, to_provider(victim_browser))).query))
    with browser(sso_server) as attacker:
        state = dict(parse_qsl(urlsplit(to_provider(attacker)).query))["state"]
        says(attacker.get("/login/callback", params={"code": stolen["code"], "state": state}),
             "login.sso_failed", 401)
        assert provider.pkce_refused == 1
        assert attacker.get("/api/orders").status_code == 401
    with browser(sso_server) as client:  # an ID token whose nonce is not this login's
        provider.wrong_nonce = True
        says(client.get("/login/sso", follow_redirects=True), "login.sso_failed", 401)
        provider.wrong_nonce = False
    with browser(sso_server) as client:  # a callback replayed: its login is over
        callback = back_from_provider(client, to_provider(client))
        assert client.get(callback).status_code == 303
        says(client.get(callback), "login.sso_state", 400)
    failures = [e for e in audited(sso_server, USER_AUTHENTICATION, "") if e.outcome != 0]
    described = " | ".join(e.description for e in failures)
    assert "access_denied" in described and "PKCE verification failed" in described and "nonce" in described


def test_a_disabled_user_is_refused(sso_server, provider):
    with browser(sso_server) as client:
        assert client.get("/login/sso", follow_redirects=True).status_code == 200
    with Session(sso_server.db.engine) as session:
        accounts.set_disabled(session, accounts.user_by_name(session, "wangfang"), True)
        session.commit()
    sso_server.server.app.state.gate.forget()
    with browser(sso_server) as client:
        page = client.get("/login/sso", follow_redirects=True)
        assert page.status_code == 401 and EN["login.disabled"] in page.text
        assert client.get("/api/orders").status_code == 401
    assert user_named(sso_server, "wangfang").roles == ["registrar"]  # type: ignore[union-attr]

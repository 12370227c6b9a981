"""Who may do what, over real HTTP against a server that asks (``guarded_server``): every route
declares a permission; no credentials get 401 with a challenge in the protocol's shape; tokens
with SMART scopes, HTTP Basic and browser sessions (CSRF, idle timeout, logout, disable); a
lockout after wrong passwords, audited; a rate limit per address; each role sees and changes
only what it may."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlmodel import Session, col, select

from pacs.audit.tables import AuditEvent
from pacs.auth import accounts
from pacs.auth.roles import ROLE_PERMISSIONS, Permission
from tests.conftest import ADMIN_PASSWORD
from tests.helpers import DATA

FHIR = "application/fhir+json"
PUBLIC_ROUTES = {"/healthz", "/fhir/metadata", "/login", "/logout", "/",
                 "/c/{token}", "/s/{token}"}  # shared links: the signed token in the path is the credential


def basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def add_user(server, username: str, roles: list[str], password: str = "correct horse 1") -> None:  # type: ignore[no-untyped-def]
    with Session(server.db.engine) as session:
        accounts.add_user(session, username=username, password=password, roles=roles)
        session.commit()


def make_token(server, client: str, scopes: list[str]) -> str:  # type: ignore[no-untyped-def]
    with Session(server.db.engine) as session:
        _, token = accounts.create_token(session, client=client, scopes=scopes)
        session.commit()
    return token


def service_request() -> str:
    return (DATA / "fhir" / "servicerequest_contained.json").read_text(encoding="utf-8")


@contextmanager
def log_in(server, username: str, password: str) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    """A browser's client, logged in through the form."""
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        form = client.get("/login?next=/")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        done = client.post("/login", data={"username": username, "password": password, "next": "/",
                                           "csrf_token": token})
        assert done.status_code == 303, done.text
        yield client


def csrf_of(client: httpx.Client) -> str:
    home = client.get("/")
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text).group(1)  # type: ignore[union-attr]


def api_routes(routes: list) -> list[APIRoute]:
    """Every API route of an app, those of the routers it includes too (FastAPI keeps an
    included router as one entry of the app's routes)."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += api_routes(route.original_router.routes)
    return found


def test_every_route_declares_a_permission(server):
    """A route without a declared permission would answer anyone; only the public ones may."""
    undeclared, public = [], set()
    routes = api_routes(server.server.app.routes)
    assert len(routes) > 40  # the walk reached the included routers
    for route in routes:  # (the OpenAPI pages and /static are no API routes)
        calls = []
        stack = [route.dependant]
        while stack:
            dependant = stack.pop()
            calls += [d.call for d in dependant.dependencies]
            stack += dependant.dependencies
        declared = [c for c in calls if hasattr(c, "permission")]
        if not declared:
            undeclared.append(f"{sorted(route.methods)} {route.path}")
        elif any(getattr(c, "public", False) for c in declared):
            public.add(route.path)
    assert undeclared == []
    assert public == PUBLIC_ROUTES


def test_without_credentials_every_protocol_answers_401_in_its_shape(guarded_server):
    with httpx.Client(base_url=guarded_server.http_url, timeout=30) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/fhir/metadata").status_code == 200
        api = http.get("/api/orders")
        assert api.status_code == 401 and "Bearer" in api.headers["www-authenticate"] and "detail" in api.json()
        fhir = http.get("/fhir/Patient", params={"name": "zhang"})
        assert fhir.status_code == 401 and "Basic" in fhir.headers["www-authenticate"]
        assert fhir.json()["resourceType"] == "OperationOutcome"
        assert fhir.json()["issue"][0]["code"] in ("login", "security")
        web = http.get("/dicomweb/studies")
        assert web.status_code == 401 and web.json()["status"] == 401
        assert http.post("/fhir/ServiceRequest", content=service_request(),
                         headers={"Content-Type": FHIR}).status_code == 401
        assert http.get("/api/orders", headers={"Authorization": "Bearer pacs_nonsense"}).status_code == 401
        assert http.get("/api/orders", headers={"Authorization": "Negotiate abc"}).status_code == 401
        assert http.get("/", follow_redirects=False).headers["location"].startswith("/login")


def test_a_token_does_what_its_smart_scopes_say(guarded_server):
    his = make_token(guarded_server, "HIS", ["system/ServiceRequest.write", "system/ServiceRequest.read"])
    with httpx.Client(base_url=guarded_server.http_url, timeout=30) as http:
        created = http.post("/fhir/ServiceRequest", content=service_request(),
                            headers={"Content-Type": FHIR, **bearer(his)})
        assert created.status_code == 201, created.text
        order = created.json()["id"]
        assert http.get(f"/fhir/ServiceRequest/{order}", headers=bearer(his)).status_code == 200
        denied = http.get("/fhir/Patient", params={"name": "zhang"}, headers=bearer(his))
        assert denied.status_code == 403 and denied.json()["resourceType"] == "OperationOutcome"
        assert http.get("/dicomweb/studies", headers=bearer(his)).status_code == 403
        assert http.get("/api/messages", headers=bearer(his)).status_code == 403
    platform = make_token(guarded_server, "platform", ["system/*.read"])
    with httpx.Client(base_url=guarded_server.http_url, timeout=30) as http:
        assert http.get("/fhir/Patient", params={"name": "zhang"}, headers=bearer(platform)).status_code == 200
        assert http.get("/fhir/ImagingStudy", headers=bearer(platform)).status_code == 200
        assert http.post("/fhir/ServiceRequest", content=service_request(),
                         headers={"Content-Type": FHIR, **bearer(platform)}).status_code == 403
    with Session(guarded_server.db.engine) as session:  # revoked: refused (once the cache lets go)
        row = session.exec(select(accounts.ApiToken).where(accounts.ApiToken.client == "HIS")).one()
        accounts.revoke_token(session, row.id)
        session.commit()
    guarded_server.server.app.state.gate.forget()
    assert httpx.get(f"{guarded_server.http_url}/fhir/ServiceRequest/{order}", headers=bearer(his)).status_code == 401


def test_http_basic_for_scripts(guarded_server):
    url = f"{guarded_server.http_url}/api/audit"
    assert httpx.get(url, headers=basic("admin", ADMIN_PASSWORD)).status_code == 200
    assert httpx.get(url, headers=basic("admin", "wrong password")).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Basic !!!"}).status_code == 401


def test_a_browser_session_reads_changes_with_its_csrf_token_and_logs_out(guarded_server):
    add_user(guarded_server, "li", ["registrar"])
    with log_in(guarded_server, "li", "correct horse 1") as browser:
        cookie = next(c for c in browser.cookies.jar if c.name == "pacs_session")
        assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "Lax"
        assert browser.get("/api/orders").status_code == 200
        assert browser.get("/api/messages").status_code == 403  # a registrar reads no message store
        # an unknown order, so the answer past the access check is 404; without the token, 403
        assert browser.post("/api/orders/999/arrive", json={}).status_code == 403
        token = csrf_of(browser)
        assert browser.post("/api/orders/999/arrive", json={}, headers={"X-CSRF-Token": token}).status_code == 404
        assert browser.post("/api/orders/999/arrive", json={}, headers={"X-CSRF-Token": token + "x"}).status_code == 403
        out = browser.post("/logout", data={"csrf_token": token}, follow_redirects=False)
        assert out.status_code == 303
        assert browser.get("/api/orders").status_code == 401


def test_a_session_ends_after_its_idle_time_and_when_the_user_is_disabled(start_server):
    # 4 s: long enough that a loaded machine answers the first request within it
    server = start_server(guarded=True, auth={"session_idle_minutes": 4 / 60})
    add_user(server, "wang", ["clinician"])
    with log_in(server, "wang", "correct horse 1") as browser:
        assert browser.get("/dicomweb/studies").status_code == 200
        time.sleep(4.5)
        assert browser.get("/dicomweb/studies").status_code == 401
    with log_in(server, "wang", "correct horse 1") as browser:
        with Session(server.db.engine) as session:
            accounts.set_disabled(session, accounts.user_by_name(session, "wang"), True)
            session.commit()
        server.server.app.state.gate.forget()
        assert browser.get("/dicomweb/studies").status_code == 401


def test_a_hundred_wrong_passwords_lock_the_account_each_audited(start_server):
    lock_seconds = 6
    server = start_server(guarded=True, auth={"lockout_failures": 5, "lockout_minutes": lock_seconds / 60,
                                              "login_attempts_per_minute": 1000})
    add_user(server, "zhao", ["radiologist"])
    url = f"{server.http_url}/api/orders"

    def locked_until():  # type: ignore[no-untyped-def]
        with Session(server.db.engine) as session:
            return accounts.user_by_name(session, "zhao").locked_until

    answers = [httpx.get(url, headers=basic("zhao", f"guess {n}")).status_code for n in range(100)]
    assert answers == [401] * 100
    while locked_until() is None or locked_until() < accounts.utcnow():  # (a slow machine outlived the lock)
        assert httpx.get(url, headers=basic("zhao", "one more guess")).status_code == 401
    locked = httpx.get(url, headers=basic("zhao", "correct horse 1"))
    assert locked.status_code == 401 and "locked" in locked.json()["detail"]
    server.server.services.audit.flush()
    with Session(server.db.engine) as session:
        failures = session.exec(select(AuditEvent).where(AuditEvent.event_id == "110114")
                                .where(AuditEvent.outcome != 0).where(AuditEvent.user_id == "zhao")).all()
    described = [e.description or "" for e in failures]
    locks = sum("now locked" in d for d in described)
    wrong = sum(d == "unknown user or wrong password" for d in described)
    refused = sum("is locked" in d for d in described)
    assert len(failures) >= 101 and locks >= 1  # every failure audited, the refused right password too
    assert 4 * locks <= wrong <= 4 * locks + 4  # each lock came on a fifth wrong password in a row
    assert refused == len(failures) - locks - wrong and refused >= 1
    time.sleep(max(0.0, (locked_until() - accounts.utcnow()).total_seconds()) + 0.2)  # the lock ends by itself
    assert httpx.get(url, headers=basic("zhao", "correct horse 1")).status_code == 200


def test_logins_are_rate_limited_per_address(start_server):
    server = start_server(guarded=True, auth={"login_attempts_per_minute": 5, "lockout_failures": 100})
    url = f"{server.http_url}/api/orders"
    answers = [httpx.get(url, headers=basic("nobody", "x" * 10)).status_code for _ in range(8)]
    assert answers[:5] == [401] * 5 and answers[5:] == [429] * 3
    assert int(httpx.get(url, headers=basic("nobody", "x" * 10)).headers["retry-after"]) >= 1


# (method, path, body, the permission it needs); the answers past the check may be 2xx or 404
ROUTES = [
    ("GET", "/api/orders", None, Permission.ORDERS_READ),
    ("POST", "/api/orders/999/arrive", {}, Permission.ORDERS_CHECKIN),
    ("GET", "/api/messages", None, Permission.MESSAGES_READ),
    ("POST", "/api/messages/999/reprocess", None, Permission.MESSAGES_REPROCESS),
    ("GET", "/api/outbox", None, Permission.OUTBOX_READ),
    ("POST", "/api/outbox/999/retry", None, Permission.OUTBOX_RETRY),
    ("GET", "/api/audit", None, Permission.AUDIT_READ),
    ("GET", "/fhir/Patient?name=zhang", None, Permission.PATIENTS_READ),
    ("GET", "/fhir/ServiceRequest?status=active", None, Permission.ORDERS_READ),
    ("GET", "/fhir/ImagingStudy", None, Permission.STUDIES_READ),
    ("GET", "/dicomweb/studies", None, Permission.STUDIES_READ),
    ("GET", "/dicomweb/studies/1.2.3/metadata", None, Permission.STUDIES_READ),
]


@pytest.mark.parametrize("role", sorted(ROLE_PERMISSIONS))
def test_each_role_sees_and_changes_only_what_it_may(guarded_server, role):
    add_user(guarded_server, f"user-{role}", [role])
    holds = ROLE_PERMISSIONS[role]
    with log_in(guarded_server, f"user-{role}", "correct horse 1") as browser:
        token = csrf_of(browser)
        for method, path, body, permission in ROUTES:
            answer = browser.request(method, path, json=body, headers={"X-CSRF-Token": token})
            if permission in holds:
                assert answer.status_code in (200, 201, 204, 404), (role, method, path, answer.text)
            else:
                assert answer.status_code == 403, (role, method, path, answer.status_code)


def test_users_and_tokens_from_the_command_line_are_audited(settings, tmp_path):
    from pacs.cli import main

    config = tmp_path / "pacs.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\ndatabase_url = "{settings.effective_database_url}"\n')
    pipe = tmp_path / "password"
    pipe.write_text("a long password\n")
    import sys

    stdin = sys.stdin
    try:
        sys.stdin = pipe.open()
        assert main(["users", "add", "sun", "--role", "technologist", "--password-stdin",
                     "--config", str(config)]) == 0
    finally:
        sys.stdin = stdin
    assert main(["users", "roles", "sun", "technologist", "registrar", "--config", str(config)]) == 0
    assert main(["users", "roles", "sun", "surgeon", "--config", str(config)]) == 1
    assert main(["users", "disable", "sun", "--config", str(config)]) == 0
    assert main(["tokens", "create", "--client", "platform", "--scope", "system/*.read",
                 "--config", str(config)]) == 0
    assert main(["tokens", "create", "--client", "x", "--scope", "system/Foo.read", "--config", str(config)]) == 1
    from pacs.db import Database

    db = Database(settings.effective_database_url)
    with Session(db.engine) as session:
        user = accounts.user_by_name(session, "sun")
        assert user.roles == ["registrar", "technologist"] and user.disabled
        assert accounts.verify_password("a long password", user.password_hash)
        assert user.password_hash.startswith("$argon2id$")
        events = session.exec(select(AuditEvent).where(AuditEvent.event_id == "110113")
                              .order_by(col(AuditEvent.id))).all()
    described = [e.description for e in events]
    assert any("sun added" in d for d in described) and any("roles of sun" in d for d in described)
    assert any("sun disabled" in d for d in described) and any("token 1 for platform" in d for d in described)
    db.engine.dispose()


def test_the_server_hashes_passwords_with_argon2id_at_rfc_9106_cost() -> None:
    """The tests' own process hashes at argon2id's lowest cost (tests/conftest.py); the server,
    as a fresh interpreter imports it, at RFC 9106's second recommended set (64 MiB, 3 passes,
    4 lanes), and checks such a hash."""
    made = subprocess.run(
        [sys.executable, "-c", "from pacs.auth import accounts\n"
                               "made = accounts.hash_password('correct horse 1')\n"
                               "assert accounts.verify_password('correct horse 1', made)\n"
                               "assert not accounts.verify_password('correct horse 2', made)\n"
                               "print(made)"],
        capture_output=True, text=True, check=True, timeout=60)
    assert made.stdout.startswith("$argon2id$v=19$m=65536,t=3,p=4$"), made.stdout


def test_the_first_administrator_comes_from_the_setting_or_a_file(start_server, tmp_path):
    server = start_server(guarded=True)
    assert httpx.get(f"{server.http_url}/api/audit", headers=basic("admin", ADMIN_PASSWORD)).status_code == 200
    assert not (server.settings.data_dir / accounts.INITIAL_PASSWORD_FILE).exists()
    from pacs.db import Database
    from pacs.settings import Settings

    other = Settings(data_dir=tmp_path / "other", database_url=f"sqlite:///{tmp_path / 'other.db'}")
    other.data_dir.mkdir()
    db = Database(other.effective_database_url)
    db.migrate()
    assert accounts.first_administrator(db, other) == "admin"
    written = other.data_dir / accounts.INITIAL_PASSWORD_FILE
    assert written.stat().st_mode & 0o777 == 0o600
    with Session(db.engine) as session:
        assert accounts.verify_password(written.read_text().strip(), accounts.user_by_name(session, "admin").password_hash)
    assert accounts.first_administrator(db, other) is None  # only at a start that finds no user
    db.engine.dispose()


def test_metrics_on_the_main_port_need_their_permission(start_server):
    server = start_server(guarded=True, metrics={"http": True})
    url = f"{server.http_url}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=bearer(make_token(server, "viewer", ["studies.read"]))).status_code == 403
    scraped = httpx.get(url, headers=bearer(make_token(server, "prometheus", ["metrics.read"])))
    assert scraped.status_code == 200 and "pacs_" in scraped.text

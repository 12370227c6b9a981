"""Who is asking, and may they: the dependency every HTTP route declares its permission with.

A request is authenticated by the first of (RFC 9110 11.6.2, RFC 6750, RFC 7617):

1. ``Authorization: Bearer`` — an API token of this server (``pacs tokens create``), or a JWT
   of the hospital's identity provider where ``[auth.oidc]`` names one;
2. ``Authorization: Basic`` — a user's name and password, for scripts;
3. the session cookie of a browser that logged in at ``/login``;
4. the cookie of a shared link opened in the browser (:mod:`pacs.auth.links`): reads of that
   link's one study and nothing else (403 for anything else).

A route declares what it needs with ``dependencies=[Depends(require(Permission.X))]`` (or
:data:`PUBLIC`); a request without credentials gets 401 with a ``WWW-Authenticate`` challenge,
one whose credentials don't grant the permission 403, each in its protocol's shape (FHIR's
OperationOutcome, DICOMweb's error object; :class:`pacs.http.ErrorShapes`). Requests that change
something over a session must carry its CSRF token (:mod:`pacs.auth.sessions`).

What a request costs: a token or a Basic login is looked up once and then kept in memory for
``CACHE_SECONDS``; a session cookie is one HMAC check and a user kept likewise. So disabling a
user or revoking a token takes effect within that time on a running server. What memory alone
tells (:meth:`Gate.kept`) is decided on the event loop, the dependencies being coroutines: a
hop to a worker thread and back costs more than the check (``bench/auth.py``); a database
look-up or a password hash goes to a worker thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from pacs.auth import accounts, links
from pacs.auth.models import User
from pacs.auth.roles import Permission, fhir_permission, role_table, scope_permissions
from pacs.auth.sessions import COOKIE, CSRF_FIELD, CSRF_HEADER, SessionData, Sessions, cookie_header
from pacs.db import utcnow

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0  # how long a looked-up token, user or Basic login is trusted without the database
CACHE_MAX = 4096
TOKEN_TOUCH_SECONDS = 3600  # a token's last use is written at most this often
RATE_WINDOW_SECONDS = 60.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # RFC 9110 9.2.1
REALM = "pacs"
CHALLENGE = f'Bearer realm="{REALM}", Basic realm="{REALM}", charset="UTF-8"'


@dataclass(frozen=True)
class Principal:
    """Who a request comes from, and what they may do."""

    name: str
    kind: str  # "user" (a person), "client" (a system with a token)
    permissions: frozenset[Permission]
    roles: tuple[str, ...] = ()
    user_id: int | None = None
    language: str = ""
    via: str = ""  # "session", "basic", "token", "oidc"
    csrf: str = ""  # the session's CSRF token (via session only)
    display_name: str = ""  # what pages call the user (张三); the name when none is set
    link: links.Grant | None = None  # via "link": the shared link's study and purpose

    @property
    def shown(self) -> str:
        return self.display_name or self.name

    def may(self, permission: Permission) -> bool:
        return permission in self.permissions


@dataclass
class _Kept:
    value: Any
    until: float


class _Cache:
    """A small map whose entries last :data:`CACHE_SECONDS` (least recently used go first)."""

    def __init__(self) -> None:
        self._items: OrderedDict[Any, _Kept] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            kept = self._items.get(key)
            if kept is None or kept.until < time.monotonic():
                return None
            self._items.move_to_end(key)
            return kept.value

    def put(self, key: Any, value: Any, seconds: float = CACHE_SECONDS) -> None:
        with self._lock:
            self._items[key] = _Kept(value, time.monotonic() + seconds)
            self._items.move_to_end(key)
            while len(self._items) > CACHE_MAX:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@dataclass
class RateLimit:
    """At most ``per_minute`` login attempts from one address in any minute (429 beyond)."""

    per_minute: int
    _seen: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def retry_after(self, address: str, now: float | None = None) -> float:
        """0 when an attempt from ``address`` may go ahead now (and counts it), else the seconds to wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            seen = self._seen.setdefault(address, deque())
            while seen and seen[0] <= now - RATE_WINDOW_SECONDS:
                seen.popleft()
            if len(seen) >= self.per_minute:
                return seen[0] + RATE_WINDOW_SECONDS - now
            seen.append(now)
            if len(self._seen) > CACHE_MAX:  # forget addresses quiet for a window
                for quiet in [a for a, times in self._seen.items() if not times]:
                    del self._seen[quiet]
            return 0.0


def unauthorized(reason: str) -> HTTPException:
    return HTTPException(HTTPStatus.UNAUTHORIZED, reason, headers={"WWW-Authenticate": CHALLENGE})


def forbidden(reason: str) -> HTTPException:
    return HTTPException(HTTPStatus.FORBIDDEN, reason)


class _NotKept(Exception):
    """Memory alone does not tell who the request comes from (:meth:`Gate.kept`)."""


class Gate:
    """The app's authentication: built once with the app (``app.state.gate``)."""

    def __init__(self, *, db: Any, settings: Any, sessions: Sessions, auditor: Any = None,
                 oidc: Any = None) -> None:
        self.db = db
        self.settings = settings
        self.sessions = sessions
        self.auditor = auditor
        self.oidc = oidc  # pacs.auth.oidc, where [auth.oidc] names an identity provider
        self.roles = role_table(settings.auth.roles)
        self.logins = RateLimit(settings.auth.login_attempts_per_minute)
        self._tokens = _Cache()
        self._basic = _Cache()
        self._users = _Cache()
        self._touched: dict[int, float] = {}
        self.links = links.Checker(links.secret_key(settings), db)

    # -- who is asking ----------------------------------------------------------------------
    def principal(self, request: Request, *, memory_only: bool = False) -> Principal:
        """The request's principal, or 401."""
        cached = getattr(request.state, "principal", None)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        principal = self._identify(request, memory_only)
        if principal is None:
            raise unauthorized("log in, or send a bearer token or HTTP Basic credentials")
        request.state.principal = principal
        request.state.user = principal.name  # the audit log's user (pacs.audit.http)
        request.state.user_kind = principal.kind
        return principal

    def kept(self, request: Request) -> Principal | None:
        """The request's principal where memory alone tells it (a token or a Basic login looked up
        before, a session whose user is kept), or 401 where the request itself says it has none;
        None where :meth:`principal` must read the database, check a password or ask the
        identity provider. It neither waits nor blocks: fit for the event loop."""
        try:
            return self.principal(request, memory_only=True)
        except _NotKept:
            return None

    def _identify(self, request: Request, memory_only: bool = False) -> Principal | None:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return self._bearer(credentials.strip(), memory_only)
        if scheme == "basic":
            return self._basic_login(credentials.strip(), _address(request), memory_only)
        if header:
            raise unauthorized(f"the {scheme or 'empty'} authorization scheme is not accepted here; use Bearer or Basic")
        cookie = request.cookies.get(COOKIE)
        if cookie:
            principal = self._session(request, cookie, memory_only)
            if principal is not None:
                return principal
        shared = request.cookies.get(links.COOKIE)
        if shared:
            return self._link(request, shared, memory_only)
        return None

    def _link(self, request: Request, token: str, memory_only: bool = False) -> Principal | None:
        """A shared link's principal: it reads its one study (:func:`pacs.auth.links.allows`)."""
        try:
            grant = self.links.grant(token, memory_only=memory_only)
        except LookupError:
            raise _NotKept from None
        if grant is None:
            return None
        if not links.allows(grant, request.method, request.url.path, request.query_params):
            raise forbidden("a shared link reads its own study and nothing else")
        return Principal(name=grant.user, kind="link", permissions=frozenset({Permission.STUDIES_READ}),
                         via="link", link=grant)

    def _bearer(self, token: str, memory_only: bool = False) -> Principal:
        if not token:
            raise unauthorized("the bearer token is empty")
        if not token.startswith(accounts.TOKEN_PREFIX) and self.oidc is not None:
            if memory_only:
                raise _NotKept
            return self.oidc.principal(token, self.roles)  # type: ignore[no-any-return]
        digest = accounts.token_digest(token)
        kept = self._tokens.get(digest)
        if kept is not None:
            return kept  # type: ignore[no-any-return]
        if memory_only:
            raise _NotKept
        with Session(self.db.engine) as session:
            row = accounts.find_token(session, token)
            if row is None:
                raise unauthorized("the bearer token is unknown, expired or revoked")
            last = self._touched.get(row.id or 0, 0.0)
            if time.monotonic() - last > TOKEN_TOUCH_SECONDS:
                row.last_used_at = utcnow()
                session.add(row)
                session.commit()
                self._touched[row.id or 0] = time.monotonic()
            principal = Principal(name=row.client, kind="client", permissions=scope_permissions(row.scopes),
                                  via="token")
        self._tokens.put(digest, principal)
        return principal

    def _basic_login(self, credentials: str, address: str, memory_only: bool = False) -> Principal:
        try:
            username, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except ValueError:  # not base64 (binascii.Error), not ASCII text, not UTF-8 (UnicodeDecodeError)
            raise unauthorized("HTTP Basic credentials are base64 of user:password (RFC 7617)") from None
        key = hashlib.sha256(f"{username}\0{password}".encode()).digest()
        kept = self._basic.get(key)
        if kept is not None:
            return kept  # type: ignore[no-any-return]
        if memory_only:
            raise _NotKept
        user = self.login(username, password, address)
        principal = self.user_principal(user, via="basic")
        self._basic.put(key, principal)
        return principal

    def _session(self, request: Request, cookie: str, memory_only: bool = False) -> Principal | None:
        data = self.sessions.read(cookie)
        if data is None:
            return None
        user = self._users.get(data.user_id) if memory_only else self.user(data.user_id)
        if user is None and memory_only:
            raise _NotKept
        if user is None or user.disabled or user.session_epoch != data.epoch:
            return None
        refreshed = self.sessions.touched(data)
        if refreshed is not None:
            request.state.session_cookie = refreshed
        return self.user_principal(user, via="session", session=data)

    def user(self, user_id: int) -> User | None:
        kept = self._users.get(user_id)
        if kept is not None:
            return kept  # type: ignore[no-any-return]
        with Session(self.db.engine, expire_on_commit=False) as session:
            user = session.get(User, user_id)
            if user is not None:
                session.expunge(user)
        if user is not None:
            self._users.put(user_id, user)
        return user

    def user_principal(self, user: User, *, via: str, session: SessionData | None = None) -> Principal:
        granted: set[Permission] = set()
        for role in user.roles:
            granted |= self.roles.get(role, frozenset())
        return Principal(name=user.username, kind="user", permissions=frozenset(granted), roles=tuple(user.roles),
                         user_id=user.id, language=user.language, via=via, csrf=session.csrf if session else "",
                         display_name=user.display_name)

    # -- logging in -------------------------------------------------------------------------
    def login(self, username: str, password: str, address: str) -> User:
        """Check a user's password (lockout, rate limit, audit); the user, or 401/429."""
        wait = self.logins.retry_after(address)
        if wait:
            self._audit_login(username, address, False, "too many login attempts from this address")
            raise HTTPException(HTTPStatus.TOO_MANY_REQUESTS, "too many login attempts; try again later",
                                headers={"Retry-After": str(int(wait) + 1)})
        auth = self.settings.auth
        with Session(self.db.engine, expire_on_commit=False) as session:
            outcome = accounts.authenticate(session, username, password, failures=auth.lockout_failures,
                                            lock_minutes=auth.lockout_minutes)
            session.commit()
            if outcome.user is not None:
                session.expunge(outcome.user)
        if outcome.result == accounts.LoginResult.OK and outcome.user is not None:
            self._audit_login(username, address, True, "")
            self._users.put(outcome.user.id, outcome.user)
            return outcome.user
        reason = {
            accounts.LoginResult.WRONG: "unknown user or wrong password",
            accounts.LoginResult.DISABLED: "the account is disabled",
            accounts.LoginResult.LOCKED: "the account is locked after too many wrong passwords",
        }[outcome.result]
        if outcome.just_locked:
            reason = (f"wrong password; the account is now locked for {auth.lockout_minutes:g} minutes "
                      f"after {auth.lockout_failures} wrong passwords")
        log.info("login of %r from %s refused: %s", username, address, reason)
        self._audit_login(username, address, False, reason)
        raise unauthorized(reason if outcome.result != accounts.LoginResult.WRONG else "unknown user or wrong password")

    def single_sign_on(self, username: str, roles: list[str] | None, *, display_name: str, address: str) -> User:
        """The user a login through the identity provider names (:mod:`pacs.auth.oidc`): made at
        the first login (no password), given the roles the provider sent (None: it sent none,
        the user's own stay); audited as a password login is, a new user and changed roles too
        (PS3.15 A.5.3.10). 401 for a disabled user or a name this system can't hold."""
        from pacs.audit import codes
        from pacs.audit.codes import Action
        from pacs.audit.service import Event

        changes: list[Event] = []
        with Session(self.db.engine, expire_on_commit=False) as session:
            existing = accounts.user_by_name(session, username)
            before = list(existing.roles) if existing is not None else None
            try:
                user = accounts.single_sign_on(session, username=username, roles=roles, display_name=display_name,
                                               role_overrides=self.settings.auth.roles)
            except accounts.AccountError as exc:
                self._audit_login(username, address, False, f"single sign-on: {exc}")
                raise unauthorized(str(exc)) from None
            if before is None or before != user.roles:
                kind = codes.USER_SECURITY_ATTRIBUTES_CHANGED if before is None else codes.SECURITY_ROLES_CHANGED
                now = ", ".join(user.roles) or "(none)"
                what = (f"user {username} made at its first single sign-on, with roles {now}" if before is None
                        else f"roles of {username} from the identity provider: {', '.join(before) or '(none)'} -> {now}")
                changes.append(Event(codes.SECURITY_ALERT, Action.CREATE if before is None else Action.UPDATE,
                                     types=(kind,), user=username, user_kind="user", address=address, target=username,
                                     description=what))
            session.commit()
            session.expunge(user)
        if user.disabled:
            self._audit_login(username, address, False, "single sign-on: the account is disabled")
            raise unauthorized("the account is disabled")
        for event in changes:
            if self.auditor is not None:
                self.auditor.record(event)
        self._audit_login(username, address, True, "single sign-on")
        self._users.put(user.id, user)
        return user

    def _audit_login(self, username: str, address: str, success: bool, reason: str) -> None:
        if self.auditor is not None:
            self.auditor.login(username, address=address, success=success, reason=reason)

    def forget(self) -> None:
        """Drop what is kept in memory (after users or tokens changed in this process)."""
        self._tokens.clear()
        self._basic.clear()
        self._users.clear()


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def gate_of(request: Request) -> Gate:
    return request.app.state.gate  # type: ignore[no-any-return]


def _check_csrf(request: Request, principal: Principal) -> None:
    """A request that changes something over a browser session carries the session's token."""
    if principal.via != "session" or request.method in SAFE_METHODS:
        return
    given = request.headers.get(CSRF_HEADER, "")
    if not given:
        given = str(getattr(request.state, "form_csrf", "") or "")
    if not given or not hmac.compare_digest(given, principal.csrf):
        raise forbidden(f"this request changes something: send the session's CSRF token in {CSRF_HEADER}")


Dependency = Callable[..., Awaitable[Principal]]


async def current_principal(request: Request) -> Principal:
    """Who the request comes from (401 if no one): the dependency under every ``require``; on
    the event loop where memory tells (:meth:`Gate.kept`), else in a worker thread."""
    gate = gate_of(request)
    principal = gate.kept(request)
    return principal if principal is not None else await run_in_threadpool(gate.principal, request)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require(permission: Permission) -> Dependency:
    """The dependency of a route that needs ``permission``: the request's :class:`Principal`,
    or 401 (no credentials) / 403 (not this permission, or a missing CSRF token)."""

    async def dependency(request: Request, principal: PrincipalDep) -> Principal:
        if not principal.may(permission):
            raise forbidden(f"{principal.name} may not do this: it needs {permission.value}")
        _check_csrf(request, principal)
        return principal

    dependency.permission = permission  # type: ignore[attr-defined]  (read by the test that walks the routes)
    dependency.__name__ = f"require_{permission.name.lower()}"
    return dependency


def require_fhir(*, write: bool, parameter: str = "resource_type") -> Dependency:
    """A FHIR route whose resource type is a path parameter: the permission behind that type
    (:func:`pacs.auth.roles.fhir_permission`). A type this server does not serve needs only an
    authenticated request (the route answers 404)."""

    async def dependency(request: Request, principal: PrincipalDep) -> Principal:
        permission = fhir_permission(request.path_params.get(parameter, ""), write)
        if permission is not None and not principal.may(permission):
            raise forbidden(f"{principal.name} may not do this: it needs {permission.value}")
        _check_csrf(request, principal)
        return principal

    dependency.permission = f"FHIR {'write' if write else 'read'} of the resource type"  # type: ignore[attr-defined]
    return dependency


def require_by_method(permissions: dict[str, Permission]) -> Dependency:
    """The dependency of a router whose methods need different permissions (DICOMweb: GET
    reads studies, POST stores images); a method not named needs the first one listed."""
    fallback = next(iter(permissions.values()))

    async def dependency(request: Request, principal: PrincipalDep) -> Principal:
        permission = permissions.get(request.method, fallback)
        if not principal.may(permission):
            raise forbidden(f"{principal.name} may not do this: it needs {permission.value}")
        _check_csrf(request, principal)
        return principal

    dependency.permission = permissions  # type: ignore[attr-defined]
    return dependency


async def public(request: Request) -> None:
    """The dependency of a route anyone may call (health, the CapabilityStatement, the login page)."""


public.permission = None  # type: ignore[attr-defined]
public.public = True  # type: ignore[attr-defined]


class SessionCookies:
    """ASGI middleware: sends back the session cookie a request refreshed (its last use written
    into it, :meth:`Sessions.touched`), so that an idle timeout counts from the last request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                refreshed = scope.get("state", {}).get("session_cookie")
                if refreshed:
                    secure = scope.get("scheme") == "https"
                    headers = list(message.get("headers", []))
                    headers.append((b"set-cookie", cookie_header(refreshed, secure=secure).encode("latin-1")))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


__all__ = ["CSRF_FIELD", "Gate", "Principal", "SessionCookies", "public", "require", "require_by_method",
           "require_fhir"]

"""The login and logout pages, and the home page a person lands on.

``GET /login`` shows the form (a double-submit token in a cookie and the form guards the login
itself against cross-site posting); ``POST /login`` checks the password (lockout, rate limit
and audit in :meth:`pacs.auth.access.Gate.login`), sets the session cookie and goes on to
``next`` (a path of this server only); ``POST /logout`` ends the session. ``GET /`` lists the
pages the user's roles open. Where ``[auth.oidc]`` names the hospital's identity provider,
``GET /login/sso`` and ``GET /login/callback`` log in through it (:data:`sso_router`,
:mod:`pacs.auth.oidc`).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from pacs.auth.access import Principal, gate_of, public
from pacs.auth.oidc import (
    FLOW_COOKIE,
    FLOW_COOKIE_PATH,
    FLOW_SECONDS,
    ProviderUnavailable,
    SignOnFailed,
)
from pacs.auth.roles import Permission
from pacs.auth.sessions import COOKIE, cookie_header
from pacs.web.i18n import LANGUAGE_COOKIE, language_of, translator

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent.parent / "web" / "templates"))
STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
LOGIN_CSRF_COOKIE = "pacs_login"
LOGIN_CSRF_SECONDS = 3600
LANGUAGE_COOKIE_SECONDS = 365 * 24 * 3600

# The pages a person may open, by the permission each needs (added as each page is built).
PAGES: list[tuple[str, str, Permission]] = [
    ("/desk", "desk.title", Permission.ORDERS_CHECKIN),
    ("/viewer", "viewer.title", Permission.STUDIES_READ),
    ("/reading", "reading.title", Permission.REPORTS_WRITE),
    ("/technologist", "technologist.title", Permission.RECONCILE),
    ("/capture", "capture.title", Permission.IMAGES_WRITE),
    ("/engine", "engine.title", Permission.MESSAGES_READ),
]

router = APIRouter(tags=["pages"], include_in_schema=False)
sso_router = APIRouter(tags=["pages"], include_in_schema=False)  # mounted where [auth.oidc] is set
log = logging.getLogger(__name__)


def page_language(request: Request, principal: Principal | None = None) -> str:
    settings = request.app.state.services.settings
    asked = request.query_params.get("lang") or (principal.language if principal else "") \
        or request.cookies.get(LANGUAGE_COOKIE)
    return language_of(asked, settings.auth.default_language)


def render(request: Request, template: str, *, status: int = HTTPStatus.OK, principal: Principal | None = None,
           **context: Any) -> HTMLResponse:
    """A page in the request's language; ``?lang=`` is remembered in a cookie."""
    lang = page_language(request, principal)
    response = TEMPLATES.TemplateResponse(request, template, {"lang": lang, "t": translator(lang),
                                                              "principal": principal,
                                                              "csrf": principal.csrf if principal else "",
                                                              **context}, status_code=status)
    if request.query_params.get("lang"):
        response.set_cookie(LANGUAGE_COOKIE, lang, max_age=LANGUAGE_COOKIE_SECONDS, samesite="lax")
    return response


def local_path(target: str | None) -> str:
    """``target`` if it is a path on this server ("/desk?x=1"), else "/": a login must not send
    anyone on to another site (an open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.app.state.services.settings.auth.secure_cookies == "always"


@router.get("/login", dependencies=[Depends(public)])
def login_form(request: Request, next: str = "/", reason: str = "") -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    lang = page_language(request)
    t = translator(lang)
    message = t("login.expired") if reason == "expired" else t("logout.done") if reason == "logout" else ""
    response = render(request, "login.html", username="", next=local_path(next), login_csrf=token,
                      message=message, error=False, sso=gate_of(request).oidc is not None)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=LOGIN_CSRF_SECONDS, httponly=True, samesite="strict",
                        secure=secure(request), path="/login")
    return response


@router.post("/login", dependencies=[Depends(public)])
def login(request: Request, username: str = Form(""), password: str = Form(""), next: str = Form("/"),
          csrf_token: str = Form("")) -> Response:
    gate = gate_of(request)
    t = translator(page_language(request))
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    token = secrets.token_urlsafe(24)

    def again(message: str, status: int) -> HTMLResponse:
        response = render(request, "login.html", status=status, username=username, next=local_path(next),
                          login_csrf=token, message=message, error=True, sso=gate.oidc is not None)
        response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=LOGIN_CSRF_SECONDS, httponly=True,
                            samesite="strict", secure=secure(request), path="/login")
        return response

    if not expected or not hmac.compare_digest(expected, csrf_token):
        return again(t("login.csrf"), HTTPStatus.FORBIDDEN)
    address = request.client.host if request.client else ""
    try:
        user = gate.login(username.strip(), password, address)
    except HTTPException as exc:
        settings = request.app.state.services.settings.auth
        if exc.status_code == HTTPStatus.TOO_MANY_REQUESTS:
            return again(t("login.rate_limited"), HTTPStatus.TOO_MANY_REQUESTS)
        detail = str(exc.detail)
        message = (t("login.locked", minutes=f"{settings.lockout_minutes:g}") if "locked" in detail
                   else t("login.disabled") if "disabled" in detail else t("login.failed"))
        return again(message, HTTPStatus.UNAUTHORIZED)
    cookie, _ = gate.sessions.new(user.id or 0, user.session_epoch)
    response = RedirectResponse(local_path(next), status_code=HTTPStatus.SEE_OTHER)
    response.headers.append("set-cookie", cookie_header(cookie, secure=secure(request)))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    if user.language:
        response.set_cookie(LANGUAGE_COOKIE, user.language, max_age=LANGUAGE_COOKIE_SECONDS, samesite="lax")
    return response


@router.post("/logout", dependencies=[Depends(public)])
async def logout(request: Request) -> Response:
    """End the session (its cookie goes; the CSRF token guards against being logged out by
    another site). Without a session there is nothing to end."""
    gate = gate_of(request)
    form = await request.form()
    request.state.form_csrf = form.get("csrf_token", "")
    response = RedirectResponse("/login?reason=logout", status_code=HTTPStatus.SEE_OTHER)
    try:
        principal = gate.principal(request)
    except HTTPException:
        return response
    from pacs.auth.access import _check_csrf

    _check_csrf(request, principal)
    if gate.auditor is not None:
        gate.auditor.login(principal.name, address=request.client.host if request.client else "", logout=True)
    response.headers.append("set-cookie", cookie_header("", secure=secure(request), max_age=0))
    return response


@router.get("/", dependencies=[Depends(public)])
def home(request: Request) -> Response:
    """The pages the user may open; the login page for someone not logged in."""
    try:
        principal = gate_of(request).principal(request)
    except HTTPException:
        reason = "expired" if COOKIE in request.cookies else ""
        return RedirectResponse(f"/login?next=/{'&reason=' + reason if reason else ''}",
                                status_code=HTTPStatus.SEE_OTHER)
    t = translator(page_language(request, principal))
    pages = [{"href": href, "label": label} for href, label, permission in PAGES if principal.may(permission)]
    roles = "、".join(t(f"role.{role}") for role in principal.roles) or "—"
    return render(request, "home.html", principal=principal, pages=pages, roles=roles)


class PageRedirect(Exception):
    """A page asked for by someone not logged in: the answer is the login form."""

    def __init__(self, response: Response) -> None:
        super().__init__("log in first")
        self.response = response


class PageDenied(Exception):
    """A page asked for by someone whose roles don't open it."""

    def __init__(self, principal: Principal, permission: Permission) -> None:
        super().__init__(f"{principal.name} may not open this page ({permission.value})")
        self.principal = principal
        self.permission = permission


def require_page(permission: Permission):  # type: ignore[no-untyped-def]
    """The dependency of a page: its user, the login form for someone not logged in (and back
    here afterwards), a page saying so for someone whose roles don't open it (403)."""

    def dependency(request: Request) -> Principal:
        try:
            principal = gate_of(request).principal(request)
        except HTTPException:
            raise PageRedirect(login_redirect(request)) from None
        if not principal.may(permission):
            raise PageDenied(principal, permission)
        return principal

    dependency.permission = permission  # type: ignore[attr-defined]  (read by the test that walks the routes)
    return dependency


async def page_redirect(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageRedirect)
    return exc.response


async def page_denied(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageDenied)
    return render(request, "denied.html", status=HTTPStatus.FORBIDDEN, principal=exc.principal)


def login_redirect(request: Request) -> RedirectResponse:
    """Where a page sends someone not logged in: the login form, and back here afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=HTTPStatus.SEE_OTHER)


# -- single sign-on (OpenID Connect, :mod:`pacs.auth.oidc`) ---------------------------------------

def callback_url(request: Request) -> str:
    """Where the identity provider sends the browser back (the redirect URI registered with it):
    under ``public_url`` where set, else under the address the request came to."""
    base = request.app.state.services.settings.public_url or str(request.base_url)
    return base.rstrip("/") + "/login/callback"


def sso_failed(request: Request, message: str, status: int, next: str = "/") -> HTMLResponse:
    """The login form with ``message``, after a single sign-on that did not succeed."""
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", status=status, username="", next=local_path(next), login_csrf=token,
                      message=message, error=True, sso=True)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=LOGIN_CSRF_SECONDS, httponly=True, samesite="strict",
                        secure=secure(request), path="/login")
    response.delete_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH)
    return response


@sso_router.get("/login/sso", dependencies=[Depends(public)])
def single_sign_on(request: Request, next: str = "/") -> Response:
    """Off to the identity provider's login (the authorization request, OIDC Core 1.0 3.1.2.1);
    the flow's state, nonce and PKCE verifier wait in a signed cookie sent back to the callback
    only (SameSite=Lax: the provider's redirect back is a top-level navigation)."""
    oidc = gate_of(request).oidc
    try:
        url, flow = oidc.begin(redirect_uri=callback_url(request), next=local_path(next))
    except ProviderUnavailable as exc:
        log.warning("single sign-on unavailable: %s", exc)
        t = translator(page_language(request))
        return sso_failed(request, t("login.sso_unavailable"), HTTPStatus.SERVICE_UNAVAILABLE, next)
    response = RedirectResponse(url, status_code=HTTPStatus.SEE_OTHER)
    response.set_cookie(FLOW_COOKIE, flow, max_age=FLOW_SECONDS, httponly=True, samesite="lax",
                        secure=secure(request), path=FLOW_COOKIE_PATH)
    return response


@sso_router.get("/login/callback", dependencies=[Depends(public)])
def sso_callback(request: Request) -> Response:
    """Back from the identity provider (the authorization response, RFC 6749 4.1.2): the state
    checked, the code exchanged, the ID token validated (:meth:`pacs.auth.oidc.OpenIDConnect.
    finish`); the user found or made (:meth:`pacs.auth.access.Gate.single_sign_on`) and logged in
    with the session cookie a password login gets."""
    gate = gate_of(request)
    t = translator(page_language(request))
    address = request.client.host if request.client else ""
    next = "/"
    try:
        flow = gate.oidc.flow(request.cookies.get(FLOW_COOKIE, ""))
        next = flow.next
        signed_on = gate.oidc.finish(flow, dict(request.query_params))
    except SignOnFailed as exc:
        log.info("single sign-on from %s failed: %s", address, exc.detail)
        if exc.audit:
            gate._audit_login(exc.username, address, False, f"single sign-on: {exc.detail}")
        return sso_failed(request, t(exc.message), exc.status, next)
    try:
        user = gate.single_sign_on(signed_on.username, signed_on.roles, display_name=signed_on.display_name,
                                   address=address)
    except HTTPException as exc:
        message = t("login.disabled") if "disabled" in str(exc.detail) else t("login.sso_failed")
        return sso_failed(request, message, exc.status_code, next)
    cookie, _ = gate.sessions.new(user.id or 0, user.session_epoch)
    response = RedirectResponse(local_path(signed_on.next), status_code=HTTPStatus.SEE_OTHER)
    response.headers.append("set-cookie", cookie_header(cookie, secure=secure(request)))
    response.delete_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH)
    if user.language:
        response.set_cookie(LANGUAGE_COOKIE, user.language, max_age=LANGUAGE_COOKIE_SECONDS, samesite="lax")
    return response

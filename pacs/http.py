"""The HTTP app: mounts each part's router. OpenAPI at /docs."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Connection, text
from sqlmodel import Session
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from pacs import __version__
from pacs.auth.access import public
from pacs.db import MAX_ROW_ID
from pacs.server import Services

log = logging.getLogger(__name__)


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep, request: Request):  # type: ignore[no-untyped-def]
    """One unit of work per request; GET and HEAD only read, so they take no write lock.

    It commits before the response goes out (``scope="function"``): FastAPI otherwise runs a
    dependency's exit after sending the response, and a client would be told of a change not
    yet durable, one a failed commit would lose, and could read the old state right after."""
    with services.db.session(read_only=request.method in ("GET", "HEAD")) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_reader(services: ServicesDep):  # type: ignore[no-untyped-def]
    """A connection for a request that only reads rows through Core statements (QIDO-RS): no ORM
    session, whose transaction and commit cost such a read more than its statement does (see
    :meth:`pacs.archive.query_service.QueryService.archive`)."""
    with services.db.reader.connect() as connection:
        yield connection


ReaderDep = Annotated[Connection, Depends(get_reader, scope="function")]

RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
"""A row's id in a path: anything past the largest key is refused (422), as it names no row."""
Offset = Annotated[int, Query(ge=0, le=MAX_ROW_ID)]
"""How many matches a page skips."""


ErrorResponse = Callable[[Request, int, str, Mapping[str, str] | None], Response]
"""How a part of the URL space answers an error: ``(request, status, reason, headers)``."""


class ErrorShapes:
    """Every error an HTTP request gets, in the shape of the protocol its path belongs to.

    FastAPI answers what no route handles itself (no route matches the path: 404; the path
    matches but not the method: 405; a parameter its declaration refuses: 422) with
    ``{"detail": ...}``, the shape of the JSON API at /api. Under /fhir every error is an
    OperationOutcome (FHIR R4 http.html#2.21.0.17), under /dicomweb the ``{"status",
    "message"}`` object the DICOMweb routes answer; each prefix names its own function.
    """

    def __init__(self, shapes: Mapping[str, ErrorResponse]) -> None:
        self.shapes = dict(shapes)

    def shape_of(self, path: str) -> ErrorResponse | None:
        for prefix, shape in self.shapes.items():
            if path == prefix or path.startswith(prefix + "/"):
                return shape
        return None

    def response(self, request: Request, status: int, reason: str,
                 headers: Mapping[str, str] | None = None) -> Response:
        shape = self.shape_of(request.url.path)
        if shape is None:
            return JSONResponse({"detail": reason}, status_code=status, headers=dict(headers or {}))
        return shape(request, status, reason, headers)

    async def http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
            headers["Allow"] = ", ".join(allowed_methods(request))
        if self.shape_of(request.url.path) is None:
            return await http_exception_handler(request, HTTPException(exc.status_code, exc.detail, headers))
        reason = str(exc.detail)
        if reason == HTTPStatus(exc.status_code).phrase:  # raised without a reason: routing's own
            if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
                reason = f"{request.method} is not supported at {request.url.path}; allowed: {headers['Allow']}"
            elif exc.status_code == HTTPStatus.NOT_FOUND:
                reason = f"nothing is served at {request.url.path}"
        return self.response(request, exc.status_code, reason, headers)

    async def validation_error(self, request: Request, exc: Exception) -> Response:
        """A parameter a route's declaration refuses: 422 under /api (FastAPI's answer), 400 (a
        bad parameter) under the protocols, whose standards name 400 for it."""
        assert isinstance(exc, RequestValidationError)
        if self.shape_of(request.url.path) is None:  # FastAPI's answer, with what it quotes made JSON
            return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))},
                                status_code=HTTPStatus.UNPROCESSABLE_ENTITY)
        reasons = ["{}: {}".format(".".join(str(part) for part in error.get("loc", ())), error.get("msg", ""))
                   for error in exc.errors()]
        return self.response(request, HTTPStatus.BAD_REQUEST, "; ".join(reasons) or "bad request")

    async def client_gone(self, request: Request, exc: Exception) -> Response:
        """The client closed the connection while its request's body was being read: one line in
        the log (a client's doing, not a fault here) and an answer no one will read."""
        log.info("%s %s: the client closed the connection before the request's body ended",
                 request.method, request.url.path)
        return self.response(request, HTTPStatus.BAD_REQUEST, "the connection closed before the request's body ended")

    async def server_error(self, request: Request, exc: Exception) -> Response:
        """A fault (a bug): the answer is in the protocol's shape; Starlette logs the traceback."""
        return self.response(request, HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; the server's log says more")


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",  # RFC 9110 9.3
                "PATCH")  # RFC 5789


def json_safe(value: Any) -> Any:
    """``value`` with the floats JSON has no number for (RFC 8259 6: a client's ``1e999`` is
    infinite to Python) as their text, so that an answer quoting a client's input can be sent."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def allowed_methods(request: Request) -> list[str]:
    """The methods some route serves at the request's path (RFC 9110 15.5.6: a 405 says them)."""
    routes = request.app.router.routes
    return [method for method in HTTP_METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)]


NUL = "\x00"  # U+0000


class NoStore:
    """ASGI middleware: answers of the JSON API and of the pages carry ``Cache-Control:
    no-store`` (RFC 9111 5.2.2.5) unless they say otherwise: they hold patient data that must
    not stay in a shared workstation's browser cache, and a list read again right after a
    change must not come from a cache. DICOMweb is left out: a viewer reading a study again
    gains from its browser's cache, and an instance never changes under its UID."""

    PREFIXES = ("/api/", "/fhir", "/desk", "/login", "/logout")

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/" or path.startswith(self.PREFIXES)):
            await self.app(scope, receive, send)
            return

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


class RefuseNul:
    """ASGI middleware: a request whose path or query holds U+0000 is refused with 400 before
    any route reads it. No text this server keeps or looks up can hold the character —
    PostgreSQL's text types refuse it, SQLite ends a LIKE pattern there — so no identifier,
    name or UID names anything with it; refusing it here, in each protocol's error shape, keeps
    it from every query that would otherwise fail on it."""

    def __init__(self, app: Any, errors: ErrorShapes) -> None:
        self.app = app
        self.errors = errors

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"").replace(b"+", b" ")
            where = "path" if NUL in scope["path"] else "query" if NUL.encode() in unquote_to_bytes(query) else ""
            if where:
                request = Request(scope)
                response = self.errors.response(request, HTTPStatus.BAD_REQUEST,
                                                f"the request's {where} holds a NUL character (%00), "
                                                "which no identifier, name or UID here contains")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(services: Services) -> FastAPI:
    from pacs.archive.dicomweb import router as dicomweb_router
    from pacs.archive.dicomweb.api import PREFIX as DICOMWEB_PREFIX
    from pacs.archive.dicomweb.api import error_response as dicomweb_error
    from pacs.archive.reconciliation_api import router as reconciliation_router
    from pacs.audit.api import router as audit_router
    from pacs.audit.http import AuditMiddleware
    from pacs.auth.access import Gate, SessionCookies
    from pacs.auth.pages import STATIC, PageDenied, PageRedirect, page_denied, page_redirect
    from pacs.auth.pages import router as pages_router
    from pacs.auth.sessions import Sessions, load_or_create_key
    from pacs.capture.api import router as capture_router
    from pacs.fhir_server.api import error_response as fhir_error
    from pacs.fhir_server.api import router as fhir_router
    from pacs.film.api import router as film_router
    from pacs.integration.api import outbox_router
    from pacs.integration.api import router as messages_router
    from pacs.registry.api import router as orders_router
    from pacs.registry.desk_api import desk as desk_api_router
    from pacs.registry.desk_api import orders as desk_orders_router
    from pacs.registry.patient_api import router as patients_router
    from pacs.reporting.api import reading as reading_api_router
    from pacs.reporting.api import reports as reports_router
    from pacs.web.capture import router as capture_page_router
    from pacs.web.desk import router as desk_router
    from pacs.web.engine import router as engine_router
    from pacs.web.film import router as film_page_router
    from pacs.web.links import pages as link_pages
    from pacs.web.links import router as links_router
    from pacs.web.reading import router as reading_router
    from pacs.web.technologist import router as technologist_router
    from pacs.web.viewer import STATIC_PATH as VIEWER_STATIC
    from pacs.web.viewer import router as viewer_router
    from pacs.web.viewer import static_files as viewer_files

    app = FastAPI(
        title="PACS",
        version=__version__,
        description="PACS archive, RIS front desk and HL7/FHIR interface engine.",
    )
    app.state.services = services

    @app.get("/healthz", tags=["health"], dependencies=[Depends(public)])
    def healthz(services: ServicesDep) -> JSONResponse:
        """Liveness and readiness: the database answers, the intake worker runs, and so does the
        MLLP front process where there is one."""
        try:
            with services.db.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            database = "ok"
        except Exception as exc:  # report, don't raise: this is what monitoring reads
            database = f"error: {exc}"
        problems = services.mappings.last_problems
        front = services.mllp_front
        front_running = front is None or front.running
        healthy = database == "ok" and services.intake.running and front_running
        body = {
            "status": "ok" if healthy else "degraded",
            "version": __version__,
            "database": database,
            "intake": "running" if services.intake.running else "stopped",
            "mappings": "ok" if not problems else f"{len(problems)} problem(s); last good set in use",
        }
        if front is not None:  # the MLLP connections are served by the front process
            body["mllp_front"] = "running" if front_running else "not running (being restarted)"
        return JSONResponse(body, status_code=200 if healthy else 503)

    key = load_or_create_key(services.settings.session_key_file)
    oidc = None
    if services.settings.auth.oidc.issuer:  # single sign-on through the hospital's identity provider
        from pacs.auth.oidc import OpenIDConnect
        from pacs.auth.roles import role_table

        oidc = OpenIDConnect(services.settings.auth.oidc, roles=role_table(services.settings.auth.roles), key=key)
    app.state.gate = Gate(db=services.db, settings=services.settings, auditor=services.audit, oidc=oidc,
                          sessions=Sessions(key, idle_seconds=services.settings.auth.session_idle_minutes * 60,
                                            max_seconds=services.settings.auth.session_max_hours * 3600))
    app.include_router(pages_router)
    app.include_router(desk_router)
    app.include_router(technologist_router)  # the reconciliation list
    app.include_router(capture_page_router)  # photos, scans, PDFs and videos for an exam
    app.include_router(engine_router)  # the interface analysts' console
    app.include_router(reading_router)  # the reading worklist and the report editor
    app.include_router(film_page_router)  # film printing, opened from the viewer
    app.include_router(link_pages)  # shared links: /share, consultation /c/…, cloud film /s/…
    app.mount(VIEWER_STATIC, viewer_files(), name="viewer-static")  # before the viewer's catch-all route
    app.include_router(viewer_router)
    app.add_exception_handler(PageRedirect, page_redirect)
    app.add_exception_handler(PageDenied, page_denied)
    if oidc is not None:
        from pacs.auth.pages import sso_router

        app.include_router(sso_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(messages_router)
    app.include_router(patients_router)  # the desk's patient search and walk-ins
    app.include_router(orders_router)
    app.include_router(reconciliation_router)  # studies that found no order, for a person to attach
    app.include_router(capture_router)  # photos, scans and PDFs from non-DICOM devices
    app.include_router(film_router)  # film printing (DICOM Basic Grayscale Print Management)
    app.include_router(links_router)  # shared links to a study (pacs.auth.links)
    app.include_router(desk_api_router)  # the registration desk: rooms, slots, bookings, lists, labels
    app.include_router(desk_orders_router)
    app.include_router(reading_api_router)  # the reading worklist
    app.include_router(reports_router)  # a report's claim, draft, signature and versions
    app.include_router(outbox_router)
    app.include_router(fhir_router)
    app.include_router(dicomweb_router)
    app.include_router(audit_router)
    if services.settings.metrics.http and services.metrics is not None:  # else only on [metrics] port
        from pacs import metrics

        app.include_router(metrics.router(services.metrics))
    errors = ErrorShapes({fhir_router.prefix: fhir_error, DICOMWEB_PREFIX: dicomweb_error})
    app.add_exception_handler(HTTPException, errors.http_exception)
    app.add_exception_handler(RequestValidationError, errors.validation_error)
    app.add_exception_handler(ClientDisconnect, errors.client_gone)
    app.add_exception_handler(Exception, errors.server_error)
    app.add_middleware(RefuseNul, errors=errors)
    app.add_middleware(SessionCookies)
    app.add_middleware(NoStore)
    if services.audit is not None:  # who read, searched or stored what (IHE ATNA)
        app.add_middleware(AuditMiddleware, auditor=services.audit)
    return app

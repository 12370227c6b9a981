"""The HTTP app: mounts each part's router. OpenAPI at /docs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlmodel import Session

from pacs import __version__
from pacs.db import MAX_ROW_ID
from pacs.server import Services


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep, request: Request):  # type: ignore[no-untyped-def]
    """One unit of work per request; GET and HEAD only read, so they take no write lock."""
    with services.db.session(read_only=request.method in ("GET", "HEAD")) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
"""A row's id in a path: anything past the largest key is refused (422), as it names no row."""
Offset = Annotated[int, Query(ge=0, le=MAX_ROW_ID)]
"""How many matches a page skips."""


def create_app(services: Services) -> FastAPI:
    from pacs.archive.dicomweb import router as dicomweb_router
    from pacs.audit.api import router as audit_router
    from pacs.audit.http import AuditMiddleware
    from pacs.fhir_server.api import router as fhir_router
    from pacs.integration.api import outbox_router
    from pacs.integration.api import router as messages_router
    from pacs.registry.api import router as orders_router

    app = FastAPI(
        title="PACS",
        version=__version__,
        description="PACS archive, RIS front desk and HL7/FHIR interface engine.",
    )
    app.state.services = services

    @app.get("/healthz", tags=["health"])
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

    app.include_router(messages_router)
    app.include_router(orders_router)
    app.include_router(outbox_router)
    app.include_router(fhir_router)
    app.include_router(dicomweb_router)
    app.include_router(audit_router)
    if services.audit is not None:  # who read, searched or stored what (IHE ATNA)
        app.add_middleware(AuditMiddleware, auditor=services.audit)
    return app

"""The registration desk (登记台) at ``/desk``: the page registrars keep open all day.

The page is a server-rendered shell with the project's own script (``static/desk.js``), which
talks to the JSON API: patients (``/api/patients``), requisitions, rooms, slots, bookings and
today's lists (``/api/desk/...``, ``/api/orders``), labels (``/api/orders/{id}/label.pdf``),
and the order changes streamed at ``/api/desk/events`` (server-sent events,
:mod:`pacs.web.events`). Every text comes from the message catalogues, which the page gets
whole; the card readers and barcode scanners come from ``scanners.yaml`` in the mappings.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from pacs.auth.access import Principal, require
from pacs.auth.pages import page_language, render, require_page
from pacs.auth.roles import Permission
from pacs.web.events import OrderEvents
from pacs.web.i18n import catalogue
from pacs.web.scanners import load_scanners

router = APIRouter(tags=["desk"])

DeskUser = Annotated[Principal, Depends(require_page(Permission.ORDERS_CHECKIN))]


@router.get("/desk", include_in_schema=False)
def desk(request: Request, principal: DeskUser) -> HTMLResponse:
    """The desk: search, requisitions, booking, today's lists; keyboard first (F1 lists the keys)."""
    settings = request.app.state.services.settings
    scanners, _problems = load_scanners(settings.mappings_dir)  # `pacs mappings check` reports problems
    lang = page_language(request, principal)
    return render(request, "desk.html", principal=principal, messages=dict(catalogue(lang)),
                  scanners=scanners.for_page())


def order_events(request: Request) -> OrderEvents:
    events = getattr(request.app.state, "order_events", None)
    if events is None:
        events = request.app.state.order_events = OrderEvents(request.app.state.services.db)
    return events  # type: ignore[no-any-return]


@router.get("/api/desk/events", dependencies=[Depends(require(Permission.ORDERS_READ))],
            response_class=StreamingResponse)
async def events(request: Request, last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Order status changes as they happen (``text/event-stream``): ``event: order`` with the
    order's id, new status, accession number, who moved it and when. ``Last-Event-ID`` resumes."""
    last = int(last_event_id) if last_event_id and last_event_id.isdigit() and len(last_event_id) < 19 else None
    return StreamingResponse(order_events(request).stream(last), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/api/desk/procedures", dependencies=[Depends(require(Permission.ORDERS_READ))])
def procedures(request: Request) -> list[dict[str, str]]:
    """The procedures the desk books (``codes/procedures.csv``): code, description, modality."""
    table = request.app.state.services.mappings.current().procedures
    return [{"code": p.code, "text": p.description or p.code, "modality": p.modality}
            for p in sorted(table.values(), key=lambda p: (p.modality, p.code))]

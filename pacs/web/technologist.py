"""The technologist's page (技师工作台) at ``/technologist``: for now, the reconciliation list.

Server-rendered, with no script of its own: each study that found no order
(:mod:`pacs.archive.reconciliation`) shows what the device sent, why it waits and the candidate
orders, each a button that attaches it; a field takes another order's accession number, or a
Patient ID for an exam without an order. A plain form posts the choice (with the session's CSRF
token), so the page works from the keyboard alone: the first candidate has the focus, Tab moves
on, Enter attaches. Texts come from the message catalogues (``technologist.*``).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pacs.archive import reconciliation
from pacs.auth.access import Principal, _check_csrf
from pacs.auth.pages import page_language, render, require_page
from pacs.auth.roles import Permission
from pacs.http import RowId, ServicesDep, SessionDep
from pacs.registry.models import ImagingOrder
from pacs.web.i18n import translator

router = APIRouter(tags=["technologist"], include_in_schema=False)
PAGE = "/technologist"
SHOWN = 200  # items on the page; the API and `pacs reconcile list` page through more

TechnologistPage = Annotated[Principal, Depends(require_page(Permission.RECONCILE))]


def page_form(permission: Permission):  # type: ignore[no-untyped-def]
    """The dependency of a form a page posts: :func:`require_page`, and the session's CSRF
    token from the form's ``csrf_token`` field."""
    check = require_page(permission)

    async def dependency(request: Request) -> Principal:
        form = await request.form()
        request.state.form_csrf = form.get("csrf_token", "")
        principal = await run_in_threadpool(check, request)
        _check_csrf(request, principal)
        return principal

    dependency.permission = permission  # type: ignore[attr-defined]  (read by the test that walks the routes)
    return dependency


TechnologistForm = Annotated[Principal, Depends(page_form(Permission.RECONCILE))]


@router.get(PAGE)
def technologist(request: Request, principal: TechnologistPage, session: SessionDep,
                 attached: int | None = None) -> HTMLResponse:
    """The page: the open items of the reconciliation list, oldest first."""
    done = ""
    item = session.get(reconciliation.ReconciliationItem, attached) if attached is not None else None
    if item is not None and item.status != reconciliation.Status.OPEN:
        t = translator(page_language(request, principal))
        shown = reconciliation.describe(session, item)
        patient = shown["patient"] or {"shown_name": "", "patient_id": ""}
        if item.order is not None:
            # a file item has no study yet when the page comes back: the order names the accession
            accession = (shown["study"] or {}).get("accession_number") or session.get(ImagingOrder, item.order).accession_number
            done = t("technologist.reconcile.attached_order", id=item.id, accession=accession,
                     name=patient["shown_name"] or patient["patient_id"])
        else:
            done = t("technologist.reconcile.attached_patient", id=item.id, name=patient["shown_name"],
                     patient_id=patient["patient_id"])
    return _page(request, principal, session, done=done)


@router.post(PAGE + "/reconciliation/{item_id}/attach")
def attach(item_id: RowId, request: Request, principal: TechnologistForm, session: SessionDep,
           services: ServicesDep, order: Annotated[int | None, Form()] = None,
           accession_number: Annotated[str, Form()] = "", patient_id: Annotated[str, Form()] = "") -> Response:
    """Attach one item as the form says (a candidate's button, an accession number or a
    Patient ID), in the user's name; back to the page, which says what was done."""
    try:
        item = reconciliation.find_item(session, item_id)
        target, patient = reconciliation.find_target(
            session, order=order, accession_number=accession_number.strip() or None,
            patient_id=patient_id.strip() or None)
        reconciliation.attach(session, item, order=target, patient=patient, by=principal.name,
                              user_kind=principal.kind, address=request.client.host if request.client else "",
                              notify=services.notify)
    except LookupError as exc:
        return _page(request, principal, session, error=str(exc), status=HTTPStatus.NOT_FOUND)
    except reconciliation.ReconcileError as exc:
        return _page(request, principal, session, error=str(exc), status=HTTPStatus.CONFLICT)
    request.state.audited = True  # attach() recorded it, in the user's name
    return RedirectResponse(f"{PAGE}?attached={item_id}#reconciliation", status_code=HTTPStatus.SEE_OTHER)


def _page(request: Request, principal: Principal, session: Any, *, done: str = "",
          error: str = "", status: int = HTTPStatus.OK) -> HTMLResponse:
    total, rows = reconciliation.items(session, limit=SHOWN)
    t = translator(page_language(request, principal))
    return render(request, "technologist.html", status=status, principal=principal, total=total,
                  items=[reconciliation.describe(session, item) for item in rows], done=done,
                  error=t("technologist.reconcile.failed", reason=error) if error else "")

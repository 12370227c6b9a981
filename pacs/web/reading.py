"""The reading pages (阅片工作台): the reading worklist at ``/reading`` and the report editor at
``/reading/{order}``, for radiologists.

Server-rendered shells with the project's own script (``static/reading.js``), which talks to the
JSON API (:mod:`pacs.reporting.api`): the worklist (``/api/reading``, refreshed every
:data:`REFRESH_SECONDS`), a patient's priors, the report's claim, draft (saved as the
radiologist types), templates, phrases, key images (the study's thumbnails over DICOMweb,
``…/thumbnail``), signature, verification and amendment. The viewer opens the study in a
window of its own (``/viewer/viewer?StudyInstanceUIDs=…``), for a second monitor. Every text
comes from the message catalogues (``reading.*``); every action has a key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from pacs.auth.access import Principal
from pacs.auth.pages import page_language, render, require_page
from pacs.auth.roles import Permission
from pacs.http import RowId
from pacs.web.i18n import catalogue

router = APIRouter(tags=["reading"], include_in_schema=False)
REFRESH_SECONDS = 20  # the worklist asks again this often
AUTOSAVE_MS = 800  # the editor saves once typing pauses this long

Radiologist = Annotated[Principal, Depends(require_page(Permission.REPORTS_WRITE))]


def _page(request: Request, principal: Principal, template: str, **context: object) -> HTMLResponse:
    lang = page_language(request, principal)
    settings = {"refresh_seconds": REFRESH_SECONDS, "autosave_ms": AUTOSAVE_MS, "user": principal.name,
                "attending": principal.may(Permission.REPORTS_VERIFY), "lang": lang, **context}
    return render(request, template, principal=principal, messages=dict(catalogue(lang)), settings=settings)


@router.get("/reading")
def reading(request: Request, principal: Radiologist) -> HTMLResponse:
    """The reading worklist: what waits for a report, STAT and emergencies first."""
    return _page(request, principal, "reading.html")


@router.get("/reading/{order_id}")
def editor(order_id: RowId, request: Request, principal: Radiologist) -> HTMLResponse:
    """The report editor of one order, beside the viewer."""
    return _page(request, principal, "reading_editor.html", order=order_id)

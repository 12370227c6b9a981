"""The capture page (影像采集) at ``/capture``: photos, scans, PDFs and videos for an exam, from a
tablet's or a workstation's browser.

Server-rendered like the technologist's page: today's exams (steps scheduled today, orders not
ended) as a list to pick from, or a field for the accession number (a barcode scanner types it
and Enter); a file field that takes several files and, on a tablet, the camera; thumbnails of
what was picked (``/static/capture.js``, the page's only script, which only draws them) to check
before sending. The form posts to the capture service (:mod:`pacs.capture.service`) like
``POST /api/capture``: the page then says what was stored, or why not, or that the files wait on
the reconciliation list. Texts come from the message catalogues (``capture.*``), a refusal's or
a queued file's reason too (``capture.reason.*``, :mod:`pacs.capture.reasons`).
"""

from __future__ import annotations

from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from sqlmodel import Session, col, select

from pacs.archive.reconciliation import shown_name
from pacs.auth.access import Principal
from pacs.auth.pages import page_language, render, require_page
from pacs.auth.roles import Permission
from pacs.capture.api import MAX_FILE_BYTES
from pacs.capture.reasons import reason_text
from pacs.capture.service import OrderEnded, Queued, StoreFailed, Unconvertible, UnknownOrder
from pacs.http import ServicesDep, SessionDep
from pacs.registry.device_rules import ENDED_ORDERS
from pacs.registry.models import ImagingOrder, Patient, ProcedureStep
from pacs.web.i18n import translator
from pacs.web.technologist import page_form

router = APIRouter(tags=["capture"], include_in_schema=False)
PAGE = "/capture"
SHOWN = 200  # exams of the day on the page

CapturePage = Annotated[Principal, Depends(require_page(Permission.IMAGES_WRITE))]
CaptureForm = Annotated[Principal, Depends(page_form(Permission.IMAGES_WRITE))]


def todays_exams(session: Session, day: str) -> list[dict[str, Any]]:
    """The orders with a step scheduled on ``day`` (YYYYMMDD) that have not ended, by start."""
    rows = session.exec(select(ImagingOrder, ProcedureStep, Patient)
                        .join(ProcedureStep, col(ProcedureStep.order) == ImagingOrder.id)
                        .join(Patient, col(Patient.id) == ImagingOrder.patient)
                        .where(ProcedureStep.start_date == day)
                        .where(col(ImagingOrder.status).not_in(ENDED_ORDERS))
                        .order_by(col(ProcedureStep.start), col(ImagingOrder.id)).limit(SHOWN)).all()
    exams, seen = [], set()
    for order, step, patient in rows:
        if order.id in seen:
            continue
        seen.add(order.id)
        exams.append({"order": order.id, "accession_number": order.accession_number, "status": order.status,
                      "procedure": order.procedure_text or step.description, "modality": step.modality,
                      "room": step.station_name or step.station_ae_title, "name": shown_name(patient),
                      "patient_id": patient.patient_id,
                      "start": step.start.strftime("%H:%M") if step.start is not None else ""})
    return exams


@router.get(PAGE)
def capture_page(request: Request, principal: CapturePage, session: SessionDep,
                 services: ServicesDep) -> HTMLResponse:
    return _page(request, principal, session, services)


@router.post(PAGE)
async def capture_upload(request: Request, principal: CaptureForm, services: ServicesDep,
                         file: Annotated[list[UploadFile], File()],
                         order: Annotated[int | None, Form()] = None,
                         accession_number: Annotated[str, Form(max_length=16)] = "",
                         device: Annotated[str, Form(max_length=16)] = "") -> HTMLResponse:
    """Store the picked files for the exam picked (or typed); the page says what became of them."""
    t = translator(page_language(request, principal))
    files = [(part.filename or "", await part.read()) for part in file
             if part.filename and (part.size is None or part.size <= MAX_FILE_BYTES)]
    too_big = [part.filename for part in file if part.size is not None and part.size > MAX_FILE_BYTES]
    accession = accession_number.strip()
    error, status, results = "", HTTPStatus.OK, []
    if too_big:
        error, status = t("capture.too_big", files=", ".join(n or "" for n in too_big)), HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    elif not files:
        error, status = t("capture.no_files"), HTTPStatus.BAD_REQUEST
    elif order is None and not accession:
        error, status = t("capture.no_exam"), HTTPStatus.BAD_REQUEST
    else:
        capture = services.capture
        assert capture is not None
        try:
            chosen = capture.device(device or None)
            results = await run_in_threadpool(capture.capture, files, device=chosen,
                                              order=None if accession else order, accession_number=accession,
                                              by=principal.name)
        except Unconvertible as exc:
            error, status = reason_text(exc, t), HTTPStatus.BAD_REQUEST
        except UnknownOrder as exc:
            error, status = reason_text(exc, t), HTTPStatus.NOT_FOUND
        except OrderEnded as exc:
            error, status = reason_text(exc, t), HTTPStatus.CONFLICT
        except StoreFailed as exc:
            error, status = reason_text(exc, t), HTTPStatus.INSUFFICIENT_STORAGE
    stored = [r for r in results if not isinstance(r, Queued)]
    queued = [r for r in results if isinstance(r, Queued)]
    done = ""
    if stored:
        done = t("capture.stored", count=len(stored), accession=stored[0].accession_number)
    elif queued:
        done = t("capture.queued", count=len(queued), items=", ".join(str(q.item) for q in queued),
                 reason=reason_text(queued[0].reason, t, queued[0].code, queued[0].values))
    with services.db.session(read_only=True) as session:
        return _page(request, principal, session, services, done=done, stored=stored, queued=queued,
                     error=t("capture.failed", reason=error) if error else "", status=status,
                     kept={"order": order, "accession": accession, "device": device} if error else None)


def _page(request: Request, principal: Principal, session: Session, services: Any, *, done: str = "",
          error: str = "", stored: list | None = None, queued: list | None = None,
          status: int = HTTPStatus.OK, kept: dict[str, Any] | None = None) -> HTMLResponse:
    """The page; after a refusal, ``kept`` (the exam picked or typed, the device) is shown again."""
    day = datetime.now(services.settings.zone).strftime("%Y%m%d")
    devices = services.capture.devices().names if services.capture is not None else []
    return render(request, "capture.html", status=status, principal=principal, exams=todays_exams(session, day),
                  day=f"{day[:4]}-{day[4:6]}-{day[6:]}", devices=devices, done=done, error=error,
                  stored=stored or [], queued=queued or [],
                  kept=kept or {"order": None, "accession": "", "device": "CAPTURE"})

"""Shared links in use (:mod:`pacs.auth.links`): making and revoking them, and what they open.

- ``POST /api/links`` ``{"study_instance_uid", "purpose": "consultation"|"film", "hours"}``
  makes a link (201 with its URL); ``GET /api/links?study=`` lists a study's links;
  ``POST /api/links/{id}/revoke`` ends one. For users who write reports (radiologists).
- ``/share?StudyInstanceUIDs=…``: the same as a page, opened from the viewer (远程会诊, Alt+S).
- ``/c/{token}``: a consultation link. Anyone holding it gets the link's cookie and the viewer
  on its study; the gate then lets that browser read that study and nothing else.
- ``/s/{token}``: cloud film (云胶片), a page for a phone: the patient, the exam, the final
  report's text (the newest final or corrected version; nothing before one is signed) and its
  key images, rendered by WADO-RS under the same cookie.

An expired, altered or revoked link opens a page saying so (410 Gone). Making, opening and
revoking a link are audited with the user (or ``link:{id}``) and the client's address.
"""

from __future__ import annotations

from datetime import timedelta
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlmodel import col, select

from pacs.archive.index import Study
from pacs.archive.reconciliation import shown_name
from pacs.audit import codes
from pacs.audit.codes import Action
from pacs.audit.service import Event
from pacs.auth import links
from pacs.auth.access import Principal, gate_of, public, require
from pacs.auth.pages import render, require_page, secure
from pacs.auth.roles import Permission
from pacs.db import utcnow
from pacs.http import ServicesDep
from pacs.registry.models import ImagingOrder, Patient, ProcedureStep
from pacs.reporting.models import Report, ReportVersion, VersionStatus
from pacs.web.film import study_facts

router = APIRouter(tags=["links"])
pages = APIRouter(tags=["links"], include_in_schema=False)

SHARE = Permission.REPORTS_WRITE  # who may share a study: those who read and report it
ShareUser = Annotated[Principal, Depends(require(SHARE))]
SharePage = Annotated[Principal, Depends(require_page(SHARE))]
DURATIONS = (1, 4, 24, 72, 168)  # hours offered on the page
UID = r"^[0-9]+(\.[0-9]+)*$"


class LinkIn(BaseModel):
    study_instance_uid: str = Field(pattern=UID, max_length=64)
    purpose: str = Field(default=links.CONSULTATION, pattern=f"^({'|'.join(links.PURPOSES)})$")
    hours: float = Field(default=24, ge=links.MIN_TTL.total_seconds() / 3600, le=links.MAX_TTL.days * 24)


class LinkOut(BaseModel):
    id: str
    study_instance_uid: str
    purpose: str
    created_by: str
    created_at: str
    expires_at: str
    revoked_at: str | None = None
    url: str | None = None  # given once, when the link is made


def _out(link: links.SharedLink, url: str | None = None) -> LinkOut:
    return LinkOut(id=link.id, study_instance_uid=link.study_instance_uid, purpose=link.purpose,
                   created_by=link.created_by, created_at=link.created_at.isoformat(),
                   expires_at=link.expires_at.isoformat(),
                   revoked_at=link.revoked_at.isoformat() if link.revoked_at else None, url=url)


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def _audit(request: Request, event: Event) -> None:
    request.state.audited = True
    auditor = request.app.state.services.audit
    if auditor is not None:
        auditor.record(event)


@router.post("/api/links", status_code=HTTPStatus.CREATED, response_model=LinkOut,
             summary="Share a study through a link that expires")
def create_link(body: LinkIn, request: Request, services: ServicesDep, principal: ShareUser) -> LinkOut:
    with services.db.session() as session:
        if session.exec(select(Study.id).where(col(Study.study_instance_uid) == body.study_instance_uid)).first() is None:
            raise HTTPException(HTTPStatus.NOT_FOUND, f"the archive holds no study {body.study_instance_uid}")
        try:
            grant, url = links.issue(services.settings, body.study_instance_uid, body.purpose,
                                     timedelta(hours=body.hours), session=session, created_by=principal.name,
                                     base_url=str(request.base_url))
        except links.LinkError as exc:
            raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        session.flush()
        made = session.get(links.SharedLink, grant.link_id)
        assert made is not None
        out = _out(made, url)
    _audit(request, Event(codes.EXPORT, Action.CREATE, user=principal.name, user_kind=principal.kind,
                          address=_address(request), target=f"link:{out.id}", studies=[body.study_instance_uid],
                          resolve_patients=True,
                          description=f"{body.purpose} link made, valid until {out.expires_at}",
                          details={"link": out.id, "purpose": body.purpose, "hours": body.hours}))
    return out


@router.get("/api/links", response_model=list[LinkOut], summary="A study's shared links",
            dependencies=[Depends(require(SHARE))])
def list_links(services: ServicesDep, study: Annotated[str, Query(pattern=UID, max_length=64)]) -> list[LinkOut]:
    with services.db.session(read_only=True) as session:
        rows = session.exec(select(links.SharedLink).where(col(links.SharedLink.study_instance_uid) == study)
                            .order_by(col(links.SharedLink.created_at).desc())).all()
        return [_out(row) for row in rows]


def qr_svg(text: str, size: float = 160.0) -> bytes:
    """``text`` as a QR code (ISO/IEC 18004, error correction M) in SVG, ``size`` points a side."""
    from reportlab.graphics import renderSVG
    from reportlab.graphics.barcode.qr import QrCodeWidget
    from reportlab.graphics.shapes import Drawing

    widget = QrCodeWidget(text, barLevel="M")
    x0, y0, x1, y1 = widget.getBounds()
    drawing = Drawing(size, size, transform=[size / (x1 - x0), 0, 0, size / (y1 - y0), 0, 0])
    drawing.add(widget)
    return renderSVG.drawToString(drawing).encode()


@router.get("/api/links/{link_id}/qr.svg", summary="A shared link as a QR code (SVG)",
            response_class=Response, responses={200: {"content": {"image/svg+xml": {}}}},
            dependencies=[Depends(require(SHARE))])
def link_qr(link_id: Annotated[str, PathParam(max_length=32)], request: Request, services: ServicesDep) -> Response:
    """For a phone to scan from the screen (cloud film handed to the patient)."""
    with services.db.session(read_only=True) as session:
        link = session.get(links.SharedLink, link_id)
        if link is None or link.revoked_at is not None or link.expires_at <= utcnow():
            raise HTTPException(HTTPStatus.NOT_FOUND, f"no shared link {link_id} that still opens")
        url = links.url_of(services.settings, link, base_url=str(request.base_url))
    return Response(qr_svg(url), media_type="image/svg+xml", headers={"Cache-Control": "no-store"})


@router.post("/api/links/{link_id}/revoke", response_model=LinkOut, summary="End a shared link now")
def revoke_link(link_id: Annotated[str, PathParam(max_length=32)], request: Request, services: ServicesDep,
                principal: ShareUser) -> LinkOut:
    with services.db.session() as session:
        link = links.revoke(session, link_id, by=principal.name)
        if link is None:
            raise HTTPException(HTTPStatus.NOT_FOUND, f"no shared link {link_id}")
        out = _out(link)
    gate_of(request).links.forget(link_id)
    _audit(request, Event(codes.SECURITY_ALERT, Action.UPDATE, user=principal.name, user_kind=principal.kind,
                          address=_address(request), target=f"link:{link_id}", studies=[out.study_instance_uid],
                          description=f"{out.purpose} link revoked"))
    return out


# -- pages ------------------------------------------------------------------------------------

@pages.get("/share")
def share_page(request: Request, principal: SharePage, StudyInstanceUIDs: str = "") -> Response:
    uid = StudyInstanceUIDs.split(",")[0].strip()
    study = study_facts(request, uid) if uid else None
    response = render(request, "share.html", status=HTTPStatus.OK if study else HTTPStatus.NOT_FOUND,
                      principal=principal, study=study, uid=uid, durations=DURATIONS)
    response.headers["Cache-Control"] = "no-store"
    return response


def _opened(request: Request, token: str, purpose: str) -> links.Grant | None:
    """The link's grant, its opening audited; None (and audited as refused) where it no longer opens."""
    grant = gate_of(request).links.grant(token)
    address = _address(request)
    if grant is None or grant.purpose != purpose:
        _audit(request, Event(codes.USER_AUTHENTICATION, Action.EXECUTE, codes.Outcome.MINOR_FAILURE,
                              types=(codes.LOGIN,), user="link", user_kind="link", address=address,
                              description=f"a {purpose} link that is expired, revoked or not valid was opened"))
        return None
    _audit(request, Event(codes.USER_AUTHENTICATION, Action.EXECUTE, types=(codes.LOGIN,), user=grant.user,
                          user_kind="link", address=address, studies=[grant.study_instance_uid],
                          resolve_patients=True, description=f"{purpose} link opened",
                          details={"link": grant.link_id}))
    return grant


def _with_cookie(response: Response, request: Request, token: str, grant: links.Grant) -> Response:
    seconds = max(int((grant.expires - utcnow()).total_seconds()), 1)
    response.set_cookie(links.COOKIE, token, max_age=seconds, httponly=True, samesite="lax", secure=secure(request),
                        path="/")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the token is in the URL
    return response


def _gone(request: Request) -> Response:
    response = render(request, "link_gone.html", status=HTTPStatus.GONE)
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@pages.get("/c/{token}", dependencies=[Depends(public)])
def consultation(token: str, request: Request) -> Response:
    """A consultation link: the viewer on its study, for whoever holds it."""
    grant = _opened(request, token, links.CONSULTATION)
    if grant is None:
        return _gone(request)
    target = f"/viewer/viewer?StudyInstanceUIDs={grant.study_instance_uid}"
    return _with_cookie(RedirectResponse(target, status_code=HTTPStatus.SEE_OTHER), request, token, grant)


def final_report(request: Request, study_uid: str) -> dict[str, Any] | None:
    """The newest final or corrected version of the study's report (OBR-25 F, C), else None."""
    with request.app.state.services.db.session(read_only=True) as session:
        version = session.exec(
            select(ReportVersion).join(Report, col(Report.id) == col(ReportVersion.report))
            .where(col(Report.study_instance_uid) == study_uid,
                   col(ReportVersion.status).in_([VersionStatus.FINAL, VersionStatus.CORRECTED]))
            .order_by(col(ReportVersion.signed_at).desc(), col(ReportVersion.number).desc())).first()
        if version is None:
            return None
        zone = request.app.state.services.settings.zone
        return {"findings": version.findings, "impression": version.impression,
                "author": version.verifier_name or version.author_name or version.author,
                "signed": version.signed_at.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
                "corrected": version.status == VersionStatus.CORRECTED,
                "images": [_rendered_url(study_uid, image) for image in version.key_images
                           if image.get("series") and image.get("sop")]}


def _rendered_url(study_uid: str, image: dict[str, str]) -> str:
    """WADO-RS rendered (PS3.18 10.4.1.1.5) of a key image, sized for a phone."""
    base = f"/dicomweb/studies/{study_uid}/series/{image['series']}/instances/{image['sop']}"
    frame = str(image.get("frame") or "").strip()
    return f"{base}/frames/{frame}/rendered?viewport=1024,1024" if frame.isdigit() else f"{base}/rendered?viewport=1024,1024"


def ordered_exam(request: Request, study_uid: str) -> dict[str, Any] | None:
    """The exam as ordered, before its images arrive (a slip's link is printed at registration):
    the patient, the procedure, the scheduled day; None where no order has this study UID."""
    with request.app.state.services.db.session(read_only=True) as session:
        order = session.exec(select(ImagingOrder).where(col(ImagingOrder.study_instance_uid) == study_uid)).first()
        if order is None:
            return None
        patient = session.get(Patient, order.patient)
        step = session.exec(select(ProcedureStep).where(col(ProcedureStep.order) == order.id)
                            .order_by(col(ProcedureStep.id))).first()
        day = step.start_date if step else ""
        return {"uid": study_uid, "patient": shown_name(patient), "patient_id": patient.patient_id if patient else "",
                "date": day, "date_shown": f"{day[:4]}-{day[4:6]}-{day[6:]}" if len(day) == 8 else "",
                "description": order.procedure_text, "accession": order.accession_number,
                "modalities": [step.modality] if step and step.modality else [], "series": []}


@pages.get("/s/{token}", dependencies=[Depends(public)])
def cloud_film(token: str, request: Request) -> Response:
    """Cloud film: the exam, its final report and key images, on a phone."""
    grant = _opened(request, token, links.FILM)
    if grant is None:
        return _gone(request)
    study = study_facts(request, grant.study_instance_uid) or ordered_exam(request, grant.study_instance_uid)
    if study is None:
        return _gone(request)
    zone = request.app.state.services.settings.zone
    response = render(request, "cloud_film.html", study=study, report=final_report(request, grant.study_instance_uid),
                      until=grant.expires.astimezone(zone).strftime("%Y-%m-%d %H:%M"))
    return _with_cookie(response, request, token, grant)

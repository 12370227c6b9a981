"""The film page at ``/film?StudyInstanceUIDs=…``: a study's series, a layout, a window, copies
and a printer; printing goes through ``POST /api/film`` (:mod:`pacs.film.api`).

Opened from the viewer (its 胶片打印 button, Alt+F) in a window of its own, for a user with
:attr:`~pacs.auth.roles.Permission.STUDIES_READ`. The windows offered are the images' own and
the presets of ``window_presets.yaml`` for the study's modalities.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlmodel import col, select

from pacs.archive.index import Series, Study
from pacs.archive.reconciliation import shown_name
from pacs.auth.access import Principal
from pacs.auth.pages import render, require_page
from pacs.auth.roles import Permission
from pacs.film.print_management import MAX_COLUMNS, MAX_COPIES, MAX_ROWS
from pacs.registry.models import Patient
from pacs.web.window_presets import load_window_presets

router = APIRouter(tags=["film"], include_in_schema=False)
FilmUser = Annotated[Principal, Depends(require_page(Permission.STUDIES_READ))]
# The layouts offered (columns × rows), as film printers commonly take them (PS3.3 C.13.3).
LAYOUTS = ("1x1", "1x2", "2x1", "2x2", "2x3", "3x3", "3x4", "3x5", "4x4", "4x5")


def _date(value: str) -> str:
    """A DA value (PS3.5 6.2) as people read it: 2026-12-06."""
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def study_facts(request: Request, study_uid: str) -> dict[str, Any] | None:
    """The study's patient, exam and series with images, or None where the archive has no such study."""
    services = request.app.state.services
    with services.db.session(read_only=True) as session:
        study = session.exec(select(Study).where(col(Study.study_instance_uid) == study_uid)).first()
        if study is None:
            return None
        patient = session.get(Patient, study.patient)
        series = session.exec(select(Series).where(col(Series.study) == study.id)
                              .order_by(col(Series.series_number), col(Series.id))).all()
        return {"uid": study.study_instance_uid, "patient": shown_name(patient),
                "patient_id": patient.patient_id if patient else "", "date": study.study_date,
                "date_shown": _date(study.study_date),
                "description": study.description, "accession": study.accession_number,
                "modalities": study.modalities.split("\\") if study.modalities else [],
                "series": [{"uid": s.series_instance_uid, "number": s.series_number, "modality": s.modality,
                            "description": s.description, "count": s.number_of_instances,
                            "body_part": s.body_part} for s in series]}


@router.get("/film")
def film_page(request: Request, principal: FilmUser, StudyInstanceUIDs: str = "") -> Response:
    uid = StudyInstanceUIDs.split(",")[0].strip()
    study = study_facts(request, uid) if uid else None
    if study is None:
        return render(request, "film.html", status=HTTPStatus.NOT_FOUND, principal=principal, study=None, uid=uid)
    settings = request.app.state.services.settings
    presets, _problems = load_window_presets(settings.mappings_dir)
    windows = [(modality, p) for modality in study["modalities"] for p in presets.get(modality, [])]
    response = render(request, "film.html", principal=principal, study=study, uid=uid, layouts=LAYOUTS,
                      windows=windows, printers=settings.printers, max_copies=MAX_COPIES,
                      max_layout=f"{MAX_COLUMNS}x{MAX_ROWS}")
    response.headers["Cache-Control"] = "no-store"  # the patient's name
    return response

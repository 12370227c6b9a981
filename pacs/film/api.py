"""/api/film: print a study's images on a DICOM film printer (:mod:`pacs.film.print_management`).

``GET /api/film/printers`` lists the printers of ``[[printers]]``; ``POST /api/film`` prints::

    {"study_instance_uid": "1.2.3", "series": ["1.2.3.4"], "layout": "2x2",
     "window": {"center": 40, "width": 400}, "copies": 1, "printer": "FILM1"}

``images`` (``[{"series", "instance", "frame"}]``) names the images one by one instead of
``series``; with neither, every image of the study is printed. ``layout`` is columns × rows
(Image Display Format STANDARD\\C,R); images beyond one film go on the next. Answers: 200 with
what was printed; 404 for a study or image the archive does not hold; 422 for a request the
printing can't follow (a layout, a frame, too many films, a printer not configured); 502 when
the printer refuses a step, 503 when it can't be reached, each with the reason. Printing is
audited as an Export of the study (PS3.15 A.5.3.6, 110106).
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field, field_validator

from pacs.archive.dicomweb import wado
from pacs.archive.dicomweb.media import DicomwebError
from pacs.assets import font_path
from pacs.audit import codes
from pacs.audit.codes import Action, Outcome
from pacs.audit.service import Event
from pacs.auth.access import Principal, require
from pacs.auth.roles import Permission
from pacs.film.print_management import (
    MAX_COLUMNS,
    MAX_COPIES,
    MAX_ROWS,
    Job,
    PrinterUnavailable,
    PrintRefused,
    Window,
    print_job,
)
from pacs.http import ServicesDep

router = APIRouter(prefix="/api/film", tags=["film"])
UID = r"^[0-9]+(\.[0-9]+)*$"
LAYOUT = re.compile(r"^([1-9])\s*[x×]\s*([1-9])$")

PrintUser = Annotated[Principal, Depends(require(Permission.STUDIES_READ))]


class ImageIn(BaseModel):
    series: str = Field(pattern=UID, max_length=64)
    instance: str = Field(pattern=UID, max_length=64)
    frame: int = Field(default=1, ge=1, le=100_000)


class WindowIn(BaseModel):
    center: float
    width: float = Field(gt=0)


class FilmIn(BaseModel):
    study_instance_uid: str = Field(pattern=UID, max_length=64)
    series: list[str] = Field(default_factory=list, max_length=500)
    images: list[ImageIn] = Field(default_factory=list, max_length=500)
    layout: str = Field(default="1x1", description=f"columns x rows, 1x1 to {MAX_COLUMNS}x{MAX_ROWS}")
    window: WindowIn | None = None
    copies: int = Field(default=1, ge=1, le=MAX_COPIES)
    annotate: bool = Field(default=True, description="the patient, study, window and image burnt into the corners")
    printer: str = Field(default="", max_length=64, description="a printer's name or AE title; the first one if empty")

    @field_validator("layout")
    @classmethod
    def _layout(cls, value: str) -> str:
        match = LAYOUT.match(value.strip())
        if not match or int(match.group(1)) > MAX_COLUMNS or int(match.group(2)) > MAX_ROWS:
            raise ValueError(f"layout is columns x rows, 1x1 to {MAX_COLUMNS}x{MAX_ROWS}")
        return f"{match.group(1)}x{match.group(2)}"

    @field_validator("series")
    @classmethod
    def _series(cls, value: list[str]) -> list[str]:
        for uid in value:
            if not re.match(UID, uid) or len(uid) > 64:
                raise ValueError(f"{uid!r} is not a Series Instance UID")
        return value


class FilmOut(BaseModel):
    printer: str
    film_session: str
    films: int
    images: int
    warnings: list[str]


class PrinterOut(BaseModel):
    name: str
    ae_title: str
    film_size: str
    medium: str


@router.get("/printers", response_model=list[PrinterOut], dependencies=[Depends(require(Permission.STUDIES_READ))])
def printers(services: ServicesDep) -> list[PrinterOut]:
    """The film printers of ``[[printers]]``, the default first."""
    return [PrinterOut(name=p.label, ae_title=p.ae_title, film_size=p.film_size, medium=p.medium)
            for p in services.settings.printers]


def _chosen(items: list[wado.Located], body: FilmIn) -> list[tuple[wado.Located, int]]:
    """The images ``body`` names, in its order (``images``), in the archive's order (``series``,
    or the whole study); objects without pixel data (SR, PDF) left out."""
    images = [item for item in items if item.rows]
    if body.images:
        by_uid = {(item.series_uid, item.sop_instance_uid): item for item in images}
        chosen = []
        for image in body.images:
            item = by_uid.get((image.series, image.instance))
            if item is None:
                raise HTTPException(HTTPStatus.NOT_FOUND, f"the study holds no image {image.instance} in series "
                                                          f"{image.series}")
            if image.frame > item.frames:
                raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, f"image {image.instance} has {item.frames} "
                                                                     f"frame(s), not a frame {image.frame}")
            chosen.append((item, image.frame))
        return chosen
    if body.series:
        missing = set(body.series) - {item.series_uid for item in images}
        if missing:
            raise HTTPException(HTTPStatus.NOT_FOUND, f"the study holds no images in series {', '.join(sorted(missing))}")
        order = {uid: i for i, uid in enumerate(body.series)}
        images = sorted((item for item in images if item.series_uid in order), key=lambda i: order[i.series_uid])
    return [(item, 1) for item in images]


def _audit(request: Request, principal: Principal, body: FilmIn, printer: str, outcome: int, what: str) -> None:
    request.state.audited = True
    auditor = request.app.state.services.audit
    if auditor is not None:
        auditor.record(Event(codes.EXPORT, Action.READ, outcome, user=principal.name, user_kind=principal.kind,
                             address=request.client.host if request.client else "", target=printer,
                             description=what, studies=[body.study_instance_uid], resolve_patients=True,
                             details={"layout": body.layout, "copies": body.copies}))


@router.post("", response_model=FilmOut, summary="Print images on a DICOM film printer")
def print_film(body: FilmIn, request: Request, services: ServicesDep, principal: PrintUser) -> Any:
    settings = services.settings
    if not settings.printers:
        raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, "no film printer is configured ([[printers]] in the "
                                                             "configuration file)")
    printer = settings.printer(body.printer)
    if printer is None:
        known = ", ".join(p.label for p in settings.printers)
        raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, f"no printer is called {body.printer!r}; there are: {known}")
    areas = services.archive.readable
    try:
        with services.db.session(read_only=True) as session:
            located = wado.locate(session, areas, study=body.study_instance_uid)
    except DicomwebError as exc:
        raise HTTPException(exc.status, exc.message) from None
    chosen = _chosen(located, body)
    if not chosen:
        raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, "the images chosen hold no pixel data to print")
    columns, rows = (int(n) for n in body.layout.split("x"))
    reader = wado.Wado(services.db, areas, "")
    first = reader.dataset(chosen[0][0])
    label = " ".join(str(first.get(k, "") or "") for k in ("AccessionNumber", "PatientID")).strip()
    try:
        job = Job(images=[(reader.dataset(item), frame) if i else (first, frame)
                          for i, (item, frame) in enumerate(chosen)],
                  columns=columns, rows=rows, copies=body.copies, label=label, annotate=body.annotate,
                  font=font_path(settings.assets_dir),
                  window=Window(body.window.center, body.window.width) if body.window else None)
    except ValueError as exc:
        raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
    try:
        printed = print_job(settings, printer, job)
    except PrinterUnavailable as exc:
        _audit(request, principal, body, printer.ae_title, Outcome.SERIOUS_FAILURE, str(exc))
        raise HTTPException(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
    except PrintRefused as exc:
        _audit(request, principal, body, printer.ae_title, Outcome.MINOR_FAILURE, str(exc))
        raise HTTPException(HTTPStatus.BAD_GATEWAY, str(exc)) from None
    except ValueError as exc:  # a frame the object does not have, pixel data that can't be decoded
        raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
    _audit(request, principal, body, printer.ae_title, Outcome.SUCCESS,
           f"{printed.films} film(s) of {printed.images} image(s) printed on {printed.printer} ({body.layout})")
    return FilmOut(printer=printed.printer, film_session=printed.film_session, films=printed.films,
                   images=printed.images, warnings=printed.warnings)

"""/api/reading and /api/reports: the reading worklist, and a report's claim, draft, signature,
verification, amendment and versions (:mod:`pacs.reporting.service`).

Refusals are plain: 404 for an order or version that does not exist, 409 for what the report's
state does not allow now (a claim someone else holds, a stale draft revision, a second
signature), 422 for what is incomplete (an empty report signed, an amendment without a
reason). A new version's deliveries are enqueued in the request's unit of work; the outbox is
woken once it has committed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Query, Request, Response
from pydantic import AfterValidator, BaseModel, Field
from sqlmodel import Session, col, select

from pacs.archive.index import Instance, Series, Study
from pacs.archive.reconciliation import shown_name as patient_shown_name
from pacs.auth.access import Principal, require
from pacs.auth.roles import Permission
from pacs.db import utcnow
from pacs.http import RowId, ServicesDep, SessionDep
from pacs.registry.models import ImagingOrder, Patient
from pacs.reporting import phrases, service, templates, worklist
from pacs.reporting.models import Report, ReportVersion
from pacs.reporting.service import Reader, ReportError

reading = APIRouter(prefix="/api/reading", tags=["reports"])
reports = APIRouter(prefix="/api/reports", tags=["reports"])

NUL = "\x00"


def _no_nul(value: str) -> str:
    if NUL in value:
        raise ValueError("text holds a NUL character (U+0000), which no report can hold")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
ShortText = Annotated[str, AfterValidator(_no_nul), Field(max_length=200)]


def reader_of(principal: Principal, request: Request) -> Reader:
    return Reader(name=principal.name, display_name=principal.display_name,
                  attending=principal.may(Permission.REPORTS_VERIFY), admin=principal.may(Permission.USERS_ADMIN),
                  kind=principal.kind, address=request.client.host if request.client else "")


def refused(exc: ReportError) -> HTTPException:
    return HTTPException(int(exc.status), exc.reason)


# -- shapes -----------------------------------------------------------------------------------

class KeyImage(BaseModel):
    series: ShortText
    sop: ShortText
    sop_class: ShortText
    frame: ShortText | None = None


class VersionPublic(BaseModel):
    number: int
    status: str  # HL7 OBR-25: P, F, C
    findings: str
    impression: str
    key_images: list[dict[str, str]]
    critical: bool
    critical_told: str
    critical_told_at: datetime | None
    author: str
    author_name: str
    signed_at: datetime
    verifier: str
    verifier_name: str
    verified_at: datetime | None
    reason: str


class VersionSummary(BaseModel):
    number: int
    status: str
    author_name: str
    verifier_name: str
    signed_at: datetime
    reason: str


class OrderHeader(BaseModel):
    order: int
    accession_number: str
    status: str
    patient_id: str
    patient_name: str
    sex: str
    age: str
    birth_date: str
    procedure_code: str
    procedure: str
    modality: str
    body_part: str
    priority: str
    department: str
    referring_physician: str
    reason: str
    study_instance_uid: str
    study_date: str


class ReportPublic(BaseModel):
    order: OrderHeader
    exists: bool
    status: str  # "" before the first claim, then draft, preliminary, final, corrected
    template: str
    claimed_by: str
    claimed_by_name: str
    claimed_at: datetime | None
    findings: str
    impression: str
    key_images: list[dict[str, str]]
    critical: bool
    critical_told: str
    critical_told_at: datetime | None
    draft_revision: int
    draft_saved_at: datetime | None
    current_version: int
    versions: list[VersionSummary]


class ClaimIn(BaseModel):
    take_over: bool = False  # an administrator takes over another user's claim


class DraftIn(BaseModel):
    revision: int = Field(ge=0, le=2**31 - 1, description="the draft revision this text was made from")
    findings: Text = ""
    impression: Text = ""
    key_images: list[KeyImage] | None = Field(default=None, max_length=service.MAX_KEY_IMAGES)
    critical: bool = False
    critical_told: ShortText = ""
    critical_told_at: datetime | None = None
    template: ShortText | None = None


class DraftSaved(BaseModel):
    draft_revision: int
    draft_saved_at: datetime | None


class AmendIn(BaseModel):
    reason: Text = ""


class SeriesImages(BaseModel):
    series_instance_uid: str
    modality: str
    series_number: int | None
    description: str
    body_part: str
    instances: list[dict[str, Any]]


class WorklistPublic(BaseModel):
    total: int
    items: list[dict[str, Any]]


# -- building the answers ---------------------------------------------------------------------

def header(session: Session, order: ImagingOrder, services: Any) -> OrderHeader:
    patient = session.get_one(Patient, order.patient)
    study = session.exec(select(Study).where(Study.order == order.id)).first()
    modality = worklist._modalities(session, [order.id]).get(order.id or 0, "")
    body_part = order.body_part or worklist._body_parts(session, [order.id]).get(order.id or 0, "")
    on = utcnow().astimezone(services.settings.zone).date()
    study_date = worklist._date(study.study_date) if study is not None else ""
    if study_date:
        on = datetime.fromisoformat(study_date).date()
    return OrderHeader(
        order=order.id or 0, accession_number=order.accession_number, status=order.status,
        patient_id=patient.patient_id, patient_name=patient_shown_name(patient), sex=patient.sex,
        age=service.age(patient.birth_date, on), birth_date=patient.birth_date.isoformat() if patient.birth_date else "",
        procedure_code=order.procedure_code, procedure=order.procedure_text or order.procedure_code,
        modality=modality, body_part=body_part, priority=order.priority.upper(), department=order.department,
        referring_physician=order.referring_physician.replace("^", " ").strip(), reason=order.reason,
        study_instance_uid=order.study_instance_uid, study_date=study_date)


def report_public(session: Session, order: ImagingOrder, services: Any) -> ReportPublic:
    report = service.report_of(session, order.id or 0) or Report(order=order.id or 0,
                                                                  study_instance_uid=order.study_instance_uid)
    signed = service.versions(session, report) if report.id else []
    return ReportPublic(
        order=header(session, order, services), exists=report.id is not None,
        status=report.status if report.id else "", template=report.template, claimed_by=report.claimed_by,
        claimed_by_name=service.shown_name(session, report.claimed_by), claimed_at=report.claimed_at,
        findings=report.findings, impression=report.impression, key_images=report.key_images,
        critical=report.critical, critical_told=report.critical_told, critical_told_at=report.critical_told_at,
        draft_revision=report.draft_revision, draft_saved_at=report.draft_saved_at,
        current_version=report.current_version,
        versions=[VersionSummary(number=v.number, status=v.status, author_name=v.author_name or v.author,
                                 verifier_name=v.verifier_name or v.verifier, signed_at=v.signed_at, reason=v.reason)
                  for v in signed])


def version_public(made: ReportVersion) -> VersionPublic:
    return VersionPublic(**made.model_dump(include=set(VersionPublic.model_fields)))


def _order(session: Session, order_id: int) -> ImagingOrder:
    try:
        return service.find_order(session, order_id)
    except ReportError as exc:
        raise refused(exc) from None


def _signed(request: Request, background: BackgroundTasks, services: Any) -> None:
    request.state.audited = True  # the service recorded it, in the user's name
    background.add_task(services.outbox.wake)  # after the commit: the deliveries are in the outbox


ReadReports = Depends(require(Permission.REPORTS_READ))
WriteReports = Annotated[Principal, Depends(require(Permission.REPORTS_WRITE))]
SignReports = Annotated[Principal, Depends(require(Permission.REPORTS_SIGN))]
VerifyReports = Annotated[Principal, Depends(require(Permission.REPORTS_VERIFY))]


# -- the reading worklist ---------------------------------------------------------------------

@reading.get("", response_model=WorklistPublic)
def reading_worklist(
    session: SessionDep, services: ServicesDep,
    principal: Annotated[Principal, Depends(require(Permission.REPORTS_READ))],
    modality: Annotated[str, Query(max_length=16)] = "",
    body_part: Annotated[str, Query(max_length=16)] = "",
    priority: Annotated[str, Query(max_length=16, description="STAT, ROUTINE, …, or urgent (STAT and emergencies)")] = "",
    claimed: Annotated[Literal["", "mine", "free"], Query()] = "",
    q: Annotated[str, Query(max_length=64, description="accession number, Patient ID or name")] = "",
    sort: Annotated[Literal["urgency", "waiting", "modality", "body_part"], Query()] = "urgency",
) -> WorklistPublic:
    """Studies waiting for a report: STAT and emergencies first, then the longest waiting."""
    found = worklist.rows(session, zone=services.settings.zone, modality=modality, body_part=body_part,
                          priority=priority, claimed=claimed, reader=principal.name, text=q, sort=sort)
    return WorklistPublic(total=len(found), items=[row.public() for row in found])


@reading.get("/{order_id}/priors", dependencies=[ReadReports])
def reading_priors(order_id: RowId, session: SessionDep) -> list[dict[str, Any]]:
    """The patient's other studies, newest first, each with its latest signed report."""
    return worklist.priors(session, _order(session, order_id))


# -- phrases (before /{order_id}, which would take their path) --------------------------------

class PhraseIn(BaseModel):
    abbreviation: ShortText
    title: ShortText = ""
    text: Text
    modality: ShortText = ""


class PhrasesPublic(BaseModel):
    department: list[dict[str, Any]]
    mine: list[dict[str, Any]]
    problems: list[str]  # what is wrong with report_phrases.yaml, when it offers none


@reports.get("/phrases", response_model=PhrasesPublic)
def list_phrases(session: SessionDep, services: ServicesDep,
                 principal: Annotated[Principal, Depends(require(Permission.REPORTS_WRITE))],
                 modality: Annotated[str, Query(max_length=16)] = "") -> PhrasesPublic:
    """The department's phrases for ``modality`` and the user's own."""
    shared, problems = phrases.load_report_phrases(services.settings.mappings_dir)
    return PhrasesPublic(department=[p.public() for p in phrases.department(shared, modality)],
                         mine=[p.public() for p in phrases.own(session, principal.name, modality)],
                         problems=[_relative(p, services) for p in problems])


@reports.post("/phrases", status_code=201)
def add_phrase(body: PhraseIn, session: SessionDep, principal: WriteReports) -> dict[str, Any]:
    """Keep a phrase of one's own; 409 when the abbreviation is taken, 422 when it is malformed."""
    try:
        made = phrases.add(session, principal.name, abbreviation=body.abbreviation, title=body.title,
                           text=body.text, modality=body.modality)
    except phrases.PhraseRefused as exc:
        raise HTTPException(409 if "already" in str(exc) else 422, str(exc)) from None
    return phrases.Phrase(abbreviation=made.abbreviation, title=made.title, text=made.text,
                          modality=made.modality, id=made.id).public()


@reports.delete("/phrases/{phrase_id}", status_code=204)
def delete_phrase(phrase_id: RowId, session: SessionDep, principal: WriteReports) -> Response:
    """Delete one of one's own phrases."""
    if not phrases.remove(session, principal.name, phrase_id):
        raise HTTPException(404, f"you have no phrase {phrase_id}")
    return Response(status_code=204)


def _relative(problem: str, services: Any) -> str:
    return problem.replace(str(services.settings.mappings_dir).rstrip("/") + "/", "")


# -- one report -------------------------------------------------------------------------------

@reports.get("/{order_id}", response_model=ReportPublic, dependencies=[ReadReports])
def show_report(order_id: RowId, session: SessionDep, services: ServicesDep) -> ReportPublic:
    """The order's report: its draft, who holds the claim and its signed versions."""
    return report_public(session, _order(session, order_id), services)


@reports.post("/{order_id}/claim", response_model=ReportPublic)
def claim_report(order_id: RowId, body: ClaimIn, request: Request, session: SessionDep, services: ServicesDep,
                 principal: WriteReports) -> ReportPublic:
    """Take the report to read it; 409 naming who holds it when someone else does."""
    try:
        service.claim(session, order_id, reader=reader_of(principal, request), take_over=body.take_over)
    except ReportError as exc:
        raise refused(exc) from None
    request.state.audited = True
    return report_public(session, _order(session, order_id), services)


@reports.post("/{order_id}/release", response_model=ReportPublic)
def release_report(order_id: RowId, request: Request, session: SessionDep, services: ServicesDep,
                   principal: WriteReports) -> ReportPublic:
    """Give the claim back; the draft stays."""
    try:
        service.release(session, order_id, reader=reader_of(principal, request))
    except ReportError as exc:
        raise refused(exc) from None
    request.state.audited = True
    return report_public(session, _order(session, order_id), services)


@reports.put("/{order_id}/draft", response_model=DraftSaved)
def save_draft(order_id: RowId, body: DraftIn, request: Request, session: SessionDep,
               principal: WriteReports) -> DraftSaved:
    """Save the draft as it is typed; 409 when another copy saved since ``revision``."""
    draft = service.Draft(revision=body.revision, findings=body.findings, impression=body.impression,
                          key_images=[k.model_dump(exclude_none=True) for k in body.key_images]
                          if body.key_images is not None else None,
                          critical=body.critical, critical_told=body.critical_told,
                          critical_told_at=body.critical_told_at, template=body.template)
    try:
        report = service.save_draft(session, order_id, draft, reader=reader_of(principal, request))
    except ReportError as exc:
        raise refused(exc) from None
    return DraftSaved(draft_revision=report.draft_revision, draft_saved_at=report.draft_saved_at)


@reports.post("/{order_id}/sign", response_model=VersionPublic)
def sign_report(order_id: RowId, request: Request, background: BackgroundTasks, session: SessionDep,
                services: ServicesDep, principal: SignReports) -> VersionPublic:
    """Sign the draft: preliminary (P) by a resident, final (F) by an attending."""
    try:
        made = service.sign(session, order_id, reader=reader_of(principal, request), notify=services.notify)
    except ReportError as exc:
        raise refused(exc) from None
    _signed(request, background, services)
    return version_public(made)


@reports.post("/{order_id}/verify", response_model=VersionPublic)
def verify_report(order_id: RowId, request: Request, background: BackgroundTasks, session: SessionDep,
                  services: ServicesDep, principal: VerifyReports) -> VersionPublic:
    """An attending verifies a preliminary report: a final version naming the verifier."""
    try:
        made = service.verify(session, order_id, reader=reader_of(principal, request), notify=services.notify)
    except ReportError as exc:
        raise refused(exc) from None
    _signed(request, background, services)
    return version_public(made)


@reports.post("/{order_id}/amend", response_model=VersionPublic)
def amend_report(order_id: RowId, body: AmendIn, request: Request, background: BackgroundTasks,
                 session: SessionDep, services: ServicesDep, principal: SignReports) -> VersionPublic:
    """Amend a final report with a reason: a corrected version (C); the earlier ones stay."""
    try:
        made = service.amend(session, order_id, reason=body.reason, reader=reader_of(principal, request),
                             notify=services.notify)
    except ReportError as exc:
        raise refused(exc) from None
    _signed(request, background, services)
    return version_public(made)


@reports.get("/{order_id}/versions", response_model=list[VersionPublic], dependencies=[ReadReports])
def list_versions(order_id: RowId, session: SessionDep) -> list[VersionPublic]:
    """Every signed version, first to last."""
    _order(session, order_id)
    report = service.report_of(session, order_id)
    return [version_public(v) for v in service.versions(session, report)] if report else []


@reports.get("/{order_id}/versions/{number}", response_model=VersionPublic, dependencies=[ReadReports])
def show_version(order_id: RowId, number: RowId, session: SessionDep) -> VersionPublic:
    """One signed version, as it was signed."""
    _order(session, order_id)
    report = service.report_of(session, order_id)
    if report is None:
        raise HTTPException(404, f"order {order_id} has no signed report")
    try:
        return version_public(service.version(session, report, number))
    except ReportError as exc:
        raise refused(exc) from None


@reports.get("/{order_id}/images", response_model=list[SeriesImages], dependencies=[ReadReports])
def study_images(order_id: RowId, session: SessionDep) -> list[SeriesImages]:
    """The study's images by series (UIDs, SOP class, number), for the editor's thumbnails
    (DICOMweb ``…/thumbnail``) and its key images; objects without pixels (SR, KOS, an
    encapsulated PDF: no Rows, PS3.3 C.7.6.3) are left out."""
    order = _order(session, order_id)
    study = session.exec(select(Study).where(Study.order == order.id)).first()
    if study is None:
        return []
    shown = []
    for series in session.exec(select(Series).where(Series.study == study.id)
                               .order_by(col(Series.series_number), col(Series.id))):
        instances = session.exec(select(Instance).where(Instance.series == series.id,
                                                        col(Instance.rejected_at).is_(None),
                                                        col(Instance.rows).is_not(None))  # images only
                                 .order_by(col(Instance.instance_number), col(Instance.id))).all()
        shown.append(SeriesImages(series_instance_uid=series.series_instance_uid, modality=series.modality,
                                  series_number=series.series_number, description=series.description,
                                  body_part=series.body_part,
                                  instances=[{"sop": i.sop_instance_uid, "sop_class": i.sop_class_uid,
                                              "number": i.instance_number, "frames": i.number_of_frames or 1}
                                             for i in instances]))
    return [series for series in shown if series.instances]


class TemplatePublic(BaseModel):
    id: str
    key: str
    name: str
    findings: str
    impression: str


class TemplatesPublic(BaseModel):
    templates: list[TemplatePublic]
    problems: list[str]  # what is wrong with report_templates.yaml, when it offers none


@reports.get("/{order_id}/templates", response_model=TemplatesPublic, dependencies=[ReadReports])
def order_templates(order_id: RowId, session: SessionDep, services: ServicesDep) -> TemplatesPublic:
    """The templates the order is offered (its procedure code's first), with the order's facts
    filled in; where ``report_templates.yaml`` has problems, none, and the problems."""
    order = _order(session, order_id)
    found, problems = templates.load_report_templates(services.settings.mappings_dir)
    shown = header(session, order, services)
    values = templates.facts(shown)
    offered = templates.for_order(found, procedure_code=order.procedure_code, modality=shown.modality,
                                  body_part=shown.body_part)
    return TemplatesPublic(templates=[TemplatePublic(id=t.id, key=t.key, name=t.name,
                                                     findings=templates.fill(t.findings, values),
                                                     impression=templates.fill(t.impression, values))
                                      for t in offered],
                           problems=[_relative(p, services) for p in problems])

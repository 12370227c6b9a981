"""The reading worklist: studies waiting for a report, most urgent first, and a patient's priors.

A study waits while its order's images are in (the modality completed, or its images arrived)
and its report is not final: no report yet, a draft, or a preliminary waiting for an attending.
STAT orders and emergency patients come first (DICOM (0040,1003) Requested Procedure Priority;
HL7 table 0004 patient class E), then the longest waiting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime, tzinfo
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from pacs.archive.index import Series, Study
from pacs.archive.reconciliation import shown_name as patient_shown_name
from pacs.db import utcnow
from pacs.registry.models import ImagingOrder, OrderStatus, Patient, ProcedureStep, Visit
from pacs.reporting.models import Report, ReportStatus, ReportVersion
from pacs.reporting.service import age, shown_name

WAITING_ORDERS = (OrderStatus.COMPLETED, OrderStatus.IMAGES_RECEIVED, OrderStatus.REPORTED)
WAITING_REPORTS = ("", ReportStatus.DRAFT, ReportStatus.PRELIMINARY)
# Requested Procedure Priority (0040,1003) and HL7 TQ1-9 / OBR-27.6 words, most urgent first
URGENCY = {"STAT": 0, "S": 0, "EMERGENCY": 0, "A": 1, "ASAP": 1, "URGENT": 1, "HIGH": 1}
ROUTINE = 2
SHOWN = 500


@dataclass
class Row:
    order: int
    accession_number: str
    patient_id: str
    patient_name: str
    sex: str
    age: str
    modality: str
    body_part: str
    procedure: str
    priority: str
    urgent: bool
    emergency: bool
    order_status: str
    report_status: str  # "" (none yet), draft, preliminary
    claimed_by: str
    claimed_by_name: str
    waiting_since: datetime
    waiting_minutes: int
    study_instance_uid: str
    department: str

    def public(self) -> dict[str, Any]:
        return asdict(self)


def urgency(priority: str, emergency: bool) -> int:
    return 0 if emergency else URGENCY.get(priority.strip().upper(), ROUTINE)


def rows(session: Session, *, zone: tzinfo | None, modality: str = "", body_part: str = "", priority: str = "",
         claimed: str = "", reader: str = "", text: str = "", sort: str = "urgency") -> list[Row]:
    """The waiting studies, filtered: ``claimed`` is ``mine``, ``free`` or "" (all); ``sort`` is
    ``urgency`` (STAT and emergencies first, then the longest waiting), ``waiting``, ``modality``
    or ``body_part``."""
    received = (select(Study.order, func.min(Study.created_at).label("at"))
                .where(col(Study.order).is_not(None)).group_by(col(Study.order)).subquery())
    query = (select(ImagingOrder, Patient, Report, received.c.at, Visit)
             .join(Patient, Patient.id == ImagingOrder.patient)
             .join(Report, col(Report.order) == ImagingOrder.id, isouter=True)
             .join(received, received.c.order == ImagingOrder.id, isouter=True)
             .join(Visit, col(Visit.id) == ImagingOrder.visit, isouter=True)
             .where(col(ImagingOrder.status).in_(WAITING_ORDERS))
             .where(col(Report.id).is_(None) | col(Report.status).in_(WAITING_REPORTS)))
    if claimed == "mine":
        query = query.where(Report.claimed_by == reader)
    elif claimed == "free":
        query = query.where(col(Report.id).is_(None) | (Report.claimed_by == ""))
    if text.strip():
        like = f"%{text.strip().upper()}%"
        query = query.where(func.upper(ImagingOrder.accession_number).like(like)
                            | func.upper(Patient.patient_id).like(like)
                            | func.upper(Patient.name_alphabetic).like(like)
                            | col(Patient.name_ideographic).like(f"%{text.strip()}%"))
    found = session.exec(query.order_by(col(ImagingOrder.id)).limit(SHOWN * 4)).all()
    ids = [order.id for order, *_ in found]
    modalities = _modalities(session, ids)
    parts = _body_parts(session, ids)
    now = utcnow()
    today = now.astimezone(zone).date() if zone else now.astimezone().date()
    names: dict[str, str] = {}
    made: list[Row] = []
    for order, patient, report, at, visit in found:
        since = at or order.updated_at
        holder = report.claimed_by if report else ""
        if holder and holder not in names:
            names[holder] = shown_name(session, holder)
        emergency = bool(visit and visit.patient_class == "emergency")
        made.append(Row(
            order=order.id or 0, accession_number=order.accession_number, patient_id=patient.patient_id,
            patient_name=patient_shown_name(patient), sex=patient.sex, age=age(patient.birth_date, today),
            modality=modalities.get(order.id or 0, ""), body_part=order.body_part or parts.get(order.id or 0, ""),
            procedure=order.procedure_text or order.procedure_code, priority=order.priority.upper(),
            urgent=urgency(order.priority, emergency) == 0, emergency=emergency, order_status=order.status,
            report_status=report.status if report else "", claimed_by=holder, claimed_by_name=names.get(holder, ""),
            waiting_since=since, waiting_minutes=max(0, int((now - since).total_seconds() // 60)),
            study_instance_uid=order.study_instance_uid, department=order.department))
    if modality:
        made = [r for r in made if r.modality.upper() == modality.upper()]
    if body_part:
        made = [r for r in made if r.body_part.upper() == body_part.upper()]
    if priority:
        made = [r for r in made if (priority == "urgent" and r.urgent) or r.priority == priority.upper()]
    keys = {
        "waiting": lambda r: (r.waiting_since,),
        "modality": lambda r: (r.modality, urgency(r.priority, r.emergency), r.waiting_since),
        "body_part": lambda r: (r.body_part, urgency(r.priority, r.emergency), r.waiting_since),
    }
    made.sort(key=keys.get(sort, lambda r: (urgency(r.priority, r.emergency), r.waiting_since)))
    return made[:SHOWN]


def _modalities(session: Session, ids: list[int | None]) -> dict[int, str]:
    found: dict[int, str] = {}
    if not ids:
        return found
    for order, modality in session.exec(select(ProcedureStep.order, ProcedureStep.modality)
                                        .where(col(ProcedureStep.order).in_(ids)).order_by(col(ProcedureStep.id))):
        if modality and order not in found:
            found[order] = modality
    for order, modalities in session.exec(select(Study.order, Study.modalities).where(col(Study.order).in_(ids))):
        if order is not None and order not in found and modalities:
            found[order] = modalities.split("\\")[0]
    return found


def _body_parts(session: Session, ids: list[int | None]) -> dict[int, str]:
    found: dict[int, str] = {}
    if not ids:
        return found
    for order, part in session.exec(select(Study.order, Series.body_part).join(Series, Series.study == Study.id)
                                    .where(col(Study.order).in_(ids), Series.body_part != "")):
        if order is not None and order not in found:
            found[order] = part
    return found


def priors(session: Session, order: ImagingOrder, *, limit: int = 20) -> list[dict[str, Any]]:
    """The patient's other studies, newest first, each with its latest signed report (or none)."""
    others = session.exec(select(ImagingOrder).where(ImagingOrder.patient == order.patient,
                                                     ImagingOrder.id != order.id)
                          .order_by(col(ImagingOrder.created_at).desc(), col(ImagingOrder.id).desc()).limit(limit)).all()
    ids = [o.id for o in others]
    modalities = _modalities(session, ids)
    studied = {o: d for o, d in session.exec(select(Study.order, Study.study_date)
                                              .where(col(Study.order).in_(ids or [0])))}
    shown = []
    for other in others:
        report = session.exec(select(Report).where(Report.order == other.id)).first()
        latest = None
        if report is not None and report.current_version:
            latest = session.exec(select(ReportVersion).where(ReportVersion.report == report.id,
                                                              ReportVersion.number == report.current_version)).first()
        shown.append({
            "order": other.id, "accession_number": other.accession_number, "status": other.status,
            "modality": modalities.get(other.id or 0, ""), "procedure": other.procedure_text or other.procedure_code,
            "study_date": _date(studied.get(other.id or 0, "")) or other.created_at.date().isoformat(),
            "study_instance_uid": other.study_instance_uid,
            "report": None if latest is None else {
                "version": latest.number, "status": latest.status, "findings": latest.findings,
                "impression": latest.impression, "author_name": latest.author_name or latest.author,
                "signed_at": latest.signed_at},
        })
    return shown


def _date(value: str) -> str:
    """A DICOM DA (YYYYMMDD) as ISO 8601."""
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8])).isoformat() if len(value) == 8 else ""
    except ValueError:
        return ""

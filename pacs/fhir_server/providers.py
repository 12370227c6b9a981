"""One provider per resource type (as HAPI FHIR has them): its table, its search parameters,
its _sort keys, its _include/_revinclude links and how a row becomes a resource. The search
route and the CapabilityStatement are generated from these declarations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, func
from sqlmodel import Session, col, select

from pacs.archive.index import Study
from pacs.fhir_server import diagnostic_report, imaging_study, patient, service_request
from pacs.fhir_server.search import Param, Query
from pacs.registry.models import ImagingOrder, Patient
from pacs.reporting.models import Report


@dataclass
class Context:
    """What building resources needs from the running system."""

    zone: Any
    dicomweb_url: str
    systems: Callable[[str], list[str]]


@dataclass
class Link:
    """An _include or _revinclude: the other type and how rows relate."""

    other: str
    # _include: our column holding the other's id; _revinclude: the other's column holding ours
    column: ColumnElement[Any]


@dataclass
class Provider:
    type: str
    model: Any
    params: dict[str, Param]
    sortable: dict[str, ColumnElement[Any]]
    build: Callable[[Session, Any, Context], dict[str, Any]]
    includes: dict[str, Link] = field(default_factory=dict)
    revincludes: dict[str, Link] = field(default_factory=dict)
    interactions: tuple[str, ...] = ("read", "search-type")

    def search(self, session: Session, query: Query) -> tuple[int, list[Any]]:
        base = select(self.model)
        for condition in query.conditions:
            base = base.where(condition)
        total = session.exec(select(func.count()).select_from(base.subquery())).one()
        ordered = base
        for key, descending in query.sort:
            column = self.sortable[key]
            ordered = ordered.order_by(col(column).desc() if descending else col(column))
        ordered = ordered.order_by(col(self.model.id))
        rows = session.exec(ordered.offset(query.offset).limit(query.count)).all() if query.count else []
        return total, list(rows)


def providers(ctx: Context) -> dict[str, Provider]:
    return {
        "Patient": Provider(
            "Patient", Patient, patient.search_parameters(ctx.systems), patient.SORTABLE,
            lambda s, row, c: patient.patient_resource(s, row),
            revincludes={
                "ImagingStudy:patient": Link("ImagingStudy", Study.patient),
                "ImagingStudy:subject": Link("ImagingStudy", Study.patient),
                "ServiceRequest:patient": Link("ServiceRequest", ImagingOrder.patient),
                "ServiceRequest:subject": Link("ServiceRequest", ImagingOrder.patient),
            },
        ),
        "ServiceRequest": Provider(
            "ServiceRequest", ImagingOrder, service_request.search_parameters(ctx.zone), service_request.SORTABLE,
            lambda s, row, c: service_request.service_request_resource(s, row, c.zone),
            includes={"ServiceRequest:patient": Link("Patient", ImagingOrder.patient),
                      "ServiceRequest:subject": Link("Patient", ImagingOrder.patient)},
            revincludes={"ImagingStudy:basedon": Link("ImagingStudy", Study.order)},
            interactions=("read", "search-type", "create", "update"),
        ),
        "ImagingStudy": Provider(
            "ImagingStudy", Study, imaging_study.search_parameters(), imaging_study.SORTABLE,
            lambda s, row, c: imaging_study.imaging_study_resource(s, row, zone=c.zone),
            includes={"ImagingStudy:patient": Link("Patient", Study.patient),
                      "ImagingStudy:subject": Link("Patient", Study.patient),
                      "ImagingStudy:basedon": Link("ServiceRequest", Study.order)},
        ),
        "DiagnosticReport": Provider(
            "DiagnosticReport", Report, diagnostic_report.search_parameters(), diagnostic_report.SORTABLE,
            lambda s, row, c: diagnostic_report.diagnostic_report_resource(
                s, row, diagnostic_report.latest_version(s, row), zone=c.zone),  # type: ignore[arg-type]
            includes={"DiagnosticReport:based-on": Link("ServiceRequest", Report.order)},
        ),
    }


def included(session: Session, all_providers: dict[str, Provider], provider: Provider, rows: list[Any],
             query: Query, ctx: Context) -> list[dict[str, Any]]:
    """Resources _include and _revinclude bring along, each once."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    ids = [row.id for row in rows]
    for name in query.include:
        link = provider.includes[name]
        other = all_providers[link.other]
        wanted = {getattr(row, link.column.key) for row in rows} - {None}
        if wanted:
            for found in session.exec(select(other.model).where(col(other.model.id).in_(wanted))):
                out[(other.type, found.id)] = other.build(session, found, ctx)
    for name in query.revinclude:
        link = provider.revincludes[name]
        other = all_providers[link.other]
        if ids:
            for found in session.exec(select(other.model).where(link.column.in_(ids))):
                out[(other.type, found.id)] = other.build(session, found, ctx)
    return list(out.values())

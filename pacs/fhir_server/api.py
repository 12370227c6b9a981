"""/fhir: ServiceRequest intake (create, update, transaction) and reads.

Creates and updates go through the interface engine's channel, like HL7 v2 orders: the body is
stored raw, mapped by mappings/fhir/servicerequest.yaml and applied by the registry services.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session, or_, select

from pacs import __version__
from pacs.archive.index import Study
from pacs.auth.access import Principal, PrincipalDep, forbidden, public, require, require_fhir
from pacs.auth.roles import Permission
from pacs.db import row_id
from pacs.fhir_server import diagnostic_report, outcome
from pacs.fhir_server.common import version_of
from pacs.fhir_server.imaging_study import endpoint_resource, imaging_study_resource
from pacs.fhir_server.outcome import FHIR_JSON
from pacs.fhir_server.patient import patient_resource
from pacs.fhir_server.providers import Context, included, providers
from pacs.fhir_server.search import SearchError, bundle, parse
from pacs.fhir_server.service_request import service_request_resource
from pacs.http import ServicesDep, SessionDep
from pacs.integration.channel import Inbound, Outcome
from pacs.registry.models import ImagingOrder, Patient
from pacs.reporting.models import Report

router = APIRouter(prefix="/fhir", tags=["fhir"])
MAX_BODY = 8 * 1024 * 1024
# Arrays and objects a body may nest: a transaction Bundle's deepest path here (Bundle.entry.
# resource.contained.name.extension...) is about a dozen levels; the json module recurses once per
# level and gives up near Python's recursion limit (1,000) with a RecursionError.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # RFC 8259 7, escapes included
_NOT_A_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_OPENING = frozenset(b"[{")
ENDPOINT_TYPE = "Endpoint"  # served beside the providers' types: the one DICOMweb endpoint
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]*$")  # a path segment that names a type (resource.html#names)


def fhir_json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers=headers)


def _etag(row: Any) -> str:
    return f'W/"{version_of(row)}"'


def nested_deeper_than(body: bytes, limit: int) -> bool:
    """Whether the JSON text ``body`` nests arrays and objects more than ``limit`` deep, found
    without parsing it: its strings are taken out, then its brackets counted (RFC 8259 2-7)."""
    depth = 0
    for byte in _JSON_STRING.sub(b"", body).translate(None, _NOT_A_BRACKET):
        depth += 1 if byte in _OPENING else -1
        if depth > limit:
            return True
    return False


async def _body(request: Request) -> bytes | JSONResponse:
    """The body of a create, update or transaction, or the OperationOutcome that refuses it
    (http.html#2.21.0.17): 415 for another media type, 413 past :data:`MAX_BODY`, 400 for an
    empty body or one nested deeper than :data:`MAX_JSON_DEPTH`."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind and kind not in ("application/fhir+json", "application/json", "application/json+fhir"):
        return outcome.response(415, f"content type {kind} is not supported; send application/fhir+json",
                                code="not-supported")
    body = bytearray()
    async for chunk in request.stream():  # read no further than the limit
        body += chunk
        if len(body) > MAX_BODY:
            return outcome.response(413, f"body over {MAX_BODY} bytes", code="too-costly")
    if not body.strip():
        return outcome.response(400, "empty body", code="structure")
    if nested_deeper_than(bytes(body), MAX_JSON_DEPTH):
        return outcome.response(400, f"the JSON nests arrays and objects more than {MAX_JSON_DEPTH} deep",
                                code="structure")
    return bytes(body)


async def _submit(services: Any, request: Request, body: bytes) -> Outcome:
    client = request.client
    inbound = Inbound(raw=body, source="fhir", peer=f"{client.host}:{client.port}" if client else "",
                      endpoint=f"{request.method} {request.url.path}")
    return await asyncio.wrap_future(services.intake.submit(inbound))


def _orders_of(result: Outcome) -> list[dict[str, Any]]:
    return [o for item in (result.applied or {}).get("items", []) for o in item.get("orders", [])]


def _find_by_identifier(session: Session, query: str) -> list[ImagingOrder]:
    """Orders matching an ``identifier=[system|]value`` search (If-None-Exist)."""
    if not query.startswith("identifier="):
        return []
    value = query.split("=", 1)[1].rpartition("|")[2]
    if not value:
        return []
    return list(session.exec(select(ImagingOrder).where(or_(
        ImagingOrder.placer_number == value,
        ImagingOrder.filler_number == value,
        ImagingOrder.accession_number == value,
    ))).all())


def error_response(request: Request, status: int, reason: str, headers: Mapping[str, str] | None = None) -> Response:
    """An error no FHIR route answered itself, as an OperationOutcome (http.html#2.21.0.17): a
    type this server doesn't serve is 404 whatever the method (as a search for it is), a path
    nothing serves 404, a method an interaction doesn't have 405 with Allow, a bad parameter 400."""
    parts = request.url.path.removeprefix(router.prefix).strip("/").split("/")
    if status in (HTTPStatus.NOT_FOUND, HTTPStatus.METHOD_NOT_ALLOWED) and _RESOURCE_TYPE.match(parts[0]):
        served = set(providers(context(request.app.state.services))) | {ENDPOINT_TYPE}
        if parts[0] not in served:
            return outcome.response(HTTPStatus.NOT_FOUND, f"resource type {parts[0]} is not served here",
                                    code="not-supported")
    return outcome.response(status, reason, code=outcome.ISSUE_FOR_STATUS.get(status, "invalid"), headers=headers)


def context(services: Any) -> Context:
    settings = services.settings

    def systems(system: str) -> list[str]:
        table = services.mappings.current().codes.get("identifier_systems")
        mapped = table.lookup(system) if table is not None else None
        return [system] + ([mapped] if mapped and mapped != "*" else [])

    return Context(zone=settings.zone, dicomweb_url=dicomweb_url(services), systems=systems)


def dicomweb_url(services: Any) -> str:
    base = services.settings.public_url or f"http://localhost:{services.settings.http_port}"
    return base.rstrip("/") + "/dicomweb"


def fhir_base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


@router.get("/metadata", dependencies=[Depends(public)])
def metadata(services: ServicesDep) -> JSONResponse:
    """The CapabilityStatement, generated from the providers' declarations."""
    resources = []
    for provider in providers(context(services)).values():
        resources.append({
            "type": provider.type,
            "interaction": [{"code": i} for i in provider.interactions],
            "versioning": "versioned",
            "readHistory": False,
            **({"conditionalCreate": True, "conditionalUpdate": False} if "create" in provider.interactions else {}),
            "searchInclude": sorted(provider.includes),
            "searchRevInclude": sorted(provider.revincludes),
            "searchParam": [{"name": p.name, "type": p.type, **({"documentation": p.documentation}
                                                                 if p.documentation else {})}
                            for p in provider.params.values()],
        })
    resources.append({"type": ENDPOINT_TYPE, "interaction": [{"code": "read"}, {"code": "search-type"}]})
    return fhir_json({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "kind": "instance",
        "software": {"name": "pacs", "version": __version__},
        "implementation": {"description": "PACS FHIR R4 server"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{"mode": "server", "resource": resources, "interaction": [{"code": "transaction"}]}],
    })


@router.get("/Patient/{patient_id}", dependencies=[Depends(require(Permission.PATIENTS_READ))])
def read_patient(patient_id: str, session: SessionDep) -> Response:
    row = session.get(Patient, key) if (key := row_id(patient_id)) is not None else None
    if row is None:
        return outcome.response(404, f"Patient/{patient_id} does not exist", code="not-found")
    return fhir_json(patient_resource(session, row), headers={"ETag": _etag(row)})


@router.get("/ServiceRequest/{order_id}", dependencies=[Depends(require(Permission.ORDERS_READ))])
def read_service_request(order_id: str, session: SessionDep, services: ServicesDep) -> Response:
    row = session.get(ImagingOrder, key) if (key := row_id(order_id)) is not None else None
    if row is None:
        return outcome.response(404, f"ServiceRequest/{order_id} does not exist", code="not-found")
    return fhir_json(service_request_resource(session, row, services.settings.zone), headers={"ETag": _etag(row)})


@router.post("/ServiceRequest", dependencies=[Depends(require(Permission.ORDERS_WRITE))])
async def create_service_request(
    request: Request,
    services: ServicesDep,
    if_none_exist: Annotated[str | None, Header()] = None,
) -> Response:
    """Create an order (the FHIR equivalent of ORM NW / OMI NW). Conditional with If-None-Exist."""
    body = await _body(request)
    if isinstance(body, Response):
        return body
    if if_none_exist:
        with services.db.session() as session:
            found = _find_by_identifier(session, if_none_exist)
            if len(found) > 1:
                return outcome.response(412, f"If-None-Exist {if_none_exist} matches {len(found)} orders",
                                        code="duplicate")
            if found:
                return fhir_json(service_request_resource(session, found[0], services.settings.zone), 200,
                                 {"ETag": _etag(found[0]), "Location": f"/fhir/ServiceRequest/{found[0].id}"})
    result = await _submit(services, request, body)
    if result.error is not None:
        return Response(result.response, status_code=int(result.ack_code), media_type=FHIR_JSON)
    orders = _orders_of(result)
    with services.db.session() as session:
        order = session.get_one(ImagingOrder, orders[0]["id"])
        return fhir_json(service_request_resource(session, order, services.settings.zone), 201 if orders[0]["created"] else 200,
                         {"ETag": _etag(order), "Location": f"/fhir/ServiceRequest/{order.id}/_history/{version_of(order)}"})


@router.put("/ServiceRequest/{order_id}", dependencies=[Depends(require(Permission.ORDERS_WRITE))])
async def update_service_request(
    order_id: str,
    request: Request,
    services: ServicesDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Change or cancel an order (XO; status revoked is CA). If-Match guards lost updates."""
    body = await _body(request)
    if isinstance(body, Response):
        return body
    with services.db.session() as session:
        order = session.get(ImagingOrder, key) if (key := row_id(order_id)) is not None else None
        if order is None:
            return outcome.response(404, f"ServiceRequest/{order_id} does not exist; create it with POST",
                                    code="not-found")
        if if_match and if_match.strip() not in (_etag(order), f'"{version_of(order)}"', version_of(order)):
            return outcome.response(412, f"If-Match {if_match} is not the current version {_etag(order)}",
                                    code="conflict")
        try:
            claimed = json.loads(body).get("id")
        except (ValueError, AttributeError):
            claimed = None
        if claimed is not None and str(claimed) != order_id:
            return outcome.response(400, f"resource id {claimed} does not match the URL ({order_id})",
                                    code="invalid", expression="ServiceRequest.id")
    result = await _submit(services, request, body)
    if result.error is not None:
        return Response(result.response, status_code=int(result.ack_code), media_type=FHIR_JSON)
    orders = _orders_of(result)
    if not orders or orders[0]["id"] != int(order_id):
        return outcome.response(409, "the identifiers in the body name a different order than the URL",
                                code="conflict", expression="ServiceRequest.identifier")
    with services.db.session() as session:
        order = session.get_one(ImagingOrder, int(order_id))
        return fhir_json(service_request_resource(session, order, services.settings.zone), 200, {"ETag": _etag(order)})


@router.post("", dependencies=[Depends(require(Permission.ORDERS_WRITE))])
async def transaction(request: Request, services: ServicesDep) -> Response:
    """A transaction Bundle of Patient and ServiceRequest entries, applied all or nothing."""
    body = await _body(request)
    if isinstance(body, Response):
        return body
    result = await _submit(services, request, body)
    if result.error is not None:
        return Response(result.response, status_code=int(result.ack_code), media_type=FHIR_JSON)
    applied = result.applied or {}
    items = applied.get("items", [])
    entries = []
    with services.db.session() as session:
        for planned in applied.get("entries", []):
            item = items[planned["item"]]
            if planned["kind"] == "ServiceRequest":
                order = item["orders"][0]
                row = session.get_one(ImagingOrder, order["id"])
                created, location = order["created"], f"ServiceRequest/{row.id}/_history/{version_of(row)}"
            else:
                patient = session.get_one(Patient, item["patient"])
                created = item.get("patient_created", False)
                location = f"Patient/{patient.id}/_history/{version_of(patient)}"
                row = patient
            entries.append({"response": {"status": "201 Created" if created else "200 OK",
                                         "location": location, "etag": _etag(row)}})
    return fhir_json({"resourceType": "Bundle", "type": "transaction-response", "entry": entries})


@router.get("/ImagingStudy/{study_id}", dependencies=[Depends(require(Permission.STUDIES_READ))])
def read_imaging_study(study_id: str, session: SessionDep, services: ServicesDep) -> Response:
    row = session.get(Study, key) if (key := row_id(study_id)) is not None else None
    if row is None:
        return outcome.response(404, f"ImagingStudy/{study_id} does not exist", code="not-found")
    resource = imaging_study_resource(session, row, zone=services.settings.zone)
    return fhir_json(resource, headers={"ETag": f'W/"{resource["meta"]["versionId"]}"'})


@router.get("/Endpoint/{endpoint_id}", dependencies=[Depends(require(Permission.STUDIES_READ))])
def read_endpoint(endpoint_id: str, services: ServicesDep) -> Response:
    if endpoint_id != "dicomweb":
        return outcome.response(404, f"Endpoint/{endpoint_id} does not exist", code="not-found")
    return fhir_json(endpoint_resource(dicomweb_url(services)))


def _reports_reader(principal: PrincipalDep) -> Principal:
    """Who may read DiagnosticReport: reports.read (every signed report) or reports.read.final
    (final and corrected ones alone, as a clinician)."""
    if not (principal.may(Permission.REPORTS_READ) or principal.may(Permission.REPORTS_READ_FINAL)):
        raise forbidden(f"{principal.name} may not do this: it needs reports.read or reports.read.final")
    return principal


_reports_reader.permission = (Permission.REPORTS_READ, Permission.REPORTS_READ_FINAL)  # type: ignore[attr-defined]
ReportsReader = Annotated[Principal, Depends(_reports_reader)]


def _shown_reports(principal: Principal) -> list[Any]:
    """The reports ``principal`` may see: signed ones; final and corrected alone without reports.read."""
    shown = [diagnostic_report.signed()]
    if not principal.may(Permission.REPORTS_READ):
        shown.append(diagnostic_report.final_only())
    return shown


@router.get("/DiagnosticReport/{report_id}")
def read_diagnostic_report(report_id: str, session: SessionDep, services: ServicesDep,
                           principal: ReportsReader) -> Response:
    key = row_id(report_id)
    row = session.exec(select(Report).where(Report.id == key, *_shown_reports(principal))).first() \
        if key is not None else None
    version = diagnostic_report.latest_version(session, row) if row is not None else None
    if row is None or version is None:
        return outcome.response(404, f"DiagnosticReport/{report_id} does not exist", code="not-found")
    pdf = diagnostic_report.stored_pdf(session, services.archive.readable, version.pdf_sop_instance_uid)
    resource = diagnostic_report.diagnostic_report_resource(session, row, version, zone=services.settings.zone, pdf=pdf)
    return fhir_json(resource, headers={"ETag": f'W/"{resource["meta"]["versionId"]}"'})


@router.get("/DiagnosticReport")
def search_diagnostic_reports(request: Request, session: SessionDep, services: ServicesDep, principal: ReportsReader,
                              prefer: Annotated[str | None, Header()] = None) -> Response:
    """Search DiagnosticReport: what :func:`search` does, within the reports the caller may see."""
    return _search("DiagnosticReport", request, session, services, prefer, _shown_reports(principal))


@router.get("/{resource_type}", dependencies=[Depends(require_fhir(write=False))])
def search(resource_type: str, request: Request, session: SessionDep, services: ServicesDep,
           prefer: Annotated[str | None, Header()] = None) -> Response:
    """Search (FHIR R4 search.html): Bundle searchset with total and paging links."""
    return _search(resource_type, request, session, services, prefer)


def _search(resource_type: str, request: Request, session: Session, services: Any, prefer: str | None,
            scope: list[Any] | None = None) -> Response:
    ctx = context(services)
    if resource_type == ENDPOINT_TYPE:
        endpoint = endpoint_resource(ctx.dicomweb_url)
        return fhir_json({"resourceType": "Bundle", "type": "searchset", "total": 1,
                          "entry": [{"fullUrl": f"{fhir_base(request)}/Endpoint/dicomweb", "resource": endpoint,
                                     "search": {"mode": "match"}}]})
    every = providers(ctx)
    provider = every.get(resource_type)
    if provider is None:
        return outcome.response(404, f"resource type {resource_type} is not served here", code="not-supported")
    strict = "handling=strict" in (prefer or "").replace(" ", "")
    params = list(request.query_params.multi_items())
    try:
        query = parse(params, provider.params, strict=strict, sortable=set(provider.sortable),
                      includes=set(provider.includes), revincludes=set(provider.revincludes))
        query.conditions.extend(scope or [])
        total, rows = provider.search(session, query)
    except SearchError as exc:
        return outcome.response(400, str(exc), code="invalid", expression=exc.expression)
    matches = [provider.build(session, row, ctx) for row in rows]
    extra = included(session, every, provider, rows, query, ctx)
    return fhir_json(bundle(base=fhir_base(request), resource_type=resource_type, params=params, query=query,
                            total=total, matches=matches, included=extra))

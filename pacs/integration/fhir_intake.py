"""FHIR R4 ServiceRequest and transaction Bundle intake, through the same channel as HL7 v2.

A ServiceRequest (its subject a known Patient, a contained one, or one given by identifier)
or a transaction Bundle with Patient and ServiceRequest entries is stored raw, validated with
fhir.resources (R4B models, identical to R4 for these resources), mapped by
``mappings/fhir/servicerequest.yaml`` into the same registry input an ORM gives, and applied by
the same registry services. Errors come back as OperationOutcome.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, tzinfo
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session

from pacs.db import row_id, utcnow
from pacs.fhir_server.outcome import for_error
from pacs.integration.ack import ErrorCode, MessageError
from pacs.integration.mapping import (
    CODED,
    DATE,
    DATETIME,
    ENTITY,
    IDENTIFIERS,
    INT,
    NAME,
    PERSON,
    PINYIN,
    BaseMapper,
    Mappings,
    Rule,
    Sourced,
    enrich,
)
from pacs.integration.message_store import MessageRow, Stage, Status
from pacs.registry import service
from pacs.registry.models import Patient
from pacs.registry.schemas import Action, IdentifierIn, Mapped, OrderAction, OrderIn, PatientIn, StepIn, VisitIn

FHIR_PROFILE = "fhir/servicerequest.yaml"
# ServiceRequest.status (FHIR request-status) → the order control an ORM would carry
CONTROL_FOR_STATUS = {"active": "NW", "draft": "NW", "on-hold": "XO", "revoked": "CA",
                      "entered-in-error": "CA", "completed": "SC"}


def describe(row: MessageRow) -> None:
    """Fill the message-store columns a listing shows, from the JSON (best effort)."""
    row.charset = "UNICODE UTF-8"
    row.sending_application = "FHIR"
    row.sending_facility = row.peer.split(":")[0][:200]
    try:
        data = json.loads(row.raw)
    except ValueError:
        return
    if not isinstance(data, dict):
        return
    row.message_type = str(data.get("resourceType", ""))[:40]
    for resource in _resources(data):
        if resource.get("resourceType") == "ServiceRequest":
            for identifier in _list(resource.get("identifier")):
                if isinstance(identifier, dict) and identifier.get("value"):
                    row.control_id = str(identifier["value"])[:200]
                    return


def _list(value: Any) -> list[Any]:
    """A JSON array as a list; anything else (a number where an array belongs) as none."""
    return value if isinstance(value, list) else []


def _resources(data: dict[str, Any]) -> list[dict[str, Any]]:
    if data.get("resourceType") == "Bundle":
        return [e.get("resource") for e in _list(data.get("entry"))
                if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    return [data]


def _evaluate(scope: dict[str, Any], expression: str) -> list[Any]:
    """A FHIRPath of the field map over ``scope``. Content it cannot be evaluated on (two
    values where a function takes one, such as two DICOM study UIDs for one order) is the
    sender's error, answered 422 with the expression."""
    import fhirpathpy

    try:
        return list(fhirpathpy.evaluate(scope, expression))
    except Exception as exc:  # fhirpathpy raises plain exceptions for such content
        raise MessageError.content(
            ErrorCode.DATA_TYPE_ERROR, expression,
            f"{expression} cannot be read from this resource: more than one value, or a value of another "
            f"type, where the field map takes one ({type(exc).__name__})") from None


class FHIRMapper(BaseMapper):
    """Applies the FHIRPath field map to one ServiceRequest and its Patient."""

    def __init__(self, mappings: Mappings, profile: Any, zone: tzinfo | None = None) -> None:
        super().__init__(mappings, profile)
        self.zone = zone

    def _holds(self, scope: dict[str, Any], rule: Rule) -> bool:
        for expression, values in rule.when.items():
            found = _evaluate(scope, expression)
            actual = str(found[0]) if found else ""
            if actual.upper() not in {v.upper() for v in values}:
                return False
        return True

    def read(self, scope: dict[str, Any], rule: Rule) -> Sourced:
        for expression in rule.sources:
            if not expression.startswith(scope.get("resourceType", "?")):
                continue
            found = [v for v in _evaluate(scope, expression) if v not in (None, "", [], {})]
            if not found:
                continue
            value = self._convert(found, rule, expression)
            if value is not None:
                return Sourced(value, expression)
        if rule.default is not None:
            return Sourced(self._coded(rule.default, rule, None), None)
        return Sourced(None, rule.sources[0] if rule.sources else None)

    def _convert(self, found: list[Any], rule: Rule, where: str) -> Any:
        kind = rule.target.kind
        first = found[0]
        if kind == IDENTIFIERS:
            out = [_identifier(v, self) for v in found if isinstance(v, dict) and v.get("value")]
            return out or None
        if kind == NAME:
            return _human_name(first) if isinstance(first, dict) else (str(first), "")
        if kind == PINYIN:
            family, given = _human_name(first) if isinstance(first, dict) else (str(first), "")
            return "^".join(p for p in (family.upper(), given.upper()) if p)
        if kind == PERSON:
            if isinstance(first, dict):
                return _person(first)
            return str(first)
        if kind == CODED:
            coding = _coding(first)
            if coding is None:
                return None
            code, text, system = coding
            return (self._coded(code, rule, where) if rule.codes else code, text, system)
        if kind == ENTITY:
            if isinstance(first, dict):
                return (str(first.get("value", "")), self._authority(str(first.get("system", ""))))
            return (str(first), "")
        text = str(first).strip()
        if kind == DATE:
            return _fhir_date(text, where)
        if kind == DATETIME:
            return _fhir_datetime(text, where, self.zone)
        if kind == INT:
            try:
                return int(float(text))
            except ValueError:
                raise MessageError.content(ErrorCode.DATA_TYPE_ERROR, where, f"{text!r} is not a number") from None
        return self._coded(text, rule, where)

    def _authority(self, system: str) -> str:
        """Identifier.system → the assigning authority HL7 v2 senders use (codes/identifier_systems.csv)."""
        table = self.mappings.codes.get("identifier_systems")
        found = table.lookup(system) if table is not None and system else None
        return found if found not in (None, "*") else system

    def map_request(self, request: dict[str, Any], patient: dict[str, Any] | None,
                    known: Patient | None) -> Mapped:
        values: dict[str, Any] = {}
        self.fill(request, "order.", values)
        status = str(request.get("status", "active"))
        control = values.pop("control", None) or CONTROL_FOR_STATUS.get(status)
        if control is None:
            raise MessageError.content(ErrorCode.TABLE_VALUE_NOT_FOUND, "ServiceRequest.status",
                                       f"status {status!r} is not one this PACS acts on")
        table = self.mappings.codes["order_control"]
        action = table.lookup(control)
        step: dict[str, Any] = {}
        self.fill(request, "step.", step)
        visit: dict[str, Any] = {}
        self.fill(request, "visit.", visit)
        order = OrderIn(control=control, action=OrderAction(action or "new"), steps=[StepIn(**step)], **values)
        enrich(order, self.mappings, self.sources.get("order.procedure_code") or "ServiceRequest.code")
        person = self.map_patient(patient, known)
        return Mapped(event="ServiceRequest", action=Action.ORDERS, patient=person,
                      visit=VisitIn(**visit) if visit else None, orders=[order])

    def map_patient(self, patient: dict[str, Any] | None, known: Patient | None) -> PatientIn:
        if patient is not None:
            values: dict[str, Any] = {}
            self.fill(patient, "patient.", values)
            person = PatientIn(**values)
            if person.identifiers:
                person.patient_id = person.identifiers[0]
        elif known is not None:
            person = PatientIn(identifiers=[IdentifierIn(value=known.patient_id, authority=known.issuer)])
            person.patient_id = person.identifiers[0]
        else:
            person = PatientIn()
        if person.patient_id is None:
            raise MessageError.content(ErrorCode.REQUIRED_FIELD_MISSING, "Patient.identifier",
                                       "the patient has no identifier")
        return person


def _identifier(value: dict[str, Any], mapper: FHIRMapper) -> IdentifierIn:
    type_code = ""
    codings = ((value.get("type") or {}).get("coding")) or []
    if codings:
        type_code = str(codings[0].get("code", ""))
    return IdentifierIn(value=str(value["value"]).strip(), authority=mapper._authority(str(value.get("system", ""))),
                        type_code=type_code.upper())


def _human_name(name: dict[str, Any]) -> tuple[str, str]:
    family = str(name.get("family") or "")
    given = " ".join(str(g) for g in name.get("given") or [])
    if not family and not given:
        family = str(name.get("text") or "")
    return family.strip(), given.strip()


def _person(reference: dict[str, Any]) -> str:
    """A Reference(Practitioner) or HumanName as a PN string."""
    if "family" in reference or "given" in reference:
        family, given = _human_name(reference)
        return "^".join(p for p in (family, given) if p)
    return str(reference.get("display") or "").strip()


def _coding(value: Any) -> tuple[str, str, str] | None:
    if isinstance(value, dict):
        codings = value.get("coding") or ([value] if "code" in value else [])
        if codings:
            c = codings[0]
            return str(c.get("code", "")), str(c.get("display") or value.get("text") or ""), str(c.get("system", ""))
        if value.get("text"):
            return "", str(value["text"]), ""
        return None
    return str(value), "", ""


_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def _fhir_date(text: str, where: str) -> date:
    match = _DATE.match(text[:10])
    if match:
        try:
            return date(int(match[1]), int(match[2] or 1), int(match[3] or 1))
        except ValueError:
            pass
    raise MessageError.content(ErrorCode.DATA_TYPE_ERROR, where, f"{text!r} is not a FHIR date")


def _fhir_datetime(text: str, where: str, zone: tzinfo | None) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise MessageError.content(ErrorCode.DATA_TYPE_ERROR, where, f"{text!r} is not a FHIR dateTime") from None
    # Scheduling is in the hospital's local time, as HL7 v2 and DICOM carry it.
    return moment.astimezone(zone).replace(tzinfo=None) if moment.tzinfo else moment


# --------------------------------------------------------------------------------------------
# Processing
# --------------------------------------------------------------------------------------------


def _validate(resource: dict[str, Any]) -> None:
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.patient import Patient as FHIRPatient
    from fhir.resources.R4B.servicerequest import ServiceRequest

    models = {"ServiceRequest": ServiceRequest, "Bundle": Bundle, "Patient": FHIRPatient}
    kind = resource.get("resourceType")
    model = models.get(str(kind))
    if model is None:
        raise MessageError.reject(ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
                                  f"resourceType {kind!r} is not accepted here (ServiceRequest, or a "
                                  "transaction Bundle of Patient and ServiceRequest)")
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first.get("loc", ()))
        raise MessageError.reject(ErrorCode.SEGMENT_SEQUENCE_ERROR,
                                  f"invalid {kind}: {path}: {first.get('msg')} ({exc.error_count()} error(s))",
                                  f"{kind}.{path}" if path else str(kind)) from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # fhir.resources on shapes it does not foresee
        # (a "resourceType" that is an object or a number in a contained resource or an entry)
        raise MessageError.reject(ErrorCode.SEGMENT_SEQUENCE_ERROR, f"invalid {kind}: {exc}", str(kind)) from None


def _subject(request: dict[str, Any], session: Session, bundle_patients: dict[str, dict[str, Any]]
             ) -> tuple[dict[str, Any] | None, Patient | None]:
    """The Patient resource or registry row a ServiceRequest's subject names."""
    subject = request.get("subject") or {}
    reference = str(subject.get("reference") or "")
    if reference.startswith("#"):
        for contained in request.get("contained") or []:
            if contained.get("resourceType") == "Patient" and contained.get("id") == reference[1:]:
                return contained, None
        raise MessageError.content(ErrorCode.UNKNOWN_KEY_IDENTIFIER, "ServiceRequest.subject",
                                   f"contained resource {reference} is not in ServiceRequest.contained")
    if reference in bundle_patients:
        return bundle_patients[reference], None
    if reference.startswith("Patient/"):
        logical = reference.split("/", 2)[1]
        row = session.get(Patient, key) if (key := row_id(logical)) is not None else None
        if row is None:
            raise MessageError.content(ErrorCode.UNKNOWN_KEY_IDENTIFIER, "ServiceRequest.subject",
                                       f"{reference} does not exist")
        return None, service._root(session, row)
    if reference.startswith("Patient?identifier="):
        system, _, value = reference.split("=", 1)[1].rpartition("|")
        subject = {"identifier": {"system": system, "value": value}}
    identifier = subject.get("identifier")
    if isinstance(identifier, dict) and identifier.get("value"):
        found = service.patient_by_id(session, str(identifier["value"]))
        if found is None:
            raise MessageError.content(ErrorCode.UNKNOWN_KEY_IDENTIFIER, "ServiceRequest.subject",
                                       f"no patient has identifier {identifier['value']}")
        return None, found
    raise MessageError.content(ErrorCode.REQUIRED_FIELD_MISSING, "ServiceRequest.subject",
                               "subject must reference a Patient (contained, Patient/id, or by identifier)")


def _requests(data: dict[str, Any]) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, tuple[int, dict[str, Any]]]]:
    """(entry number, ServiceRequest) pairs and the Patients by every key a reference may use."""
    if data.get("resourceType") == "ServiceRequest":
        return [(0, data)], {}
    if data.get("type") != "transaction":
        raise MessageError.reject(ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
                                  f"Bundle type {data.get('type')!r}: only transaction Bundles are accepted",
                                  "Bundle.type")
    patients: dict[str, tuple[int, dict[str, Any]]] = {}
    requests: list[tuple[int, dict[str, Any]]] = []
    for number, entry in enumerate(data.get("entry") or []):
        resource = entry.get("resource") or {}
        kind = resource.get("resourceType")
        if kind == "Patient":
            for key in (entry.get("fullUrl"), f"Patient/{resource.get('id')}" if resource.get("id") else None,
                        f"#entry{number}"):
                if key:
                    patients[key] = (number, resource)
        elif kind == "ServiceRequest":
            requests.append((number, resource))
        else:
            raise MessageError.reject(ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
                                      f"entry {number}: {kind} is not accepted in an order transaction",
                                      f"Bundle.entry[{number}]")
    if not requests and not patients:
        raise MessageError.content(ErrorCode.REQUIRED_FIELD_MISSING, "Bundle.entry", "the Bundle is empty")
    return requests, patients


def map_fhir(data: dict[str, Any], session: Session, mappings: Mappings,
             zone: tzinfo | None = None) -> tuple[list[Mapped], list[dict[str, Any]]]:
    """Map a ServiceRequest or transaction Bundle to registry input (one item per request, plus
    one per Patient no request refers to). The plan says, per Bundle entry, which item is its."""
    _validate(data)
    requests, patients = _requests(data)
    by_key = {key: resource for key, (_n, resource) in patients.items()}
    entry_of = {id(resource): number for number, resource in patients.values()}
    mapper = FHIRMapper(mappings, mappings.profiles[FHIR_PROFILE], zone)
    items: list[Mapped] = []
    plan: dict[int, dict[str, Any]] = {}
    patient_item: dict[int, int] = {}
    for number, request in requests:
        patient, known = _subject(request, session, by_key)
        items.append(mapper.map_request(request, patient, known))
        plan[number] = {"kind": "ServiceRequest", "item": len(items) - 1}
        if patient is not None and id(patient) in entry_of:
            patient_item.setdefault(id(patient), len(items) - 1)
    for number, resource in {n: r for n, r in patients.values()}.items():
        if id(resource) not in patient_item:
            items.append(Mapped(event="Patient", action=Action.PATIENT_UPDATE,
                                patient=mapper.map_patient(resource, None)))
            patient_item[id(resource)] = len(items) - 1
        plan[number] = {"kind": "Patient", "item": patient_item[id(resource)]}
    return items, [plan[n] for n in sorted(plan)]


def process(channel: Any, session: Session, row: MessageRow) -> Any:
    """The channel's stages for a FHIR message; the response is JSON for the HTTP layer."""
    from pacs.integration.channel import Outcome, apply_mapped, applying

    mappings = channel.mappings.current()
    data: Any = None
    try:
        try:
            data = json.loads(row.raw)
        except ValueError as exc:
            raise MessageError.reject(ErrorCode.SEGMENT_SEQUENCE_ERROR, f"body is not JSON: {exc}") from None
        if not isinstance(data, dict) or "resourceType" not in data:
            raise MessageError.reject(ErrorCode.SEGMENT_SEQUENCE_ERROR, "body is not a FHIR resource (no resourceType)")
        row.stage = Stage.PARSED
        mapped, plan = map_fhir(data, session, mappings, channel.settings.zone)
        row.stage, row.status = Stage.MAPPED, Status.TRANSFORMED
        row.mapped = {"items": [m.model_dump(mode="json", exclude_none=True) for m in mapped]}
        first = mapped[0]
        row.patient_id = (first.patient.patient_id.value if first.patient.patient_id else "")[:64]
        if first.orders:
            row.accession_number = (first.orders[0].accession_number or "")[:64]
        ctx = channel.context(row, mappings)
        results = []
        try:
            with applying(session, mapped):
                for item in mapped:
                    results.append(apply_mapped(session, item, ctx))
        except service.RegistryError as exc:
            raise MessageError.content(
                {service.Problem.UNKNOWN: ErrorCode.UNKNOWN_KEY_IDENTIFIER,
                 service.Problem.DUPLICATE: ErrorCode.DUPLICATE_KEY_IDENTIFIER,
                 service.Problem.CONFLICT: ErrorCode.APPLICATION_INTERNAL_ERROR}[exc.problem],
                mapper_source(exc.target), exc.text) from None
        row.applied = {"items": results, "entries": plan}
        row.stage, row.status = Stage.APPLIED, Status.PROCESSED
        row.ack_code = "200"
        row.response = json.dumps(row.applied, default=str)
        error = None
    except MessageError as exc:
        http_status, body = for_error(exc)
        row.status, row.error = Status.ERROR, str(exc)
        _keys_of_refused(data, mappings, row)
        row.ack_code, row.response = str(http_status), json.dumps(body, ensure_ascii=False)
        error = exc
    except Exception as exc:  # a fault of ours: keep the message for reprocessing, say so
        import logging

        logging.getLogger(__name__).exception("FHIR message %s failed", row.id)
        error = MessageError.content(ErrorCode.APPLICATION_INTERNAL_ERROR, None,
                                     f"internal error, message kept for reprocessing: {exc}")
        row.status, row.error = Status.ERROR, str(error)
        _keys_of_refused(data, mappings, row)
        row.ack_code = "500"
        row.response = json.dumps({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "exception", "diagnostics": error.text}]})
    row.processed_at = utcnow()
    channel.save(session, [row])
    return Outcome(message_id=row.id, status=Status(row.status), ack_code=row.ack_code,
                   response=row.response.encode(), error=error, applied=row.applied)


def _keys_of_refused(data: Any, mappings: Mappings, row: MessageRow) -> None:
    try:
        search_keys(data, mappings, row)
    except Exception:  # best effort: a refusal is answered whatever its keys
        import logging

        logging.getLogger(__name__).debug("search keys of refused message %s not read", row.id, exc_info=True)


def search_keys(data: Any, mappings: Mappings, row: MessageRow) -> None:
    """The patient ID and accession number of a message refused before it was mapped, read
    tolerantly where the field map reads them (``patient.identifiers``,
    ``order.accession_number``) from its first ServiceRequest and that request's Patient
    (contained, in the Bundle, or named by identifier), so that the message browser finds it
    by them like any other. Whatever cannot be read is left empty."""
    if not isinstance(data, dict):
        return
    rules = mappings.profiles[FHIR_PROFILE].rules
    resources = _resources(data)
    request = next((r for r in resources if isinstance(r, dict) and r.get("resourceType") == "ServiceRequest"), None)
    patients = [r for r in resources if isinstance(r, dict) and r.get("resourceType") == "Patient"]
    if request is not None:
        subject = request.get("subject") if isinstance(request.get("subject"), dict) else {}
        reference = str(subject.get("reference") or "")
        contained = [c for c in _list(request.get("contained")) if isinstance(c, dict)]
        named = [c for c in contained + patients if reference in (f"#{c.get('id')}", f"Patient/{c.get('id')}")]
        patients = named or patients
        if not row.accession_number:
            row.accession_number = _first(request, rules.get("order.accession_number", []))[:64]
        identifier = subject.get("identifier")
        if not row.patient_id and isinstance(identifier, dict) and identifier.get("value"):
            row.patient_id = str(identifier["value"])[:64]
        if not row.patient_id and reference.startswith("Patient?identifier="):
            row.patient_id = reference.rpartition("|")[2].rpartition("=")[2][:64]
    if not row.patient_id and patients:
        row.patient_id = _first(patients[0], rules.get("patient.identifiers", []), field="value")[:64]


def _first(scope: dict[str, Any], rules: list[Rule], field: str | None = None) -> str:
    """The first value a rule's sources find in ``scope`` (``field`` of it when it is an
    element such as an Identifier), or ""."""
    for rule in rules:
        for expression in rule.sources:
            if not expression.startswith(str(scope.get("resourceType", "?"))):
                continue
            try:
                found = _evaluate(scope, expression)
            except MessageError:
                continue
            for value in found:
                if isinstance(value, dict) and field is not None:
                    value = value.get(field)
                if isinstance(value, str | int) and str(value).strip():
                    return str(value).strip()
    return ""


def mapper_source(target: str) -> str:
    """Where in a ServiceRequest/Patient a registry field comes from, for error expressions."""
    prefix, _, field = target.partition(".")
    resource = "Patient" if prefix in ("patient", "merge") else "ServiceRequest"
    return f"{resource} ({field})"

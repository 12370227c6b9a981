"""Modality Worklist (PS3.4 Annex K; IHE RAD-5 Query Modality Worklist).

The worklist is a view of the registry: every scheduled procedure step whose order is still
open. A step leaves it when it is completed or discontinued or its order cancelled. Matching
follows PS3.4 C.2.2.2 (see :mod:`pacs.archive.query`); the return keys are those of K.6, with
their sequences; names and text go out in the character set the modality can read
(:mod:`pacs.archive.charset`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import ColumnElement, Connection, Select, bindparam, type_coerce
from sqlmodel import col, select

from pacs.archive.charset import Answer as BaseAnswer
from pacs.archive.charset import answer_charset
from pacs.archive.encoding import Element, Encoded
from pacs.archive.query import (
    Cond,
    Only,
    QueryError,
    columns,
    cond_date_range,
    cond_person_name,
    cond_string,
    cond_time_range,
    cond_uid_list,
    elements,
    every,
    fixed,
    keyword_of,
    readable,
    records,
)
from pacs.archive.status import Status
from pacs.db import Reading, Shaped
from pacs.integration.names import NameRules
from pacs.registry.models import (
    ImagingOrder,
    OrderStatus,
    Patient,
    ProcedureStep,
    StepStatus,
    Visit,
)

OPEN_ORDERS = (OrderStatus.SCHEDULED, OrderStatus.ARRIVED, OrderStatus.IN_PROGRESS)
OPEN_STEPS = (StepStatus.SCHEDULED, StepStatus.ARRIVED, StepStatus.STARTED)
SPS_STATUS_OUT = {StepStatus.SCHEDULED: "SCHEDULED", StepStatus.ARRIVED: "ARRIVED", StepStatus.STARTED: "STARTED"}
PRIORITY_OUT = {"stat": "STAT", "asap": "HIGH", "urgent": "HIGH", "timing critical": "HIGH", "preop": "HIGH",
                "routine": "ROUTINE", "callback": "ROUTINE", "low": "LOW", "medium": "MEDIUM"}
MAX_MATCHES = 2000

# PS3.4 Table K.6-1 (and the Patient and Visit modules it draws on): the keys a query may carry.
SPS_KEYS = {
    "ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepEndDate", "ScheduledProcedureStepEndTime", "Modality",
    "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence",
    "ScheduledProcedureStepID", "ScheduledStationName", "ScheduledProcedureStepLocation", "PreMedication",
    "ScheduledProcedureStepStatus", "CommentsOnTheScheduledProcedureStep", "RequestedContrastAgent",
    "ScheduledPerformingPhysicianIdentificationSequence", "ScheduledStationNameCodeSequence",
    "ScheduledStationClassCodeSequence", "ScheduledStationGeographicLocationCodeSequence",
    "AnatomicalOrientationType", "SpecificCharacterSet",
}
TOP_KEYS = {
    "SpecificCharacterSet", "ScheduledProcedureStepSequence", "RequestedProcedureID",
    "RequestedProcedureDescription", "RequestedProcedureCodeSequence", "StudyInstanceUID", "StudyDate",
    "StudyTime", "ReferencedStudySequence", "RequestedProcedurePriority", "PatientTransportArrangements",
    "ReasonForTheRequestedProcedure", "ReasonForRequestedProcedureCodeSequence", "RequestedProcedureComments",
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "RequestingPhysician", "RequestingService",
    "RequestingServiceCodeSequence", "ReferringPhysicianName", "ReferringPhysicianIdentificationSequence",
    "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
    "ImagingServiceRequestComments", "IssueDateOfImagingServiceRequest", "IssueTimeOfImagingServiceRequest",
    "AdmissionID", "IssuerOfAdmissionIDSequence", "CurrentPatientLocation", "PatientInstitutionResidence",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "RouteOfAdmissions",
    "ReferencedPatientSequence", "PatientName", "PatientID", "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence", "PatientBirthDate", "PatientSex",
    "PatientWeight", "PatientSize", "PatientAge", "ConfidentialityConstraintOnPatientDataDescription",
    "PatientState", "PregnancyStatus", "MedicalAlerts", "Allergies", "SpecialNeeds", "PatientComments",
    "EthnicGroup", "PatientAddress", "PatientTelephoneNumbers", "MilitaryRank", "OtherPatientNames",
    "PatientMotherBirthName", "ReferencedStudySequence", "InstitutionName", "InstitutionAddress",
    "VisitStatusID", "ReferencedVisitSequence", "ResponsiblePerson", "ResponsibleOrganization",
    "PatientSpeciesDescription", "PatientBreedDescription", "TimezoneOffsetFromUTC", "QueryRetrieveLevel",
    "RETIRED_PatientInsurancePlanCodeSequence", "ResultsDistributionListSequence", "NamesOfIntendedRecipientsOfResults",
    "ReferencedDefinedProtocolSequence", "WorklistLabel", "AdmittingDate", "AdmittingTime",
}


@dataclass
class Row:
    """One worklist item: the columns of its step, order, patient and visit (if any)."""

    step: Any
    order: Any
    patient: Any
    visit: Any


def _offending(tag: int, comment: str, status: Status = Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS) -> QueryError:
    return QueryError(status, comment, tag)


def validate_identifier(identifier: Dataset) -> None:
    """Refuse keys outside the worklist information model and values of the wrong VR."""
    readable(identifier)
    for element in elements(identifier):
        if element.tag.is_private or element.tag.element == 0:
            continue  # private keys are not matched and not returned; group lengths are noise
        keyword = keyword_of(element.tag)
        if keyword not in TOP_KEYS:
            raise _offending(element.tag, f"{keyword or element.tag} is not a Modality Worklist key (PS3.4 K.6)")
        _check_vr(element)
    sps = identifier["ScheduledProcedureStepSequence"] if "ScheduledProcedureStepSequence" in identifier else None
    if sps is not None:
        if len(sps.value) > 1:
            raise _offending(sps.tag, "Scheduled Procedure Step Sequence may hold at most one item in a query")
        for item in sps.value:
            for element in item:
                if element.tag.is_private:
                    continue
                keyword = keyword_for_tag(element.tag)
                if keyword not in SPS_KEYS:
                    raise _offending(element.tag, f"{keyword or element.tag} is not a Scheduled Procedure Step key")
                _check_vr(element)


def _check_vr(element) -> None:  # type: ignore[no-untyped-def]
    try:
        expected = dictionary_VR(element.tag)
    except KeyError:
        return
    if element.VR not in expected.split(" or ") and element.VR not in ("UN",):
        raise _offending(element.tag, f"{keyword_for_tag(element.tag)} must have VR {expected}, not {element.VR}")
    try:
        element.value  # noqa: B018 - decoding is the check
    except Exception as exc:  # pydicom raises various errors for undecodable values
        raise _offending(element.tag, f"{keyword_for_tag(element.tag)} cannot be read: {exc}") from None


def _value(ds: Dataset | None, keyword: str) -> str | None:
    if ds is None or keyword not in ds:
        return None
    return _text(ds[keyword].value)


def _text(value: Any) -> str:
    """A query key's value as the matching functions take it (pacs.archive.query): a NUL as
    U+FFFD, as the index keeps it (pacs.archive.store._text), which PostgreSQL's text needs."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text.replace("\0", "\ufffd")


def values_by_keyword(ds: Dataset, items: list[DataElement] | None = None) -> dict[str, str]:
    """Every top-level value of ``ds`` with a keyword, as :func:`_value` reads each: one pass
    over the identifier (or its ``items``, read already) instead of a lookup per matching key."""
    return {keyword: _text(element.value) for element in (elements(ds) if items is None else items)
            if (keyword := keyword_of(element.tag))}


def conditions(identifier: Dataset) -> list[Cond]:
    """The matching conditions of a worklist query (PS3.4 K.2.2.1.3 matching keys), their values
    apart (:class:`pacs.archive.query.Cond`)."""
    sps = None
    if "ScheduledProcedureStepSequence" in identifier and identifier.ScheduledProcedureStepSequence:
        sps = identifier.ScheduledProcedureStepSequence[0]
    tag = Tag
    step, order, patient = ProcedureStep.__table__.c, ImagingOrder.__table__.c, Patient.__table__.c  # type: ignore[attr-defined]
    found = [
        cond_string(step.station_ae_title, _value(sps, "ScheduledStationAETitle")),
        cond_string(step.modality, _value(sps, "Modality"), fold_case=True),
        cond_date_range(step.start_date, _value(sps, "ScheduledProcedureStepStartDate"),
                        tag("ScheduledProcedureStepStartDate")),
        cond_time_range(step.start_time, _value(sps, "ScheduledProcedureStepStartTime"),
                        tag("ScheduledProcedureStepStartTime")),
        cond_string(step.sps_id, _value(sps, "ScheduledProcedureStepID")),
        cond_string(step.station_name, _value(sps, "ScheduledStationName")),
        cond_string(step.location, _value(sps, "ScheduledProcedureStepLocation")),
        cond_string(patient.patient_id, _value(identifier, "PatientID")),
        cond_string(patient.issuer, _value(identifier, "IssuerOfPatientID")),
        cond_person_name(patient.name_alphabetic, patient.name_ideographic, _value(identifier, "PatientName")),
        cond_date_range(_birth_date_text(), _value(identifier, "PatientBirthDate"), tag("PatientBirthDate")),
        cond_string(patient.sex, _value(identifier, "PatientSex"), fold_case=True),
        cond_string(order.accession_number, _value(identifier, "AccessionNumber")),
        cond_string(order.requested_procedure_id, _value(identifier, "RequestedProcedureID")),
        cond_uid_list(order.study_instance_uid, _value(identifier, "StudyInstanceUID")),
    ]
    status = _value(sps, "ScheduledProcedureStepStatus")
    if status and status.strip() not in ("", "*"):
        wanted = tuple(s for s, text in SPS_STATUS_OUT.items() if text in status.split("\\"))
        found.append(Cond(("step status", len(wanted)), wanted,
                          lambda b: step.status.in_([type_coerce(v, step.status.type) for v in b]))
                     if wanted else fixed(("no step",), step.id == -1))
    return [c for c in found if c is not None]


@lru_cache(maxsize=1)
def _birth_date_text() -> ColumnElement[str]:
    """Patient.birth_date as YYYYMMDD text on SQLite and PostgreSQL alike (one expression,
    reused by every query)."""
    from sqlalchemy import String, cast, func

    return func.replace(cast(Patient.__table__.c.birth_date, String), "-", "")  # type: ignore[attr-defined]


# The columns an answer reads (VALUES, SPS_VALUES, the names), per table, its primary key first.
READ: Only = {
    ProcedureStep: ("id", "station_ae_title", "start_date", "start_time", "modality", "performing_physician",
                    "description", "protocol_code", "protocol_scheme", "protocol_text", "sps_id", "station_name",
                    "location", "status"),
    ImagingOrder: ("id", "requested_procedure_id", "procedure_text", "procedure_code", "procedure_scheme",
                   "study_instance_uid", "priority", "reason", "accession_number", "requesting_physician",
                   "department", "referring_physician", "placer_number", "filler_number"),
    Patient: ("id", "name_alphabetic", "name_ideographic", "name_phonetic", "patient_id", "issuer", "birth_date",
              "sex", "address", "phone"),
    Visit: ("id", "visit_number", "ward", "room", "bed"),
}
TABLES = (ProcedureStep, ImagingOrder, Patient, Visit)


def _among(column: Any, values: tuple[Any, ...]) -> ColumnElement[bool]:
    """``column IN (...)`` of constant values, each a bound parameter of the column's type: SQL
    that does not change with the values (an IN of a plain list expands only when it runs)."""
    return column.in_([bindparam(None, value, type_=column.type, unique=True) for value in values])


@lru_cache(maxsize=1)
def _open_items() -> Select[Any]:
    """Every open step with its order, patient and visit: what each query narrows down."""
    return (
        select(*columns(*TABLES, only=READ))
        .join(ImagingOrder, ImagingOrder.id == ProcedureStep.order)
        .join(Patient, Patient.id == ImagingOrder.patient)
        .outerjoin(Visit, Visit.id == ImagingOrder.visit)
        .where(_among(ProcedureStep.__table__.c.status, OPEN_STEPS),  # type: ignore[attr-defined]
               _among(ImagingOrder.__table__.c.status, OPEN_ORDERS))  # type: ignore[attr-defined]
        .order_by(col(ProcedureStep.start_date), col(ProcedureStep.start_time), col(ProcedureStep.id))
        .limit(MAX_MATCHES)
    )


def find_rows(conn: Connection | Reading, identifier: Dataset) -> list[Row]:
    """The open items ``identifier`` matches, by a query built and compiled once per shape of its keys."""
    found = conditions(identifier)
    base = _open_items()
    if not found:
        return [Row(*row) for row in records(conn, TABLES, base, only=READ)]
    where = every("and", found)
    query = Shaped(("worklist", where.key), where.values, lambda b: base.where(where.build(b)))
    return [Row(*row) for row in records(conn, TABLES, query, only=READ)]


# Longest values of the VRs that carry text here, in characters (PS3.5 Table 6.2-1).
MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "LT": 10240, "PN": 64}


@lru_cache(maxsize=512)
def _tag_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag, dictionary_VR(tag).split(" or ")[0]


def _element(keyword: str, value: object) -> Element:
    tag, vr = _tag_vr(keyword)
    if isinstance(value, str) and vr in MAX_LENGTH and vr != "PN" and len(value) > MAX_LENGTH[vr]:
        value = value[:MAX_LENGTH[vr]]  # transliterated text can outgrow the VR (SH is 16)
    return (tag, vr, value)


def _code(code: str, scheme: str, meaning: str) -> list[list[Element]]:
    if not code:
        return []
    return [[_element("CodeValue", code), _element("CodingSchemeDesignator", scheme or "L"),
             _element("CodeMeaning", meaning or code)]]


def _location(answer: Answer, row: Row) -> str:
    visit = row.visit
    return answer.text("/".join(p for p in (visit.ward, visit.room, visit.bed) if p)) if visit else ""


# Return keys of the Scheduled Procedure Step Sequence (PS3.4 Table K.6-1) and how to fill them.
SPS_VALUES: dict[str, Callable[[Answer, Row], object]] = {
    "ScheduledStationAETitle": lambda a, r: r.step.station_ae_title,
    "ScheduledProcedureStepStartDate": lambda a, r: r.step.start_date,
    "ScheduledProcedureStepStartTime": lambda a, r: r.step.start_time,
    "Modality": lambda a, r: r.step.modality,
    "ScheduledPerformingPhysicianName": lambda a, r: a.person(r.step.performing_physician),
    "ScheduledProcedureStepDescription": lambda a, r: a.text(r.step.description or r.order.procedure_text),
    "ScheduledProtocolCodeSequence": lambda a, r: _code(r.step.protocol_code, r.step.protocol_scheme,
                                                        a.text(r.step.protocol_text)),
    "ScheduledProcedureStepID": lambda a, r: r.step.sps_id,
    "ScheduledStationName": lambda a, r: a.text(r.step.station_name),
    "ScheduledProcedureStepLocation": lambda a, r: a.text(r.step.location),
    "ScheduledProcedureStepStatus": lambda a, r: SPS_STATUS_OUT.get(StepStatus(r.step.status), "SCHEDULED"),
    "PreMedication": lambda a, r: "",
    "RequestedContrastAgent": lambda a, r: "",
    "CommentsOnTheScheduledProcedureStep": lambda a, r: "",
}

# The other return keys the worklist has values for; any other key of the model goes out empty.
VALUES: dict[str, Callable[[Answer, Row], object]] = {
    "RequestedProcedureID": lambda a, r: r.order.requested_procedure_id,
    "RequestedProcedureDescription": lambda a, r: a.text(r.order.procedure_text),
    "RequestedProcedureCodeSequence": lambda a, r: _code(r.order.procedure_code, r.order.procedure_scheme,
                                                         a.text(r.order.procedure_text)),
    "StudyInstanceUID": lambda a, r: r.order.study_instance_uid,
    "RequestedProcedurePriority": lambda a, r: PRIORITY_OUT.get(r.order.priority, "ROUTINE"),
    "ReasonForTheRequestedProcedure": lambda a, r: a.text(r.order.reason),
    "AccessionNumber": lambda a, r: r.order.accession_number,
    "RequestingPhysician": lambda a, r: a.person(r.order.requesting_physician),
    "RequestingService": lambda a, r: a.text(r.order.department),
    "ReferringPhysicianName": lambda a, r: a.person(r.order.referring_physician),
    "PlacerOrderNumberImagingServiceRequest": lambda a, r: r.order.placer_number,
    "FillerOrderNumberImagingServiceRequest": lambda a, r: r.order.filler_number,
    "AdmissionID": lambda a, r: r.visit.visit_number if r.visit else "",
    "CurrentPatientLocation": _location,
    "PatientName": lambda a, r: a.patient_name(r.patient),
    "PatientID": lambda a, r: r.patient.patient_id,
    "IssuerOfPatientID": lambda a, r: r.patient.issuer,
    "PatientBirthDate": lambda a, r: r.patient.birth_date.strftime("%Y%m%d") if r.patient.birth_date else "",
    "PatientSex": lambda a, r: r.patient.sex,
    "PatientAddress": lambda a, r: a.text(r.patient.address),
    "PatientTelephoneNumbers": lambda a, r: r.patient.phone,
}


Fill = Callable[["Answer", Row], object]
Plan = list[tuple[int, str, Fill]]  # (tag, VR, what fills it), in tag order


def _fill(builder: Fill | None, vr: str) -> Fill:
    """What fills one return key: its builder, cut to the VR's length, or an empty value."""
    if builder is None:
        empty: object = [] if vr == "SQ" else None
        return lambda a, r: empty
    limit = MAX_LENGTH.get(vr) if vr != "PN" else None
    if limit is None:
        return builder

    def cut(a: Answer, r: Row) -> object:
        value = builder(a, r)
        return value[:limit] if isinstance(value, str) else value  # transliterated text can outgrow SH
    return cut


def _items(plan: Plan) -> Fill:
    return lambda a, r: [[(tag, vr, fill(a, r)) for tag, vr, fill in plan]]


class Answer(BaseAnswer):
    """Worklist answers in one character set, each holding exactly the keys the query asked for
    (PS3.4 C.2.2.1.2; a zero-length sequence key returns the whole sequence, C.2.2.2.6), in the
    compact form :mod:`pacs.archive.encoding` sends without pydicom's writer.

    Which keys an answer holds and what fills each is worked out once per query
    (:meth:`plan`); each matching row then only runs the fills."""

    def plan(self, query: Dataset) -> Plan:
        out: Plan = []
        if self.charset:
            charset = self.charset
            out.append((*_tag_vr("SpecificCharacterSet"), lambda a, r: charset))
        for element in query:
            keyword = element.keyword
            if element.tag.is_private or keyword in ("SpecificCharacterSet", "QueryRetrieveLevel", ""):
                continue
            tag, vr = _tag_vr(keyword)
            if keyword == "ScheduledProcedureStepSequence":
                asked = element.value[0] if element.value and len(element.value[0]) > 0 else None
                keys = [e.keyword for e in asked if not e.tag.is_private] if asked is not None else list(SPS_VALUES)
                sps = [(*_tag_vr(key), _fill(SPS_VALUES.get(key), _tag_vr(key)[1])) for key in keys if key]
                out.append((tag, vr, _items(sorted(sps, key=lambda e: e[0]))))
                continue
            out.append((tag, vr, _fill(VALUES.get(keyword), element.VR if element.VR == "SQ" else vr)))
        return sorted(out, key=lambda e: e[0])

    def respond(self, row: Row, plan: Plan) -> Encoded:
        return Encoded([(tag, vr, fill(self, row)) for tag, vr, fill in plan], self.charset, ordered=True)


def find(conn: Connection | Reading, identifier: Dataset, *, names: NameRules, peer_charset: str | None = None,
         cancelled: Callable[[], bool] = lambda: False) -> Iterator[Dataset]:
    """Worklist items matching ``identifier``, as the query's return keys. Raises QueryError."""
    validate_identifier(identifier)
    charset = answer_charset(identifier.get("SpecificCharacterSet"), peer_charset)
    answer = Answer(charset, names)
    plan = answer.plan(identifier)
    for row in find_rows(conn, identifier):
        if cancelled():
            return
        yield answer.respond(row, plan)

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

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from sqlalchemy import ColumnElement, and_, true
from sqlmodel import Session, col, select

from pacs.archive.charset import Answer as BaseAnswer
from pacs.archive.charset import answer_charset
from pacs.archive.query import (
    QueryError,
    match_date_range,
    match_person_name,
    match_string,
    match_time_range,
    match_uid_list,
)
from pacs.archive.status import Status
from pacs.integration.names import NameRules
from pacs.registry.models import ImagingOrder, OrderStatus, Patient, ProcedureStep, StepStatus, Visit

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
    step: ProcedureStep
    order: ImagingOrder
    patient: Patient
    visit: Visit | None


def _offending(tag: int, comment: str, status: Status = Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS) -> QueryError:
    return QueryError(status, comment, tag)


def validate_identifier(identifier: Dataset) -> None:
    """Refuse keys outside the worklist information model and values of the wrong VR."""
    for element in identifier:
        if element.tag.is_private or element.tag.element == 0:
            continue  # private keys are not matched and not returned; group lengths are noise
        keyword = keyword_for_tag(element.tag)
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
    value = ds[keyword].value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def conditions(identifier: Dataset) -> list[ColumnElement[bool]]:
    """The SQL conditions for a worklist query (PS3.4 K.2.2.1.3 matching keys)."""
    sps = None
    if "ScheduledProcedureStepSequence" in identifier and identifier.ScheduledProcedureStepSequence:
        sps = identifier.ScheduledProcedureStepSequence[0]
    tag = Tag
    found = [
        match_string(ProcedureStep.station_ae_title, _value(sps, "ScheduledStationAETitle")),
        match_string(ProcedureStep.modality, _value(sps, "Modality"), fold_case=True),
        match_date_range(ProcedureStep.start_date, _value(sps, "ScheduledProcedureStepStartDate"),
                         tag("ScheduledProcedureStepStartDate")),
        match_time_range(ProcedureStep.start_time, _value(sps, "ScheduledProcedureStepStartTime"),
                         tag("ScheduledProcedureStepStartTime")),
        match_string(ProcedureStep.sps_id, _value(sps, "ScheduledProcedureStepID")),
        match_string(ProcedureStep.station_name, _value(sps, "ScheduledStationName")),
        match_string(ProcedureStep.location, _value(sps, "ScheduledProcedureStepLocation")),
        match_string(Patient.patient_id, _value(identifier, "PatientID")),
        match_string(Patient.issuer, _value(identifier, "IssuerOfPatientID")),
        match_person_name(Patient.name_alphabetic, Patient.name_ideographic, _value(identifier, "PatientName")),
        match_date_range(_birth_date_text(), _value(identifier, "PatientBirthDate"), tag("PatientBirthDate")),
        match_string(Patient.sex, _value(identifier, "PatientSex"), fold_case=True),
        match_string(ImagingOrder.accession_number, _value(identifier, "AccessionNumber")),
        match_string(ImagingOrder.requested_procedure_id, _value(identifier, "RequestedProcedureID")),
        match_uid_list(ImagingOrder.study_instance_uid, _value(identifier, "StudyInstanceUID")),
    ]
    status = _value(sps, "ScheduledProcedureStepStatus")
    if status and status.strip() not in ("", "*"):
        wanted = [s for s, text in SPS_STATUS_OUT.items() if text in status.split("\\")]
        found.append(col(ProcedureStep.status).in_(wanted) if wanted else ProcedureStep.id == -1)
    return [c for c in found if c is not None]


def _birth_date_text() -> ColumnElement[str]:
    """Patient.birth_date as YYYYMMDD text on SQLite and PostgreSQL alike."""
    from sqlalchemy import String, cast, func

    return func.replace(cast(Patient.birth_date, String), "-", "")


def find_rows(session: Session, identifier: Dataset) -> list[Row]:
    query = (
        select(ProcedureStep, ImagingOrder, Patient, Visit)
        .join(ImagingOrder, ImagingOrder.id == ProcedureStep.order)
        .join(Patient, Patient.id == ImagingOrder.patient)
        .outerjoin(Visit, Visit.id == ImagingOrder.visit)
        .where(col(ProcedureStep.status).in_(OPEN_STEPS), col(ImagingOrder.status).in_(OPEN_ORDERS),
               and_(true(), *conditions(identifier)))
        .order_by(col(ProcedureStep.start_date), col(ProcedureStep.start_time), col(ProcedureStep.id))
        .limit(MAX_MATCHES)
    )
    return [Row(*found) for found in session.exec(query).all()]


class Answer(BaseAnswer):
    """Builds worklist items in one character set."""

    def item(self, row: Row) -> Dataset:
        step, order, patient, visit = row.step, row.order, row.patient, row.visit
        ds = Dataset()
        if self.charset:
            ds.SpecificCharacterSet = self.charset
        sps = Dataset()
        sps.ScheduledStationAETitle = step.station_ae_title
        sps.ScheduledProcedureStepStartDate = step.start_date
        sps.ScheduledProcedureStepStartTime = step.start_time
        sps.Modality = step.modality
        sps.ScheduledPerformingPhysicianName = self.person(step.performing_physician)
        sps.ScheduledProcedureStepDescription = self.text(step.description or order.procedure_text)
        protocol = Dataset()
        if step.protocol_code:
            protocol.CodeValue = step.protocol_code
            protocol.CodingSchemeDesignator = step.protocol_scheme or "L"
            protocol.CodeMeaning = self.text(step.protocol_text or step.protocol_code)
        sps.ScheduledProtocolCodeSequence = Sequence([protocol] if step.protocol_code else [])
        sps.ScheduledProcedureStepID = step.sps_id
        sps.ScheduledStationName = self.text(step.station_name)
        sps.ScheduledProcedureStepLocation = self.text(step.location)
        sps.ScheduledProcedureStepStatus = SPS_STATUS_OUT.get(StepStatus(step.status), "SCHEDULED")
        sps.PreMedication = ""
        sps.RequestedContrastAgent = ""
        sps.CommentsOnTheScheduledProcedureStep = ""
        ds.ScheduledProcedureStepSequence = Sequence([sps])

        ds.RequestedProcedureID = order.requested_procedure_id
        ds.RequestedProcedureDescription = self.text(order.procedure_text)
        code = Dataset()
        if order.procedure_code:
            code.CodeValue = order.procedure_code
            code.CodingSchemeDesignator = order.procedure_scheme or "L"
            code.CodeMeaning = self.text(order.procedure_text or order.procedure_code)
        ds.RequestedProcedureCodeSequence = Sequence([code] if order.procedure_code else [])
        ds.StudyInstanceUID = order.study_instance_uid
        ds.ReferencedStudySequence = Sequence([])
        ds.RequestedProcedurePriority = PRIORITY_OUT.get(order.priority, "ROUTINE")
        ds.PatientTransportArrangements = ""
        ds.ReasonForTheRequestedProcedure = self.text(order.reason)
        ds.RequestedProcedureComments = ""
        ds.AccessionNumber = order.accession_number
        ds.RequestingPhysician = self.person(order.requesting_physician)
        ds.RequestingService = self.text(order.department)
        ds.ReferringPhysicianName = self.person(order.referring_physician)
        ds.PlacerOrderNumberImagingServiceRequest = order.placer_number
        ds.FillerOrderNumberImagingServiceRequest = order.filler_number
        ds.ImagingServiceRequestComments = ""
        ds.AdmissionID = visit.visit_number if visit else ""
        ds.CurrentPatientLocation = self.text("/".join(p for p in (visit.ward, visit.room, visit.bed) if p)) if visit else ""
        ds.PatientName = self.patient_name(patient)
        ds.PatientID = patient.patient_id
        ds.IssuerOfPatientID = patient.issuer
        ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
        ds.PatientSex = patient.sex
        ds.PatientAddress = self.text(patient.address)
        ds.PatientTelephoneNumbers = patient.phone
        for empty in ("PatientWeight", "PatientSize", "MedicalAlerts", "Allergies", "PregnancyStatus",
                      "SpecialNeeds", "PatientState", "ConfidentialityConstraintOnPatientDataDescription",
                      "OtherPatientIDsSequence", "PatientComments", "StudyDate", "StudyTime"):
            setattr(ds, empty, Sequence([]) if empty.endswith("Sequence") else None)
        return ds


def returned(item: Dataset, query: Dataset, charset: str | None) -> Dataset:
    """The answer to one match: the keys the query asked for, with the item's values
    (PS3.4 C.2.2.1.2; an empty sequence key returns the whole sequence, C.2.2.2.6)."""
    out = Dataset()
    if charset:
        out.SpecificCharacterSet = charset
    for element in query:
        if element.tag.is_private or element.keyword in ("SpecificCharacterSet", "QueryRetrieveLevel", ""):
            continue
        keyword = element.keyword
        if element.VR == "SQ":
            ours = item[keyword] if keyword in item else None
            if ours is None:
                setattr(out, keyword, Sequence([]))
            elif element.value and len(element.value[0]) > 0:
                setattr(out, keyword, Sequence([returned(i, element.value[0], None) for i in ours.value]))
            else:
                setattr(out, keyword, ours.value)
        else:
            setattr(out, keyword, item[keyword].value if keyword in item else None)
    return out


def find(session: Session, identifier: Dataset, *, names: NameRules, peer_charset: str | None = None,
         cancelled: Callable[[], bool] = lambda: False) -> Iterator[Dataset]:
    """Worklist items matching ``identifier``, as the query's return keys. Raises QueryError."""
    validate_identifier(identifier)
    charset = answer_charset(identifier.get("SpecificCharacterSet"), peer_charset)
    answer = Answer(charset, names)
    for row in find_rows(session, identifier):
        if cancelled():
            return
        yield returned(answer.item(row), identifier, charset)

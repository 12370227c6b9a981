"""Query/Retrieve C-FIND (PS3.4 C.6): Patient Root and Study Root at PATIENT, STUDY, SERIES and
IMAGE level, answered from the index (IHE RAD-14).

Matching is PS3.4 C.2.2.2 (:mod:`pacs.archive.query`), relational: keys of any level above the
one asked for narrow the answer, unique keys may be lists. Patient attributes come from the
registry, so an ADT update or a merge shows at once. Names and text follow the character-set
rules of the worklist (:mod:`pacs.archive.charset`). Keys the model does not hold are returned
empty, as PS3.4 C.2.2.1.2 allows; a value of the wrong VR is refused with 0xA900.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, and_, exists, func, true
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from pacs.archive.charset import Answer as BaseAnswer
from pacs.archive.charset import answer_charset
from pacs.archive.index import NOT_REJECTED, Instance, Series, Study
from pacs.archive.query import (
    QueryError,
    columns,
    match_date_range,
    match_person_name,
    match_string,
    match_time_range,
    match_uid_list,
    records,
)
from pacs.archive.status import Status
from pacs.archive.worklist import _birth_date_text, _check_vr, _value
from pacs.integration.names import NameRules
from pacs.registry.models import Patient

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
MAX_MATCHES = 10000


@dataclass
class Found:
    """One match: the columns of its patient, study, series and instance (as far as the level goes)."""

    patient: Any
    study: Any = None
    series: Any = None
    instance: Any = None
    counts: tuple[int, int, int] | None = None  # related studies, series, instances (patient level)


def level_of(identifier: Dataset, model: str) -> str:
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise QueryError(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                         f"Query/Retrieve Level {level or '(empty)'} is not one of {', '.join(LEVELS)}", 0x00080052)
    if model == "STUDY" and level == "PATIENT":
        raise QueryError(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                         "the Study Root model has no PATIENT level", 0x00080052)
    return level


def validate(identifier: Dataset) -> None:
    for element in identifier:
        if element.tag.is_private or element.tag.element == 0:
            continue
        _check_vr(element)


def conditions(identifier: Dataset, level: str) -> list[ColumnElement[bool]]:
    v = lambda keyword: _value(identifier, keyword)  # noqa: E731
    found = [
        match_string(Patient.patient_id, v("PatientID")),
        match_string(Patient.issuer, v("IssuerOfPatientID")),
        match_person_name(Patient.name_alphabetic, Patient.name_ideographic, v("PatientName")),
        match_date_range(_birth_date_text(), v("PatientBirthDate"), 0x00100030),
        match_string(Patient.sex, v("PatientSex"), fold_case=True),
    ]
    if level in ("STUDY", "SERIES", "IMAGE"):
        found += [
            match_uid_list(Study.study_instance_uid, v("StudyInstanceUID")),
            match_date_range(Study.study_date, v("StudyDate"), 0x00080020),
            match_time_range(Study.study_time, v("StudyTime"), 0x00080030),
            match_string(Study.accession_number, v("AccessionNumber")),
            match_string(Study.study_id, v("StudyID")),
            match_string(Study.description, v("StudyDescription"), fold_case=True),
            match_string(Study.referring_physician, v("ReferringPhysicianName"), fold_case=True),
        ]
        modalities = v("ModalitiesInStudy")
        if modalities and modalities.strip() not in ("", "*"):
            # Whole values: a study with any series of one of the modalities (CT is not OCT).
            wanted = [m.strip().upper() for m in modalities.replace(",", "\\").split("\\") if m.strip()]
            # Asked per study (EXISTS), so that a date range can lead with the study-date index
            # rather than every series of a common modality being gathered first.
            other = aliased(Series)
            found.append(exists().where(other.study == Study.id, other.modality.in_(wanted)))
    if level in ("SERIES", "IMAGE"):
        number = v("SeriesNumber")
        found += [
            match_uid_list(Series.series_instance_uid, v("SeriesInstanceUID")),
            match_string(Series.modality, v("Modality"), fold_case=True),
            match_string(Series.description, v("SeriesDescription"), fold_case=True),
            match_string(Series.body_part, v("BodyPartExamined"), fold_case=True),
            match_date_range(Series.series_date, v("SeriesDate"), 0x00080021),
            (Series.series_number == int(number)) if number and number.strip().isdigit() else None,
        ]
    if level == "IMAGE":
        number = v("InstanceNumber")
        found += [
            match_uid_list(Instance.sop_instance_uid, v("SOPInstanceUID")),
            match_uid_list(Instance.sop_class_uid, v("SOPClassUID")),
            (Instance.instance_number == int(number)) if number and number.strip().isdigit() else None,
        ]
    found += trash_excluded(level)
    return [c for c in found if c is not None]


def trash_excluded(level: str) -> list[ColumnElement[bool]]:
    """Rejected and expired instances are in the trash: they, and studies and series left with
    nothing else, are not answered (IHE IOCM); the counts already leave them out."""
    visible: list[ColumnElement[bool]] = [Study.number_of_instances > 0]
    if level in ("SERIES", "IMAGE"):
        visible.append(Series.number_of_instances > 0)
    if level == "IMAGE":
        visible.append(NOT_REJECTED)
    return visible


def find_rows(session: Session, identifier: Dataset, level: str, *, limit: int = MAX_MATCHES,
              offset: int = 0) -> list[Found]:
    """Matches in a stable order; ``limit`` and ``offset`` page through them in the database."""
    limit = min(limit, MAX_MATCHES + 1)
    where = and_(true(), *conditions(identifier, level))
    if level == "PATIENT":
        query = (select(*columns(Patient), func.count(func.distinct(Study.id)),
                        func.coalesce(func.sum(Study.number_of_series), 0),
                        func.coalesce(func.sum(Study.number_of_instances), 0))
                 .join(Study, Study.patient == Patient.id).where(col(Patient.merged_into).is_(None), where)
                 .group_by(col(Patient.id)).order_by(col(Patient.id)).offset(offset).limit(limit))
        return [Found(p, counts=(int(a), int(b), int(c))) for p, a, b, c in records(session, (Patient,), query)]
    if level == "STUDY":
        query = (select(*columns(Patient, Study)).join(Study, Study.patient == Patient.id).where(where)
                 .order_by(col(Study.study_date).desc(), col(Study.id)).offset(offset).limit(limit))
        return [Found(p, s) for p, s in records(session, (Patient, Study), query)]
    if level == "SERIES":
        query = (select(*columns(Patient, Study, Series)).join(Study, Study.patient == Patient.id)
                 .join(Series, Series.study == Study.id).where(where)
                 .order_by(col(Study.id), col(Series.series_number), col(Series.id)).offset(offset).limit(limit))
        return [Found(p, s, r) for p, s, r in records(session, (Patient, Study, Series), query)]
    query = (select(*columns(Patient, Study, Series, Instance)).join(Study, Study.patient == Patient.id)
             .join(Series, Series.study == Study.id).join(Instance, Instance.series == Series.id).where(where)
             .order_by(col(Series.id), col(Instance.instance_number), col(Instance.id)).offset(offset).limit(limit))
    return [Found(p, s, r, i) for p, s, r, i in records(session, (Patient, Study, Series, Instance), query)]


class Answer(BaseAnswer):
    """C-FIND answers of the Q/R models in one character set."""

    def values(self, found: Found, level: str) -> dict[str, Any]:
        p = found.patient
        out: dict[str, Any] = {
            "QueryRetrieveLevel": level,
            "PatientName": self.patient_name(p),
            "PatientID": p.patient_id,
            "IssuerOfPatientID": p.issuer,
            "PatientBirthDate": p.birth_date.strftime("%Y%m%d") if p.birth_date else "",
            "PatientSex": p.sex,
        }
        if found.counts is not None:
            out.update(NumberOfPatientRelatedStudies=found.counts[0], NumberOfPatientRelatedSeries=found.counts[1],
                       NumberOfPatientRelatedInstances=found.counts[2])
        s = found.study
        if s is not None:
            out.update(
                StudyInstanceUID=s.study_instance_uid, StudyDate=s.study_date, StudyTime=s.study_time,
                AccessionNumber=s.accession_number, StudyID=s.study_id, StudyDescription=self.text(s.description),
                ReferringPhysicianName=self.person(s.referring_physician),
                ModalitiesInStudy=[m for m in s.modalities.split("\\") if m],
                NumberOfStudyRelatedSeries=s.number_of_series, NumberOfStudyRelatedInstances=s.number_of_instances,
            )
        r = found.series
        if r is not None:
            out.update(
                SeriesInstanceUID=r.series_instance_uid, Modality=r.modality,
                SeriesNumber=r.series_number if r.series_number is not None else "",
                SeriesDescription=self.text(r.description), BodyPartExamined=r.body_part, Laterality=r.laterality,
                SeriesDate=r.series_date, SeriesTime=r.series_time, StationName=self.text(r.station_name),
                NumberOfSeriesRelatedInstances=r.number_of_instances,
                PerformingPhysicianName=self.person(r.performing_physician),
                InstitutionName=self.text(r.institution), ProtocolName=self.text(r.protocol),
            )
        i = found.instance
        if i is not None:
            out.update(
                SOPInstanceUID=i.sop_instance_uid, SOPClassUID=i.sop_class_uid,
                InstanceNumber=i.instance_number if i.instance_number is not None else "",
                ContentDate=i.content_date, ContentTime=i.content_time,
                Rows=i.rows if i.rows is not None else "", Columns=i.columns if i.columns is not None else "",
                NumberOfFrames=i.number_of_frames if i.number_of_frames is not None else "",
                AvailableTransferSyntaxUID=i.transfer_syntax_uid,
            )
        return out

    def response(self, found: Found, identifier: Dataset, level: str, retrieve_ae: str) -> Dataset:
        values = self.values(found, level)
        values["RetrieveAETitle"] = retrieve_ae
        out = Dataset()
        if self.charset:
            out.SpecificCharacterSet = self.charset
        for element in identifier:
            keyword = element.keyword
            if element.tag.is_private or keyword in ("", "SpecificCharacterSet"):
                continue
            value = values.get(keyword)
            if element.VR == "SQ":
                setattr(out, keyword, [])
            else:
                setattr(out, keyword, value if value not in (None,) else None)
        out.QueryRetrieveLevel = level
        return out


def find(session: Session, identifier: Dataset, *, model: str, names: NameRules, retrieve_ae: str,
         peer_charset: str | None = None, cancelled: Callable[[], bool] = lambda: False) -> Iterator[Dataset]:
    """C-FIND answers for ``identifier`` in the Patient Root (``model='PATIENT'``) or Study Root model."""
    validate(identifier)
    level = level_of(identifier, model)
    answer = Answer(answer_charset(identifier.get("SpecificCharacterSet"), peer_charset), names)
    for found in find_rows(session, identifier, level):
        if cancelled():
            return
        yield answer.response(found, identifier, level, retrieve_ae)

"""Query/Retrieve C-FIND (PS3.4 C.6): Patient Root and Study Root at PATIENT, STUDY, SERIES and
IMAGE level, answered from the index (IHE RAD-14).

Matching is PS3.4 C.2.2.2 (:mod:`pacs.archive.query`), relational: keys of any level above the
one asked for narrow the answer, unique keys may be lists. Patient attributes come from the
registry, so an ADT update or a merge shows at once. Names and text follow the character-set
rules of the worklist (:mod:`pacs.archive.charset`). Keys the model does not hold are returned
empty, as PS3.4 C.2.2.1.2 allows; a value of the wrong VR is refused with 0xA900.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, Connection, and_, exists, false, func, select

from pacs.archive.charset import Answer as BaseAnswer
from pacs.archive.charset import answer_charset
from pacs.archive.encoding import Encoded
from pacs.archive.index import Instance, Series, Study
from pacs.archive.query import (
    Cond,
    Only,
    QueryError,
    columns,
    cond_date_range,
    cond_equal,
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
from pacs.archive.worklist import _birth_date_text, _check_vr, _tag_vr, values_by_keyword
from pacs.db import Reading, Shaped, row_id
from pacs.integration.names import NameRules
from pacs.registry.models import Patient

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
MAX_MATCHES = 10000

# The tables' own columns, not the models' attributes: a query built from these is plain Core,
# which SQLAlchemy builds, keys and compiles without the ORM's layers (a fifth of a C-FIND's
# time on the association's thread went to building and keying its conditions).
PATIENT = Patient.__table__.c  # type: ignore[attr-defined]
STUDY = Study.__table__.c  # type: ignore[attr-defined]
SERIES = Series.__table__.c  # type: ignore[attr-defined]
INSTANCE = Instance.__table__.c  # type: ignore[attr-defined]


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


def validate(identifier: Dataset) -> list[DataElement]:
    """Every key of ``identifier`` readable and of its VR (PS3.4 C.4.1.1.4); its top-level
    elements, decoded, in tag order."""
    readable(identifier)
    items = elements(identifier)
    for element in items:
        if element.tag.is_private or element.tag.element == 0:
            continue
        _check_vr(element)
    return items


def conditions(identifier: Dataset, level: str, items: list[DataElement] | None = None) -> list[Cond]:
    """The matching conditions of ``identifier`` at ``level`` (its top-level ``items``, where read
    already), their values apart (:class:`Cond`); each one's ``expression()`` is the SQLAlchemy
    condition."""
    v = values_by_keyword(identifier, items).get
    found = [
        cond_string(PATIENT.patient_id, v("PatientID")),
        cond_string(PATIENT.issuer, v("IssuerOfPatientID")),
        cond_person_name(PATIENT.name_alphabetic, PATIENT.name_ideographic, v("PatientName")),
        cond_date_range(_birth_date_text(), v("PatientBirthDate"), 0x00100030),
        cond_string(PATIENT.sex, v("PatientSex"), fold_case=True),
    ]
    if level in ("STUDY", "SERIES", "IMAGE"):
        found += [
            cond_uid_list(STUDY.study_instance_uid, v("StudyInstanceUID")),
            cond_date_range(STUDY.study_date, v("StudyDate"), 0x00080020),
            cond_time_range(STUDY.study_time, v("StudyTime"), 0x00080030),
            cond_string(STUDY.accession_number, v("AccessionNumber")),
            cond_string(STUDY.study_id, v("StudyID")),
            cond_string(STUDY.description, v("StudyDescription"), fold_case=True),
            cond_string(STUDY.referring_physician, v("ReferringPhysicianName"), fold_case=True),
        ]
        modalities = v("ModalitiesInStudy")
        if modalities and modalities.strip() not in ("", "*"):
            # Whole values: a study with any series of one of the modalities (CT is not OCT)
            # that it answers with, i.e. one not emptied by the trash (PS3.4 C.3.4, IHE IOCM).
            wanted = tuple(m.strip().upper() for m in modalities.replace(",", "\\").split("\\") if m.strip())
            found.append(Cond(("modalities in study", len(wanted)), wanted, _any_series_of))
    if level in ("SERIES", "IMAGE"):
        found += [
            cond_uid_list(SERIES.series_instance_uid, v("SeriesInstanceUID")),
            cond_string(SERIES.modality, v("Modality"), fold_case=True),
            cond_string(SERIES.description, v("SeriesDescription"), fold_case=True),
            cond_string(SERIES.body_part, v("BodyPartExamined"), fold_case=True),
            cond_date_range(SERIES.series_date, v("SeriesDate"), 0x00080021),
            cond_number(SERIES.series_number, v("SeriesNumber")),
        ]
    if level == "IMAGE":
        found += [
            cond_uid_list(INSTANCE.sop_instance_uid, v("SOPInstanceUID")),
            cond_uid_list(INSTANCE.sop_class_uid, v("SOPClassUID")),
            cond_number(INSTANCE.instance_number, v("InstanceNumber")),
        ]
    found.append(trash_excluded(level))
    return [c for c in found if c is not None]


def _any_series_of(modalities: Sequence[Any]) -> ColumnElement[bool]:
    """A study with a series of one of ``modalities``, asked per study (EXISTS), so that a date
    range can lead with the study-date index rather than every series of a common modality
    being gathered first."""
    other = Series.__table__.alias().c  # type: ignore[attr-defined]
    return exists().where(other.study == STUDY.id, other.modality.in_(list(modalities)), other.number_of_instances > 0)


def cond_number(column: ColumnElement[Any], value: str | None) -> Cond | None:
    """Single value matching of an IS key (PS3.4 C.2.2.2.1) against an integer column: a number
    past the largest integer a column holds matches nothing, and is known to be past it without
    ``int()``, which refuses more than 4,300 digits; a value that is not a whole number is not
    matched on."""
    if not value or not value.strip().isdigit():
        return None
    number = row_id(value.strip())
    return cond_equal(column, number) if number is not None else fixed(("nothing",), false())


@cache
def trash_excluded(level: str) -> Cond:
    """Rejected and expired instances are in the trash: they, and studies and series left with
    nothing else, are not answered (IHE IOCM); the counts already leave them out. Built once per
    level: an expression is immutable, and one reused keeps its memoized cache key."""
    visible: list[ColumnElement[bool]] = [STUDY.number_of_instances > 0]
    if level in ("SERIES", "IMAGE"):
        visible.append(SERIES.number_of_instances > 0)
    if level == "IMAGE":
        visible.append(INSTANCE.rejected_at.is_(None))  # NOT_REJECTED, on the table
    return fixed(("visible", level), and_(*visible))


# The columns an answer reads: those VALUES fills from, the patient's name groups, and the keys
# of the rows (a match's links in QIDO-RS). A match reads these, not the forty-odd columns of the
# tables (addresses, phone numbers, search keys, timestamps), each converted as it is read.
ANSWERED: Only = {
    Patient: ("id", "patient_id", "issuer", "name_alphabetic", "name_ideographic", "name_phonetic", "birth_date",
              "sex"),
    Study: ("id", "study_instance_uid", "study_date", "study_time", "accession_number", "study_id", "description",
            "referring_physician", "modalities", "number_of_series", "number_of_instances"),
    Series: ("id", "series_instance_uid", "modality", "series_number", "description", "body_part", "laterality",
             "series_date", "series_time", "station_name", "number_of_instances", "performing_physician",
             "institution", "protocol"),
    Instance: ("id", "sop_instance_uid", "sop_class_uid", "instance_number", "content_date", "content_time", "rows",
               "columns", "number_of_frames", "transfer_syntax_uid"),
}


@cache
def _base_query(level: str) -> Any:
    """The columns, joins and order of a level's query, built once: a select of some forty
    columns costs a query about as much coercing them as the database takes to answer it."""
    patients = Patient.__table__  # type: ignore[attr-defined]
    studies = patients.join(Study.__table__, STUDY.patient == PATIENT.id)  # type: ignore[attr-defined]
    if level == "PATIENT":
        return (select(*columns(Patient, only=ANSWERED), func.count(func.distinct(STUDY.id)),
                       func.coalesce(func.sum(STUDY.number_of_series), 0),
                       func.coalesce(func.sum(STUDY.number_of_instances), 0))
                .select_from(studies).where(PATIENT.merged_into.is_(None))
                .group_by(PATIENT.id).order_by(PATIENT.id))
    if level == "STUDY":
        return select(*columns(Patient, Study, only=ANSWERED)).select_from(studies).order_by(STUDY.study_date.desc(), STUDY.id)
    series = studies.join(Series.__table__, SERIES.study == STUDY.id)  # type: ignore[attr-defined]
    if level == "SERIES":
        return (select(*columns(Patient, Study, Series, only=ANSWERED)).select_from(series)
                .order_by(STUDY.id, SERIES.series_number, SERIES.id))
    return (select(*columns(Patient, Study, Series, Instance, only=ANSWERED))
            .select_from(series.join(Instance.__table__, INSTANCE.series == SERIES.id))  # type: ignore[attr-defined]
            .order_by(SERIES.id, INSTANCE.instance_number, INSTANCE.id))


def find_rows(conn: Connection | Reading, identifier: Dataset, level: str, *, limit: int = MAX_MATCHES,
              offset: int = 0, items: list[DataElement] | None = None) -> list[Found]:
    """Matches in a stable order; ``limit`` and ``offset`` page through them in the database.
    Core rows, not the ORM's, each read into a Record: a connection is all it needs."""
    limit = min(limit, MAX_MATCHES + 1)
    where = every("and", conditions(identifier, level, items))
    base = _base_query(level)
    query = Shaped((level, where.key), (*where.values, offset, limit),
                   lambda b: base.where(where.build(b[:-2])).offset(b[-2]).limit(b[-1]))
    if level == "PATIENT":
        return [Found(p, counts=(int(a), int(b), int(c))) for p, a, b, c in records(conn, (Patient,), query, ANSWERED)]
    if level == "STUDY":
        return [Found(p, s) for p, s in records(conn, (Patient, Study), query, ANSWERED)]
    if level == "SERIES":
        return [Found(p, s, r) for p, s, r in records(conn, (Patient, Study, Series), query, ANSWERED)]
    return [Found(p, s, r, i) for p, s, r, i in records(conn, (Patient, Study, Series, Instance), query,
                                                              ANSWERED)]


Fill = Callable[["Answer", Found], object]
Plan = list[tuple[int, str, Fill]]  # (tag, VR, what fills it), in tag order


def _birth_date(p: Any) -> str:
    """DA (PS3.5 6.2): YYYYMMDD, from the ISO date (strftime costs an answer several times more)."""
    return p.birth_date.isoformat().replace("-", "") if p.birth_date else ""


# The return keys the Q/R models have values for (PS3.4 C.6.1.1.2-C.6.1.1.5, C.6.2.1): the row
# each comes from (None: the patient's; "counts": a patient-level answer's) and what fills it.
# An answer has the keys of its level and the levels above; any other key asked goes out empty.
VALUES: dict[str, tuple[str | None, Fill]] = {
    "PatientName": (None, lambda a, f: a.patient_name(f.patient)),
    "PatientID": (None, lambda a, f: f.patient.patient_id),
    "IssuerOfPatientID": (None, lambda a, f: f.patient.issuer),
    "PatientBirthDate": (None, lambda a, f: _birth_date(f.patient)),
    "PatientSex": (None, lambda a, f: f.patient.sex),
    "NumberOfPatientRelatedStudies": ("counts", lambda a, f: f.counts[0]),
    "NumberOfPatientRelatedSeries": ("counts", lambda a, f: f.counts[1]),
    "NumberOfPatientRelatedInstances": ("counts", lambda a, f: f.counts[2]),
    "StudyInstanceUID": ("study", lambda a, f: f.study.study_instance_uid),
    "StudyDate": ("study", lambda a, f: f.study.study_date),
    "StudyTime": ("study", lambda a, f: f.study.study_time),
    "AccessionNumber": ("study", lambda a, f: f.study.accession_number),
    "StudyID": ("study", lambda a, f: f.study.study_id),
    "StudyDescription": ("study", lambda a, f: a.text(f.study.description)),
    "ReferringPhysicianName": ("study", lambda a, f: a.person(f.study.referring_physician)),
    "ModalitiesInStudy": ("study", lambda a, f: [m for m in f.study.modalities.split("\\") if m]),
    "NumberOfStudyRelatedSeries": ("study", lambda a, f: f.study.number_of_series),
    "NumberOfStudyRelatedInstances": ("study", lambda a, f: f.study.number_of_instances),
    "SeriesInstanceUID": ("series", lambda a, f: f.series.series_instance_uid),
    "Modality": ("series", lambda a, f: f.series.modality),
    "SeriesNumber": ("series", lambda a, f: f.series.series_number),
    "SeriesDescription": ("series", lambda a, f: a.text(f.series.description)),
    "BodyPartExamined": ("series", lambda a, f: f.series.body_part),
    "Laterality": ("series", lambda a, f: f.series.laterality),
    "SeriesDate": ("series", lambda a, f: f.series.series_date),
    "SeriesTime": ("series", lambda a, f: f.series.series_time),
    "StationName": ("series", lambda a, f: a.text(f.series.station_name)),
    "NumberOfSeriesRelatedInstances": ("series", lambda a, f: f.series.number_of_instances),
    "PerformingPhysicianName": ("series", lambda a, f: a.person(f.series.performing_physician)),
    "InstitutionName": ("series", lambda a, f: a.text(f.series.institution)),
    "ProtocolName": ("series", lambda a, f: a.text(f.series.protocol)),
    "SOPInstanceUID": ("instance", lambda a, f: f.instance.sop_instance_uid),
    "SOPClassUID": ("instance", lambda a, f: f.instance.sop_class_uid),
    "InstanceNumber": ("instance", lambda a, f: f.instance.instance_number),
    "ContentDate": ("instance", lambda a, f: f.instance.content_date),
    "ContentTime": ("instance", lambda a, f: f.instance.content_time),
    "Rows": ("instance", lambda a, f: f.instance.rows),
    "Columns": ("instance", lambda a, f: f.instance.columns),
    "NumberOfFrames": ("instance", lambda a, f: f.instance.number_of_frames),
    "AvailableTransferSyntaxUID": ("instance", lambda a, f: f.instance.transfer_syntax_uid),
}


# The rows an answer of each level has (its matches are inner joins: every row of the level and
# above is there); a key of a row below the level goes out empty.
ROWS = {"PATIENT": (None, "counts"), "STUDY": (None, "study"), "SERIES": (None, "study", "series"),
        "IMAGE": (None, "study", "series", "instance")}


def _empty(a: Answer, f: Found) -> None:
    return None


class Answer(BaseAnswer):
    """C-FIND answers of the Q/R models in one character set, each holding exactly the keys the
    query asked for, in the compact form :mod:`pacs.archive.encoding` sends without pydicom's
    writer. Which keys and what fills each is worked out once per query (:meth:`plan`)."""

    def plan(self, identifier: Dataset, level: str, retrieve_ae: str, items: list[DataElement] | None = None) -> Plan:
        fixed: dict[str, Fill] = {"QueryRetrieveLevel": lambda a, f: level,
                                  "RetrieveAETitle": lambda a, f: retrieve_ae}
        out: Plan = []
        if self.charset:
            charset = self.charset
            out.append((*_tag_vr("SpecificCharacterSet"), lambda a, f: charset))
        asked = set()
        for element in elements(identifier) if items is None else items:
            keyword = keyword_of(element.tag)
            if element.tag.is_private or keyword in ("", "SpecificCharacterSet") or keyword in asked:
                continue
            asked.add(keyword)
            tag, vr = _tag_vr(keyword)
            if element.VR == "SQ" or vr == "SQ":
                out.append((tag, "SQ", lambda a, f: []))
                continue
            known = VALUES.get(keyword)
            fill = fixed.get(keyword) or (known[1] if known and known[0] in ROWS[level] else _empty)
            out.append((tag, vr, fill))
        if "QueryRetrieveLevel" not in asked:
            out.append((*_tag_vr("QueryRetrieveLevel"), fixed["QueryRetrieveLevel"]))
        return sorted(out, key=lambda e: e[0])

    def values(self, found: Found, level: str) -> dict[str, Any]:
        """Every value the answer's level and the levels above have, by keyword (QIDO-RS)."""
        out: dict[str, Any] = {"QueryRetrieveLevel": level}
        for keyword, (row, fill) in VALUES.items():
            if row is None or getattr(found, row) is not None:
                out[keyword] = fill(self, found)
        return out

    def respond(self, found: Found, plan: Plan) -> Encoded:
        return Encoded([(tag, vr, fill(self, found)) for tag, vr, fill in plan], self.charset, ordered=True)


def find(conn: Connection | Reading, identifier: Dataset, *, model: str, names: NameRules, retrieve_ae: str,
         peer_charset: str | None = None, cancelled: Callable[[], bool] = lambda: False) -> Iterator[Dataset]:
    """C-FIND answers for ``identifier`` in the Patient Root (``model='PATIENT'``) or Study Root model."""
    items = validate(identifier)
    level = level_of(identifier, model)
    answer = Answer(answer_charset(identifier.get("SpecificCharacterSet"), peer_charset), names)
    plan = answer.plan(identifier, level, retrieve_ae, items)
    for found in find_rows(conn, identifier, level, items=items):
        if cancelled():
            return
        yield answer.respond(found, plan)

"""Modality Performed Procedure Step SCP (PS3.4 Annex F; IHE RAD-6 in progress, RAD-7 completed).

N-CREATE with status IN PROGRESS starts the scheduled steps it references; N-SET with COMPLETED
or DISCONTINUED ends them, recording the performed series. The order follows its steps through
the lifecycle (:mod:`pacs.registry.lifecycle`). An MPPS that references no known step (the
"unscheduled" case, IHE RAD TF-1 4.3) is kept, linked to no order.

What the SCU must send is PS3.4 Table F.7.2-1, declared below as data (:data:`F_7_2_1`): each
attribute's keyword path, nested ones included, with its requirement types at N-CREATE, at N-SET
and in the final state. A request that misses one is refused before anything is written, with the
status PS3.4 5.4.2.1 names and the attribute's path in the Error Comment.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
from sqlmodel import Session, col, select

from pacs.archive.index import Study
from pacs.archive.status import ErrorID, Status
from pacs.db import Database, utcnow
from pacs.registry import lifecycle
from pacs.registry.models import (
    ImagingOrder,
    OrderStatus,
    PerformedProcedureStep,
    PerformedStepStatus,
    ProcedureStep,
    StepStatus,
)

log = logging.getLogger(__name__)

FINAL = (PerformedStepStatus.COMPLETED, PerformedStepStatus.DISCONTINUED)
STEP_FOR = {
    PerformedStepStatus.IN_PROGRESS: StepStatus.STARTED,
    PerformedStepStatus.COMPLETED: StepStatus.COMPLETED,
    PerformedStepStatus.DISCONTINUED: StepStatus.DISCONTINUED,
}
ENDED_STEPS = (StepStatus.COMPLETED, StepStatus.DISCONTINUED, StepStatus.CANCELLED)


# -- PS3.4 Table F.7.2-1 ------------------------------------------------------------------------

NOT_ALLOWED = "Not allowed"


@dataclass(frozen=True)
class Condition:
    """When a Type 1C attribute is required, as far as its own item shows it: when none of
    ``if_absent`` is there, or when any of ``if_present`` is. A 1C attribute without one (Specific
    Character Set: "if an extended character set is used") is not checked."""

    if_absent: tuple[str, ...] = ()
    if_present: tuple[str, ...] = ()

    def holds(self, item: Dataset) -> bool:
        if self.if_absent and not any(keyword in item for keyword in self.if_absent):
            return True
        return any(keyword in item for keyword in self.if_present)


@dataclass(frozen=True)
class Requirement:
    """One row of Table F.7.2-1, in the standard's own notation: "SCU/SCP" requirement types
    (PS3.4 5.4.2.1) for N-CREATE and N-SET (or "Not allowed"), and the "Requirement Type Final
    State", which the table gives only where it differs from the SCP's type at N-CREATE."""

    create: str
    set: str
    final: str = ""
    condition: Condition | None = None


R = Requirement
ISSUER = Condition  # the HL7v2 Hierarchic Designator macro's conditions (PS3.3 10.14)
HIERARCHIC_DESIGNATOR: dict[str, Requirement] = {
    "LocalNamespaceEntityID": R("1C/1C", NOT_ALLOWED, condition=ISSUER(if_absent=("UniversalEntityID",))),
    "UniversalEntityID": R("1C/1C", NOT_ALLOWED, condition=ISSUER(if_absent=("LocalNamespaceEntityID",))),
    "UniversalEntityIDType": R("1C/1C", NOT_ALLOWED, condition=ISSUER(if_present=("UniversalEntityID",))),
}
# Code Value is required "if the code value is 16 characters or less and not a URN or URL", Long
# Code Value and URN Code Value in the other cases: together, one of the three must be there,
# which is what Code Value's row checks (the others' conditions turn on a value that is absent).
_CODE_VALUE = Condition(if_absent=("LongCodeValue", "URNCodeValue"))
_CODING_SCHEME = Condition(if_present=("CodeValue", "LongCodeValue"))


def _code(meaning: str, on_set: bool) -> dict[str, Requirement]:
    """Tables F.7.2-1b/d/f (Simple Code Value macros): Code Meaning as ``meaning``; N-SET
    allowed or not."""
    return {
        "CodeValue": R("1C/1C", "3/1C" if on_set else NOT_ALLOWED, condition=_CODE_VALUE),
        "CodingSchemeDesignator": R("1C/1C", "1C/1C" if on_set else NOT_ALLOWED, condition=_CODING_SCHEME),
        "CodingSchemeVersion": R("1C/1C", "1C/1C" if on_set else NOT_ALLOWED),
        "CodeMeaning": R(meaning, meaning if on_set else NOT_ALLOWED),
        "LongCodeValue": R("1C/1C", "3/1C" if on_set else NOT_ALLOWED),
        "URNCodeValue": R("1C/1C", "3/1C" if on_set else NOT_ALLOWED),
    }


def _enhanced(simple: dict[str, Requirement], on_set: bool) -> dict[str, Requirement]:
    """Tables F.7.2-1a/c/e (Enhanced Code Value macros): the simple macro, and an Equivalent
    Code Sequence whose items hold it again."""
    rows = dict(simple)
    rows["EquivalentCodeSequence"] = R("3/3", "3/3" if on_set else NOT_ALLOWED)
    rows.update({f"EquivalentCodeSequence>{path}": row for path, row in simple.items()})
    return rows


CODE_NO_SET = _enhanced(_code("1/1", on_set=False), on_set=False)  # Table F.7.2-1a
CODE_SET_MANDATORY_MEANING = _enhanced(_code("1/1", on_set=True), on_set=True)  # Table F.7.2-1c
CODE_SET_OPTIONAL_MEANING = _enhanced(_code("3/3", on_set=True), on_set=True)  # Table F.7.2-1e


def _include(sequence: str, macro: dict[str, Requirement]) -> dict[str, Requirement]:
    """A macro's rows inside each item of ``sequence`` (the table's ">Include")."""
    return {f"{sequence}>{path}": row for path, row in macro.items()}


SSA = "ScheduledStepAttributesSequence"
PSS = "PerformedSeriesSequence"
F_7_2_1: dict[str, Requirement] = {
    # SOP Common
    "SpecificCharacterSet": R("1C/1C", "1C/1C"),
    # PS3.4 5.4.2.3: the instance is named by the command, never by the data set
    "SOPInstanceUID": R("3/3", NOT_ALLOWED),
    # Performed Procedure Step Relationship
    SSA: R("1/1", NOT_ALLOWED),
    f"{SSA}>StudyInstanceUID": R("1/1", NOT_ALLOWED),
    f"{SSA}>ReferencedStudySequence": R("2/2", NOT_ALLOWED),
    f"{SSA}>ReferencedStudySequence>ReferencedSOPClassUID": R("1/1", NOT_ALLOWED),
    f"{SSA}>ReferencedStudySequence>ReferencedSOPInstanceUID": R("1/1", NOT_ALLOWED),
    f"{SSA}>AccessionNumber": R("2/2", NOT_ALLOWED),
    f"{SSA}>IssuerOfAccessionNumberSequence": R("3/3", NOT_ALLOWED),
    **_include(f"{SSA}>IssuerOfAccessionNumberSequence", HIERARCHIC_DESIGNATOR),
    f"{SSA}>PlacerOrderNumberImagingServiceRequest": R("3/3", NOT_ALLOWED),
    f"{SSA}>OrderPlacerIdentifierSequence": R("3/3", NOT_ALLOWED),
    **_include(f"{SSA}>OrderPlacerIdentifierSequence", HIERARCHIC_DESIGNATOR),
    f"{SSA}>FillerOrderNumberImagingServiceRequest": R("3/3", NOT_ALLOWED),
    f"{SSA}>OrderFillerIdentifierSequence": R("3/3", NOT_ALLOWED),
    **_include(f"{SSA}>OrderFillerIdentifierSequence", HIERARCHIC_DESIGNATOR),
    f"{SSA}>RequestedProcedureID": R("2/2", NOT_ALLOWED),
    f"{SSA}>RequestedProcedureCodeSequence": R("3/3", NOT_ALLOWED),
    **_include(f"{SSA}>RequestedProcedureCodeSequence", CODE_NO_SET),
    f"{SSA}>RequestedProcedureDescription": R("2/2", NOT_ALLOWED),
    f"{SSA}>ScheduledProcedureStepID": R("2/2", NOT_ALLOWED),
    f"{SSA}>ScheduledProcedureStepDescription": R("2/2", NOT_ALLOWED),
    f"{SSA}>ScheduledProtocolCodeSequence": R("2/2", NOT_ALLOWED),
    **_include(f"{SSA}>ScheduledProtocolCodeSequence", CODE_NO_SET),
    "PatientName": R("2/2", NOT_ALLOWED),
    "PatientID": R("2/2", NOT_ALLOWED),
    "IssuerOfPatientID": R("3/3", NOT_ALLOWED),
    "IssuerOfPatientIDQualifiersSequence": R("3/3", NOT_ALLOWED),
    "IssuerOfPatientIDQualifiersSequence>UniversalEntityIDType":
        R("1C/1C", NOT_ALLOWED, condition=Condition(if_present=("UniversalEntityID",))),
    "OtherPatientIDsSequence": R("3/3", NOT_ALLOWED),
    "PatientBirthDate": R("2/2", NOT_ALLOWED),
    "PatientSex": R("2/2", NOT_ALLOWED),
    "ReferencedPatientSequence": R("2/2", NOT_ALLOWED),
    "ReferencedPatientSequence>ReferencedSOPClassUID": R("1/1", NOT_ALLOWED),
    "ReferencedPatientSequence>ReferencedSOPInstanceUID": R("1/1", NOT_ALLOWED),
    "AdmissionID": R("3/3", NOT_ALLOWED),
    "IssuerOfAdmissionIDSequence": R("3/3", NOT_ALLOWED),
    **_include("IssuerOfAdmissionIDSequence", HIERARCHIC_DESIGNATOR),
    "ServiceEpisodeID": R("3/3", NOT_ALLOWED),
    "IssuerOfServiceEpisodeIDSequence": R("3/3", NOT_ALLOWED),
    **_include("IssuerOfServiceEpisodeIDSequence", HIERARCHIC_DESIGNATOR),
    "ServiceEpisodeDescription": R("3/3", NOT_ALLOWED),
    # Performed Procedure Step Information
    "PerformedProcedureStepID": R("1/1", NOT_ALLOWED),
    "PerformedStationAETitle": R("1/1", NOT_ALLOWED),
    "PerformedStationName": R("2/2", NOT_ALLOWED),
    "PerformedLocation": R("2/2", NOT_ALLOWED),
    "PerformedProcedureStepStartDate": R("1/1", NOT_ALLOWED),
    "PerformedProcedureStepStartTime": R("1/1", NOT_ALLOWED),
    "PerformedProcedureStepStatus": R("1/1", "3/1"),
    "PerformedProcedureStepDescription": R("2/2", "3/2"),
    "PerformedProcedureTypeDescription": R("2/2", "3/2"),
    "ProcedureCodeSequence": R("2/2", "3/2"),
    **_include("ProcedureCodeSequence", CODE_SET_OPTIONAL_MEANING),
    "ReasonForPerformedProcedureCodeSequence": R("3/3", "3/3"),
    **_include("ReasonForPerformedProcedureCodeSequence", CODE_SET_MANDATORY_MEANING),
    "PerformedProcedureStepEndDate": R("2/2", "3/1", final="1"),
    "PerformedProcedureStepEndTime": R("2/2", "3/1", final="1"),
    "CommentsOnThePerformedProcedureStep": R("3/3", "3/3"),
    "PerformedProcedureStepDiscontinuationReasonCodeSequence": R("3/3", "3/3"),
    **_include("PerformedProcedureStepDiscontinuationReasonCodeSequence", CODE_SET_MANDATORY_MEANING),
    # Image Acquisition Results
    "Modality": R("1/1", NOT_ALLOWED),
    "StudyID": R("2/2", NOT_ALLOWED),
    "PerformedProtocolCodeSequence": R("2/2", "3/2"),
    **_include("PerformedProtocolCodeSequence", CODE_SET_OPTIONAL_MEANING),
    PSS: R("2/2", "3/1", final="1"),  # Note 2: a series exists for every step that ends
    f"{PSS}>PerformingPhysicianName": R("2/2", "2/2", final="2"),
    f"{PSS}>ProtocolName": R("1/1", "1/1", final="1"),
    f"{PSS}>OperatorsName": R("2/2", "2/2", final="2"),
    f"{PSS}>SeriesInstanceUID": R("1/1", "1/1", final="1"),
    f"{PSS}>SeriesDescription": R("2/2", "2/2", final="2"),
    f"{PSS}>RetrieveAETitle": R("2/2", "2/2", final="2"),
    f"{PSS}>ArchiveRequested": R("3/3", "3/3"),
    f"{PSS}>ReferencedImageSequence": R("2/2", "2/2"),
    f"{PSS}>ReferencedImageSequence>ReferencedSOPClassUID": R("1/1", "1/1"),
    f"{PSS}>ReferencedImageSequence>ReferencedSOPInstanceUID": R("1/1", "1/1"),
    f"{PSS}>ReferencedImageSequence>ContainerIdentifier": R("3/3", "3/3"),
    f"{PSS}>ReferencedImageSequence>SpecimenDescriptionSequence": R("3/3", "3/3"),
    f"{PSS}>ReferencedImageSequence>SpecimenDescriptionSequence>SpecimenIdentifier": R("1/1", "1/1"),
    f"{PSS}>ReferencedImageSequence>SpecimenDescriptionSequence>SpecimenUID": R("1/1", "1/1"),
    f"{PSS}>ReferencedNonImageCompositeSOPInstanceSequence": R("2/2", "2/2"),
    f"{PSS}>ReferencedNonImageCompositeSOPInstanceSequence>ReferencedSOPClassUID": R("1/1", "1/1"),
    f"{PSS}>ReferencedNonImageCompositeSOPInstanceSequence>ReferencedSOPInstanceUID": R("1/1", "1/1"),
}
"""PS3.4 Table F.7.2-1, Modality Performed Procedure Step SOP Class N-CREATE, N-SET and Final
State Attributes: keyword path (">" into each item of a sequence) → requirement. Attributes the
table leaves to "all other attributes" (3/3) are not listed."""


class Operation(Enum):
    """Which column of the table a data set is checked against."""

    CREATE = "N-CREATE"  # the N-CREATE attribute list (F.7.2.1)
    SET = "N-SET"  # the N-SET modification list (F.7.2.2)
    FINAL = "final state"  # the whole instance when its status becomes COMPLETED/DISCONTINUED (F.7.2.2.2)


@dataclass
class _Node:
    requirement: Requirement
    children: dict[int, _Node] = field(default_factory=dict)


def _tree(table: dict[str, Requirement]) -> dict[int, _Node]:
    """The table as nested levels keyed by tag (parents listed before their children)."""
    root: dict[int, _Node] = {}
    for path, requirement in table.items():
        *parents, leaf = path.split(">")
        level = root
        for keyword in parents:
            level = level[_tag(keyword)].children
        level[_tag(leaf)] = _Node(requirement)
    return root


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is no DICOM keyword (PS3.6)")
    return tag


TREE = _tree(F_7_2_1)


@dataclass(frozen=True)
class Problem:
    """One attribute the request gets wrong: where (tag, and the item number on the way), the
    status PS3.4 5.4.2.1 / PS3.7 C.5 names for it, and what is wrong."""

    status: Status
    path: tuple[tuple[int, int], ...]  # (sequence tag, 1-based item number) for each level above
    tag: int
    what: str

    def where(self, *, by_tag: bool = False) -> str:
        name = _hex if by_tag else _keyword
        return "".join(f"{name(tag)}[{number}]>" for tag, number in self.path) + name(self.tag)


def _hex(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or _hex(tag)


def _demands(requirement: Requirement, operation: Operation, item: Dataset) -> tuple[bool, bool, bool]:
    """(must be present, must have a value, may not be sent) under ``operation`` (PS3.4 5.4.2.1).

    At N-CREATE and N-SET the SCU's type decides: 1 must be sent with a value; 3 may be left
    out, but 3/1 (the SCP's type 1) not sent empty. In the final state the final type, or the
    SCP's N-CREATE type, is what the instance must then hold.

    A type 2 attribute the SCU leaves out is taken as sent empty, which is all it would say:
    modalities in the field omit them, and refusing their MPPS for it would leave the order
    unstarted with nothing gained (the leniency dcm4chee and Orthanc show too)."""
    column = {Operation.CREATE: requirement.create, Operation.SET: requirement.set}.get(operation)
    if column == NOT_ALLOWED:
        return False, False, True
    holds = requirement.condition is not None and requirement.condition.holds(item)
    if column is None:  # the final state
        final = requirement.final or requirement.create.split("/")[1]
        return final == "1" or (final == "1C" and holds), final == "1" or (final == "1C" and holds), False
    scu, scp = column.split("/")
    present = scu == "1" or (scu == "1C" and holds)
    value = scu == "1" or (scu == "1C" and holds) or (scu == "3" and (scp == "1" or (scp == "1C" and holds)))
    return present, value, False


def check(ds: Dataset, operation: Operation) -> list[Problem]:
    """Every attribute of ``ds`` that PS3.4 Table F.7.2-1 refuses under ``operation``, at every
    level: missing (0x0120), present without a value where one is required (0x0121), not allowed
    at N-SET (0x0105), of the wrong VR or no value of its VR (0x0106)."""
    problems: list[Problem] = []
    _check(ds, TREE, operation, (), problems)
    return problems


def _check(ds: Dataset, level: dict[int, _Node], operation: Operation, path: tuple[tuple[int, int], ...],
           problems: list[Problem]) -> None:
    for tag, node in level.items():
        present, value, forbidden = _demands(node.requirement, operation, ds)
        if tag not in ds:
            if present:
                problems.append(Problem(Status.MISSING_ATTRIBUTE, path, tag, "missing"))
            continue
        if forbidden:
            problems.append(Problem(Status.NO_SUCH_ATTRIBUTE, path, tag, f"may not be sent in {operation.value}"))
            continue
        element, invalid = _read(ds, tag)
        if element is None or invalid:
            problems.append(Problem(Status.INVALID_ATTRIBUTE_VALUE, path, tag, invalid))
            continue
        if _empty(element):
            if value:
                problems.append(Problem(Status.MISSING_ATTRIBUTE_VALUE, path, tag, "has no value"))
            continue
        if node.children and element.VR == "SQ":
            for number, item in enumerate(element.value, 1):
                _check(item, node.children, operation, (*path, (tag, number)), problems)


# PS3.5 6.2 and 9.1: the VRs whose values the SCP reads (UIDs to find the order, dates and times)
MAX_UID_CHARS = 64
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # the grammar UID.is_valid and store() use
_TIME = re.compile(r"([01][0-9]|2[0-3])([0-5][0-9](([0-5][0-9]|60)(\.[0-9]{1,6})?)?)?")  # HH[MM[SS[.F]]]


def _valid_da(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return len(text) == 8


def _valid_tm(text: str) -> bool:
    return _TIME.fullmatch(text) is not None


def _valid_ui(text: str) -> bool:
    return len(text) <= MAX_UID_CHARS and _UID.fullmatch(text) is not None


VALUE_OF_VR = {"UI": _valid_ui, "DA": _valid_da, "TM": _valid_tm}


def _read(ds: Dataset, tag: int) -> tuple[DataElement | None, str]:
    """The element and, if its value is not one its attribute can have, why (PS3.5 6.2)."""
    try:
        element = ds[tag]
        values = _values(element)
    except Exception as exc:  # noqa: BLE001 - whatever pydicom raises on bytes it cannot read
        return None, f"cannot be read ({type(exc).__name__})"
    expected = dictionary_VR(tag)
    if element.VR != expected:
        return element, f"has VR {element.VR}, not {expected}"
    if element.VR != "SQ" and dictionary_VM(tag) == "1" and len(values) > 1:
        return element, "has more than one value"
    valid = VALUE_OF_VR.get(expected)
    if valid is not None:
        for text in values:
            if text and not valid(text):
                return element, f"{text[:20]!r} is no {expected} value"
    return element, ""


def _values(element: DataElement) -> list[Any]:
    """The element's values, text stripped of padding (for a sequence, its items)."""
    value = element.value
    if element.VR == "SQ":
        return list(value)
    if value is None:
        return []
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if element.VR in VALUE_OF_VR:
        return [str(v).strip(" \0") for v in items]
    return items


def _empty(element: DataElement) -> bool:
    value = element.value
    if value is None:
        return True
    if element.VR == "SQ":
        return len(value) == 0
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return all(str(v).strip(" \0") == "" if not isinstance(v, bytes) else v.strip(b" \0") == b"" for v in items)


# -- the answer ---------------------------------------------------------------------------------

ERROR_COMMENT_CHARS = 64  # Error Comment (0000,0902) is LO (PS3.7 C.4)
# When a request has several kinds of problem, the one answered (PS3.7 C.5)
PRECEDENCE = (Status.NO_SUCH_ATTRIBUTE, Status.MISSING_ATTRIBUTE, Status.MISSING_ATTRIBUTE_VALUE,
              Status.INVALID_ATTRIBUTE_VALUE)
# Statuses whose Attribute Identifier List (0000,1005) names the attributes (PS3.7 C.5.13, C.5.17)
IDENTIFIED = (Status.NO_SUCH_ATTRIBUTE, Status.MISSING_ATTRIBUTE)


@dataclass
class Result:
    """A DIMSE answer: status, and for failures the comment and offending attributes."""

    status: Status
    comment: str = ""
    error_id: ErrorID | None = None
    attributes: Dataset | None = None
    identifiers: list[int] = field(default_factory=list)  # Attribute Identifier List (0000,1005)

    def status_dataset(self) -> Dataset | int:
        if self.status == Status.SUCCESS and not self.comment:
            return int(self.status)
        ds = Dataset()
        ds.Status = int(self.status)
        if self.comment:  # LO: no backslash, no control characters (PS3.5 6.2)
            ds.ErrorComment = "".join(c if c.isprintable() and c != "\\" else "?" for c in self.comment)[
                :ERROR_COMMENT_CHARS]
        if self.error_id is not None:
            ds.ErrorID = int(self.error_id)
        if self.identifiers:
            ds.AttributeIdentifierList = self.identifiers
        return ds


def refusal(problems: list[Problem], operation: Operation) -> Result:
    """The answer to a request with ``problems``: the status of the first kind in
    :data:`PRECEDENCE`, the Error Comment naming the first such attribute's path (by keyword, or
    by tag where that is too long), and for N-SET the Attribute Identifier List (pynetdicom's
    N-CREATE response has no such field)."""
    status = next(s for s in PRECEDENCE if any(p.status == s for p in problems))
    chosen = [p for p in problems if p.status == status]
    first = chosen[0]
    more = f" (+{len(chosen) - 1} more)" if len(chosen) > 1 else ""
    comment = f"{first.where()} {first.what}{more}"
    if len(comment) > ERROR_COMMENT_CHARS:
        comment = f"{first.where(by_tag=True)} {first.what}{more}"
    identifiers: list[int] = []
    if operation != Operation.CREATE and status in IDENTIFIED:
        identifiers = list(dict.fromkeys(p.tag for p in chosen))
    return Result(status, comment, identifiers=identifiers)


# -- reading what the modality sent -------------------------------------------------------------

def _text(ds: Dataset, keyword: str, default: str = "") -> str:
    value = ds.get(keyword)
    return default if value is None else str(value).strip()


def _dt(ds: Dataset, date_keyword: str, time_keyword: str) -> datetime | None:
    day = _text(ds, date_keyword)
    clock = _text(ds, time_keyword).split(".")[0].ljust(6, "0")
    if len(day) != 8:
        return None
    try:
        return datetime.strptime(day + clock[:6], "%Y%m%d%H%M%S")
    except ValueError:
        return None


def _items(ds: Dataset, keyword: str) -> Iterator[Dataset]:
    yield from ds.get(keyword) or []


def _series(ds: Dataset) -> list[dict[str, object]]:
    out = []
    for item in _items(ds, "PerformedSeriesSequence"):
        instances = [_text(ref, "ReferencedSOPInstanceUID") for ref in _items(item, "ReferencedImageSequence")]
        instances += [_text(ref, "ReferencedSOPInstanceUID")
                      for ref in _items(item, "ReferencedNonImageCompositeSOPInstanceSequence")]
        out.append({
            "series_instance_uid": _text(item, "SeriesInstanceUID"),
            "description": _text(item, "SeriesDescription"),
            "protocol": _text(item, "ProtocolName"),
            "retrieve_ae_title": _text(item, "RetrieveAETitle"),
            "instances": [uid for uid in instances if uid],
        })
    return out


def _as_json(ds: Dataset) -> dict[str, Any] | Result:
    """The data set as DICOM JSON for the instance's record, or the refusal naming the first
    top-level element that cannot be read (outside the table, which :func:`check` has read)."""
    try:
        return ds.to_json_dict()
    except Exception:  # noqa: BLE001 - whatever pydicom raises on bytes it cannot read
        return _unreadable(ds)


def _unreadable(ds: Dataset) -> Result:
    for tag in tuple(ds.keys()):  # the tags: iterating a Dataset reads its elements
        single = Dataset()
        try:
            single.add(ds[tag])
            single.to_json_dict()
        except Exception as exc:  # noqa: BLE001 - as above
            return Result(Status.INVALID_ATTRIBUTE_VALUE, f"{_keyword(tag)} cannot be read ({type(exc).__name__})")
    return Result(Status.INVALID_ATTRIBUTE_VALUE, "the attribute list cannot be read")


class MPPSService:
    def __init__(self, db: Database, notify: lifecycle.Notify | None = None) -> None:
        self.db = db
        self.notify = notify

    def create(self, sop_instance_uid: str | None, attributes: Dataset, calling_ae: str) -> Result:
        """N-CREATE (PS3.4 F.7.2.1): the attribute list as Table F.7.2-1 asks, with status IN
        PROGRESS (F.7.2.1.3: 0x0106 otherwise), for an instance not yet created (0x0111)."""
        if sop_instance_uid is not None and not _valid_ui(str(sop_instance_uid)):
            return Result(Status.INVALID_OBJECT_INSTANCE, f"{str(sop_instance_uid)[:32]!r} is no UID")
        problems = check(attributes, Operation.CREATE)
        if problems:
            return refusal(problems, Operation.CREATE)
        status = _text(attributes, "PerformedProcedureStepStatus")
        if status != PerformedStepStatus.IN_PROGRESS:
            return Result(Status.INVALID_ATTRIBUTE_VALUE, f"N-CREATE must have status IN PROGRESS, not {status}")
        stored = _as_json(attributes)
        if isinstance(stored, Result):
            return stored
        uid = sop_instance_uid or generate_uid()
        with self.db.session() as session:
            exists = session.exec(select(PerformedProcedureStep.id).where(
                PerformedProcedureStep.sop_instance_uid == uid)).first()
            if exists is not None:
                return Result(Status.DUPLICATE_SOP_INSTANCE, f"MPPS {uid} already exists")
            order, steps = self._scheduled(session, attributes)
            pps = PerformedProcedureStep(
                sop_instance_uid=uid,
                status=PerformedStepStatus.IN_PROGRESS,
                calling_ae_title=calling_ae,
                order=order.id if order else None,
                step_ids=[s.id for s in steps if s.id is not None],
                patient_id=_text(attributes, "PatientID"),
                modality=_text(attributes, "Modality"),
                station_ae_title=_text(attributes, "PerformedStationAETitle"),
                pps_id=_text(attributes, "PerformedProcedureStepID"),
                description=_text(attributes, "PerformedProcedureStepDescription"),
                started=_dt(attributes, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
                performed_series=_series(attributes),
                attributes=stored,
            )
            session.add(pps)
            if order is None:
                log.warning("MPPS %s from %s references no scheduled step; kept as unscheduled", uid, calling_ae)
            else:
                self._follow(session, order, pps.step_ids, PerformedStepStatus.IN_PROGRESS, calling_ae)
        reply = Dataset()
        if sop_instance_uid is None:
            reply.AffectedSOPInstanceUID = uid
        return Result(Status.SUCCESS, attributes=reply)

    def update(self, sop_instance_uid: str | None, modifications: Dataset, calling_ae: str) -> Result:
        """N-SET (PS3.4 F.7.2.2) of an instance still IN PROGRESS (F.7.2.2.3: 0x0110 with Error
        ID 0xA710 otherwise): the modification list as Table F.7.2-1's N-SET column asks and, when
        the status becomes COMPLETED or DISCONTINUED, the whole instance as its Final State column
        asks (F.7.2.2.2)."""
        if not sop_instance_uid:
            return Result(Status.NO_SUCH_SOP_INSTANCE, "N-SET needs the Requested SOP Instance UID")
        with self.db.session() as session:
            pps = session.exec(select(PerformedProcedureStep).where(
                PerformedProcedureStep.sop_instance_uid == sop_instance_uid)).first()
            if pps is None:
                return Result(Status.NO_SUCH_SOP_INSTANCE, f"no MPPS {sop_instance_uid}")
            if pps.status in FINAL:
                return Result(Status.PROCESSING_FAILURE, f"MPPS is {pps.status}; it may no longer be updated",
                              ErrorID.MAY_NO_LONGER_BE_UPDATED)
            problems = check(modifications, Operation.SET)
            if problems:
                return refusal(problems, Operation.SET)
            readable = _as_json(modifications)
            if isinstance(readable, Result):
                return readable
            new_status = _text(modifications, "PerformedProcedureStepStatus", pps.status)
            if new_status not in {s.value for s in PerformedStepStatus}:
                return Result(Status.INVALID_ATTRIBUTE_VALUE, f"status {new_status!r} is not a PPS status")
            stored = Dataset.from_json(pps.attributes)
            for element in modifications:
                # F.7.2.2.3: an N-SET's Specific Character Set does not replace the instance's
                # (its text is decoded with it already)
                if element.keyword != "SpecificCharacterSet":
                    stored[element.tag] = element
            if new_status in FINAL:
                problems = check(stored, Operation.FINAL)
                if problems:
                    return refusal(problems, Operation.FINAL)
            pps.attributes = stored.to_json_dict()
            pps.status = new_status
            pps.description = _text(stored, "PerformedProcedureStepDescription", pps.description)
            pps.ended = _dt(stored, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime") or pps.ended
            pps.performed_series = _series(stored)
            pps.updated_at = utcnow()
            session.add(pps)
            if pps.order is not None:
                order = session.get_one(ImagingOrder, pps.order)
                self._follow(session, order, pps.step_ids, PerformedStepStatus(new_status), calling_ae)
        return Result(Status.SUCCESS)

    # -- the registry -----------------------------------------------------------------------------
    def _scheduled(self, session: Session, attributes: Dataset) -> tuple[ImagingOrder | None, list[ProcedureStep]]:
        """The order and steps the Scheduled Step Attributes Sequence names (by study UID or
        accession number, then SPS ID)."""
        for item in _items(attributes, "ScheduledStepAttributesSequence"):
            study_uid = _text(item, "StudyInstanceUID")
            accession = _text(item, "AccessionNumber")
            sps_id = _text(item, "ScheduledProcedureStepID")
            order = None
            if study_uid:
                order = session.exec(select(ImagingOrder).where(ImagingOrder.study_instance_uid == study_uid)).first()
            if order is None and accession:
                order = session.exec(select(ImagingOrder).where(ImagingOrder.accession_number == accession)).first()
            if order is None:
                continue
            steps = list(session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id)
                                      .order_by(col(ProcedureStep.id))))
            named = [s for s in steps if sps_id and s.sps_id == sps_id]
            return order, named or [s for s in steps if s.status not in ENDED_STEPS]
        return None, []

    def _follow(self, session: Session, order: ImagingOrder, step_ids: list[int],
                status: PerformedStepStatus, calling_ae: str) -> None:
        """The steps this MPPS performs, and their order, follow its status.

        The order is locked first (:func:`lifecycle.hold`), so that images filed at the same
        moment are seen, or see this. An order whose every step has ended is completed (or
        discontinued, if none completed); one whose images are in moves on to images received,
        which the lifecycle held back while the step was being performed."""
        by = f"mpps:{calling_ae}"
        every = lifecycle.hold(session, order)
        for step in every:
            if step.id in step_ids and step.status not in ENDED_STEPS:
                step.status = STEP_FOR[status]
                session.add(step)
        session.flush()
        if status == PerformedStepStatus.IN_PROGRESS:
            self._move(session, order, OrderStatus.IN_PROGRESS, by, f"MPPS {status}")
            return
        if all(s.status in ENDED_STEPS for s in every):
            completed = any(s.status == StepStatus.COMPLETED for s in every)
            self._move(session, order, OrderStatus.COMPLETED if completed else OrderStatus.DISCONTINUED, by,
                       f"MPPS {status}")
        study = session.exec(select(Study.study_instance_uid).where(Study.order == order.id)).first()
        if study is not None and lifecycle.can_transition(order, OrderStatus.IMAGES_RECEIVED):
            self._move(session, order, OrderStatus.IMAGES_RECEIVED, by, f"images of study {study} already in")

    def _move(self, session: Session, order: ImagingOrder, to: OrderStatus, by: str, note: str) -> None:
        try:
            lifecycle.transition(session, order, to, by=by, note=note, notify=self.notify)
        except lifecycle.InvalidTransition as exc:
            log.info("%s: %s", by, exc)

"""QIDO-RS (PS3.18 10.6): search for studies, series and instances, answered from the index.

The query parameters become a C-FIND identifier (a pydicom Dataset) and the matching is the
archive's C-FIND matching (:mod:`pacs.archive.qr`, PS3.4 C.2.2.2), so a name, a date range or a
UID list matches over DICOMweb exactly as it does over DIMSE: ``PatientName=ZHANG*`` and
``PatientName=张*`` both find 张三, relational keys of a higher level narrow a lower one. Answers
are in UTF-8 with every PN component group (``Alphabetic``, ``Ideographic``).

Attributes the index does not match on are ignored and named in a ``Warning: 299`` header of the
response (PS3.18 10.6.3), as are fuzzy matching and a truncated result; a parameter that names no
attribute at all, or a value of the wrong VR, is refused with 400.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import Connection

from pacs.archive import qr
from pacs.archive.charset import UNICODE
from pacs.archive.dicomweb.media import bad_request, shown
from pacs.archive.query import QueryError
from pacs.db import MAX_ROW_ID, row_id
from pacs.integration.names import NameRules

LEVELS = {"studies": "STUDY", "series": "SERIES", "instances": "IMAGE"}
CONTROL = ("limit", "offset", "fuzzymatching", "includefield")  # PS3.18 8.3.4, 8.3.5

# The keys qr.conditions() matches on, by the level each belongs to (PS3.18 10.6.1.2.1).
MATCHING = {
    "PATIENT": ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex"),
    "STUDY": ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
              "ReferringPhysicianName", "ModalitiesInStudy"),
    "SERIES": ("SeriesInstanceUID", "Modality", "SeriesDescription", "BodyPartExamined", "SeriesDate",
               "SeriesNumber"),
    "IMAGE": ("SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
}
SEARCHABLE = {"STUDY": ("PATIENT", "STUDY"), "SERIES": ("PATIENT", "STUDY", "SERIES"),
              "IMAGE": ("PATIENT", "STUDY", "SERIES", "IMAGE")}

# Attributes every answer carries (PS3.18 Tables 10.6.3-3, -4 and -5).
DEFAULTS = {
    "STUDY": ("SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
              "ModalitiesInStudy", "ReferringPhysicianName", "RetrieveURL", "PatientName", "PatientID",
              "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "SERIES": ("SpecificCharacterSet", "Modality", "SeriesDescription", "RetrieveURL", "SeriesInstanceUID",
               "SeriesNumber", "NumberOfSeriesRelatedInstances"),
    "IMAGE": ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "RetrieveURL",
              "InstanceNumber", "Rows", "Columns", "NumberOfFrames"),
}
_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


@dataclass
class Query:
    level: str
    identifier: Dataset
    include: list[str] = field(default_factory=list)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def attribute(name: str) -> tuple[int, str]:
    """A query parameter's attribute, by keyword or by tag (PS3.18 8.3.4.1): ``(tag, keyword)``."""
    if _HEX_TAG.match(name):
        tag = Tag(int(name, 16))
        return tag, keyword_for_tag(tag)
    tag_number = tag_for_keyword(name)
    if tag_number is None:
        raise bad_request(f"{shown(name)} is neither a DICOM attribute keyword nor a tag (ggggeeee), nor one of "
                          f"{', '.join(CONTROL)}")
    return Tag(tag_number), name


def _non_negative(name: str, value: str) -> int:
    """A whole number of 0 or more in ASCII digits; past the largest row id it can only mean
    "all" (limit) or "none left" (offset), so it is cut there."""
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        raise bad_request(f"{name}={shown(value)}: give a whole number of 0 or more")
    number = row_id(value)  # None: past the largest row id, however many digits it has
    return MAX_ROW_ID if number is None else number


def parse(params: list[tuple[str, str]], resource: str, *, study: str | None = None,
          series: str | None = None) -> Query:
    """The query parameters of a search (PS3.18 8.3.4) as a C-FIND identifier and controls."""
    level = LEVELS[resource]
    query = Query(level, Dataset())
    values: dict[int, list[str]] = {}
    unsupported: list[str] = []
    for name, value in params:
        if name == "limit":
            query.limit = _non_negative(name, value)
        elif name == "offset":
            query.offset = _non_negative(name, value)
        elif name == "fuzzymatching":
            if value.strip().lower() not in ("true", "false"):
                raise bad_request(f"fuzzymatching={shown(value)}: give true or false")
            if value.strip().lower() == "true":
                query.warnings.append("The fuzzymatching parameter is not supported. Only literal matching has been "
                                      "performed.")
        elif name == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if item == "all":
                    query.include_all = True
                elif item:
                    tags = [attribute(part) for part in item.split(".")]
                    if len(tags) == 1 and tags[0][1]:
                        query.include.append(tags[0][1])
                    else:
                        unsupported.append(item)
        elif "." in name:  # a sequence path: valid, but the index holds no sequences
            for part in name.split("."):
                attribute(part)
            unsupported.append(name)
        else:
            tag, keyword = attribute(name)
            if not any(keyword in MATCHING[level_] for level_ in SEARCHABLE[level]):
                unsupported.append(keyword or name)
                continue
            values.setdefault(tag, []).append(value)
    if study is not None:
        values[Tag("StudyInstanceUID")] = [study]
    if series is not None:
        values[Tag("SeriesInstanceUID")] = [series]
    identifier = query.identifier
    for tag, given in values.items():
        vr = dictionary_VR(tag)
        listed = vr == "UI" or tag == Tag("ModalitiesInStudy")  # value lists, comma-separated (8.3.4.1)
        parts = [p for v in given for p in (v.split(",") if listed else [v])]
        text = "\\".join(p.strip() if vr != "PN" else p for p in parts)
        if not text.isascii():
            identifier.SpecificCharacterSet = UNICODE
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # pydicom warns about an invalid value: refuse it
                identifier.add_new(tag, vr, text)
        except (ValueError, TypeError, OverflowError, UserWarning) as exc:
            raise bad_request(f"{keyword_for_tag(tag)}={shown(text)} is not a valid {vr} value: {exc}") from None
    identifier.QueryRetrieveLevel = level
    if unsupported:
        query.warnings.append("The following attributes are not supported as query keys and were ignored: "
                              + ", ".join(unsupported))
    return query


@dataclass
class Result:
    items: list[dict[str, Any]]
    warnings: list[str]


def search(conn: Connection, query: Query, *, names: NameRules, base_url: str,
           study: str | None = None, series: str | None = None) -> Result:
    """Matches of ``query`` as DICOM JSON (PS3.18 F.2), in the index's order."""
    try:
        qr.validate(query.identifier)
        # The page is cut in the database; one row more tells whether the maximum was passed.
        limit = min(query.limit if query.limit is not None else qr.MAX_MATCHES, qr.MAX_MATCHES)
        rows = qr.find_rows(conn, query.identifier, query.level, limit=limit + 1, offset=query.offset)
    except QueryError as exc:
        raise bad_request(str(exc)) from None
    warnings = list(query.warnings)
    if len(rows) > limit and query.limit is None:
        warnings.append(f"The number of results exceeded the maximum supported by the server ({qr.MAX_MATCHES}). "
                        "Narrow the query.")
    rows = rows[:limit]
    answer = qr.Answer(UNICODE, names)
    wanted = _wanted(query, study=study, series=series)
    items = []
    for found in rows:
        values = answer.values(found, query.level)
        values.pop("QueryRetrieveLevel", None)
        values["SpecificCharacterSet"] = UNICODE
        values["InstanceAvailability"] = "ONLINE"
        values["RetrieveURL"] = retrieve_url(base_url, found, query.level)
        keywords = list(dict.fromkeys(list(values) if query.include_all else wanted))
        items.append(_json(keywords, values))
    return Result(items, warnings)


def _wanted(query: Query, *, study: str | None, series: str | None) -> list[str]:
    """Defaults of the level, of the levels above when the path does not fix them (PS3.18
    10.6.3.3), the keys matched on, and the included fields."""
    wanted = list(DEFAULTS[query.level])
    if query.level in ("SERIES", "IMAGE") and study is None:
        wanted += DEFAULTS["STUDY"]
    if query.level == "IMAGE" and series is None:
        wanted += DEFAULTS["SERIES"]
    wanted += [e.keyword for e in query.identifier if e.keyword and e.keyword != "QueryRetrieveLevel"]
    return wanted + query.include


def retrieve_url(base_url: str, found: qr.Found, level: str) -> str:
    """RetrieveURL (0008,1190): the WADO-RS resource of the match (PS3.18 10.6.3.3)."""
    assert found.study is not None
    url = f"{base_url}/studies/{found.study.study_instance_uid}"
    if level in ("SERIES", "IMAGE") and found.series is not None:
        url += f"/series/{found.series.series_instance_uid}"
    if level == "IMAGE" and found.instance is not None:
        url += f"/instances/{found.instance.sop_instance_uid}"
    return url


@lru_cache(maxsize=512)
def _tag_and_vr(keyword: str) -> tuple[int, str] | None:
    tag = tag_for_keyword(keyword)
    return (tag, dictionary_VR(tag).split(" or ")[0]) if tag is not None else None


def _json(keywords: list[str], values: dict[str, Any]) -> dict[str, Any]:
    """The answer's attributes in the DICOM JSON Model (PS3.18 F.2), tags in ascending order;
    an attribute without a value is present with its VR alone (F.2.5)."""
    out = {}
    for keyword in keywords:
        found = _tag_and_vr(keyword)
        if found is None:
            continue
        tag, vr = found
        out[tag] = element(vr, values.get(keyword))
    return {f"{tag:08X}": out[tag] for tag in sorted(out)}


def element(vr: str, value: Any) -> dict[str, Any]:
    """One attribute in the DICOM JSON Model: PN as component groups (F.2.2), numbers as
    numbers (F.2.3), multiple values of a backslash-separated string as a list."""
    if vr == "SQ":
        return {"vr": vr, "Value": []}
    if value is None or value == "" or value == []:
        return {"vr": vr}
    if isinstance(value, list):
        items = value
    elif isinstance(value, str) and vr not in _SINGLE_VALUED:
        items = value.split("\\")
    else:
        items = [value]
    if vr == "PN":
        return {"vr": vr, "Value": [_person_name(v) for v in items]}
    try:
        if vr in _INTEGER_VRS:
            return {"vr": vr, "Value": [int(v) for v in items]}
        if vr in _DECIMAL_VRS:
            return {"vr": vr, "Value": [float(v) for v in items]}
    except (TypeError, ValueError):
        return {"vr": vr}
    return {"vr": vr, "Value": [str(v) for v in items]}


_SINGLE_VALUED = {"LT", "ST", "UT", "UR"}  # a backslash is text in these (PS3.5 6.2)
_INTEGER_VRS = {"IS", "SL", "SS", "SV", "UL", "US", "UV"}
_DECIMAL_VRS = {"DS", "FL", "FD"}
_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _person_name(value: str) -> dict[str, str]:
    return {group: text for group, text in zip(_GROUPS, str(value).split("="), strict=False) if text}

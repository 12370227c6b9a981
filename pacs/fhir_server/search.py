"""FHIR search (R4 §3.1.1.4 search.html): declared, typed parameters → SQL conditions; Bundles.

Each resource module declares its parameters (token, string, date, reference) with a function
that turns one value into a condition; the CapabilityStatement is generated from the same
declarations. Unknown parameters are ignored and reported in an OperationOutcome entry, unless
the client sends ``Prefer: handling=strict`` (search.html#errors), then they are a 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, and_, false, func, or_

from pacs.db import MAX_ROW_ID, row_id
from pacs.fhir_server.outcome import operation_outcome

DEFAULT_COUNT = 20
MAX_COUNT = 500
# Characters in the value of a string parameter, matched with LIKE. No name or text searched here
# is near that long (a DICOM PN component group holds 64 characters, an LO 64), and SQLite
# refuses a LIKE pattern past 50,000 bytes (SQLITE_MAX_LIKE_PATTERN_LENGTH) with an error.
MAX_STRING_CHARACTERS = 1024
RESULT_PARAMETERS = {"_count", "_sort", "_include", "_revinclude", "_offset", "_format", "_summary", "_total",
                     "_elements"}


class SearchError(ValueError):
    """A parameter the server can't use: answered 400 with an OperationOutcome."""

    def __init__(self, message: str, expression: str | None = None) -> None:
        super().__init__(message)
        self.expression = expression


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # token | string | date | reference | number
    build: Callable[[str, str | None], ColumnElement[bool]]  # (value, modifier) -> condition
    documentation: str = ""


@dataclass(frozen=True)
class Include:
    """``_include`` / ``_revinclude`` the resource type supports, e.g. ImagingStudy:patient."""

    name: str  # "ImagingStudy:patient"
    target: str  # resource type found


@dataclass
class Query:
    conditions: list[ColumnElement[bool]]
    count: int
    offset: int
    sort: list[tuple[str, bool]]  # (parameter, descending)
    include: list[str]
    revinclude: list[str]
    ignored: list[str] = field(default_factory=list)


def parse(params: list[tuple[str, str]], declared: dict[str, Param], *, strict: bool,
          sortable: set[str], includes: set[str], revincludes: set[str]) -> Query:
    """Turn the query string into conditions (AND across parameters, OR within a comma list)."""
    conditions: list[ColumnElement[bool]] = []
    ignored: list[str] = []
    count, offset, sort, include, revinclude = DEFAULT_COUNT, 0, [], [], []
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if name == "_count":
            count = _int(raw_name, value, minimum=0, maximum=MAX_COUNT)
        elif name == "_offset":
            offset = _int(raw_name, value, minimum=0)
        elif name == "_sort":
            for key in value.split(","):
                descending = key.startswith("-")
                key = key.lstrip("-")
                if key not in sortable:
                    _unknown(f"_sort={key}", strict, ignored, f"sorting by {key} is not supported "
                             f"(supported: {', '.join(sorted(sortable))})")
                    continue
                sort.append((key, descending))
        elif name == "_include":
            if value in includes:
                include.append(value)
            else:
                _unknown(f"_include={value}", strict, ignored, f"_include={value} is not supported "
                         f"(supported: {', '.join(sorted(includes)) or 'none'})")
        elif name == "_revinclude":
            if value in revincludes:
                revinclude.append(value)
            else:
                _unknown(f"_revinclude={value}", strict, ignored, f"_revinclude={value} is not supported "
                         f"(supported: {', '.join(sorted(revincludes)) or 'none'})")
        elif name in RESULT_PARAMETERS:
            ignored.append(raw_name)  # understood, not implemented: results are the same without it
        elif name in declared:
            values = _split(value)
            if not values:  # "", ",,,": a list of no values (search.html#combining)
                raise SearchError(f"parameter {raw_name} has no value", raw_name)
            alternatives = [declared[name].build(v, modifier or None) for v in values]
            conditions.append(or_(*alternatives) if len(alternatives) > 1 else alternatives[0])
        else:
            _unknown(raw_name, strict, ignored, f"unknown search parameter {raw_name}")
    return Query(conditions, count, offset, sort, include, revinclude, ignored)


def _split(value: str) -> list[str]:
    """Comma-separated alternatives; ``\\,`` is a literal comma (search.html#escaping)."""
    parts = re.split(r"(?<!\\),", value)
    return [p.replace("\\,", ",") for p in parts if p != ""]


def _int(name: str, value: str, *, minimum: int, maximum: int | None = None) -> int:
    """A whole number in ASCII digits; one past the largest row id (however many digits it has)
    is cut there: as an offset it leaves nothing, as a count it is the most a page holds."""
    if not (value.isascii() and value.isdigit()):
        raise SearchError(f"{name} must be a whole number, not {shown(value)}", name)
    number = row_id(value)
    if number is None:  # past the largest key
        number = MAX_ROW_ID
    if number < minimum:
        raise SearchError(f"{name} must be at least {minimum}", name)
    return min(number, maximum if maximum is not None else MAX_ROW_ID)  # past any row: nothing left


SHOWN_CHARACTERS = 80  # of a client's value quoted back in an error


def shown(value: str) -> str:
    """A client's value as an error quotes it: repr, cut short (a value may be megabytes)."""
    return repr(value) if len(value) <= SHOWN_CHARACTERS else repr(value[:SHOWN_CHARACTERS]) + "…"


def _unknown(name: str, strict: bool, ignored: list[str], message: str) -> None:
    if strict:
        raise SearchError(message, name)
    ignored.append(name)


# -- parameter types ---------------------------------------------------------------------------


def token(*columns: ColumnElement[str], systems: Callable[[str], list[str]] | None = None,
          system_column: ColumnElement[str] | None = None, fold_case: bool = False):  # type: ignore[no-untyped-def]
    """A token parameter (search.html#token): ``[system|]code``; several columns are alternatives."""

    def build(value: str, modifier: str | None) -> ColumnElement[bool]:
        if modifier not in (None, "exact", "not"):
            raise SearchError(f"modifier :{modifier} is not supported for this token parameter")
        system, bar, code = value.rpartition("|")
        if not bar:
            system, code = "", value
        matches = []
        for column in columns:
            condition = func.upper(column) == code.upper() if fold_case else column == code
            if system and system_column is not None:
                wanted = systems(system) if systems else [system]
                condition = and_(condition, system_column.in_(wanted))
            matches.append(condition)
        found = or_(*matches) if len(matches) > 1 else matches[0]
        return ~found if modifier == "not" else found

    return build


def string(*columns: ColumnElement[str]):  # type: ignore[no-untyped-def]
    """A string parameter (search.html#string): starts with, ignoring case; :exact, :contains."""

    def build(value: str, modifier: str | None) -> ColumnElement[bool]:
        if len(value) > MAX_STRING_CHARACTERS:
            raise SearchError(f"{shown(value)} is longer than {MAX_STRING_CHARACTERS} characters; no name or "
                              "text searched here is that long")
        escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        if modifier == "exact":
            return or_(*[column == value for column in columns])
        if modifier == "contains":
            pattern = f"%{escaped.upper()}%"
        elif modifier is None:
            pattern = f"{escaped.upper()}%"
        else:
            raise SearchError(f"modifier :{modifier} is not supported for string parameters")
        return or_(*[func.upper(column).like(pattern, escape="\\") for column in columns])

    return build


PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")
# ASCII digits only: "\d" would take "２０２６" too (datatypes.html#dateTime)
_DATE = re.compile(r"^([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]+)?)?"
                   r"(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?$")


def _beyond_the_calendar(value: str) -> SearchError:
    """A date whose interval, widened (``ap``) or moved to UTC, leaves Python's datetime range."""
    return SearchError(f"{shown(value)} is too near the ends of the calendar (years 1 and 9999) to be compared")


def date_range(value: str) -> tuple[datetime, datetime]:
    """The half-open interval a FHIR date/dateTime value covers at its precision."""
    match = _DATE.match(value)
    if not match:
        raise SearchError(f"{shown(value)} is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or a dateTime)")
    year, month, day, hour, minute, second, _zone = match.groups()
    try:
        if day is None:
            start = datetime(int(year), int(month or 1), 1)
            if month is None:
                end = datetime(int(year) + 1, 1, 1)
            else:
                end = datetime(int(year) + (int(month) == 12), int(month) % 12 + 1, 1)
        elif hour is None:
            start = datetime(int(year), int(month), int(day))
            end = start + timedelta(days=1)
        else:
            start = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
            end = start + timedelta(seconds=1 if second else 60)
    except ValueError:
        raise SearchError(f"{shown(value)} is not a valid date") from None
    except OverflowError:  # the last second of 9999-12-31 ends after datetime.max
        raise _beyond_the_calendar(value) from None
    return start, end


def date_parameter(low: Callable[[datetime], Any], high: Callable[[datetime], Any], column: ColumnElement[Any]):  # type: ignore[no-untyped-def]
    """A date parameter (search.html#date) with prefixes; ``low``/``high`` turn interval ends
    into values comparable with ``column`` (a DATE, a DATETIME or a YYYYMMDD string)."""

    def build(value: str, modifier: str | None) -> ColumnElement[bool]:
        if modifier is not None:
            raise SearchError(f"modifier :{modifier} is not supported for date parameters")
        prefix = value[:2] if value[:2] in PREFIXES else "eq"
        start, end = date_range(value[2:] if value[:2] in PREFIXES else value)
        try:
            lo, hi = low(start), high(end)
            if prefix == "ap":  # as wide again on each side as the value's precision
                lo, hi = low(start - (end - start)), high(end + (end - start))
        except OverflowError:
            raise _beyond_the_calendar(value) from None
        return {
            "eq": and_(column >= lo, column < hi),
            "ap": and_(column >= lo, column < hi),
            "ne": or_(column < lo, column >= hi),
            "lt": column < lo,
            "eb": column < lo,
            "le": column < hi,
            "gt": column >= hi,
            "sa": column >= hi,
            "ge": column >= lo,
        }[prefix]

    return build


def reference(column: ColumnElement[int], resource_type: str):  # type: ignore[no-untyped-def]
    """A reference parameter (search.html#reference): ``Type/id``, or just ``id``."""

    def build(value: str, modifier: str | None) -> ColumnElement[bool]:
        if modifier not in (None, resource_type):
            raise SearchError(f"modifier :{modifier} is not supported here")
        logical = value.rsplit("/", 1)[-1]
        if "/" in value and not value.rsplit("/", 2)[-2] == resource_type:
            raise SearchError(f"{shown(value)} is not a {resource_type} reference")
        return column == key if (key := row_id(logical)) is not None else false()

    return build


# -- Bundles -----------------------------------------------------------------------------------


def bundle(*, base: str, resource_type: str, params: list[tuple[str, str]], query: Query, total: int,
           matches: list[dict[str, Any]], included: list[dict[str, Any]]) -> dict[str, Any]:
    """A searchset Bundle with total and self/first/previous/next/last links."""

    def link(offset: int) -> str:
        kept = [(k, v) for k, v in params if k not in ("_offset", "_count")]
        return f"{base}/{resource_type}?" + urlencode(kept + [("_count", str(query.count)), ("_offset", str(offset))])

    links = [{"relation": "self", "url": link(query.offset)}, {"relation": "first", "url": link(0)}]
    if query.offset > 0:
        links.append({"relation": "previous", "url": link(max(query.offset - query.count, 0))})
    if query.count and query.offset + query.count < total:
        links.append({"relation": "next", "url": link(query.offset + query.count)})
        links.append({"relation": "last", "url": link(((total - 1) // query.count) * query.count)})
    entries = [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
               for r in matches]
    entries += [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "include"}}
                for r in included]
    if query.ignored:
        entries.append({"resource": operation_outcome(
            "ignored: " + ", ".join(query.ignored), code="not-supported", severity="warning"),
            "search": {"mode": "outcome"}})
    return {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries}


def day_text(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def day(moment: datetime) -> date:
    return moment.date()


def same(moment: datetime) -> datetime:
    return moment

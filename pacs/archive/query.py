"""Attribute matching for C-FIND (PS3.4 C.2.2.2) as SQL conditions.

Each ``cond_*`` function takes a column and the value of a query key and returns a :class:`Cond`
(the condition's SQL structure and its values apart; ``expression()`` is the SQLAlchemy condition),
or ``None`` for universal matching (an empty value or a lone ``*``). Dates and times are stored
as DICOM strings (YYYYMMDD, HHMMSS), so ranges compare as text on every database.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from sqlalchemy import ColumnElement, Connection, and_, func, or_

from pacs.archive.status import Status
from pacs.db import Reading, Shapes

WILDCARDS = ("*", "?")
MAX_ITEM_DEPTH = 8  # nesting of sequences read in an identifier; deeper items are not keys of any model
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")


@dataclass
class QueryError(Exception):
    """A query the SCP can't run: answered with ``status``, the comment and the offending key."""

    status: Status
    comment: str
    tag: int | None = None

    def __str__(self) -> str:
        return self.comment


def readable(identifier: Any, depth: int = 0) -> None:
    """Every element of ``identifier`` and its sequences' items decoded once, or
    :class:`QueryError` (0xA900, PS3.4 C.4.1.1.4) naming the first that can't be: pydicom
    decodes a value when it is first read, and some it can't (a name in a character set whose
    encoder fails on it) raise errors of many kinds, which would otherwise surface half-way
    through a query."""
    for element in list(identifier._dict.values()):
        if isinstance(element, RawDataElement):
            try:
                element = identifier[element.tag]
            except Exception as exc:  # pydicom's converters raise many kinds of errors
                raise QueryError(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                                 f"{element.tag} cannot be read: {type(exc).__name__}: {exc}",
                                 int(element.tag)) from None
        if element.VR == "SQ" and element.value and depth < MAX_ITEM_DEPTH:
            for item in element.value:
                readable(item, depth + 1)


@lru_cache(maxsize=4096)
def keyword_of(tag: int) -> str:
    """A tag's keyword ('' for a private or unknown tag), looked up once per tag."""
    return keyword_for_tag(tag)


def elements(identifier: Any) -> list[DataElement]:
    """The top-level elements of ``identifier`` in tag order, decoded. pydicom decodes an element
    the first time it is read; one decoded already is taken as it is, without the checks of
    ``Dataset.__getitem__``, which cost a query more than its matching while every pass over the
    identifier (checks, keys, answer plan, audit) paid them again."""
    held = identifier._dict  # pydicom's tag → element; its elements() sorts the tags with BaseTag's own __lt__
    return [identifier[tag] if isinstance(element := held[tag], RawDataElement) else element
            for tag in sorted(held, key=int)]


def is_universal(value: str | None) -> bool:
    """PS3.4 C.2.2.2.3: a zero-length value (or ``*``) matches everything."""
    return value is None or value.strip() in ("", "*")


@dataclass(frozen=True, slots=True)
class Cond:
    """A matching condition with its values kept apart: ``key`` names the structure of its SQL
    (conditions with equal keys differ only in their values), ``values`` fill it in order, and
    ``build`` makes the expression from one value, or one bound parameter, per value. A query
    made of conditions is then built, keyed and compiled once per shape (:class:`pacs.db.Shaped`)
    instead of once per query."""

    key: tuple[Any, ...]
    values: tuple[Any, ...]
    build: Callable[[Sequence[Any]], ColumnElement[bool]]

    def expression(self) -> ColumnElement[bool]:
        return self.build(self.values)



def every(kind: str, conds: Sequence[Cond], combine: Callable[..., ColumnElement[bool]] = and_) -> Cond:
    """One condition of several, joined by ``combine`` (and_ or or_)."""
    spans, start = [], 0
    for cond in conds:
        spans.append((cond.build, start, start + len(cond.values)))
        start += len(cond.values)
    return Cond((kind, tuple(c.key for c in conds)), tuple(v for c in conds for v in c.values),
                 lambda b: combine(*[build(b[i:j]) for build, i, j in spans]))


def fixed(key: tuple[Any, ...], expression: ColumnElement[bool]) -> Cond:
    """A condition without values (the same SQL for every query)."""
    return Cond(("fixed", *key), (), lambda b: expression)


def cond_equal(column: ColumnElement, value: Any) -> Cond:  # PS3.4 C.2.2.2.1
    return Cond(("=", column), (value,), lambda b: column == b[0])


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _prefix(column: ColumnElement, prefix: str, *, upper: bool = False) -> Cond:
    """``prefix*`` as a range, so the column's index is used (a LIKE with upper() can't be);
    ``upper``: on upper(column), which an expression index can serve."""
    upper_bound = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    side = (lambda: func.upper(column)) if upper else (lambda: column)
    return Cond(("prefix", column, upper), (prefix, upper_bound), lambda b: and_(side() >= b[0], side() < b[1]))


def cond_wildcard(column: ColumnElement, value: str, *, fold_case: bool = False, stored_upper: bool = False) -> Cond:
    """PS3.4 C.2.2.2.4: ``*`` any run of characters, ``?`` any one character.

    ``stored_upper``: the column holds upper-case text already, so a case-insensitive prefix
    match becomes an indexed range."""
    if value.endswith("*") and not any(w in value[:-1] for w in WILDCARDS) and len(value) > 1:
        if stored_upper:
            return _prefix(column, value[:-1].upper())
        if fold_case:
            return _prefix(column, value[:-1].upper(), upper=True)
        return _prefix(column, value[:-1])
    pattern = _like_pattern(value)
    if fold_case:
        return Cond(("like", column, True), (pattern.upper(),), lambda b: func.upper(column).like(b[0], escape="\\"))
    return Cond(("like", column, False), (pattern,), lambda b: column.like(b[0], escape="\\"))


def cond_string(column: ColumnElement, value: str | None, *, fold_case: bool = False,
                stored_upper: bool = False) -> Cond | None:
    """Single value or wildcard matching for a string key, or None when universal."""
    if is_universal(value):
        return None
    assert value is not None
    value = value.strip()
    if any(w in value for w in WILDCARDS):
        return cond_wildcard(column, value, fold_case=fold_case, stored_upper=stored_upper)
    if stored_upper:
        return cond_equal(column, value.upper())
    if fold_case:
        return Cond(("=upper", column), (value.upper(),), lambda b: func.upper(column) == b[0])
    return cond_equal(column, value)


def cond_uid_list(column: ColumnElement, value: str | None) -> Cond | None:
    """PS3.4 C.2.2.2.2: a backslash-separated list of UIDs matches any of them."""
    if is_universal(value):
        return None
    assert value is not None
    uids = tuple(uid.strip() for uid in value.split("\\") if uid.strip())
    if len(uids) == 1:
        return cond_equal(column, uids[0])
    return Cond(("in", column, len(uids)), uids, lambda b: column.in_(list(b)))


def _check_date(text: str, tag: int | None) -> str:
    if not _DATE.match(text):
        raise QueryError(Status.UNABLE_TO_PROCESS, f"{text!r} is not a DICOM date (YYYYMMDD)", tag)
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        raise QueryError(Status.UNABLE_TO_PROCESS, f"{text!r} is not a calendar date", tag) from None
    return text


def _range(column: ColumnElement, low: str | None, high: str | None) -> Cond:
    """``low <= column <= high`` (either end may be missing), and not empty: a range never
    matches an unknown value (PS3.4 C.2.2.2.5)."""
    values = tuple(v for v in (low, high) if v is not None)

    def build(b: Sequence[Any]) -> ColumnElement[bool]:
        bounds = iter(b)
        found = []
        if low is not None:
            found.append(column >= next(bounds))
        if high is not None:
            found.append(column <= next(bounds))
        return and_(*found, column != "")
    return Cond(("range", column, low is not None, high is not None), values, build)


def cond_date_range(column: ColumnElement, value: str | None, tag: int | None = None) -> Cond | None:
    """PS3.4 C.2.2.2.5 for DA: ``D``, ``D1-D2``, ``-D2``, ``D1-``."""
    if is_universal(value):
        return None
    assert value is not None
    value = value.strip().replace(".", "")  # ACR-NEMA style YYYY.MM.DD, still sent by old devices
    if "-" not in value:
        return cond_equal(column, _check_date(value, tag))
    low, _, high = value.partition("-")
    if not low and not high:
        raise QueryError(Status.UNABLE_TO_PROCESS, "a date range needs at least one end", tag)
    start = _check_date(low, tag) if low else None
    end = _check_date(high, tag) if high else None
    if start is not None and end is not None and start > end:
        raise QueryError(Status.UNABLE_TO_PROCESS, f"date range {value} ends before it starts", tag)
    return _range(column, start, end)


def _time_bound(text: str, tag: int | None, *, upper: bool) -> str:
    match = _TIME.match(text.replace(":", ""))
    if not match:
        raise QueryError(Status.UNABLE_TO_PROCESS, f"{text!r} is not a DICOM time (HHMMSS)", tag)
    hours, minutes, seconds = match.group(1), match.group(2), match.group(3)
    if int(hours) > 23 or (minutes and int(minutes) > 59) or (seconds and int(seconds) > 60):
        raise QueryError(Status.UNABLE_TO_PROCESS, f"{text!r} is not a time of day", tag)
    fill = "59" if upper else "00"
    return hours + (minutes or fill) + (seconds or fill)


def cond_time_range(column: ColumnElement, value: str | None, tag: int | None = None) -> Cond | None:
    """PS3.4 C.2.2.2.5 for TM: a single time matches that hour/minute/second; ranges inclusive."""
    if is_universal(value):
        return None
    assert value is not None
    value = value.strip()
    if "-" not in value:
        bounds = (_time_bound(value, tag, upper=False), _time_bound(value, tag, upper=True))
        return Cond(("time", column), bounds, lambda b: and_(column >= b[0], column <= b[1]))
    low, _, high = value.partition("-")
    if not low and not high:
        raise QueryError(Status.UNABLE_TO_PROCESS, "a time range needs at least one end", tag)
    start = _time_bound(low, tag, upper=False) if low else None
    end = _time_bound(high, tag, upper=True) if high else None
    if start is not None and end is not None and start > end:
        raise QueryError(Status.UNABLE_TO_PROCESS, f"time range {value} ends before it starts", tag)
    return _range(column, start, end)


def normalise_pn(value: str) -> str:
    """Drop empty trailing components (``ZHANG^SAN^^`` is ``ZHANG^SAN``)."""
    return value.rstrip("^ ")


def cond_person_name(alphabetic: ColumnElement, ideographic: ColumnElement, value: str | None) -> Cond | None:
    """PN matching over the component groups (PS3.4 C.2.2.2.1, C.2.2.2.4; PS3.5 6.2.1).

    A value with ``=`` matches each group given against its own group. A value without matches
    either the alphabetic group (pinyin or a Latin name, without regard to case) or the ideographic
    one (Han), so a
    modality that types ``ZHANG*`` and one that types ``张*`` both find 张三. A family name alone
    (``ZHANG``) matches as ``ZHANG^*``, as most worklist SCPs do.
    """
    if is_universal(value):
        return None
    assert value is not None
    groups = value.split("=")
    if len(groups) > 1:
        conds = [c for c in (
            cond_string(alphabetic, _pn_pattern(groups[0]), fold_case=True) if groups[0].strip() else None,
            cond_string(ideographic, _pn_pattern(groups[1])) if groups[1].strip() else None,
        ) if c is not None]
        return every("pn groups", conds) if conds else None
    pattern = _pn_pattern(value)
    either = [cond_string(alphabetic, pattern, fold_case=True), cond_string(ideographic, pattern)]
    return every("pn either", [c for c in either if c is not None], or_)


def _pn_pattern(value: str) -> str:
    value = normalise_pn(value.strip())
    if "^" not in value and not value.endswith("*"):
        value += "*"  # a family name alone
    return value


# -- reading matches -----------------------------------------------------------------------------

class Record:
    """One table's columns of a result row as attributes: what an answer reads, without the
    bookkeeping of an ORM object (a page of matches is read, answered and forgotten)."""

    def __init__(self, names: tuple[str, ...], values: Any) -> None:
        self.__dict__.update(zip(names, values, strict=True))


Only = dict[Any, tuple[str, ...]]  # model → the columns to read of its table (its primary key among them)


def _table_columns(model: Any, only: Only | None) -> list[Any]:
    keys = (only or {}).get(model)
    table = model.__table__
    return list(table.columns) if keys is None else [table.c[key] for key in keys]


def columns(*models: Any, only: Only | None = None) -> list[Any]:
    """The columns of each model's table, in order (every one, or those ``only`` names): what
    :func:`records` expects selected."""
    return [column for model in models for column in _table_columns(model, only)]


SHAPES = Shapes()  # the matching queries of C-FIND, QIDO-RS and the worklist, compiled once per shape


def records(conn: Connection | Reading, models: tuple[Any, ...], query: Any, only: Only | None = None) -> Iterator[list[Any]]:
    """Each row of ``query`` (which selects :func:`columns` of ``models``, then any extra values)
    as one :class:`Record` per model, or None for an outer-joined model without a row (its
    primary key is NULL), followed by the extra values."""
    layout = []
    for model in models:
        keys = tuple(column.key for column in _table_columns(model, only))
        primary = [column.key for column in model.__table__.primary_key.columns]
        layout.append((keys, keys.index(primary[0])))
    for row in SHAPES.rows(conn, query):
        out: list[Any] = []
        start = 0
        for keys, primary_at in layout:
            values = row[start:start + len(keys)]
            out.append(None if values[primary_at] is None else Record(keys, values))
            start += len(keys)
        out.extend(row[start:])
        yield out

"""The registration desk's patient search: one text box, every way a registrar finds a patient.

What the box takes (a query of at most :data:`MAX_QUERY_CHARS` characters):

- an identifier the patient is known by, exactly: Patient ID, hospital card number, any PID-3
  identifier (HL7 v2.5 chapter 3, PID-3 CX), old ones kept by a merge (ADT A40) included;
- a national ID (居民身份证号码, GB 11643-1999), exactly, ``x`` or ``X``;
- a phone number, exactly, by its digits (``138-0013-8000``, ``+86 13800138000``);
- the name in Hanzi, from its start: ``张``, ``张三`` (``张 三`` too);
- the name in full pinyin, from its start: ``zhangsan``, ``zhang san``, ``ZHANG^SAN``; ü typed
  ``v``, ``u`` or ``yu`` (吕: ``lv``, ``lu``, ``lyu``);
- the name's pinyin initials, from their start: ``zs`` finds 张三 and 张三丰. Initials follow
  the pinyin stored for the patient, which reads polyphonic surnames as surnames
  (``mappings/names/surnames.csv``: 单 SHAN, 曾 ZENG, so ``stf`` finds 单田芳).

How the name keys are kept: every patient row carries ``search_name`` (张三),
``search_pinyin`` (ZHANGSAN), ``search_initials`` (ZS) and ``search_phone`` (digits),
written by the registry service with the name and phone (:func:`fill_keys`), each with an
index compared byte by byte (:data:`pacs.registry.models.SEARCH_KEY`). A prefix is then a range
of that index, ``key >= '张三' AND key < '张上'``, on SQLite and PostgreSQL alike, however many
patients there are.

Ranking: exact identifier, card, national ID and phone matches first; then names equal to what
was typed; then names that start with it; within each, the patient seen most recently first
(the newest order or visit), then by name. A merged patient is shown as the one it was merged
into. A prefix that matches more than :data:`CANDIDATES` patients (``z``, ``张``) ranks
the patients among the :data:`RECENT_ORDERS` newest orders exactly and fills the rest from the
first :data:`CANDIDATES` in key order.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import IntEnum, StrEnum
from functools import lru_cache
from typing import Any

from pypinyin import Style, lazy_pinyin
from sqlalchemy import ColumnElement, Connection, case, event, func, literal, or_, select, union_all
from sqlmodel import Session

from pacs.integration.names import has_han, split_syllables
from pacs.registry.models import ImagingOrder, OrderStatus, Patient, PatientIdentifier, Visit

MAX_QUERY_CHARS = 64
DEFAULT_LIMIT = 20
MAX_LIMIT = 50
CANDIDATES = 100  # rows read from one key's index range before ranking
RECENT_ORDERS = 2000  # the newest orders (a busy department's day) whose patients a broad prefix ranks exactly
MAX_MERGE_HOPS = 16  # A40 onto A40: how far a merged patient is followed
MIN_PHONE_DIGITS = 5  # fewer digits are no phone number worth looking up
NATIONAL_ID = re.compile(r"\d{17}[\dXx]|\d{15}")  # GB 11643-1999; the 15-digit cards of before 1999
OPEN_ORDER_STATUSES = (OrderStatus.SCHEDULED, OrderStatus.ARRIVED, OrderStatus.IN_PROGRESS)
NATIONAL_ID_TYPE = "NI"  # HL7 table 0203: National unique individual identifier

PATIENT = Patient.__table__  # type: ignore[attr-defined]
IDENTIFIER = PatientIdentifier.__table__  # type: ignore[attr-defined]
ORDER = ImagingOrder.__table__  # type: ignore[attr-defined]
VISIT = Visit.__table__  # type: ignore[attr-defined]


class BadQuery(ValueError):
    """A query the search cannot take; the message says why (the API answers 400 with it)."""


class Matched(StrEnum):
    """What of the patient the query matched."""

    PATIENT_ID = "patient_id"
    CARD = "card"
    IDENTIFIER = "identifier"
    NATIONAL_ID = "national_id"
    PHONE = "phone"
    NAME = "name"
    PINYIN = "pinyin"
    INITIALS = "initials"


class Tier(IntEnum):
    """Rank of a match: lower first."""

    EXACT = 0  # an identifier, card, national ID or phone
    NAME_EQUAL = 1  # the whole name key is what was typed
    NAME_PREFIX = 2  # the name key starts with it


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------

_SEPARATORS = re.compile(r"[\s^=·•‧∙・･.,，、'’\-]+")
_NOT_LETTERS = re.compile(r"[^A-Z]+")
_DIGITS = re.compile(r"\d+")
_PHONE_TEXT = re.compile(r"\+?[\d\s\-()（）]+")
CHINA_COUNTRY_CODE = "86"  # ITU-T E.164
CHINA_MOBILE_DIGITS = 11


@dataclass(frozen=True)
class NameKeys:
    """The search keys of one name."""

    name: str
    """The Han characters as written, without separators: 张三, 欧阳娜娜 ("" for a Latin name)."""
    pinyin: str
    """The alphabetic group's letters, upper case, ü as U: ZHANGSAN, OUYANGNANA, LUXIAOMING."""
    initials: str
    """One letter per syllable (per word of a Latin name): ZS, OYNN, LXM."""


def _loose_u(component: str) -> str:
    """A pinyin component with ü written U however it was typed (V, YU after L, or at the
    start after N); applied alike to stored keys and to queries, so 吕 LYU is found by lv,
    lu and lyu. (Inside a component NYU may be AN + YU, so it is left alone there.)"""
    component = component.replace("V", "U").replace("LYU", "LU")
    return "NU" + component[3:] if component.startswith("NYU") else component


def _letters(text: str) -> str:
    """Upper-case A-Z of ``text``: tone marks dropped, ü as V."""
    if not text.isascii():
        text = unicodedata.normalize("NFD", text).replace("u\u0308", "v").replace("U\u0308", "V")
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.upper().replace("U:", "V")
    return _NOT_LETTERS.sub("", text)


def _component_initials(alphabetic: str, ideographic: str) -> str:
    """Initials of one PN component: a letter per syllable, the syllables being as many as the
    Han characters it stands for."""
    han = [ch for ch in ideographic if has_han(ch)]
    letters = _letters(alphabetic)
    if not han:
        return "".join(word[0] for word in (_letters(w) for w in alphabetic.split()) if word)
    if not letters:
        return ""
    hint = [_letters(s) for s in lazy_pinyin("".join(han), style=Style.NORMAL, errors="ignore")]
    if len(hint) == len(han) and _loose_u("".join(hint)) == _loose_u(letters):
        return "".join(s[0] for s in hint if s)  # the stored pinyin is pypinyin's reading
    syllables = split_syllables(letters, len(han))
    if syllables is not None:  # a surname's own reading (单 SHAN), or the HIS's pinyin
        return "".join(s[0] for s in syllables)
    return letters[0] + "".join(s[0] for s in hint[1:] if s)


@lru_cache(maxsize=65536)
def name_keys(alphabetic: str, ideographic: str) -> NameKeys:
    """The search keys of a PN value's alphabetic and ideographic groups (PS3.5 6.2.1).

    >>> name_keys("ZHANG^SAN", "张^三")
    NameKeys(name='张三', pinyin='ZHANGSAN', initials='ZS')
    >>> name_keys("SHAN^TIANFANG", "单^田芳").initials
    'STF'
    >>> name_keys("LYU^XIAOMING", "吕^小明").pinyin
    'LUXIAOMING'
    """
    alpha = alphabetic.split("=")[0].split("^")
    ideo = ideographic.split("^") if ideographic else []
    name = _SEPARATORS.sub("", "".join(ideo))
    pinyin = "".join(_loose_u(_letters(part)) for part in alpha)
    initials = "".join(_component_initials(part, ideo[i] if i < len(ideo) else "") for i, part in enumerate(alpha))
    return NameKeys(name, pinyin, initials)


def phone_key(phone: str) -> str:
    """A phone number's digits, without China's country code before a mobile number.

    >>> phone_key("+86 138-0013-8000"), phone_key("(010) 6512 3456")
    ('13800138000', '01065123456')
    """
    digits = "".join(_DIGITS.findall(phone or ""))
    for prefix in ("00" + CHINA_COUNTRY_CODE, CHINA_COUNTRY_CODE):
        rest = digits[len(prefix):]
        if digits.startswith(prefix) and len(rest) == CHINA_MOBILE_DIGITS and rest.startswith("1"):
            return rest
    return digits


def fill_keys(patient: Any) -> None:
    """Set a patient's search keys from its name and phone (a registry row, ORM or record)."""
    keys = name_keys(patient.name_alphabetic or "", patient.name_ideographic or "")
    patient.search_name = keys.name
    patient.search_pinyin = keys.pinyin
    patient.search_initials = keys.initials
    patient.search_phone = phone_key(patient.phone or "")


@event.listens_for(Patient, "before_insert")
@event.listens_for(Patient, "before_update")
def _keys_before_flush(_mapper: Any, _connection: Any, patient: Patient) -> None:
    """Rows written through the ORM (a merge, an identifier change, a patient first seen in an
    image) get their keys as the service's own statements give them."""
    fill_keys(patient)


# --------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """What the text typed is looked up as."""

    text: str
    identifiers: tuple[str, ...] = ()
    national_ids: tuple[str, ...] = ()
    phone: str = ""
    han: str = ""  # a Han name prefix
    pinyin: str = ""  # a pinyin (or initials) prefix


def parse_query(text: str) -> Query:
    """Read what a registrar typed; :class:`BadQuery` if it is empty or too long.

    >>> parse_query(" zhang san ").pinyin
    'ZHANGSAN'
    >>> parse_query("110105198512031229").national_ids
    ('110105198512031229',)
    """
    text = (text or "").strip()
    if not text:
        raise BadQuery("type what to look for: an ID, a card or phone number, or a name (张三, zhangsan, zs)")
    if len(text) > MAX_QUERY_CHARS:
        raise BadQuery(f"the query has {len(text)} characters; at most {MAX_QUERY_CHARS} are looked up")
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise BadQuery("the query holds control characters; no name or identifier contains them")
    if has_han(text):
        han = _SEPARATORS.sub("", text)
        return Query(text, han=han)
    compact = "".join(text.split())
    identifiers = tuple(dict.fromkeys((compact, compact.upper(), compact.lower())))
    national = tuple(dict.fromkeys((compact.upper(), compact.lower()))) if NATIONAL_ID.fullmatch(compact) else ()
    phone = phone_key(text) if _PHONE_TEXT.fullmatch(text) else ""
    letters = ""
    if not any(ch.isdigit() for ch in text):
        letters = _loose_u(_letters(text))
    return Query(text, identifiers=identifiers, national_ids=national,
                 phone=phone if len(phone) >= MIN_PHONE_DIGITS else "", pinyin=letters)


CARD, NATIONAL = "card", "national_id"  # the values of codes/identifier_types.csv
DEFAULT_CARD_TYPES = ("HC",)  # HL7 table 0203: Health Card Number


@dataclass(frozen=True)
class IdentifierTypes:
    """Which identifier types (PID-3 CX.5, HL7 table 0203) are cards and which national IDs,
    from ``mappings/codes/identifier_types.csv``, in its order."""

    cards: tuple[str, ...] = DEFAULT_CARD_TYPES
    national: tuple[str, ...] = (NATIONAL_ID_TYPE,)

    @classmethod
    def of(cls, mappings: Any) -> IdentifierTypes:
        table = mappings.codes.get("identifier_types") if mappings is not None else None
        if table is None:
            return cls()
        return cls(cards=tuple(c for c, v in table.values.items() if v == CARD),
                   national=tuple(c for c, v in table.values.items() if v == NATIONAL))


@dataclass
class Found:
    """A patient the search found, with what the answer shows of it."""

    patient: dict[str, Any]  # the patient row's columns
    tier: Tier
    matched: Matched
    identifiers: list[dict[str, Any]] = field(default_factory=list)  # value, authority, type_code, active
    open_orders: int = 0
    last_seen: datetime | None = None


@dataclass
class _Candidate:
    id: int
    tier: Tier
    matched: Matched
    key: str = ""
    seen: datetime | None = None  # the newest order or visit change
    merged: bool = False  # merged into another patient (ADT A40), or not known not to be


def _prefix_range(column: Any, prefix: str) -> ColumnElement[bool]:
    """``column`` starts with ``prefix``, as a range its index answers (byte order)."""
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return (column >= prefix) & (column < upper)


# When each patient was last seen, read with the candidates themselves: one index lookup per row
# (ix_imaging_order_patient, ix_visit_patient) rather than a second statement with their ids.
_LAST_ORDER = select(func.max(ORDER.c.created_at)).where(ORDER.c.patient == PATIENT.c.id).scalar_subquery()
_LAST_VISIT = select(func.max(VISIT.c.updated_at)).where(VISIT.c.patient == PATIENT.c.id).scalar_subquery()
_OPEN_ORDERS = (select(func.count()).where(ORDER.c.patient == PATIENT.c.id,
                                           ORDER.c.status.in_([s.value for s in OPEN_ORDER_STATUSES]))
                .scalar_subquery())
_KEYS = (PATIENT.c.search_name, PATIENT.c.search_pinyin, PATIENT.c.search_initials)
_IDENTIFIER, _NATIONAL_ID, _PHONE = "identifier", "national_id", "phone"  # the exact branches' tags


def _newest(*moments: datetime | None) -> datetime | None:
    known = [m for m in moments if m is not None]
    return max(known) if known else None


def _branch(tag: str, key: Any, *where: Any, type_code: Any = None, join: Any = None, order: bool = False,
            limit: int = CANDIDATES) -> Any:
    """One way of matching, as a branch of the candidates' UNION ALL: (tag, id, key, merged_into,
    patient_id, type_code, last order, last visit) of at most ``limit`` patients."""
    statement = select(literal(tag).label("tag"), PATIENT.c.id, key.label("key"), PATIENT.c.merged_into,
                       PATIENT.c.patient_id, (type_code if type_code is not None else literal("")).label("type_code"),
                       _LAST_ORDER.label("last_order"), _LAST_VISIT.label("last_visit"))
    if join is not None:
        statement = statement.select_from(join)
    statement = statement.where(*where)
    if order:
        statement = statement.order_by(key)
    return select(statement.limit(limit).subquery())


def search(session: Session, query: Query, *, types: IdentifierTypes = IdentifierTypes(),
           limit: int = DEFAULT_LIMIT) -> list[Found]:
    """The patients ``query`` finds, best first, at most ``limit`` (see the module docstring).

    One statement finds the candidates of every kind of match (a UNION ALL: identifiers, national
    ID, phone, each name key's prefix range) with when each was last seen; one more, only for a
    prefix with more than :data:`CANDIDATES` patients, the recently seen among them; one the
    answer's rows and one their identifiers: a few round trips whatever was typed."""
    conn = session.connection()
    branches = []
    if query.identifiers:
        branches.append(_branch(_IDENTIFIER, IDENTIFIER.c.value, IDENTIFIER.c.value.in_(query.identifiers),
                                type_code=IDENTIFIER.c.type_code,
                                join=IDENTIFIER.join(PATIENT, PATIENT.c.id == IDENTIFIER.c.patient)))
    if query.national_ids:
        branches.append(_branch(_NATIONAL_ID, PATIENT.c.national_id, PATIENT.c.national_id.in_(query.national_ids)))
    if query.phone:
        branches.append(_branch(_PHONE, PATIENT.c.search_phone, PATIENT.c.search_phone == query.phone))
    ranges = {matched.value: (column, prefix, matched) for column, prefix, matched in (
        (PATIENT.c.search_name, query.han, Matched.NAME), (PATIENT.c.search_pinyin, query.pinyin, Matched.PINYIN),
        (PATIENT.c.search_initials, query.pinyin, Matched.INITIALS)) if prefix}
    for tag, (column, prefix, _matched) in ranges.items():
        branches.append(_branch(tag, column, _prefix_range(column, prefix), order=True, limit=CANDIDATES + 1))
    if not branches:
        return []
    rows = conn.execute(branches[0] if len(branches) == 1 else union_all(*branches)).all()

    candidates: dict[int, _Candidate] = {}

    def offer(candidate: _Candidate) -> None:
        known = candidates.get(candidate.id)
        if known is None or candidate.tier < known.tier:
            candidates[candidate.id] = candidate

    per_range: dict[str, list[Any]] = {}
    for row in rows:
        seen = _newest(row.last_order, row.last_visit)
        if row.tag in ranges:
            per_range.setdefault(row.tag, []).append(row)
            continue
        matched = Matched.NATIONAL_ID if row.tag == _NATIONAL_ID else Matched.PHONE if row.tag == _PHONE else (
            Matched.PATIENT_ID if row.key == row.patient_id else Matched.CARD if row.type_code.upper() in types.cards
            else Matched.NATIONAL_ID if row.type_code.upper() in types.national else Matched.IDENTIFIER)
        offer(_Candidate(row.id, Tier.EXACT, matched, seen=seen, merged=row.merged_into is not None))
    broad = []
    for tag, found in per_range.items():
        column, prefix, matched = ranges[tag]
        if len(found) > CANDIDATES:
            broad.append(ranges[tag])
        for row in sorted(found, key=lambda r: (r.key, r.id))[:CANDIDATES]:
            offer(_Candidate(row.id, Tier.NAME_EQUAL if row.key == prefix else Tier.NAME_PREFIX, matched, row.key,
                             _newest(row.last_order, row.last_visit), row.merged_into is not None))
    if broad:  # a broad prefix: the patients of the newest orders among its matches, exactly
        window = select(ORDER.c.patient, ORDER.c.created_at).order_by(ORDER.c.id.desc()).limit(RECENT_ORDERS) \
            .subquery()
        recent = select(window.c.patient, func.max(window.c.created_at).label("seen")) \
            .group_by(window.c.patient).subquery()
        for row in conn.execute(select(PATIENT.c.id, *_KEYS, PATIENT.c.merged_into, recent.c.seen)
                                .join(recent, recent.c.patient == PATIENT.c.id)
                                .where(or_(*(_prefix_range(column, prefix) for column, prefix, _ in broad)))):
            keys = dict(zip((c.name for c in _KEYS), row[1:4], strict=True))
            for column, prefix, matched in broad:
                key = keys[column.name]
                if key.startswith(prefix):
                    offer(_Candidate(row[0], Tier.NAME_EQUAL if key == prefix else Tier.NAME_PREFIX, matched, key,
                                     row[5], row[4] is not None))
    if not candidates:
        return []

    merged = [c.id for c in candidates.values() if c.merged]
    roots = _roots(conn, merged) if merged else {}
    best: dict[int, _Candidate] = {}
    moved: list[int] = []
    for candidate in candidates.values():
        root = roots.get(candidate.id, candidate.id)
        if root != candidate.id:  # shown as the patient it was merged into, seen as that one was
            candidate = _Candidate(root, candidate.tier, candidate.matched, candidate.key)
            moved.append(root)
        known = best.get(root)
        if known is None or candidate.tier < known.tier:
            best[root] = candidate
    if moved:
        activity = _activity(conn, moved)
        for root in moved:
            best[root].seen = activity.get(root, (None, 0))[0]

    def rank(c: _Candidate) -> tuple[Any, ...]:
        return (c.tier, 0 if c.seen is not None else 1, -(c.seen.timestamp() if c.seen else 0), c.key, c.id)

    chosen = [c.id for c in sorted(best.values(), key=rank)[:limit]]
    return _found(conn, chosen, best)


def _found(conn: Connection, ids: list[int], candidates: dict[int, _Candidate]) -> list[Found]:
    """The answer's rows for ``ids`` (patients not merged), in that order: two statements."""
    if not ids:
        return []
    columns = [PATIENT.c[name] for name in PATIENT_COLUMNS]
    rows_by_id = {row["id"]: dict(row) for row in conn.execute(
        select(*columns, _LAST_ORDER.label("last_order"), _LAST_VISIT.label("last_visit"),
               _OPEN_ORDERS.label("open_orders")).where(PATIENT.c.id.in_(ids))).mappings()}
    identifiers = _identifiers(conn, ids)
    out = []
    for row_id in ids:
        row = rows_by_id.get(row_id)
        if row is None:
            continue
        candidate = candidates[row_id]
        seen = _newest(row.pop("last_order"), row.pop("last_visit"))
        open_orders = int(row.pop("open_orders") or 0)
        out.append(Found(patient=row, tier=candidate.tier, matched=candidate.matched,
                         identifiers=identifiers.get(row_id, []), open_orders=open_orders, last_seen=seen))
    return out


def found_by_ids(session: Session, ids: Sequence[int], matched: Matched = Matched.IDENTIFIER) -> list[Found]:
    """:class:`Found` entries for known patients (merges followed), in the order given."""
    conn = session.connection()
    roots = _roots(conn, list(ids))
    order = list(dict.fromkeys(roots[i] for i in ids))
    return _found(conn, order, {i: _Candidate(i, Tier.EXACT, matched) for i in order})


def _roots(conn: Connection, ids: list[int]) -> dict[int, int]:
    """Each patient id → the id of the patient it was merged into, merges followed (ADT A40)."""
    root = {i: i for i in ids}
    frontier = set(ids)
    for _ in range(MAX_MERGE_HOPS):
        onward = dict(conn.execute(select(PATIENT.c.id, PATIENT.c.merged_into)
                                   .where(PATIENT.c.id.in_(sorted(frontier)), PATIENT.c.merged_into.is_not(None)))
                      .all())
        if not onward:
            break
        for start, current in root.items():
            if current in onward:
                root[start] = onward[current]
        frontier = set(onward.values())
    return root


def _activity(conn: Connection, ids: list[int]) -> dict[int, tuple[datetime | None, int]]:
    """Per patient: when it was last seen (its newest order, or a change of a visit) and how many
    of its orders are open (scheduled, arrived, in progress)."""
    out: dict[int, tuple[datetime | None, int]] = {}
    if not ids:
        return out
    open_orders = func.sum(case((ORDER.c.status.in_([s.value for s in OPEN_ORDER_STATUSES]), 1), else_=0))
    for patient, newest, count in conn.execute(
            select(ORDER.c.patient, func.max(ORDER.c.created_at), open_orders)
            .where(ORDER.c.patient.in_(ids)).group_by(ORDER.c.patient)):
        out[patient] = (newest, int(count or 0))
    for patient, changed in conn.execute(select(VISIT.c.patient, func.max(VISIT.c.updated_at))
                                         .where(VISIT.c.patient.in_(ids)).group_by(VISIT.c.patient)):
        seen, count = out.get(patient, (None, 0))
        if changed is not None and (seen is None or changed > seen):
            out[patient] = (changed, count)
    return out


PATIENT_COLUMNS = ("id", "patient_id", "issuer", "family_name", "given_name", "name_alphabetic",
                   "name_ideographic", "sex", "birth_date", "phone", "national_id", "merged_into")


def _identifiers(conn: Connection, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    if not ids:
        return out
    rows = conn.execute(select(IDENTIFIER.c.patient, IDENTIFIER.c.value, IDENTIFIER.c.authority,
                               IDENTIFIER.c.type_code, IDENTIFIER.c.active)
                        .where(IDENTIFIER.c.patient.in_(ids)).order_by(IDENTIFIER.c.id))
    for patient, value, authority, type_code, active in rows:
        out.setdefault(patient, []).append({"value": value, "authority": authority, "type_code": type_code,
                                            "active": bool(active)})
    return out


def age(birth: date | None, today: date) -> int | None:
    """Completed years on ``today`` (None without a birth date, or one after today).

    >>> age(date(1990, 3, 1), date(2026, 2, 28)), age(date(1990, 3, 1), date(2026, 3, 1))
    (35, 36)
    """
    if birth is None or birth > today:
        return None
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))

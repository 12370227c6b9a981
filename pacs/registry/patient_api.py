"""/api/patients: the registration desk finds patients as registrars type, and registers walk-ins.

- ``GET /api/patients?q=…&limit=20`` (``patients.read``): the registry's search
  (:mod:`pacs.registry.search`: IDs, cards, national ID, phone, the name in Hanzi, pinyin or
  pinyin initials); when the registry finds no one, the HIS is asked (IHE PDQ ITI-21 or PDQm
  ITI-78, :mod:`pacs.integration.pdq`) and the patients it knows are taken into the registry as
  an ADT^A28 of theirs would be. ``his=false`` keeps the search local (a page asking as each key
  is typed asks the HIS only when the registrar presses Enter).
- ``POST /api/patients`` (``patients.write``): a walk-in while the HIS cannot register them: a
  temporary ID (``[walk_in] prefix``, the day, a number: TMP202612070001) until the HIS's ADT
  A40 merges it into the patient it knows, orders and all.

Every search is audited as a Query (110112) naming the patients shown; a patient taken from the
HIS or registered here as a Patient Record (110110) created or updated, with the user's name.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import IntegrityError

from pacs.audit import Action, Event, codes, record
from pacs.auth.access import Principal, require
from pacs.auth.roles import Permission
from pacs.http import ServicesDep, SessionDep
from pacs.integration import pdq
from pacs.integration.mapping import Mappings
from pacs.registry import search, service
from pacs.registry.schemas import IdentifierIn, PatientIn
from pacs.server import Services

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/patients", tags=["patients"])

LOCAL, HIS = "local", "his"
SEXES = {"M": "M", "F": "F", "O": "O", "U": ""}  # asked → (0010,0040) CS kept ("" unknown: Type 2)
UNKNOWN_SEX = "U"
WALK_IN_ID_TYPE = "PI"  # HL7 table 0203: patient internal identifier
WALK_IN_DIGITS = 4  # the day's number in a temporary ID: TMP202612070001
MAX_NAME_CHARS = 64
MAX_AGE_YEARS = 150
PHONE_DIGITS = (5, 20)
# GB 11643-1999: the check character of an 18-character national ID (ISO 7064 MOD 11-2)
NATIONAL_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
NATIONAL_ID_CHECK = "10X98765432"
CARD_NUMBER = re.compile(r"[A-Za-z0-9-]{1,64}")
IMPORT_RETRIES = 2  # a patient taken from the HIS by two desks at once: the second one tries again


class IdentifierPublic(BaseModel):
    """One identifier the patient is known by (PID-3: CX.1, CX.4, CX.5)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    value: str
    """The identifier (CX.1)."""
    authority: str
    """Its assigning authority (CX.4), "" when none was sent."""
    type_code: str
    """Its type (CX.5, HL7 table 0203): PI, MR, HC (hospital card), NI (national ID) …"""
    active: bool
    """False for an identifier kept only as an alias: one replaced by an A47, or a merged
    patient's (A40), which still finds this patient."""


class PatientItem(BaseModel):
    """A patient as the registration desk shows it in its list of matches."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    id: int
    """The registry's key of the patient (a merged patient is shown as the one it was merged into)."""
    patient_id: str
    """The Patient ID (0010,0020) the PACS presents, as the HIS assigned it (or a temporary one)."""
    name: str
    """The name as written: Hanzi without separators (张三), else the Latin name (Smith John)."""
    pinyin: str
    """The name in pinyin, each part capitalised (Zhang San; Shan Tianfang for 单田芳); "" for a
    Latin name."""
    sex: str
    """M, F, O, or U when unknown."""
    birth_date: date | None
    """The birth date (0010,0030), if known."""
    age: int | None
    """Completed years today (in the hospital's time zone), if the birth date is known."""
    phone: str
    """The phone number as the HIS sent it (PID-13)."""
    national_id: str
    """The resident ID card number (居民身份证号码), if known."""
    card_numbers: list[str]
    """The patient's card numbers: active identifiers of a card type (``codes/identifier_types.csv``:
    HC hospital card, MC medical insurance card)."""
    identifiers: list[IdentifierPublic]
    """Every identifier the patient is known by, aliases included."""
    source: str
    """``local``: found in the registry; ``his``: found at the HIS by this search and taken into
    the registry."""
    open_orders: int
    """Orders of the patient still to be done: scheduled, arrived or in progress."""
    matched: str
    """What the query matched: patient_id, card, identifier, national_id, phone, name (Hanzi),
    pinyin or initials."""
    temporary: bool
    """Registered at the desk with a temporary ID, not yet merged into the HIS's patient."""


class HISAsked(BaseModel):
    """Whether the HIS was asked, and what came of it."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    asked: bool
    """True when the registry found no one and the HIS was asked (PDQ or PDQm)."""
    found: int
    """Patients the HIS answered with (each taken into the registry, listed in ``items``)."""
    error: str | None
    """Why the HIS could not answer (not reached, no answer within ``[his]
    query_timeout_seconds``, a refusal); the registry's answer stands."""


class SearchAnswer(BaseModel):
    """The patients a query finds, best first."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    items: list[PatientItem]
    """Exact identifier, card, national ID and phone matches first, then names equal to the
    query, then names starting with it; the most recently seen patient first within each."""
    his: HISAsked
    """The HIS's part in this answer."""


class WalkIn(BaseModel):
    """A patient the desk registers itself: the name (whole, or family and given name apart)
    and what the registrar can ask."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    name: str | None = None
    """The whole name as written (张三, 欧阳娜娜): split at the surname."""
    family_name: str | None = None
    """The family name (张), with ``given_name``, instead of ``name``."""
    given_name: str | None = None
    """The given name (三)."""
    pinyin: str | None = None
    """The pinyin name, when the patient's own differs from what pypinyin reads (ZENG^GUOFAN)."""
    sex: str = UNKNOWN_SEX
    """M, F, O or U (unknown)."""
    birth_date: date | None = None
    """Not after today."""
    phone: str = ""
    """Digits, with + - ( ) and spaces as people write them."""
    national_id: str = ""
    """The resident ID card number: 18 characters with a valid check character (or 15 digits);
    one the registry already holds is refused (409), naming its patient."""
    card_number: str = ""
    """A hospital card handed out at the desk (kept as an identifier of the first card type)."""
    temporary: bool = True
    """The desk registers walk-ins with a temporary ID only (the HIS gives the lasting one)."""


Searcher = Annotated[Principal, Depends(require(Permission.PATIENTS_READ))]
Registrar = Annotated[Principal, Depends(require(Permission.PATIENTS_WRITE))]


@router.get("", response_model=SearchAnswer)
def find_patients(request: Request, response: Response, session: SessionDep, services: ServicesDep,
                  principal: Searcher,
                  q: Annotated[str, Query(description="what the registrar typed: an ID, a card, national ID or "
                                                      "phone number, a name in Hanzi, pinyin or initials")] = "",
                  limit: Annotated[int, Query(ge=1, le=search.MAX_LIMIT)] = search.DEFAULT_LIMIT,
                  his: Annotated[bool, Query(description="ask the HIS when the registry finds no one")] = True,
                  ) -> SearchAnswer:
    """Find patients by what the registrar typed; the HIS too, when the registry has no one."""
    started = time.perf_counter()
    try:
        query = search.parse_query(q)
    except search.BadQuery as exc:
        raise HTTPException(400, str(exc)) from None
    mappings = services.mappings.current()
    types = search.IdentifierTypes.of(mappings)
    found = search.search(session, query, types=types, limit=limit)
    local_ms = (time.perf_counter() - started) * 1000
    source, asked, answer = LOCAL, HISAsked(asked=False, found=0, error=None), None
    demographics = pdq.PatientDemographics(services.settings)
    terms = pdq.terms_for(query.text, han=query.han, identifier=bool(query.identifiers), names=mappings.names) \
        if not found and his and demographics.configured else None
    his_ms = 0.0
    if terms is not None:
        asked.asked = True
        his_started = time.perf_counter()
        try:
            answer = demographics.ask(terms, mappings, limit=limit)
        except pdq.HISUnavailable as exc:
            asked.error = str(exc)
            log.warning("patient search: %s", exc)
        his_ms = (time.perf_counter() - his_started) * 1000
        if answer is not None and answer.patients:
            asked.found = len(answer.patients)
            found, source = _take_in(services, mappings, answer, principal, types), HIS
    today = datetime.now(services.settings.zone).date()
    items = [_item(f, types, today, source, services.settings.walk_in.prefix) for f in found]
    _audit_search(services, request, principal, query.text, items, asked, answer)
    response.headers["Cache-Control"] = "no-store"
    timing = f"search;dur={local_ms:.1f}" + (f", his;dur={his_ms:.1f}" if asked.asked else "")
    response.headers["Server-Timing"] = timing
    return SearchAnswer(items=items, his=asked)


@router.post("", response_model=PatientItem, status_code=201)
def register_walk_in(body: WalkIn, request: Request, response: Response, services: ServicesDep,
                     principal: Registrar) -> PatientItem:
    """Register a walk-in with a temporary ID (TMP202612070001); 400 for what cannot be a
    patient, 409 when the national ID or card already belongs to one (named)."""
    settings = services.settings
    today = datetime.now(settings.zone).date()
    family, given, national_id, sex = _checked(body, today)
    mappings = services.mappings.current()
    types = search.IdentifierTypes.of(mappings)
    card = body.card_number.strip()
    extra = [IdentifierIn(value=card, type_code=types.cards[0] if types.cards else "")] if card else []
    ctx = service.Context(by=f"user:{principal.name or 'desk'}", names=mappings.names, uid_root=settings.uid_root,
                          accession_prefix=settings.accession_prefix)
    with services.db.session() as session:
        day = today.strftime("%Y%m%d")
        number = service.next_number(session, f"walk_in:{day}")
        temporary = IdentifierIn(value=f"{settings.walk_in.prefix}{day}{number:0{WALK_IN_DIGITS}d}",
                                 authority=settings.walk_in.authority, type_code=WALK_IN_ID_TYPE)
        data = PatientIn(identifiers=[temporary, *extra], patient_id=temporary, family_name=family,
                         given_name=given, name_pinyin=(body.pinyin or "").strip() or None, sex=SEXES[sex],
                         birth_date=body.birth_date, phone=body.phone.strip(), national_id=national_id)
        try:
            patient = service.create_patient(session, data, ctx)
        except service.RegistryError as exc:
            raise HTTPException(409 if exc.problem == service.Problem.DUPLICATE else 400, str(exc)) from None
        record(session, Event(codes.PATIENT_RECORD, Action.CREATE, user=principal.name, user_kind=principal.kind,
                              address=_address(request), patients=[patient.patient_id],
                              description=f"walk-in registered at the desk with temporary ID {patient.patient_id}",
                              details={"temporary": True}))
        found = search.found_by_ids(session, [patient.id], search.Matched.PATIENT_ID)
    request.state.audited = True
    response.headers["Location"] = f"/api/patients?q={found[0].patient['patient_id']}"
    return _item(found[0], types, today, LOCAL, settings.walk_in.prefix)


# --------------------------------------------------------------------------------------------


def _take_in(services: Services, mappings: Mappings, answer: pdq.Answer, principal: Principal,
             types: search.IdentifierTypes) -> list[search.Found]:
    """The HIS's patients into the registry (as their ADT^A28 would create or update them),
    audited; the registry's view of them afterwards."""
    settings = services.settings
    ctx = service.Context(by=f"pdq:{answer.source}#{answer.query_tag}", names=mappings.names,
                          uid_root=settings.uid_root, accession_prefix=settings.accession_prefix)
    for attempt in range(IMPORT_RETRIES):
        try:
            with services.db.session() as session:
                ids, events = [], []
                for data in answer.patients:
                    try:
                        patient, created = service.upsert_patient(session, data, ctx)
                    except service.RegistryError as exc:  # identifiers of two of ours: left for a person
                        log.warning("patient from the HIS not taken in: %s", exc)
                        continue
                    ids.append(patient.id)
                    events.append(Event(codes.PATIENT_RECORD, Action.CREATE if created else Action.UPDATE,
                                        user=principal.name, user_kind=principal.kind, patients=[patient.patient_id],
                                        description=f"patient {patient.patient_id} taken from the HIS "
                                                    f"({answer.transaction}) for a desk search",
                                        details=pdq.describe(answer)))
                for event in events:
                    record(session, event)
                return search.found_by_ids(session, ids)
        except IntegrityError:  # another desk took the same patient in at the same moment
            if attempt + 1 == IMPORT_RETRIES:
                raise
    return []


def _item(found: search.Found, types: search.IdentifierTypes, today: date, source: str,
          walk_in_prefix: str) -> PatientItem:
    p = found.patient
    ideographic = [part for part in (p["name_ideographic"] or "").split("^") if part]
    alphabetic = [part for part in (p["name_alphabetic"] or "").split("^") if part]
    identifiers = [IdentifierPublic(**i) for i in found.identifiers]
    temporary = bool(walk_in_prefix) and any(
        i.active and i.value == p["patient_id"] and i.type_code == WALK_IN_ID_TYPE for i in identifiers) \
        and p["patient_id"].startswith(walk_in_prefix)
    return PatientItem(
        id=p["id"], patient_id=p["patient_id"],
        name="".join(ideographic) if ideographic else " ".join(alphabetic),
        pinyin=" ".join(part.capitalize() for part in alphabetic) if ideographic else "",
        sex=p["sex"] or UNKNOWN_SEX, birth_date=p["birth_date"], age=search.age(p["birth_date"], today),
        phone=p["phone"], national_id=p["national_id"],
        card_numbers=[i.value for i in identifiers if i.active and i.type_code.upper() in types.cards],
        identifiers=identifiers, source=source, open_orders=found.open_orders, matched=found.matched.value,
        temporary=temporary,
    )


def _checked(body: WalkIn, today: date) -> tuple[str, str, str, str]:
    """(family, given, national ID, sex) of a walk-in, or 400 with what is wrong."""
    if not body.temporary:
        raise HTTPException(400, "the desk registers walk-ins with a temporary ID only; the HIS registers "
                                 "patients for good (search for them: the HIS is asked)")
    whole = (body.name or "").strip()
    family, given = (body.family_name or "").strip(), (body.given_name or "").strip()
    if whole and (family or given):
        raise HTTPException(400, "give the name whole (name) or in parts (family_name, given_name), not both")
    if whole:
        family = whole
    if not (family or given):
        raise HTTPException(400, "the name is empty: type the patient's name")
    if not family:
        raise HTTPException(400, "the family name is empty")
    if len(family) + len(given) > MAX_NAME_CHARS:
        raise HTTPException(400, f"the name has more than {MAX_NAME_CHARS} characters")
    if any(not ch.isprintable() or ch in "^=\\|~&" for ch in family + given):
        raise HTTPException(400, "the name holds control characters or one of ^ = \\ | ~ &")
    sex = body.sex.strip().upper() or UNKNOWN_SEX
    if sex not in SEXES:
        raise HTTPException(400, f"sex {body.sex!r} is not one of M, F, O, U")
    if body.birth_date is not None:
        if body.birth_date > today:
            raise HTTPException(400, f"the birth date {body.birth_date.isoformat()} is after today")
        if body.birth_date < today - timedelta(days=366 * MAX_AGE_YEARS):
            raise HTTPException(400, f"the birth date {body.birth_date.isoformat()} is more than "
                                     f"{MAX_AGE_YEARS} years ago")
    phone = body.phone.strip()
    digits = sum(ch.isdigit() for ch in phone)
    if phone and (not search.phone_key(phone) or any(not (ch.isdigit() or ch in "+-() ") for ch in phone)
                  or not PHONE_DIGITS[0] <= digits <= PHONE_DIGITS[1]):
        raise HTTPException(400, f"phone {phone!r} is not a phone number: {PHONE_DIGITS[0]} to "
                                 f"{PHONE_DIGITS[1]} digits, with + - ( ) and spaces")
    national_id = _national_id(body.national_id.strip().upper(), body.birth_date)
    card = body.card_number.strip()
    if card and not CARD_NUMBER.fullmatch(card):
        raise HTTPException(400, f"card number {card[:80]!r} is not one: up to 64 letters, digits and hyphens")
    if body.pinyin and (len(body.pinyin) > MAX_NAME_CHARS or not body.pinyin.isprintable()):
        raise HTTPException(400, f"the pinyin name is longer than {MAX_NAME_CHARS} characters or holds control "
                                 "characters")
    return family, given, national_id, sex


def _national_id(value: str, birth_date: date | None) -> str:
    """A resident ID card number checked as GB 11643-1999 defines it, or 400 saying what is wrong."""
    if not value:
        return ""
    if not search.NATIONAL_ID.fullmatch(value):
        raise HTTPException(400, f"national ID {value!r} is not 18 characters (17 digits and a digit or X) "
                                 "or 15 digits")
    if len(value) == 15:
        return value
    check = NATIONAL_ID_CHECK[sum(int(d) * w for d, w in zip(value, NATIONAL_ID_WEIGHTS, strict=False)) % 11]
    if value[-1] != check:
        raise HTTPException(400, f"national ID {value}: its last character should be {check}; "
                                 "a digit was mistyped")
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise HTTPException(400, f"national ID {value}: {value[6:14]} is not a date of birth") from None
    if birth_date is not None and born != birth_date:
        raise HTTPException(400, f"national ID {value} says born {born.isoformat()}, "
                                 f"the birth date says {birth_date.isoformat()}")
    return value


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def _audit_search(services: Services, request: Request, principal: Principal, text: str,
                  items: list[PatientItem], asked: HISAsked, answer: pdq.Answer | None) -> None:
    """One Query entry (110112) per search, naming the patients shown: who looked for whom."""
    request.state.audited = True
    if services.audit is None:
        return
    details: dict[str, Any] = {"service": "patient search", "query": text, "found": len(items)}
    if asked.asked:
        details["his"] = {**pdq.describe(answer), "error": asked.error}
    services.audit.record(Event(codes.QUERY, Action.EXECUTE, user=principal.name, user_kind=principal.kind,
                                address=_address(request), patients=[i.patient_id for i in items],
                                description=f"patient search {text!r}: {len(items)} found"
                                            + (" at the HIS" if items and items[0].source == HIS else ""),
                                details=details))

"""The phrase library (常用语): the department's phrases from the mappings
(``report_phrases.yaml``) and each radiologist's own (:class:`~pacs.reporting.models.ReportPhrase`).

A phrase has an abbreviation (``jyfc``: the initials of its pinyin, as radiologists type them),
a title and the text inserted. The department's are listed by modality (``CT``, ``MR``…) and
under ``"*"`` for every modality::

    "*":
      - {abbreviation: jyfc, title: 建议复查, text: 建议定期复查。}
    CT:
      - {abbreviation: fwzc, title: 肺纹理正常, text: 双肺纹理清晰，走行自然。}

``pacs mappings check`` reports a problem as ``file:line: what``; a file with problems offers no
department phrases until it is fixed (each radiologist's own stay).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from pacs.integration.mapping import Problems, read_mapping
from pacs.reporting.models import ReportPhrase

FILE_NAME = "report_phrases.yaml"
PHRASE_KEYS = {"abbreviation", "title", "text"}
ABBREVIATION = re.compile(r"^[a-z0-9]{1,16}$")
MODALITY = re.compile(r"^([A-Z]{2,4}|\*)$")
EVERY_MODALITY = "*"
MAX_TEXT = 2000


@dataclass(frozen=True)
class Phrase:
    abbreviation: str
    title: str
    text: str
    modality: str = ""  # "" for every modality
    id: int | None = None  # a user's own; None for the department's

    def public(self) -> dict[str, Any]:
        return asdict(self)


def load_report_phrases(mappings_dir: Path) -> tuple[dict[str, list[Phrase]], list[str]]:
    """The department's phrases by modality (``"*"``: every one), and each problem."""
    path = Path(mappings_dir) / FILE_NAME
    problems = Problems()
    if not path.exists():
        return {}, problems
    data = read_mapping(path, problems, f"{FILE_NAME} maps a modality (or \"*\") to a list of phrases")
    if data is None:
        return {}, problems
    found: dict[str, list[Phrase]] = {}
    for modality, entries in data.items():
        where = getattr(entries, "line", 1)
        if not MODALITY.match(modality):
            problems.add(path, where, f"{modality!r} is not a modality (CT, MR, DX…) or \"*\" for every one")
            continue
        if not isinstance(entries, list):
            problems.add(path, where, f"{modality}: a list of phrases, each with abbreviation, title and text")
            continue
        seen: set[str] = set()
        phrases = []
        for number, entry in enumerate(entries, 1):
            at = getattr(entry, "line", where)
            label = f"{modality} phrase {number}"
            if not isinstance(entry, dict):
                problems.add(path, at, f"{label}: a mapping with abbreviation, title and text")
                continue
            for unknown in sorted(set(entry) - PHRASE_KEYS):
                problems.add(path, at, f"{label}: unknown key {unknown!r} (known: {', '.join(sorted(PHRASE_KEYS))})")
            abbreviation = str(entry.get("abbreviation") or "").strip()
            text = str(entry.get("text") or "").strip()
            if not ABBREVIATION.match(abbreviation):
                problems.add(path, at, f"{label}: abbreviation is 1 to 16 lower-case letters or digits "
                                       f"(the pinyin initials: jyfc), not {abbreviation!r}")
            elif abbreviation in seen:
                problems.add(path, at, f"{label}: abbreviation {abbreviation!r} is listed twice under {modality}")
            seen.add(abbreviation)
            if not text:
                problems.add(path, at, f"{label}: text is what the phrase inserts")
            phrases.append(Phrase(abbreviation=abbreviation, title=str(entry.get("title") or text[:20]).strip(),
                                  text=text, modality="" if modality == EVERY_MODALITY else modality))
        found[modality] = phrases
    return ({} if problems else found), problems


def department(phrases: dict[str, list[Phrase]], modality: str) -> list[Phrase]:
    """The department's phrases for ``modality``: its own first, then those for every modality."""
    return [*phrases.get(modality.upper(), []), *phrases.get(EVERY_MODALITY, [])] if modality else \
        [p for items in phrases.values() for p in items]


def own(session: Session, owner: str, modality: str = "") -> list[Phrase]:
    """A radiologist's own phrases (those for ``modality`` and for every modality)."""
    query = select(ReportPhrase).where(ReportPhrase.owner == owner)
    if modality:
        query = query.where(col(ReportPhrase.modality).in_(["", modality.upper()]))
    return [Phrase(abbreviation=p.abbreviation, title=p.title, text=p.text, modality=p.modality, id=p.id)
            for p in session.exec(query.order_by(col(ReportPhrase.abbreviation)))]


class PhraseRefused(ValueError):
    """A phrase that cannot be kept; the message says why."""


def add(session: Session, owner: str, *, abbreviation: str, title: str, text: str, modality: str = "") -> ReportPhrase:
    """Keep a phrase of ``owner``'s; refused when its abbreviation is taken or its text empty."""
    abbreviation = abbreviation.strip().lower()
    if not ABBREVIATION.match(abbreviation):
        raise PhraseRefused(f"the abbreviation is 1 to 16 lower-case letters or digits, not {abbreviation!r}")
    if not text.strip() or len(text) > MAX_TEXT:
        raise PhraseRefused(f"the text is what the phrase inserts: 1 to {MAX_TEXT} characters")
    modality = modality.strip().upper()
    if modality and not MODALITY.match(modality):
        raise PhraseRefused(f"{modality!r} is not a modality (CT, MR, DX…); leave it empty for every one")
    taken = session.exec(select(ReportPhrase).where(ReportPhrase.owner == owner,
                                                    ReportPhrase.abbreviation == abbreviation)).first()
    if taken is not None:
        raise PhraseRefused(f"you already have a phrase {abbreviation!r} ({taken.title}); delete it first")
    phrase = ReportPhrase(owner=owner, abbreviation=abbreviation, title=title.strip() or text.strip()[:20],
                          text=text.strip(), modality=modality)
    session.add(phrase)
    session.flush()
    return phrase


def remove(session: Session, owner: str, phrase_id: int) -> bool:
    phrase = session.get(ReportPhrase, phrase_id)
    if phrase is None or phrase.owner != owner:
        return False
    session.delete(phrase)
    return True

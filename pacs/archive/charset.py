"""Which character set an answer goes out in, and text for modalities that read only ASCII.

PS3.5 6.1: without Specific Character Set (0008,0005) a value is in the default repertoire
(ASCII); ISO_IR 100 is Latin-1. A modality that asks in ISO_IR 192 (UTF-8) or GB18030 can show
Chinese and gets every PN component group; one that asks in neither gets the alphabetic group
(pinyin) alone and ASCII text, so a Latin-only console shows a readable name that nobody has to
type again. A peer's `charset` in the config file fixes what it gets, whatever it asks.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from pacs.integration.names import NameRules, person_name
from pacs.registry.models import Patient

UNICODE = "ISO_IR 192"
GB18030 = "GB18030"
FULL_REPERTOIRES = {UNICODE, GB18030, "GBK"}


def answer_charset(query_charset: object, peer_charset: str | None = None) -> str | None:
    """The Specific Character Set to answer in: ISO_IR 192, GB18030, or None for ASCII only."""
    if peer_charset:
        chosen = peer_charset.strip().upper()
        return _canonical(chosen)
    values = query_charset if isinstance(query_charset, (list, tuple)) else [query_charset]
    for value in values:
        if value and str(value).strip().upper() in FULL_REPERTOIRES:
            return _canonical(str(value).strip().upper())
    return None


def _canonical(value: str) -> str | None:
    if value in (UNICODE, "UTF-8", "UTF8"):
        return UNICODE
    if value in (GB18030, "GBK", "GB 18030"):
        return GB18030
    return None  # ISO_IR 100, ISO_IR 6, "" and anything else: ASCII answers


@lru_cache(maxsize=4096)
def ascii_text(value: str) -> str:
    """A text value for an ASCII-only answer: Han characters as upper-case pinyin (ü as YU, as
    GB/T 28039 writes it), accents stripped from Latin letters, anything else dropped
    (胸部CT平扫 → XIONG BU CT PING SAO; Müller → Muller)."""
    if value.isascii():
        return value
    from pypinyin import Style, lazy_pinyin

    out: list[str] = []
    for word in lazy_pinyin(value, style=Style.NORMAL, errors="default", v_to_u=True):
        if any("\u4e00" <= c <= "\u9fff" for c in value) and word.isalpha() and word.lower() == word and (
                word not in value):
            out.append(" " + word.replace("ü", "yu").upper() + " ")  # a syllable pypinyin produced
        else:
            decomposed = unicodedata.normalize("NFKD", word)
            out.append("".join(c for c in decomposed if c.isascii()))
    return " ".join("".join(out).split())


class Answer:
    """Values of one C-FIND answer in its character set: everything for a modality that reads
    Unicode or GB 18030, pinyin and ASCII text for one that does not."""

    def __init__(self, charset: str | None, names: NameRules) -> None:
        self.charset = charset
        self.names = names

    def text(self, value: str) -> str:
        return value if self.charset else ascii_text(value)

    def person(self, value: str) -> str:
        """A stored PN (as sent: family^given, possibly Han, or already in groups) in the answer's form."""
        if not value:
            return ""
        if "=" in value:  # PN groups as a modality sent them
            return value if self.charset else value.split("=")[0]
        parts = value.split("^")
        name = person_name(parts[0], parts[1] if len(parts) > 1 else "", rules=self.names)
        return name.to_dicom(ascii_only=self.charset is None)

    def patient_name(self, patient: Patient) -> str:
        if self.charset is None:
            return patient.name_alphabetic
        groups = [patient.name_alphabetic, patient.name_ideographic, patient.name_phonetic]
        while len(groups) > 1 and not groups[-1]:
            groups.pop()
        return "=".join(groups)

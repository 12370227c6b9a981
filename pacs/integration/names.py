"""Person names → DICOM PN (PS3.5 6.2.1), with pinyin for Chinese names.

A PN value has up to three component groups separated by ``=``: alphabetic, ideographic and
phonetic; each group has up to five components separated by ``^``: family, given, middle,
prefix, suffix. A Chinese name becomes pinyin in the alphabetic group and Han characters in the
ideographic group (``ZHANG^SAN=张^三``); a Latin name is the alphabetic group alone, kept as
sent.

Hospital information systems often send the whole Chinese name in one HL7 component
(PID-5.1 = ``张三``). It is split here: on a space or a middle dot when there is one, else on the
longest compound surname in ``mappings/names/surnames.csv``, else after the first character.
That table also gives each surname its reading as a surname (单 SHAN, 曾 ZENG, 尉迟 YUCHI), which
plain pypinyin gets wrong; the given name is read with pypinyin's phrase-aware conversion, with
a few characters given their usual reading in names (`GIVEN_NAME_READINGS`).

ü is written as configured (GB/T 28039-2011 and passports write LYU/NYU; the alternative is
LV/NV); after J, Q, X and Y it is written U in both styles.

Example
-------
>>> rules = NameRules({"单": "SHAN", "欧阳": "OUYANG"})
>>> person_name("单田芳", rules=rules).to_dicom(ascii_only=False)
'SHAN^TIANFANG=单^田芳'
>>> person_name("欧阳娜娜", rules=rules).alphabetic
'OUYANG^NANA'
>>> person_name("Smith^John", rules=rules).to_dicom(ascii_only=True)
'Smith^John'
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from pypinyin import Style
from pypinyin.contrib.tone_convert import to_normal
from pypinyin.converter import DefaultConverter
from pypinyin.core import Pinyin
from pypinyin.pinyin_dict import pinyin_dict as _PYPINYIN_SINGLE

__all__ = [
    "NameRules",
    "PersonName",
    "UUmlautStyle",
    "check_name_tables",
    "has_han",
    "load_overrides",
    "person_name",
    "split_syllables",
]

UUmlautStyle = Literal["yu", "v"]
U_UMLAUT_STYLES: tuple[str, ...] = ("yu", "v")

SURNAMES_FILE = Path("names") / "surnames.csv"
OVERRIDES_FILE = Path("names") / "overrides.csv"
SURNAME_COLUMNS = ("surname", "pinyin", "comment")
OVERRIDE_COLUMNS = ("patient_id", "alphabetic", "comment")

COMPONENT_SEPARATOR = "^"  # PS3.5 6.2.1: between family, given, middle, prefix, suffix
GROUP_SEPARATOR = "="  # PS3.5 6.2.1: between the alphabetic, ideographic, phonetic groups
MAX_COMPONENTS = 5  # PS3.5 6.2.1: family^given^middle^prefix^suffix
MAX_SURNAME_CHARS = 4  # 爱新觉罗 is the longest surname worth listing

# Han ideographs: CJK Unified Ideographs with Extension A, the compatibility block,
# Extensions B to H, and 〇 (used in names, read LING).
_HAN_CLASS = "\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_HAN = re.compile(f"[{_HAN_CLASS}]")
_ALL_HAN = re.compile(f"[{_HAN_CLASS}]+")
# Separators between the parts of transliterated names (阿依古丽·买买提): the middle dot
# and the look-alikes input methods produce.
_DOTS = "·•‧∙・･."
_NAME_DOTS = re.compile(f"\\s*[{re.escape(_DOTS)}]+\\s*")
_PINYIN_WORD = re.compile(r"[A-Z]+")
_SENT_PINYIN = re.compile(r"[A-Z ^,]+")

# Full-width ASCII and the ideographic space become ASCII; control characters and the PN
# value delimiter "\" (PS3.5 6.2) are dropped.
_CLEAN_TABLE: dict[int, str | None] = {
    code: chr(code - 0xFEE0) for code in range(0xFF01, 0xFF5F)
}
_CLEAN_TABLE.update({0x3000: " ", ord("\\"): None, 0x7F: None})
_CLEAN_TABLE.update({code: None for code in range(0x20)})

# Characters whose usual reading in a given name is not pypinyin's single-character default.
# Only applied where pypinyin found no phrase (长江 stays CHANGJIANG by its phrase anyway).
GIVEN_NAME_READINGS: Mapping[str, str] = MappingProxyType(
    {
        "长": "chang",  # 王长林: CHANGLIN (pypinyin alone: zhang)
        "卜": "bu",  # 阿卜杜拉: ABUDULA (pypinyin alone: bo, as in 萝卜)
        "晟": "sheng",  # 张晟: SHENG (pypinyin alone: cheng, the surname reading)
        "伽": "jia",  # 伽 in names as in 瑜伽 (pypinyin alone: ga, as in 伽马)
    }
)

# ASCII stand-ins for letters NFKD does not decompose (for ascii_only PN values).
_ASCII_FALLBACK = str.maketrans(
    {"ß": "ss", "Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "Đ": "D", "đ": "d", "Ł": "L",
     "ł": "l", "Œ": "OE", "œ": "oe", "Þ": "TH", "þ": "th", "ı": "i"}
)


@dataclass(frozen=True)
class PersonName:
    """A person name in the three PN component groups (PS3.5 6.2.1)."""

    family: str
    """Family name as written (Han characters for Chinese names)."""
    given: str
    alphabetic: str
    """PN alphabetic group, e.g. ``ZHANG^SAN``."""
    ideographic: str
    """PN ideographic group, e.g. ``张^三``; empty for Latin-only names."""
    phonetic: str = ""
    """PN phonetic group (unused for Chinese names)."""

    def to_dicom(self, *, ascii_only: bool) -> str:
        """The PN value; trailing empty groups dropped (PS3.5 6.2.1).

        ``ascii_only`` gives the alphabetic group alone, in ASCII, for peers limited to the
        default character repertoire (ISO-IR 6).

        >>> PersonName("张", "三", "ZHANG^SAN", "张^三").to_dicom(ascii_only=False)
        'ZHANG^SAN=张^三'
        >>> PersonName("张", "三", "ZHANG^SAN", "张^三").to_dicom(ascii_only=True)
        'ZHANG^SAN'
        """
        if ascii_only:
            return _to_ascii(self.alphabetic)
        groups = [self.alphabetic, self.ideographic, self.phonetic]
        while groups and not groups[-1]:
            groups.pop()
        return GROUP_SEPARATOR.join(groups)


class NameRules:
    """The surname table and the ü style.

    Parameters
    ----------
    surnames
        Surname (Han characters) → its pinyin as a surname, upper case without tones; ü is
        written V (吕 LV, 闾丘 LVQIU). A one-syllable LYU/NYU/LYUE/NYUE is accepted for it.
    u_umlaut
        ``"yu"`` writes ü after L and N as YU (GB/T 28039-2011: 吕 LYU), ``"v"`` as V (LV).
    """

    def __init__(self, surnames: Mapping[str, str], *, u_umlaut: UUmlautStyle = "yu") -> None:
        if u_umlaut not in U_UMLAUT_STYLES:
            raise ValueError(f"u_umlaut must be 'yu' or 'v', not {u_umlaut!r}")
        table: dict[str, str] = {}
        bad: list[str] = []
        for surname, reading in surnames.items():
            surname = surname.strip()
            reading = _surname_reading_v_form(reading.strip().upper())
            if not _ALL_HAN.fullmatch(surname) or not _PINYIN_WORD.fullmatch(reading):
                bad.append(f"{surname}={reading}")
            table[surname] = reading
        if bad:
            raise ValueError(
                "surnames must be Han characters and readings A-Z without tones: "
                + ", ".join(bad)
            )
        self.u_umlaut: UUmlautStyle = u_umlaut
        self.surnames: Mapping[str, str] = MappingProxyType(table)
        self._readings = {s: _render_table_reading(r, u_umlaut) for s, r in table.items()}
        self._compound_lengths = sorted({len(s) for s in table if len(s) > 1}, reverse=True)

    @classmethod
    def load(cls, mappings_dir: Path, *, u_umlaut: UUmlautStyle = "yu") -> NameRules:
        """Read ``mappings_dir/names/surnames.csv``.

        Rows with problems are skipped and a missing file gives an empty table, so that a
        half-edited file never stops the engine; `check_name_tables` reports them all.
        """
        surnames, _ = _read_surnames(Path(mappings_dir) / SURNAMES_FILE)
        return cls(surnames, u_umlaut=u_umlaut)

    def split_whole_name(self, name: str) -> tuple[str, str]:
        """Split a Chinese name sent in one piece into (family, given).

        The longest compound surname in the table wins, provided a given name remains
        (钟离 alone is 钟^离); otherwise the first character is the family name.
        """
        for length in self._compound_lengths:
            if len(name) > length and name[:length] in self._readings:
                return name[:length], name[length:]
        return name[:1], name[1:]

    def family_pinyin(self, family: str) -> str:
        """The family name in pinyin, upper case: from the table, else character by character."""
        reading = self._readings.get(family)
        if reading is not None:
            return reading
        parts = []
        for char in family:
            reading = self._readings.get(char)
            parts.append(reading if reading is not None else _pinyin(char, self.u_umlaut))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"NameRules({len(self.surnames)} surnames, u_umlaut={self.u_umlaut!r})"


def person_name(
    family: str,
    given: str = "",
    *,
    pinyin: str | None = None,
    override: str | None = None,
    rules: NameRules,
) -> PersonName:
    """Build the PN groups for a name as the HIS sent it.

    Parameters
    ----------
    family, given
        As sent (HL7 XPN.1 and XPN.2). ``given`` may be empty when the whole name is in
        ``family`` (``张三``); ``family`` may also hold a whole PN-style value (``Smith^John``,
        ``ZHANG^SAN=张^三``). A name sent split (``张``, ``三``) stays split.
    pinyin
        The pinyin name the HIS sent, if any (``ZHANG^SAN``, ``Zhang San``, ``zhang san``);
        used, normalised to upper-case FAMILY^GIVEN, instead of generating one. Ignored when it
        is not Latin letters or lacks a given name the Han name has.
    override
        An alphabetic group decided by an analyst for this patient (overrides.csv); wins over
        everything else.
    rules
        Surname table and ü style.

    Never raises on odd input: empty, digits, mixed scripts give a best-effort name.

    >>> rules = NameRules({"曾": "ZENG"})
    >>> person_name("曾", "国藩", rules=rules)
    PersonName(family='曾', given='国藩', alphabetic='ZENG^GUOFAN', ideographic='曾^国藩', phonetic='')
    """
    family = (family or "").translate(_CLEAN_TABLE).strip()
    given = (given or "").translate(_CLEAN_TABLE).strip()
    sent_pinyin = pinyin

    if GROUP_SEPARATOR in family:
        # A whole PN value: the ideographic group is the name, the alphabetic one its pinyin.
        groups = family.split(GROUP_SEPARATOR)
        ideographic_sent = groups[1].strip() if len(groups) > 1 else ""
        if _HAN.search(ideographic_sent):
            family = ideographic_sent
            if sent_pinyin is None:
                sent_pinyin = groups[0]
        else:
            family = groups[0].strip()
    given = given.replace(GROUP_SEPARATOR, " ").replace(COMPONENT_SEPARATOR, " ").strip()

    if COMPONENT_SEPARATOR in family:
        components = [part.strip() for part in family.split(COMPONENT_SEPARATOR)]
        components += [""] * (2 - len(components))
        components = components[:MAX_COMPONENTS]
        if given:
            components[1] = given
    else:
        components = [family, given]

    if not (_HAN.search(components[0]) or _HAN.search(components[1])):
        return _latin_name(components, sent_pinyin, override, rules)
    return _chinese_name(components, sent_pinyin, override, rules)


def load_overrides(mappings_dir: Path) -> dict[str, str]:
    """Read ``mappings_dir/names/overrides.csv``: patient id → alphabetic PN group.

    A missing file means no overrides; rows with problems are skipped (`check_name_tables`
    reports them).
    """
    path = Path(mappings_dir) / OVERRIDES_FILE
    if not path.exists():
        return {}
    return _read_overrides(path)[0]


def check_name_tables(mappings_dir: Path) -> list[str]:
    """Validate surnames.csv and overrides.csv; each problem as ``file:line: what``.

    Reports rows with the wrong number of columns, surnames that are not Han characters,
    readings that are not A-Z or not as many Mandarin syllables as the surname has
    characters, ü written V after anything but L or N, duplicate surnames and patient ids,
    and override values that are not a valid alphabetic PN group.
    """
    mappings_dir = Path(mappings_dir)
    _, problems = _read_surnames(mappings_dir / SURNAMES_FILE, check_syllables=True)
    overrides_path = mappings_dir / OVERRIDES_FILE
    if overrides_path.exists():
        problems += _read_overrides(overrides_path)[1]
    return problems


# --- building names -----------------------------------------------------------------------


def _latin_name(
    components: list[str], sent_pinyin: str | None, override: str | None, rules: NameRules
) -> PersonName:
    """A name without Han characters: its alphabetic group is the name as sent."""
    alphabetic = _join_components(components)
    override_group = _override_group(override)
    if override_group:
        alphabetic = override_group
    elif not alphabetic and sent_pinyin:
        alphabetic = _sent_pinyin_group(sent_pinyin, rules, "", "", "") or ""
    return PersonName(components[0], components[1], alphabetic, "")


def _chinese_name(
    components: list[str], sent_pinyin: str | None, override: str | None, rules: NameRules
) -> PersonName:
    family, given, rest = components[0], components[1], components[2:]
    transliterated = False  # a transliterated name (阿依古丽·买买提) has no Chinese surname
    if not given and not any(rest):
        family = family.strip(_DOTS + " ")
    if not given and not any(rest) and _HAN.match(family):
        family, given, transliterated = _split_whole_name(family, rules)
    else:
        family = _compact(family)
        given = _compact(given)
        if _HAN.search(given) and _NAME_DOTS.search(given):  # 穆罕默德·阿卜杜拉 sent split
            given = "·".join(part for part in _NAME_DOTS.split(given) if part)
            transliterated = True

    if transliterated:
        family_py = _pinyin(family, rules.u_umlaut)
    elif _HAN.search(family):
        family_py = rules.family_pinyin(family)
    else:
        family_py = family
    given_py = _given_pinyin(given, rules.u_umlaut)
    ideographic = _join_components([family, given, *rest])

    alphabetic = _override_group(override)
    if not alphabetic and sent_pinyin:
        alphabetic = _sent_pinyin_group(sent_pinyin, rules, family_py, family, given) or ""
    if not alphabetic:
        rest_py = [_pinyin(part, rules.u_umlaut) if _HAN.search(part) else part for part in rest]
        alphabetic = _join_components([family_py, given_py, *rest_py])
    return PersonName(family, given, alphabetic, ideographic)


def _split_whole_name(name: str, rules: NameRules) -> tuple[str, str, bool]:
    """(family, given, transliterated) for a Chinese name sent in one piece."""
    parts = [part for part in _NAME_DOTS.split(name) if part]
    if len(parts) > 1:
        # Uyghur and other transliterated names are written given·family.
        return _compact(parts[-1]), "·".join(_compact(p) for p in parts[:-1]), True
    words = name.split()
    if len(words) > 1:
        return words[0], "".join(words[1:]), False
    family, given = rules.split_whole_name(name)
    return family, given, False


def _given_pinyin(given: str, u_umlaut: str) -> str:
    if "·" in given:
        return " ".join(_pinyin(part, u_umlaut) for part in given.split("·") if part)
    return _pinyin(given, u_umlaut)


def _compact(text: str) -> str:
    """Drop the spaces inside Han name parts (张 三 → 张三); leave Latin parts alone."""
    return "".join(text.split()) if _HAN.search(text) else text


def _join_components(components: list[str]) -> str:
    return COMPONENT_SEPARATOR.join(components).rstrip(COMPONENT_SEPARATOR)


def _override_group(override: str | None) -> str:
    if not override:
        return ""
    group = override.translate(_CLEAN_TABLE).split(GROUP_SEPARATOR)[0]
    return _join_components([part.strip() for part in group.split(COMPONENT_SEPARATOR)])


# --- pinyin -------------------------------------------------------------------------------


def _tone_marked(char: str, reading: str) -> str:
    for candidate in _PYPINYIN_SINGLE[ord(char)].split(","):
        if to_normal(candidate, v_to_u=False) == reading:
            return candidate
    raise ValueError(f"{reading!r} is not a reading of {char} known to pypinyin")


class _NameConverter(DefaultConverter):
    """pypinyin's converter, with the name readings of `GIVEN_NAME_READINGS`."""

    _readings = {char: _tone_marked(char, py) for char, py in GIVEN_NAME_READINGS.items()}

    def post_pinyin(self, han, heteronym, pinyin, **kwargs):  # type: ignore[no-untyped-def]
        # Called once per segment pypinyin found: a phrase, or a character outside any phrase.
        if len(han) == 1 and han in self._readings:
            return [[self._readings[han]]]
        return None


_CONVERTER = Pinyin(_NameConverter())


def _keep_non_han(chars: str) -> str:
    # Upper case marks text that is not pinyin, so its letters are never taken for ü.
    return chars.upper()


@lru_cache(maxsize=65536)
def _pinyin(text: str, u_umlaut: str) -> str:
    """Pinyin of Han text, upper case, syllables joined; other characters kept."""
    if not text:
        return ""
    syllables = _CONVERTER.lazy_pinyin(
        text, style=Style.NORMAL, v_to_u=False, errors=_keep_non_han
    )
    if u_umlaut == "yu":
        # pypinyin writes ü as "v"; it only does so after l and n (GB/T 28039-2011: LYU, NYU).
        syllables = [s.replace("v", "yu") for s in syllables]
    return "".join(syllables).replace("ê", "e").upper()  # 欸 ê: E, as passports write it


def _render_table_reading(reading: str, u_umlaut: str) -> str:
    """A table reading (ü written V) in the configured style."""
    return reading.replace("V", "YU") if u_umlaut == "yu" else reading


def _surname_reading_v_form(reading: str) -> str:
    """Accept LYU for ü where unambiguous: always after L (L never ends a syllable), after N
    only at the start (XIANYU is XIAN+YU)."""
    reading = reading.replace("LYU", "LV")
    if reading.startswith("NYU"):
        reading = "NV" + reading[3:]
    return reading


def _sent_pinyin_group(
    text: str, rules: NameRules, family_py: str, family_han: str, given_han: str
) -> str | None:
    """Normalise a pinyin name the HIS sent to FAMILY^GIVEN; None if it is not usable."""
    text = _normalise_sent_pinyin(text, rules.u_umlaut)
    if text is None:
        return None
    if COMPONENT_SEPARATOR in text:
        components = [_word(part) for part in text.split(COMPONENT_SEPARATOR)][:MAX_COMPONENTS]
        family, given, rest = components[0], (components[1:2] or [""])[0], components[2:]
    else:
        if "," in text:
            family_text, _, given_text = text.partition(",")
            family, given = _word(family_text), _word(given_text)
        else:
            family, given = _split_pinyin_words(text.split(), family_py, family_han, given_han)
        rest = []
    if given_han and not given:
        return None
    return _join_components([family, given, *rest]) or None


def _split_pinyin_words(
    words: list[str], family_py: str, family_han: str, given_han: str
) -> tuple[str, str]:
    """Family and given name from space-separated pinyin, using the Han name as a guide."""
    if not words:
        return "", ""
    key = _loose(family_py)
    if len(words) == 1:  # ZHANGSAN: cut after the family name's reading
        word = words[0]
        if key:
            for cut in range(1, len(word)):
                if _loose(word[:cut]) == key:
                    return word[:cut], word[cut:]
        return word, ""
    if key:
        for k in range(1, len(words)):
            if _loose("".join(words[:k])) == key:  # family first: ZHANG SAN
                return "".join(words[:k]), "".join(words[k:])
        for k in range(1, len(words)):
            if _loose("".join(words[-k:])) == key:  # given first: SAN ZHANG
                return "".join(words[-k:]), "".join(words[:-k])
    if family_han and len(words) == len(family_han) + len(given_han):
        # one word per character: AU YEUNG NA NA for 欧阳娜娜
        n = len(family_han)
        return "".join(words[:n]), "".join(words[n:])
    return words[0], "".join(words[1:])


def _loose(pinyin: str) -> str:
    """Compare pinyin regardless of how ü was typed (LYU, LV, LU)."""
    return pinyin.replace("YU", "U").replace("V", "U")


def _word(text: str) -> str:
    return "".join(text.split())


def _normalise_sent_pinyin(text: str, u_umlaut: str) -> str | None:
    text = text.translate(_CLEAN_TABLE).split(GROUP_SEPARATOR)[0].strip()
    if not text:
        return None
    if not text.isascii():
        # ü may come as ü, ǖǘǚǜ or u:; tone marks are dropped.
        text = unicodedata.normalize("NFD", text)
        text = text.replace("u\u0308", "\0").replace("U\u0308", "\0")
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.replace("u:", "\0").replace("U:", "\0").upper()
    text = text.replace("'", "").replace("’", "").replace("-", "")
    text = re.sub("([LN])\0", r"\1YU" if u_umlaut == "yu" else r"\1V", text).replace("\0", "U")
    if u_umlaut == "yu":
        text = re.sub("([LN])V", r"\1YU", text)
    else:
        text = re.sub(r"LYU", "LV", text)
        text = re.sub(r"(?<![A-Z])NYU", "NV", text)
    if not _SENT_PINYIN.fullmatch(text):
        return None
    return text


def _to_ascii(text: str) -> str:
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKD", text.translate(_ASCII_FALLBACK))
    text = "".join(ch for ch in text if ch.isascii() and not unicodedata.combining(ch))
    return _join_components(text.split(COMPONENT_SEPARATOR))


# --- the tables ---------------------------------------------------------------------------


def _read_rows(
    path: Path, columns: tuple[str, ...]
) -> tuple[list[tuple[int, list[str]]], list[str]]:
    """Data rows (line number, cells) of an analyst CSV, skipping ``#`` comments and the header.

    Extra cells are joined back into the last column (an unquoted comma in a comment).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return [], [f"{path}:0: file not found"]
    except UnicodeDecodeError:
        return [], [f"{path}:0: not UTF-8; save it as 'CSV UTF-8'"]
    rows: list[tuple[int, list[str]]] = []
    problems: list[str] = []
    header_seen = False
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in next(csv.reader([line]))]
        if not any(cells):  # ",,": a blank row as spreadsheets save it
            continue
        if not header_seen:
            header_seen = True
            if tuple(cell.lower() for cell in cells[:2]) != columns[:2]:
                problems.append(
                    f"{path}:{number}: the first row must be the header {','.join(columns)}"
                )
            continue
        if len(cells) > len(columns):
            cells = cells[: len(columns) - 1] + [",".join(cells[len(columns) - 1 :])]
        if len(cells) < len(columns) - 1:
            problems.append(
                f"{path}:{number}: expected {','.join(columns)}, found {len(cells)} column(s)"
            )
            continue
        rows.append((number, cells))
    return rows, problems


def _read_surnames(
    path: Path, *, check_syllables: bool = False
) -> tuple[dict[str, str], list[str]]:
    rows, problems = _read_rows(path, SURNAME_COLUMNS)
    surnames: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, cells in rows:
        surname, reading = cells[0], cells[1]
        where = f"{path}:{number}"
        if not _ALL_HAN.fullmatch(surname) or len(surname) > MAX_SURNAME_CHARS:
            problems.append(
                f"{where}: surname {surname!r} must be 1 to {MAX_SURNAME_CHARS} Chinese characters"
            )
            continue
        if not _PINYIN_WORD.fullmatch(reading):
            problems.append(
                f"{where}: pinyin {reading!r} must be upper-case letters A-Z without tones or "
                f"spaces, e.g. OUYANG; write ü as V"
            )
            continue
        reading = _surname_reading_v_form(reading)
        if re.search("(?<![LN])V", reading):
            problems.append(
                f"{where}: {reading}: V (ü) only follows L or N; after J, Q, X, Y write U (徐 XU)"
            )
            continue
        if check_syllables and not _is_syllables(reading, len(surname)):
            problems.append(
                f"{where}: {reading} is not {len(surname)} Mandarin syllable(s) for {surname}; "
                f"check the spelling"
            )
        if surname in first_line:
            problems.append(
                f"{where}: surname {surname} is already listed on line {first_line[surname]}"
            )
            continue
        first_line[surname] = number
        surnames[surname] = reading
    return surnames, _by_line(path, problems)


def _read_overrides(path: Path) -> tuple[dict[str, str], list[str]]:
    rows, problems = _read_rows(path, OVERRIDE_COLUMNS)
    overrides: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, cells in rows:
        patient_id, alphabetic = cells[0], cells[1]
        where = f"{path}:{number}"
        if not patient_id:
            problems.append(f"{where}: patient_id is empty")
            continue
        problem = _alphabetic_problem(alphabetic)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        if patient_id in first_line:
            problems.append(
                f"{where}: patient {patient_id} is already listed on line {first_line[patient_id]}"
            )
            continue
        first_line[patient_id] = number
        overrides[patient_id] = alphabetic
    return overrides, _by_line(path, problems)


def _by_line(path: Path, problems: list[str]) -> list[str]:
    """Problems of one file in line order (they are all ``{path}:{line}: what``)."""
    prefix = len(f"{path}:")
    return sorted(problems, key=lambda problem: int(problem[prefix:].split(":", 1)[0]))


def _alphabetic_problem(alphabetic: str) -> str | None:
    if not alphabetic:
        return "alphabetic is empty; write the name as FAMILY^GIVEN, e.g. SHAN^TIANFANG"
    if GROUP_SEPARATOR in alphabetic or "\\" in alphabetic:
        return f"alphabetic {alphabetic!r} must not contain '=' or '\\' (only the alphabetic group)"
    if alphabetic.count(COMPONENT_SEPARATOR) >= MAX_COMPONENTS:
        return f"alphabetic {alphabetic!r} has more than {MAX_COMPONENTS} components"
    if _HAN.search(alphabetic):
        return f"alphabetic {alphabetic!r} contains Chinese characters; write the pinyin"
    if any(unicodedata.category(ch) == "Cc" for ch in alphabetic):
        return f"alphabetic {alphabetic!r} contains control characters"
    return None


@lru_cache(maxsize=1)
def _mandarin_syllables() -> frozenset[str]:
    """Every toneless syllable pypinyin knows, upper case, ü as V. (Some 1,500 distinct toned
    readings among the 40,000-odd characters: each is converted once.)"""
    readings = {reading for joined in _PYPINYIN_SINGLE.values() for reading in joined.split(",")}
    syllables = {to_normal(reading, v_to_u=False).upper() for reading in readings}
    return frozenset(s for s in syllables if _PINYIN_WORD.fullmatch(s))


def _is_syllables(reading: str, count: int) -> bool:
    """Whether ``reading`` splits into exactly ``count`` Mandarin syllables."""
    syllables = _mandarin_syllables()

    @lru_cache(maxsize=None)
    def splits(start: int, left: int) -> bool:
        if start == len(reading):
            return left == 0
        if left == 0:
            return False
        return any(
            reading[start:end] in syllables and splits(end, left - 1)
            for end in range(start + 1, min(len(reading), start + 6) + 1)
        )

    return splits(0, count)


MAX_SYLLABLE_LETTERS = 6  # ZHUANG, SHUANG: the longest Mandarin syllables


def has_han(text: str) -> bool:
    """Whether ``text`` holds a Han ideograph (those of the names this module reads).

    >>> has_han("张san"), has_han("zhang")
    (True, False)
    """
    return _HAN.search(text) is not None


def split_syllables(reading: str, count: int) -> list[str] | None:
    """``reading`` (upper case, no spaces: a PN component such as ``OUYANG`` or ``TIANFANG``)
    cut into exactly ``count`` Mandarin syllables, or None when it cannot be (a Cantonese
    romanisation, a typo). ü may be written V or YU (LV, LYU). Where two cuts fit (XIANGE: XIAN
    GE or XIANG E), the one with the longer first syllables wins.

    >>> split_syllables("OUYANG", 2)
    ['OU', 'YANG']
    >>> split_syllables("LYUXIAOMING", 3)
    ['LYU', 'XIAO', 'MING']
    """
    found = _split_syllables(reading, count)
    return list(found) if found is not None else None


@lru_cache(maxsize=65536)
def _split_syllables(reading: str, count: int) -> tuple[str, ...] | None:
    syllables = _mandarin_syllables()

    def known(syllable: str) -> bool:
        return syllable in syllables or syllable.replace("YU", "V") in syllables and syllable[0] in "LN"

    @lru_cache(maxsize=None)
    def cut(start: int, left: int) -> tuple[str, ...] | None:
        if start == len(reading):
            return () if left == 0 else None
        if left == 0:
            return None
        for end in range(min(len(reading), start + MAX_SYLLABLE_LETTERS), start, -1):
            if known(reading[start:end]):
                rest = cut(end, left - 1)
                if rest is not None:
                    return (reading[start:end], *rest)
        return None

    return cut(0, count) if count > 0 and reading else None

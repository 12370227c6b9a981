"""A tolerant HL7 v2 ER7 reader and writer for the inbound hot path.

HL7 v2.5.1 Chapter 2 (§2.5 message construction rules, §2.7 escape sequences) defines the
encoding: segments end with a carriage return, fields are separated by the character in MSH-1,
and MSH-2 names the component, repetition, escape and subcomponent characters.

The reader splits on those characters and nothing more, so it costs microseconds per message
(hl7apy's parser costs about 15 ms: it builds and validates a full element tree). It is tolerant
as a receiver should be (HL7 v2.5.1 §2.5.4): ``\\n`` or ``\\r\\n`` segment ends, blank lines, Z-segments,
missing trailing fields and extra fields are accepted. Strict structure checks are done
separately with hl7apy when the ``hl7.strict`` setting asks for them.

Field addresses follow the usual ``SEG-field[.component[.subcomponent]]`` notation, with an
optional 1-based repetition in brackets: ``PID-3[2].4.1``. ``MSH-1`` is the field separator, as in
the standard.

>>> m = parse("MSH|^~\\\\&|HIS|HOSP|PACS|RAD|20260101||ADT^A01|1|P|2.5\\rPID|1||123^^^HOSP^MR||Zhang^San")
>>> m.get("PID-5.1"), m.get("PID-3.4"), m.message_type
('Zhang', 'HOSP', 'ADT^A01')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
ADDRESS = re.compile(
    r"^(?P<segment>[A-Z][A-Z0-9]{2})"
    r"(?:\[(?P<occurrence>\d+)\])?"
    r"-(?P<field>\d+)"
    r"(?:\[(?P<repetition>\d+)\])?"
    r"(?:\.(?P<component>\d+))?"
    r"(?:\.(?P<subcomponent>\d+))?$"
)


class HL7ParseError(ValueError):
    """The bytes are not an HL7 v2 message this reader can take (answered with AR)."""


@dataclass(frozen=True, slots=True)
class Encoding:
    """The delimiters of one message (MSH-1 and MSH-2)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


DEFAULT_ENCODING = Encoding()


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed field address such as ``PID-3[2].4.1`` (all numbers 1-based)."""

    segment: str
    field: int
    occurrence: int = 1
    repetition: int | None = None
    component: int | None = None
    subcomponent: int | None = None

    @classmethod
    def parse(cls, text: str) -> Address:
        match = ADDRESS.match(text.strip())
        if not match:
            raise ValueError(
                f"{text!r} is not a field address; write SEG-field[.component[.subcomponent]],"
                " e.g. PID-5.1 or PID-3[2].4"
            )
        groups = match.groupdict()
        number = {k: int(v) for k, v in groups.items() if v and k != "segment"}
        if any(value == 0 for value in number.values()):
            raise ValueError(f"{text!r}: field, repetition and component numbers start at 1")
        return cls(segment=groups["segment"], **number)

    def __str__(self) -> str:
        text = self.segment
        if self.occurrence != 1:
            text += f"[{self.occurrence}]"
        text += f"-{self.field}"
        if self.repetition is not None:
            text += f"[{self.repetition}]"
        if self.component is not None:
            text += f".{self.component}"
        if self.subcomponent is not None:
            text += f".{self.subcomponent}"
        return text


class Segment:
    """One segment: its name and raw field strings, split further only when asked."""

    __slots__ = ("name", "fields", "encoding", "_repetitions")

    def __init__(self, name: str, fields: list[str], encoding: Encoding) -> None:
        self.name = name
        self.fields = fields  # fields[0] is the name; fields[n] is SEG-n (MSH is shifted, see below)
        self.encoding = encoding
        self._repetitions: dict[int, list[str]] = {}  # split once: mappings read a field many times

    def raw(self, field: int) -> str:
        """The raw (still escaped) text of field ``field``, or "" if absent."""
        if field < len(self.fields):
            return self.fields[field]
        return ""

    def repetitions(self, field: int) -> list[str]:
        """The raw repetitions of field ``field`` (do not modify the list: it is kept)."""
        found = self._repetitions.get(field)
        if found is None:
            raw = self.raw(field)
            if not raw:
                found = []
            elif self.name == "MSH" and field in (1, 2):
                found = [raw]
            else:
                found = raw.split(self.encoding.repetition)
            self._repetitions[field] = found
        return found

    def value(
        self,
        field: int,
        repetition: int = 1,
        component: int | None = None,
        subcomponent: int | None = None,
    ) -> str:
        """The unescaped text at an address within this segment ("" when absent)."""
        reps = self.repetitions(field)
        if repetition > len(reps):
            return ""
        text = reps[repetition - 1]
        if self.name == "MSH" and field in (1, 2):
            return text
        if component is not None:
            text = _nth(text, self.encoding.component, component)
            if subcomponent is not None:
                text = _nth(text, self.encoding.subcomponent, subcomponent)
        elif subcomponent is not None:
            text = _nth(_nth(text, self.encoding.component, 1), self.encoding.subcomponent, subcomponent)
        return unescape(text, self.encoding)

    def components(self, field: int, repetition: int = 1) -> list[str]:
        """The unescaped components of one repetition of a field."""
        reps = self.repetitions(field)
        if repetition > len(reps):
            return []
        return [unescape(c, self.encoding) for c in reps[repetition - 1].split(self.encoding.component)]

    def __repr__(self) -> str:
        return f"Segment({self.encoding.field.join(self.fields)!r})"


def _nth(text: str, separator: str, n: int) -> str:
    if n == 1:
        cut = text.find(separator)
        return text if cut < 0 else text[:cut]
    parts = text.split(separator)
    return parts[n - 1] if n <= len(parts) else ""


class Message:
    """A parsed message: its segments in order, with lookups by address."""

    def __init__(self, segments: list[Segment], encoding: Encoding, text: str) -> None:
        self.segments = segments
        self.encoding = encoding
        self.text = text

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        seen = 0
        for segment in self.segments:
            if segment.name == name:
                seen += 1
                if seen == occurrence:
                    return segment
        return None

    def all(self, name: str) -> list[Segment]:
        return [segment for segment in self.segments if segment.name == name]

    def get(self, address: str | Address) -> str:
        """The unescaped value at ``address`` (first repetition unless one is given)."""
        if isinstance(address, str):
            address = Address.parse(address)
        segment = self.segment(address.segment, address.occurrence)
        if segment is None:
            return ""
        return segment.value(
            address.field, address.repetition or 1, address.component, address.subcomponent
        )

    def groups(self, start: str) -> tuple[Message, list[Message]]:
        """Split at each ``start`` segment: (what precedes the first one, one part per group).

        ``groups("ORC")`` turns an ORM or OMI into its order groups (HL7 v2.5.1 §4.4.1).
        """
        head: list[Segment] = []
        parts: list[list[Segment]] = []
        for segment in self.segments:
            if segment.name == start:
                parts.append([segment])
            elif parts:
                parts[-1].append(segment)
            else:
                head.append(segment)
        return (
            Message(head, self.encoding, ""),
            [Message(part, self.encoding, "") for part in parts],
        )

    # MSH header, HL7 v2.5.1 §2.14.9
    @cached_property
    def sending_application(self) -> str:
        return self.msh.value(3, component=1)

    @cached_property
    def sending_facility(self) -> str:
        return self.msh.value(4, component=1)

    @cached_property
    def receiving_application(self) -> str:
        return self.msh.value(5, component=1)

    @cached_property
    def receiving_facility(self) -> str:
        return self.msh.value(6, component=1)

    @cached_property
    def message_code(self) -> str:
        return self.msh.value(9, component=1).strip().upper()

    @cached_property
    def trigger_event(self) -> str:
        return self.msh.value(9, component=2).strip().upper()

    @property
    def message_type(self) -> str:
        return f"{self.message_code}^{self.trigger_event}" if self.trigger_event else self.message_code

    @cached_property
    def control_id(self) -> str:
        return self.msh.value(10).strip()

    @cached_property
    def processing_id(self) -> str:
        return self.msh.value(11, component=1)

    @cached_property
    def version(self) -> str:
        return self.msh.value(12, component=1).strip()

    @cached_property
    def charset(self) -> str:
        return self.msh.value(18).strip()


def parse(text: str) -> Message:
    """Read an ER7 message. Raises :class:`HL7ParseError` when there is no usable MSH."""
    text = text.lstrip("\ufeff \t\r\n")
    if not text.startswith("MSH"):
        raise HL7ParseError("message does not start with an MSH segment")
    if len(text) < 8:
        raise HL7ParseError("MSH segment is too short to hold its delimiters")
    separator = text[3]
    if separator.isalnum() or separator in " \r\n":
        raise HL7ParseError(f"MSH-1 field separator {separator!r} is not a delimiter character")
    end = text.find(separator, 4)
    msh2 = text[4:end] if end >= 0 else ""
    if not 4 <= len(msh2) <= 5 or any(c.isalnum() or c in " \r\n" for c in msh2):
        raise HL7ParseError(
            f"MSH-2 encoding characters {msh2!r} are not four delimiters"
            f" (expected e.g. '^~\\&' after the field separator {separator!r})"
        )
    if len(set(msh2[:4] + separator)) != 5:
        raise HL7ParseError("MSH-1 and MSH-2 must be five different characters")
    encoding = Encoding(separator, msh2[0], msh2[1], msh2[2], msh2[3])
    if encoding == DEFAULT_ENCODING:
        encoding = DEFAULT_ENCODING

    segments: list[Segment] = []
    for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r"):
        line = line.strip(" \t\x00")
        if not line:
            continue
        fields = line.split(separator)
        name = fields[0].strip().upper()
        if not SEGMENT_NAME.match(name):
            raise HL7ParseError(f"segment {len(segments) + 1} has no valid segment name: {line[:20]!r}")
        if name == "MSH" or name in ("BHS", "FHS"):
            # MSH-1 is the separator itself, so the split's fields[1] is MSH-2.
            fields = [name, separator] + fields[1:]
        else:
            fields[0] = name
        segments.append(Segment(name, fields, encoding))
    return Message(segments, encoding, text)


_ESCAPES = {"F": "field", "S": "component", "T": "subcomponent", "R": "repetition", "E": "escape"}


def unescape(text: str, encoding: Encoding = DEFAULT_ENCODING) -> str:
    """Replace escape sequences (HL7 v2.5.1 §2.7) with the characters they stand for.

    ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` become delimiters, ``\\Xhh..\\`` becomes the bytes it
    spells when they are ASCII, ``\\.br\\`` a line break; formatting sequences this reader
    does not render (``\\H\\``, ``\\N\\``, ``\\.sp\\``...) are dropped.
    """
    esc = encoding.escape
    if esc not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c != esc:
            out.append(c)
            i += 1
            continue
        end = text.find(esc, i + 1)
        if end < 0:
            out.append(text[i:])
            break
        code = text[i + 1 : end]
        if code in _ESCAPES:
            out.append(getattr(encoding, _ESCAPES[code]))
        elif code.startswith("X") and len(code) % 2 == 1:
            try:
                out.append(bytes.fromhex(code[1:]).decode("latin-1"))
            except ValueError:
                out.append(text[i : end + 1])
        elif code == ".br":
            out.append("\n")
        i = end + 1
    return "".join(out)


def escape(text: str, encoding: Encoding = DEFAULT_ENCODING) -> str:
    """Escape delimiters in ``text`` so it can stand as one field value (§2.7.1)."""
    if not any(c in text for c in (encoding.field, encoding.component, encoding.repetition,
                                   encoding.escape, encoding.subcomponent, "\r", "\n")):
        return text
    e = encoding.escape
    out = text.replace(e, f"{e}E{e}")
    out = out.replace(encoding.field, f"{e}F{e}").replace(encoding.component, f"{e}S{e}")
    out = out.replace(encoding.subcomponent, f"{e}T{e}").replace(encoding.repetition, f"{e}R{e}")
    return out.replace("\r\n", f"{e}.br{e}").replace("\n", f"{e}.br{e}").replace("\r", f"{e}.br{e}")


def build_segment(name: str, *fields: str | list[str] | None, encoding: Encoding = DEFAULT_ENCODING) -> str:
    """One ER7 segment from already-escaped field strings (lists are joined as components)."""
    parts = [name]
    for value in fields:
        if value is None:
            parts.append("")
        elif isinstance(value, list):
            parts.append(encoding.component.join(value))
        else:
            parts.append(value)
    while len(parts) > 1 and parts[-1] == "":
        parts.pop()
    return encoding.field.join(parts)


def parse_ts(value: str) -> str:
    """Normalise an HL7 TS/DTM to its digits (YYYY[MM[DD[HH[MM[SS]]]]]), dropping zone and fraction."""
    value = value.strip()
    for stop in ("+", "-", "."):
        cut = value.find(stop, 4)
        if cut >= 0:
            value = value[:cut]
    return value

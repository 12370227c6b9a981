"""HL7 v2 text with every segment, field and component named, for people reading a message.

The names are the standard's, as hl7apy's tables hold them (``PID-5.1`` is "Family Name" in
v2.5: HL7 v2.5 Chapter 3, 3.4.2.5 and the XPN data type, 2.A.88). A message is split on its own
delimiters (MSH-1, MSH-2) without being parsed, so a message the engine refused shows as well
as one it applied; Z-segments and fields past a segment's last have no name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

DEFAULT_VERSION = "2.5"
SEGMENT_END = "\r"


@dataclass
class Part:
    """A field (``PID-5``) or a component (``PID-5.1``) with its name and value."""

    address: str
    name: str
    value: str
    components: list[Part] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.address} {self.name}".strip()


@dataclass
class NamedSegment:
    id: str
    fields: list[list[Part]]  # per field, its repetitions
    separator: str = "|"


def _title(name: str) -> str:
    return " ".join(word.capitalize() for word in name.split("_") if word)


@lru_cache(maxsize=256)
def segment_reference(segment: str, version: str) -> dict[int, tuple[str, tuple[str, ...]]]:
    """``{field number: (field name, (component names …))}`` of a segment, from hl7apy."""
    from hl7apy import SUPPORTED_LIBRARIES, load_reference
    from hl7apy.exceptions import ChildNotFound

    if version not in SUPPORTED_LIBRARIES:
        version = DEFAULT_VERSION
    try:
        reference = load_reference(segment, "Segment", version)
    except (ChildNotFound, KeyError, ValueError):
        return {}
    fields: dict[int, tuple[str, tuple[str, ...]]] = {}
    for child_name, child, _cardinality, _kind in reference[1]:
        number = int(child_name.rsplit("_", 1)[1])
        components = tuple(_title(c[1][3]) for c in child[1]) if child[0] == "sequence" else ()
        fields[number] = (_title(child[3]), components)
    return fields


def name_of(address: str, version: str = DEFAULT_VERSION) -> str:
    """The standard's name of ``PID-5`` or ``PID-5.1`` ("" when it has none)."""
    segment, _, rest = address.partition("-")
    number, _, component = rest.partition(".")
    if not number.isdigit():
        return ""
    fields = segment_reference(segment.upper(), version)
    found = fields.get(int(number))
    if found is None:
        return ""
    if not component:
        return found[0]
    index = int(component) - 1 if component.isdigit() else -1
    return found[1][index] if 0 <= index < len(found[1]) else ""


def named_segments(text: str, version: str = "") -> list[NamedSegment]:
    """Each segment of ``text`` (an HL7 v2 message, ``\\r`` or newlines between segments) with
    its fields, their repetitions and components named."""
    lines = [line for line in text.replace("\r\n", "\r").replace("\n", "\r").split(SEGMENT_END) if line]
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
        return []
    separator = lines[0][3]
    encoding = lines[0][4:8]
    component_sep, repetition_sep = encoding[0], encoding[1]
    if not version:
        msh = lines[0].split(separator)
        version = msh[11].split(component_sep)[0] if len(msh) > 11 else DEFAULT_VERSION
    shown = []
    for line in lines:
        values = line.split(separator)
        segment_id = values[0]
        fields: list[list[Part]] = []
        for position, value in enumerate(values[1:], start=1):
            number = position + 1 if segment_id == "MSH" else position
            address = f"{segment_id}-{number}"
            name = name_of(address, version)
            if segment_id == "MSH" and number <= 2:
                repetitions = [value]  # MSH-2 holds the delimiters themselves
            else:
                repetitions = value.split(repetition_sep)
            parts = []
            for repetition in repetitions:
                part = Part(address, name, repetition)
                components = repetition.split(component_sep) if segment_id != "MSH" or number > 2 else [repetition]
                if len(components) > 1:
                    part.components = [Part(f"{address}.{i}", name_of(f"{address}.{i}", version), c)
                                       for i, c in enumerate(components, start=1)]
                parts.append(part)
            fields.append(parts)
        if segment_id == "MSH":  # MSH-1 is the field separator itself
            fields.insert(0, [Part("MSH-1", name_of("MSH-1", version), separator)])
        shown.append(NamedSegment(segment_id, fields, separator))
    return shown

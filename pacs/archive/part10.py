"""What store() needs of a received object, read straight from the first bytes of its Part 10
file (PS3.10 7.1 File Meta Information; PS3.5 7.1 data elements, 7.5 nesting of data sets).

For every image a modality sends, store() checks that the object is whole and that it is what
the C-STORE request announced, and hands the index writer a dozen values (the UIDs, instance
number, content date and time, matrix). pydicom builds a data set of every element to do that:
about 0.4 ms for a CT header and as much again to convert the values asked for, a fifth of
what a receiving process spends on an image. :func:`scan` walks the elements of the head that
the spool keeps in memory, keeps the raw bytes of the few :data:`WANTED`, and skips the rest.

It decides only the plain case: a native (uncompressed) little-endian data set, explicit or
implicit VR, whose elements up to the Pixel Data lie within the head and whose Pixel Data ends
the file. It is at least as strict as pydicom's reading in store(): every sequence and item is
walked to its end or delimiter, the Pixel Data holds what Rows, Columns, Samples per Pixel,
Number of Frames and Bits Allocated call for, the four identifying UIDs are present, valid,
encoded as UI and as announced. Anything else (deflated, big-endian or encapsulated data,
a header longer than the head, elements after the pixel data, a VR the data dictionary does not
give the element, a Specific Character Set term PS3.3 C.12.1.1.2 does not define, a value that is not plain ASCII digits and dots, a broken structure) gives None, and store() reads the object
with pydicom as before, which also words the refusals.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.charset import python_encoding
from pydicom.datadict import DicomDictionary
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

PREAMBLE = 128  # bytes before the DICM prefix (PS3.10 7.1)
PREFIX = b"DICM"
META_GROUP = 0x0002
TRANSFER_SYNTAX = 0x00020010
PIXEL_GROUP = 0x7FE0
PIXEL_DATA = 0x7FE00010
ITEM_GROUP = 0xFFFE  # items and delimiters: tag and 4-byte length, no VR, in every encoding (PS3.5 7.5)
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
SPECIFIC_CHARACTER_SET = 0x00080005
MAX_DEPTH = 16  # sequences nested deeper are left to pydicom

NATIVE = {ImplicitVRLittleEndian: True, ExplicitVRLittleEndian: False}  # transfer syntax → implicit VR
# PS3.5 Table 7.1-1: VRs with a 2-byte length; 7.1-2: VRs with 2 reserved bytes and a 4-byte length
SHORT_VRS = frozenset(vr.encode() for vr in ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO",
                                             "LT", "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"))
LONG_VRS = frozenset(vr.encode() for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                                            "UT", "UV"))

# tag → (keyword, VR): the values store() checks and the index writer is sent
WANTED = {
    0x00080016: ("SOPClassUID", b"UI"),
    0x00080018: ("SOPInstanceUID", b"UI"),
    0x00080023: ("ContentDate", b"DA"),
    0x00080033: ("ContentTime", b"TM"),
    0x0020000D: ("StudyInstanceUID", b"UI"),
    0x0020000E: ("SeriesInstanceUID", b"UI"),
    0x00200013: ("InstanceNumber", b"IS"),
    0x00280002: ("SamplesPerPixel", b"US"),
    0x00280008: ("NumberOfFrames", b"IS"),
    0x00280010: ("Rows", b"US"),
    0x00280011: ("Columns", b"US"),
    0x00280100: ("BitsAllocated", b"US"),
}
# tag → the VRs the data dictionary gives it (PS3.6 6; "US or SS" and the like are several)
_DICTIONARY_VRS = {tag: frozenset(vr.encode() for vr in entry[0].split(" or "))
                   for tag, entry in DicomDictionary.items()}
IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_ALLOWED = {b"UI": frozenset("0123456789."), b"DA": frozenset("0123456789"), b"TM": frozenset("0123456789."),
            b"IS": frozenset("0123456789-")}

_HEADER = struct.Struct("<HHI")  # group, element, then a 4-byte length (implicit VR, items) or VR + 2-byte length
_LONG_LENGTH = struct.Struct("<I")
_GROUP = struct.Struct("<H")
_US = struct.Struct("<H")


@dataclass(frozen=True)
class Scanned:
    transfer_syntax: str
    values: dict[str, str]  # keyword of WANTED → its value as text ("" when absent)


def scan(head: bytes, size: int, *, sop_class: str | None = None,
         sop_instance: str | None = None) -> Scanned | None:
    """The transfer syntax and :data:`WANTED` values of the Part 10 file of ``size`` bytes whose
    first bytes are ``head``, if it is a whole object of the plain kind (see the module's
    description) and, where given, of the SOP class and instance announced; None otherwise."""
    if size < len(head) or head[PREAMBLE:PREAMBLE + 4] != PREFIX:
        return None
    found = _file_meta(head)
    if found is None:
        return None
    position, syntax = found
    implicit = NATIVE.get(syntax)  # type: ignore[call-overload]
    if implicit is None:
        return None
    raw: dict[str, tuple[bytes, bytes]] = {}
    pixel_length = None
    while position != size:
        element = _header(head, position, implicit)
        if element is None:
            return None
        tag, vr, length, at = element
        if tag >> 16 in (PIXEL_GROUP, ITEM_GROUP):
            if tag != PIXEL_DATA or length == UNDEFINED or at + length != size:
                return None
            pixel_length = length
            break
        if vr is not None and vr not in _DICTIONARY_VRS.get(tag, (vr,)):
            return None  # a VR other than the data dictionary's: pydicom and store.check_values decide
        if tag == SPECIFIC_CHARACTER_SET and not _defined_terms(head[at:at + length]):
            return None  # pydicom reads the whole header with it later: it decides now
        wanted = WANTED.get(tag)
        if wanted is not None:
            keyword, expected = wanted
            if (vr or expected) != expected or at + length > len(head):
                return None
            raw[keyword] = (expected, head[at:at + length])
            position = at + length
        else:
            end = _value(head, tag, vr, length, at, implicit, 0)
            if end is None:
                return None
            position = end
    values = _values(raw)
    if values is None or not _identity_holds(values, sop_class, sop_instance):
        return None
    if pixel_length is not None and pixel_length < _native_pixel_bytes(values):
        return None
    return Scanned(syntax, values)


def _file_meta(head: bytes) -> tuple[int, str] | None:
    """Where the data set starts, and the Transfer Syntax UID (PS3.10 7.1: explicit VR little
    endian, group 0002)."""
    position = PREAMBLE + len(PREFIX)
    syntax = None
    while position + 2 <= len(head) and _GROUP.unpack_from(head, position)[0] == META_GROUP:
        element = _header(head, position, False)
        if element is None:
            return None
        tag, _vr, length, at = element
        if length == UNDEFINED or at + length > len(head):
            return None
        if tag == TRANSFER_SYNTAX:
            syntax = head[at:at + length].decode("ascii", "replace").rstrip("\0 ").strip()
        position = at + length
    return (position, syntax) if syntax else None


def _header(head: bytes, position: int, implicit: bool) -> tuple[int, bytes | None, int, int] | None:
    """(tag, VR or None, value length, where the value starts) of the element at ``position``."""
    if position + 8 > len(head):
        return None
    group, number, length = _HEADER.unpack_from(head, position)
    tag = group << 16 | number
    if implicit or group == ITEM_GROUP:
        return tag, None, length, position + 8
    vr = head[position + 4:position + 6]
    if vr in SHORT_VRS:
        return tag, vr, length >> 16, position + 8
    if vr in LONG_VRS and position + 12 <= len(head):
        return tag, vr, _LONG_LENGTH.unpack_from(head, position + 8)[0], position + 12
    return None


def _value(head: bytes, tag: int, vr: bytes | None, length: int, at: int, implicit: bool,
           depth: int) -> int | None:
    """Where the element whose value starts at ``at`` ends, its sequences walked (PS3.5 7.5)."""
    if length == UNDEFINED:  # only a sequence here (an explicit UN would be one in implicit VR: left to pydicom)
        return _items(head, at, None, implicit, depth) if vr in (None, b"SQ") else None
    end = at + length
    if end > len(head):
        return None
    if vr == b"SQ" or (vr is None and DicomDictionary.get(tag, ("",))[0] == "SQ"):
        return _items(head, at, end, implicit, depth)
    return end


def _items(head: bytes, position: int, stop: int | None, implicit: bool, depth: int) -> int | None:
    """The end of a sequence's items from ``position``: at ``stop`` for a defined length, after
    its Sequence Delimitation Item otherwise."""
    if depth >= MAX_DEPTH:
        return None
    while stop is None or position < stop:
        element = _header(head, position, True)
        if element is None:
            return None
        tag, _vr, length, at = element
        if tag == SEQUENCE_END and stop is None:
            return at
        if tag != ITEM:
            return None
        end = _elements(head, at, None if length == UNDEFINED else at + length, implicit, depth + 1)
        if end is None:
            return None
        position = end
    return position if position == stop else None


def _elements(head: bytes, position: int, stop: int | None, implicit: bool, depth: int) -> int | None:
    """The end of an item's data set from ``position``: at ``stop`` for a defined length, after
    its Item Delimitation Item otherwise."""
    while stop is None or position < stop:
        element = _header(head, position, implicit)
        if element is None:
            return None
        tag, vr, length, at = element
        if tag == ITEM_END and stop is None:
            return at
        if tag >> 16 == ITEM_GROUP:
            return None
        if tag == SPECIFIC_CHARACTER_SET and not _defined_terms(head[at:at + length]):
            return None  # an item's own character set (PS3.5 6.1.2.5.3): left to pydicom as well
        end = _value(head, tag, vr, length, at, implicit, depth)
        if end is None:
            return None
        position = end
    return position if position == stop else None


def _defined_terms(value: bytes) -> bool:
    """Whether every term of a Specific Character Set value is one PS3.3 C.12.1.1.2 defines
    (as pydicom knows them). Another term (bytes such as NUL included) makes pydicom's reading
    of the header fail or guess, so the object is read by pydicom at once, not only by the
    index writer after the answer."""
    try:
        terms = value.decode("ascii").rstrip("\0 ").split("\\")
    except UnicodeDecodeError:
        return False
    return all(term.strip() in python_encoding for term in terms)


def _values(raw: dict[str, tuple[bytes, bytes]]) -> dict[str, str] | None:
    """The values as store() reads them through pydicom (trailing padding and spaces gone), or
    None if one is not a single plain value."""
    values = {}
    for keyword, expected in WANTED.values():
        vr, data = raw.get(keyword, (expected, b""))
        if vr == b"US":
            if len(data) not in (0, 2):
                return None
            values[keyword] = str(_US.unpack(data)[0]) if data else ""
            continue
        try:
            text = data.decode("ascii").rstrip("\0 ").strip()
        except UnicodeDecodeError:
            return None
        if not _ALLOWED[vr].issuperset(text) or (vr == b"IS" and text and not text.lstrip("-").isdigit()):
            return None
        values[keyword] = text
    return values


def _identity_holds(values: dict[str, str], sop_class: str | None, sop_instance: str | None) -> bool:
    """The checks of store.check_identity (PS3.5 9.1), which refuses what fails them."""
    if not all(values[keyword] and UID(values[keyword]).is_valid for keyword in IDENTITY):
        return False
    return (not sop_class or values["SOPClassUID"] == sop_class) and (
        not sop_instance or values["SOPInstanceUID"] == sop_instance)


def _native_pixel_bytes(values: dict[str, str]) -> int:
    if not (values["BitsAllocated"] and values["Rows"] and values["Columns"]):
        return 0
    return native_pixel_bytes(int(values["Rows"]), int(values["Columns"]), int(values["BitsAllocated"]),
                              samples=int(values["SamplesPerPixel"] or 1), frames=int(values["NumberOfFrames"] or 1))


def native_pixel_bytes(rows: int, columns: int, bits_allocated: int, *, samples: int = 1, frames: int = 1) -> int:
    """The length native (uncompressed) Pixel Data must have (PS3.5 8.1.1, 8.2); a samples or
    frames value of 0 counts as 1."""
    return (rows * columns * (samples or 1) * (frames or 1) * bits_allocated + 7) // 8

"""A small, fast encoder for C-FIND answers (PS3.5 §7.1: implicit and explicit VR little endian),
and a reader for the flat identifiers of C-FIND requests.

pydicom's general writer costs more per answer than everything else a worklist query does;
answers are flat text elements and short sequences, so they are encoded here directly. An
:class:`Encoded` is a pydicom Dataset that carries its elements in this compact form; pynetdicom's
``encode`` is wrapped (:func:`install`) so that such answers skip pydicom's writer, while every
other dataset is encoded as before.

The identifier of a C-FIND request is a few elements of defined length, mostly empty; pydicom's
reader, with its file-like reads and per-element generator, took a sixth of a study-level query's
CPU. :func:`read_flat` reads such an identifier into the same Dataset of raw elements pydicom
would make (values decoded later, as pydicom does), and gives up (None) at anything else: an
undefined length, a VR pydicom does not know, an element running past the end, a first element
whose encoding is not the one the transfer syntax says. pydicom then reads it as before, with
its warnings and repairs. Most keys of a query are empty (return keys), and most matching keys
one value of plain text: those are made into the DataElements pydicom's conversion would make of
them at once, without its per-element hooks.
"""

from __future__ import annotations

import functools
import re
import struct
from typing import Any, cast

from pydicom import config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.dataset import Dataset
from pydicom.hooks import hooks, raw_element_value, raw_element_vr
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR, validate_value

Element = tuple[int, str, Any]  # (tag, VR, value): str, or list[list[Element]] for SQ

CODECS = {None: "ascii", "ISO_IR 192": "utf-8", "GB18030": "gb18030"}
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}  # 4-byte length
UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD


_TAG = struct.Struct("<HH")
_SHORT = struct.Struct("<2sH")  # explicit VR with a 2-byte length
_LONG = struct.Struct("<2s2xI")  # explicit VR with a 4-byte length
_LENGTH = struct.Struct("<I")
_IMPLICIT_HEADER = struct.Struct("<HHI")  # group, element, value length
_EXPLICIT_HEADER = struct.Struct("<HH2sH")  # group, element, VR, 2-byte value length
CHARSET = 0x00080005  # Specific Character Set
LONG_LENGTH_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
KNOWN_VRS = frozenset(vr.encode() for vr in VR if len(vr) == 2)  # pydicom's, without "US or SS" and the like


def _tag(tag: int) -> bytes:
    return _TAG.pack(tag >> 16, tag & 0xFFFF)


def _value(vr: str, value: Any, codec: str) -> bytes:
    if value is None:
        return b""
    if vr == "US":
        return struct.pack("<H", int(value))
    if vr == "UL":
        return struct.pack("<I", int(value))
    if isinstance(value, list):  # several values (VM > 1), backslash-separated (PS3.5 6.4)
        value = "\\".join(str(v) for v in value)
    data = str(value).encode(codec, errors="replace")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return data


def encode_elements(elements: list[Element], *, implicit: bool, codec: str, ordered: bool = False) -> bytes:
    """The elements (and their sequences' items) in tag order; ``ordered`` says they already are."""
    out = bytearray()
    for tag, vr, value in (elements if ordered else sorted(elements, key=lambda e: e[0])):
        out += _TAG.pack(tag >> 16, tag & 0xFFFF)
        if vr == "SQ":
            body = bytearray()
            for item in value or []:
                encoded = encode_elements(item, implicit=implicit, codec=codec, ordered=ordered)
                body += _ITEM_TAG + _LENGTH.pack(len(encoded)) + encoded
            out += _LENGTH.pack(len(body)) if implicit else _LONG.pack(b"SQ", len(body))
            out += body
            continue
        data = _value(vr, value, codec)
        if implicit:
            out += _LENGTH.pack(len(data))
        elif vr in LONG_VRS:
            out += _LONG.pack(vr.encode(), len(data))
        else:
            out += _SHORT.pack(vr.encode(), len(data))
        out += data
    return bytes(out)


_ITEM_TAG = _tag(ITEM)


def _plain_state(value: Any) -> bool:
    """Whether ``value`` is immutable, or a list or dict of such values (copied with the container)."""
    if isinstance(value, list | dict):
        return all(_plain_state(v) for v in (value.values() if isinstance(value, dict) else value))
    return value is None or isinstance(value, bool | int | float | str | bytes | tuple)


_EMPTY_STATE = Dataset().__dict__
_FRESH = all(_plain_state(value) for value in _EMPTY_STATE.values())


def new_dataset(elements: dict[BaseTag, Any] | None = None) -> Dataset:
    """``Dataset(elements)``: an empty Dataset's attributes copied, instead of set one by one through
    ``Dataset.__setattr__``, which looks each name up as a DICOM keyword (a few microseconds a
    query's identifier and each answer paid). Where pydicom's empty Dataset holds anything but
    plain values and containers of them, the constructor itself."""
    if not _FRESH:
        return Dataset(elements) if elements is not None else Dataset()
    ds = Dataset.__new__(Dataset)
    _fill(ds, elements)
    return ds


_CONTAINERS = tuple(name for name, value in _EMPTY_STATE.items() if isinstance(value, list | dict) and name != "_dict")


def _fill(ds: Dataset, elements: dict[BaseTag, Any] | None) -> None:
    state = ds.__dict__
    state.update(_EMPTY_STATE)
    for name in _CONTAINERS:
        state[name] = state[name].copy()
    state["_dict"] = {} if elements is None else elements


class Encoded(Dataset):
    """An answer held as (tag, VR, value) elements, encoded on demand by :func:`encode`."""

    def __init__(self, elements: list[Element], charset: str | None, *, ordered: bool = False) -> None:
        if _FRESH:
            _fill(self, None)
        else:
            super().__init__()
        object.__setattr__(self, "_pacs_elements", elements)
        object.__setattr__(self, "_pacs_codec", CODECS.get(charset, "utf-8"))
        object.__setattr__(self, "_pacs_ordered", ordered)

    def __len__(self) -> int:  # pynetdicom tests an identifier's truth value
        return len(self._pacs_elements)

    def encoded(self, implicit: bool) -> bytes:
        return encode_elements(self._pacs_elements, implicit=implicit, codec=self._pacs_codec,
                               ordered=self._pacs_ordered)

    def dataset(self) -> Dataset:
        """The same answer as an ordinary pydicom Dataset (for code that inspects it)."""
        from pydicom.filebase import DicomBytesIO
        from pydicom.filereader import read_dataset

        buffer = DicomBytesIO(self.encoded(True))
        buffer.is_little_endian, buffer.is_implicit_VR = True, True
        return read_dataset(buffer, is_implicit_VR=True, is_little_endian=True)


@functools.cache
def _empty(vr: str | None) -> bytes | None:
    """The raw value pydicom's reader gives an element of length 0 (immutable: b"" or None)."""
    return cast("bytes | None", empty_value_for_VR(vr, raw=True))


@functools.lru_cache(maxsize=4096)
def _implicit_vr(tag: int) -> str | None:
    """The VR pydicom's reader gives an implicit-VR element of ``tag`` without looking at its
    data set: the dictionary's, when it has exactly one (None: private, unknown or ambiguous)."""
    if tag >> 16 & 1:
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return None if " or " in vr else vr


def _plain_conversion() -> bool:
    """pydicom converts raw elements its own default way (no callback or other hooks set)."""
    return (config.data_element_callback is None and not hooks.raw_element_kwargs
            and not config.use_none_as_empty_text_VR_value  # _EMPTY_VALUES holds the default's
            and hooks.raw_element_vr is raw_element_vr and hooks.raw_element_value is raw_element_value)


# Empty values pydicom converts to a new mutable object each time (SQ: a list) or that it
# resolves against the dictionary (UN) stay raw.
_RAW_WHEN_EMPTY = frozenset(("SQ", "UN"))


def _empty_value(vr: str) -> Any:
    """pydicom's empty value of ``vr``: one shared object where it is immutable ('' or None)."""
    return _EMPTY_VALUES[vr] if vr in _EMPTY_VALUES else empty_value_for_VR(vr)


_EMPTY_VALUES = {vr.value: empty for vr in VR
                 if len(vr) == 2 and isinstance(empty := empty_value_for_VR(vr.value), str | None)}


@functools.lru_cache(maxsize=64)
def _encodings(value: bytes | None, vr: str | None, implicit: bool) -> tuple[str, ...]:
    """The Python encodings of a Specific Character Set element's raw value, read once per value."""
    raw = RawDataElement(BaseTag(CHARSET), vr, len(value or b""), value, 0, implicit, True)
    return tuple(convert_encodings(convert_raw_data_element(raw).value))


# Text VRs whose value pydicom converts to the text itself, its trailing spaces and NULs
# dropped (values.convert_string for CS, convert_text for LO and SH, which check it first).
_PLAIN_TEXT_VRS = frozenset(("CS", "LO", "SH"))
_PRINTABLE = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII but the backslash: one value, the same in every character set


def _plain_text(vr: str, value: bytes) -> str | None:
    """The text pydicom converts ``value`` of ``vr`` to, when it is one value of printable ASCII
    (in every character set DICOM names, the same characters), else None."""
    if not _PRINTABLE.fullmatch(value):
        return None
    text = value.decode("ascii")
    if vr != "CS":
        validate_value(vr, text, config.settings.reading_validation_mode)
    return text.rstrip(" ")


@functools.lru_cache(maxsize=64)
def _text_encodings(value: str) -> tuple[str, ...]:
    """The Python encodings of a Specific Character Set of one term, looked up once per term."""
    return tuple(convert_encodings(value))


def read_flat(data: bytes, implicit: bool) -> Dataset | None:
    """The data set ``data`` (little endian, implicit or explicit VR as ``implicit`` says) as
    pydicom's ``read_dataset`` makes it, when every element has a defined length and a known VR
    and they fill ``data`` exactly; else None. Empty elements come already converted, as
    ``convert_raw_data_element`` would convert them (PS3.5 7.1: a zero length is no value)."""
    end = len(data)
    plain = _plain_conversion()
    if end >= 6:  # pydicom's check of the first element (its VR bytes two capital letters or not)
        looks_implicit = not (0x40 < data[4] < 0x5B and 0x40 < data[5] < 0x5B)
        if looks_implicit != implicit:
            return None
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    position = 0
    while position < end:
        if end - position < 8:
            return None
        vr: str | None
        if implicit:
            group, number, length = _IMPLICIT_HEADER.unpack_from(data, position)
            vr, start = None, position + 8
        else:
            group, number, raw_vr, length = _EXPLICIT_HEADER.unpack_from(data, position)
            if raw_vr not in KNOWN_VRS:
                return None
            vr, start = raw_vr.decode(), position + 8
            if raw_vr in LONG_LENGTH_VRS:
                if end - position < 12:
                    return None
                length, start = _LENGTH.unpack_from(data, position + 8)[0], position + 12
        stop = start + length
        tag = group << 16 | number
        if length == UNDEFINED or stop > end or tag == ITEM_END:
            return None
        # the VR pydicom converts with; private elements stay raw (pydicom names their creator on reading them)
        known = _implicit_vr(tag) if implicit else (None if group & 1 else vr)
        key = BaseTag(tag)
        if length:
            value = data[start:stop]
            text = _plain_text(known, value) if plain and known in _PLAIN_TEXT_VRS else None
            if text is not None:
                elements[key] = DataElement(key, known, text, start, False, True)
            else:
                elements[key] = RawDataElement(key, vr, length, value, start, implicit, True)
        elif plain and known is not None and known not in _RAW_WHEN_EMPTY:
            elements[key] = DataElement(key, known, _empty_value(known), start, False, True)
        else:
            elements[key] = RawDataElement(key, vr, length, _empty(vr), start, implicit, True)
        position = stop
    ds = new_dataset(elements)  # parent_encoding: the default
    charset = elements.get(BaseTag(CHARSET))
    if isinstance(charset, RawDataElement):
        encoding = list(_encodings(charset.value, charset.VR, implicit))
    elif charset is not None:
        encoding = list(_text_encodings(charset.value)) if isinstance(charset.value, str) else convert_encodings(
            charset.value)
    else:
        encoding = default_encoding
    ds.set_original_encoding(implicit, True, encoding)
    return ds


def install() -> None:
    """Let pynetdicom send :class:`Encoded` answers without pydicom's writer (idempotent)."""
    from pynetdicom import service_class

    original = service_class.encode
    if getattr(original, "_pacs_fast", False):
        return

    def encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
        if isinstance(ds, Encoded) and is_little_endian and not deflated:
            return ds.encoded(is_implicit_vr)
        if isinstance(ds, Encoded):
            ds = ds.dataset()
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    encode._pacs_fast = True  # type: ignore[attr-defined]
    service_class.encode = encode
    install_reader()


def install_reader() -> None:
    """Let pynetdicom read a request's flat identifier with :func:`read_flat` (idempotent)."""
    from pynetdicom import events

    original = events.decode
    if getattr(original, "_pacs_fast", False):
        return

    def decode(stream: Any, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> Dataset:
        if is_little_endian and not deflated:
            ds = read_flat(stream.getvalue(), is_implicit_vr)
            if ds is not None:
                return ds
        return original(stream, is_implicit_vr, is_little_endian, deflated)

    decode._pacs_fast = True  # type: ignore[attr-defined]
    events.decode = decode

"""Data sets sent exactly as given: a C-STORE whose data set bytes no encoder has touched, and
the element-level surgery that makes them (a VR changed, a value replaced, an element cut).

pynetdicom re-encodes a data set it is given and reads a file it is pointed at, so neither
sends what a broken modality sends. Here a pynetdicom SCU negotiates the association and the
request goes out as hand-made P-DATA-TF PDUs (PS3.8 9.3.5, E.2) on its socket."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

COMMAND, LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)
P_DATA_TF = 0x04
FRAGMENT = 16_000  # bytes of data set per PDV
# PS3.5 Table 7.1-1: VRs whose explicit encoding has a 2-byte length
SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
             b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
# PS3.5 Table 7.1-2: VRs with two reserved bytes and a 4-byte length
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def pdu(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (context ID, control header, data) PDVs."""
    items = b"".join(struct.pack(">IBB", len(data) + 2, context, control) + data for context, control, data in pdvs)
    return struct.pack(">BBI", P_DATA_TF, 0, len(items)) + items


def command_set(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Priority = 0
    primitive.DataSet = BytesIO(b"\0\0")  # a data set follows (Command Data Set Type, PS3.7 E.1-1)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


@contextmanager
def held(assoc) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The SCU's reactor held at its checkpoint, so the response is left for the caller to take."""
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + 5
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0001)
    try:
        yield
    finally:
        assoc._reactor_checkpoint.set()


class RawStorer:
    """One association over which data set bytes are stored as given."""

    def __init__(self, port: int, sop_classes: list[str], calling: str = "RAWSCU",
                 syntax: str = ExplicitVRLittleEndian) -> None:
        ae = AE(ae_title=calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for sop_class in sop_classes:
            ae.add_requested_context(sop_class, [syntax])
        self.assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
        assert self.assoc.is_established
        self.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.contexts = {cx.abstract_syntax: cx.context_id for cx in self.assoc.accepted_contexts}
        self.message_id = 0

    def store(self, sop_class: str, sop_instance: str, data: bytes) -> Dataset:
        """The C-STORE response to ``data`` (a data set's bytes, no file meta)."""
        self.message_id += 1
        context = self.contexts[sop_class]
        pieces = [data[i:i + FRAGMENT] for i in range(0, len(data), FRAGMENT)] or [b""]
        with held(self.assoc):
            wire = self.assoc.dul.socket.socket
            wire.sendall(pdu((context, COMMAND | LAST, command_set(sop_class, sop_instance, self.message_id))))
            for number, piece in enumerate(pieces):
                wire.sendall(pdu((context, LAST if number == len(pieces) - 1 else 0, piece)))
            _, response = self.assoc.dimse.get_msg(block=True)
        assert response is not None, "no C-STORE response"
        status = Dataset()
        status.Status = int(response.Status)
        comment = getattr(response, "ErrorComment", None)
        if comment:
            status.ErrorComment = comment
        return status

    def release(self) -> None:
        self.assoc.release()

    def __enter__(self) -> RawStorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- element surgery on explicit VR little endian data sets (PS3.5 7.1.2) ----------------------

@dataclass(frozen=True)
class Element:
    tag: int
    vr: bytes
    start: int  # where its header starts
    value_start: int
    length: int  # 0xFFFFFFFF: undefined

    @property
    def end(self) -> int:
        return self.value_start + self.length


UNDEFINED = 0xFFFFFFFF


def top_level(data: bytes) -> list[Element]:
    """The top-level elements of an explicit VR little endian data set (sequences of undefined
    length skipped to their delimiter)."""
    out, position = [], 0
    while position + 8 <= len(data):
        group, number = struct.unpack_from("<HH", data, position)
        vr = data[position + 4:position + 6]
        if vr not in LONG_VRS:
            length, value_start = struct.unpack_from("<H", data, position + 6)[0], position + 8
        else:
            length, value_start = struct.unpack_from("<I", data, position + 8)[0], position + 12
        element = Element(group << 16 | number, vr, position, value_start, length)
        out.append(element)
        if length == UNDEFINED:
            end = data.find(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", value_start)  # Sequence Delimitation Item
            if end < 0:
                break
            position = end + 8
        else:
            position = value_start + length
    return out


def header(tag: int, vr: bytes, length: int) -> bytes:
    """An element's header: a 4-byte length for the VRs of PS3.5 Table 7.1-2, else a 2-byte
    one (also for a VR PS3.5 does not define, as a careless encoder writes it)."""
    key = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if vr in LONG_VRS:
        return key + vr + b"\0\0" + struct.pack("<I", length)
    return key + vr + struct.pack("<H", length)


def with_vr(data: bytes, tag: int, vr: str) -> bytes:
    """``data`` with element ``tag`` (top level) encoded with ``vr``, its value unchanged."""
    element = next(e for e in top_level(data) if e.tag == tag)
    value = data[element.value_start:element.end]
    return data[:element.start] + header(tag, vr.encode(), len(value)) + value + data[element.end:]


def with_value(data: bytes, tag: int, value: bytes) -> bytes:
    """``data`` with element ``tag`` (top level) holding ``value``, its VR unchanged."""
    element = next(e for e in top_level(data) if e.tag == tag)
    return data[:element.start] + header(tag, element.vr, len(value)) + value + data[element.end:]


def without(data: bytes, tag: int) -> bytes:
    element = next(e for e in top_level(data) if e.tag == tag)
    return data[:element.start] + data[element.end:]


# -- objects to damage ---------------------------------------------------------------------------

def plain_ct(tmp_path: Path, *, study_uid: str | None = None,
             private: dict[int, tuple[str, object]] | None = None) -> tuple[Dataset, bytes]:
    """A native CT that part10.scan reads (the fast path), with UIDs of its own (and the
    ``private`` elements given, tag → (VR, value), under a private creator "TEST"): its
    header and its data set bytes."""
    from tests.archive.corpus import dataset_bytes, source_path

    ds = pydicom.dcmread(source_path("CT_small.dcm"))
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows = ds.Columns = 64
    ds.PixelData = bytes(64 * 64 * 2)
    del ds[0xFFFCFFFC]  # Data Set Trailing Padding: nothing may follow the pixel data on the fast path
    for tag, (vr, value) in (private or {}).items():
        ds.add_new((tag & 0xFFFF0000) | 0x0010, "LO", "TEST")
        ds.add_new(tag, vr, value)
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ds, dataset_bytes(path)


def part10_file(ds: Dataset, data: bytes) -> bytes:
    """A Part 10 file of ``data`` with ``ds``'s file meta information (what store() reads)."""
    meta = BytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + meta.getvalue() + data

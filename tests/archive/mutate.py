"""Seeded mutations of what DICOM peers send: C-STORE data sets (as bytes, so that any damage
reaches the archive as made), C-FIND, MWL, C-MOVE and C-GET identifiers, storage commitment
requests. Each generator takes a ``random.Random`` and gives ``(label, input)``: the label says
what was done, so that a failure names its case and the seed replays it."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from tests.archive.raw import LONG_VRS, top_level, with_value, with_vr, without

VRS = ["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV",
       "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"]
UNKNOWN_VRS = ["XX", "ZZ", "ab", "\0\0", "  ", "S1"]
TEXTS = ["", " ", "\\", "\\\\\\", "^^^^", "===", "*", "?", "*?*", "-", "--", "20240101-", "-20240101",
         "20241301", "2024013", "abcdefgh", "99:99:99", "1.2.3..4", "1.2.3.", "0.01.2", "张三^李四",
         "Zhang^San=张^三=ㄓㄤ^ㄙㄢ", "\x1b$B", "\x1b(B", "'; DROP TABLE study; --", "%", "_", "\0",
         "A" * 65, "9" * 5000, "\u0000\u0001\u0002", "ÿþ", "1\\2\\3\\4\\5\\6\\7\\8"]


def random_bytes(rng: random.Random, most: int = 64) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(most + 1)))


# -- C-STORE data sets -------------------------------------------------------------------------

def store_mutations(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """One damage to ``data`` (an explicit VR little endian data set)."""
    elements = [e for e in top_level(data) if e.tag >> 16 != 0x7FE0]
    target = rng.choice(elements)
    name = f"({target.tag >> 16:04X},{target.tag & 0xFFFF:04X})"
    kind = rng.randrange(9)
    if kind == 0:
        vr = rng.choice(VRS + UNKNOWN_VRS)
        if target.length == 0xFFFFFFFF or (vr.encode() not in LONG_VRS and target.length > 0xFFFF):
            vr = rng.choice(sorted(v.decode() for v in LONG_VRS if v != b"SQ"))
        return f"{name} as VR {vr!r}", with_vr(data, target.tag, vr)
    if kind == 1 and target.length != 0xFFFFFFFF:
        value = random_bytes(rng)
        return f"{name} = {value!r}", with_value(data, target.tag, value)
    if kind == 2 and target.length != 0xFFFFFFFF:
        text = rng.choice(TEXTS).encode("utf-8")[:0xFFFF]
        return f"{name} = {text[:40]!r}", with_value(data, target.tag, text)
    if kind == 3:
        return f"{name} removed", without(data, target.tag)
    if kind == 4:  # the length field lies
        length_at = target.start + (8 if target.value_start == target.start + 12 else 6)
        size = 4 if target.value_start == target.start + 12 else 2
        lie = rng.choice([0, 1, target.length + 1, target.length + 1000, (1 << (8 * size)) - 1])
        lie &= (1 << (8 * size)) - 1
        packed = struct.pack("<I" if size == 4 else "<H", lie)
        return f"{name} length {lie}", data[:length_at] + packed + data[length_at + size:]
    if kind == 5:  # cut anywhere
        cut = rng.randrange(len(data))
        return f"cut at {cut}", data[:cut]
    if kind == 6:  # bytes flipped in the header
        header_end = next((e.start for e in top_level(data) if e.tag >> 16 == 0x7FE0), len(data))
        damaged = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            damaged[rng.randrange(header_end)] = rng.randrange(256)
        return "bytes flipped", bytes(damaged)
    if kind == 7:  # an element twice, or out of order
        chunk = data[target.start:target.end]
        return f"{name} twice", data[:target.start] + chunk + chunk + data[target.end:]
    return f"{name} moved to the front", (data[target.start:target.end] + data[:target.start]
                                          + data[target.end:])


# -- query identifiers -------------------------------------------------------------------------

def odd_element(rng: random.Random, tag: int) -> DataElement:
    """Element ``tag`` with a random VR and a value that VR can be encoded with."""
    vr = rng.choice(["AT", "US", "SQ", "FD", "OB", "UN", "SL", "PN", "UI", "DA", "CS", "LO", "UT"])
    value: object = {
        "AT": [0x00100010], "US": [rng.randrange(65536)], "SQ": Sequence([Dataset()]), "FD": [1.5],
        "OB": random_bytes(rng, 8), "UN": random_bytes(rng, 8), "SL": [-1],
    }.get(vr, rng.choice(TEXTS if vr in CHARSET_VRS else [t for t in TEXTS if t.isascii()]))
    try:
        element = DataElement(tag, vr, value)
        element.value  # noqa: B018  (UN of a known tag is converted: its bytes may not decode)
        return element
    except (ValueError, TypeError, OverflowError):
        return DataElement(tag, "AT", [0x00100010])


CHARSET_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC"}  # text a character set applies to (PS3.5 6.1.2.3)


def text_value(rng: random.Random, tag: int) -> object:
    vr = dictionary_VR(tag)
    choice = rng.choice(TEXTS if vr in CHARSET_VRS else [t for t in TEXTS if t.isascii()])
    if vr in ("US", "UL", "SS", "SL"):
        return rng.choice([None, 0, 1, 65535])
    if vr in ("FL", "FD"):
        return rng.choice([None, 0.0, -1.5])
    if vr == "SQ":
        return Sequence([Dataset()]) if rng.random() < 0.5 else Sequence([])
    return choice


def identifier(rng: random.Random, keywords: list[str], level: str | None) -> tuple[str, Dataset]:
    """A query identifier: some of ``keywords`` with odd values, some with odd VRs, the level
    right, wrong or missing, and the character set odd now and then."""
    ds = Dataset()
    what = []
    if level is not None:
        roll = rng.random()
        if roll < 0.8:
            ds.QueryRetrieveLevel = level
        elif roll < 0.9:
            ds.QueryRetrieveLevel = rng.choice(["", "FRAME", "study", "STUDY\\SERIES", "X" * 20])
            what.append(f"level {ds.QueryRetrieveLevel!r}")
        else:
            what.append("no level")
    if rng.random() < 0.2:
        ds.SpecificCharacterSet = rng.choice(["ISO_IR 192", "GB18030", "ISO 2022 IR 87", "ISO_IR 999", "",
                                              "ISO_IR 100\\ISO_IR 192", "\\"])
        what.append(f"charset {ds.SpecificCharacterSet!r}")
    for keyword in rng.sample(keywords, k=rng.randrange(1, len(keywords) + 1)):
        tag = Dataset()
        setattr(tag, keyword, None)
        number = next(iter(tag.keys()))
        if rng.random() < 0.15:
            ds.add(odd_element(rng, number))
            what.append(f"{keyword} as {ds[number].VR}")
        else:
            try:
                ds.add(DataElement(number, dictionary_VR(number), text_value(rng, number)))
            except (ValueError, TypeError, OverflowError):  # a value pydicom will not hold for this VR
                ds.add(DataElement(number, dictionary_VR(number), None))
            what.append(f"{keyword}={str(ds[number].value)[:30]!r}")
    if not encodable(ds):  # text the declared (or default) character set can't carry: say UTF-8
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds = sendable(ds)
    if not len(ds):  # an empty data set is announced and never sent (pynetdicom): send the level at least
        ds.QueryRetrieveLevel = level or "STUDY"
    return "; ".join(what), ds


def encodable(ds: Dataset) -> bool:
    """Whether pydicom writes ``ds`` in explicit VR little endian (what the tests negotiate)."""
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    try:
        write_dataset(out, ds)
    except Exception:  # pydicom refuses values in many ways
        return False
    return True


def sendable(ds: Dataset) -> Dataset:
    """``ds`` without the elements pydicom will not write: a peer's encoder sends what it can."""
    for number in list(ds.keys()):
        if not encodable(ds):
            del ds[number]
    return ds


QR_KEYS = {
    "PATIENT": ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "IssuerOfPatientID",
                "NumberOfPatientRelatedStudies", "OtherPatientIDsSequence"],
    "STUDY": ["StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ModalitiesInStudy",
              "PatientName", "PatientID", "ReferringPhysicianName", "StudyDescription",
              "NumberOfStudyRelatedInstances", "InstanceAvailability"],
    "SERIES": ["StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDate",
               "BodyPartExamined", "NumberOfSeriesRelatedInstances"],
    "IMAGE": ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber",
              "Rows", "ContentDate"],
}

MWL_KEYS = ["PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", "PatientBirthDate",
            "RequestedProcedureID", "ReferencedStudySequence", "PatientSex", "IssuerOfPatientID"]
SPS_KEYS = ["Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepStartTime", "ScheduledPerformingPhysicianName", "ScheduledProcedureStepID",
            "ScheduledProcedureStepStatus", "ScheduledStationName", "ScheduledProtocolCodeSequence"]


def qr_identifier(rng: random.Random) -> tuple[str, Dataset]:
    level = rng.choice(list(QR_KEYS))
    keys = QR_KEYS[level] + (QR_KEYS["STUDY"][:2] if level in ("SERIES", "IMAGE") else [])
    label, ds = identifier(rng, sorted(set(keys)), level)
    return f"{level}: {label}", ds


def mwl_identifier(rng: random.Random) -> tuple[str, Dataset]:
    label, ds = identifier(rng, MWL_KEYS, None)
    roll = rng.random()
    if roll < 0.7:
        item_label, item = identifier(rng, SPS_KEYS, None)
        items = [item] * rng.choice([1, 1, 1, 2, 0])
        ds.ScheduledProcedureStepSequence = Sequence(items)
        label += f"; SPS x{len(items)}: {item_label}"
    elif roll < 0.8:
        ds.add(odd_element(rng, 0x00400100))
        label += f"; SPS as {ds[0x00400100].VR}"
    return label, ds


def commitment_request(rng: random.Random, held: list[tuple[str, str]]) -> tuple[str, Dataset]:
    """N-ACTION information of a storage commitment request (PS3.4 J.3.2), damaged now and then."""
    ds = Dataset()
    what = []
    if rng.random() < 0.85:
        ds.TransactionUID = rng.choice([generate_uid(), "", "1.2..3", "not a uid", "1" * 70])
        what.append(f"transaction {ds.TransactionUID[:20]!r}")
    else:
        what.append("no transaction")
    roll = rng.random()
    if roll < 0.1:
        what.append("no references")
    elif roll < 0.2:
        ds.add(odd_element(rng, 0x00081199))
        what.append(f"references as {ds[0x00081199].VR}")
    else:
        items = []
        for _ in range(rng.choice([0, 1, 2, 5, 50])):
            item = Dataset()
            sop_class, sop_instance = rng.choice(held) if held and rng.random() < 0.5 else (
                "1.2.840.10008.5.1.4.1.1.2", generate_uid())
            if rng.random() < 0.9:
                item.ReferencedSOPClassUID = rng.choice([sop_class, "", "1.2.3", "x"])
            if rng.random() < 0.9:
                item.ReferencedSOPInstanceUID = rng.choice([sop_instance, sop_instance, "", "9" * 80])
            items.append(item)
        ds.ReferencedSOPSequence = Sequence(items)
        what.append(f"{len(items)} reference(s)")
    return "; ".join(what), sendable(ds)


Generator = Callable[[random.Random], tuple[str, Dataset]]


def described(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"

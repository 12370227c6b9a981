"""part10.scan(): for the objects it decides, the values and transfer syntax are those store()
reads through pydicom; everything it does not decide (other encodings, broken or unexpected
structure, values store() would refuse) is left to pydicom (None); and it never accepts an
object that read_header() and check_identity() refuse, however the object is damaged."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from pacs.archive import part10
from pacs.archive.store import HEAD_BYTES, SUMMARY_KEYS, Refused, check_identity, read_header, summary_of
from tests.archive import corpus

CT = "1.2.840.10008.5.1.4.1.1.2"


def item(**values) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def image(syntax: str = ExplicitVRLittleEndian, *, undefined: bool = False, frames: int = 0, rows: int = 32,
          pixels: bytes | None = None, sequences: bool = True, after_pixels: bool = False,
          private_bytes: int = 0, **values) -> Dataset:
    """A CT object with nested sequences (of undefined length when ``undefined``) and a private
    block, as modalities send them; ``values`` override or add attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = CT, uid
    ds.ContentDate, ds.ContentTime = "20261206", "081500.123"
    ds.PatientName, ds.PatientID = "李^四", "P7"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.InstanceNumber = 12
    if sequences:
        code = item(CodeValue="RPID16", CodingSchemeDesignator="RADLEX", CodeMeaning="CT CHEST")
        ds.ProcedureCodeSequence = Sequence([code])
        ds.ReferencedImageSequence = Sequence([
            item(ReferencedSOPClassUID=CT, ReferencedSOPInstanceUID=generate_uid(),
                 PurposeOfReferenceCodeSequence=Sequence([item(CodeValue="121311", CodingSchemeDesignator="DCM")]))
            for _ in range(3)])
        ds.ReferencedStudySequence = Sequence([])  # empty
        if undefined:
            for seq in (ds.ProcedureCodeSequence, ds.ReferencedImageSequence, ds.ReferencedStudySequence):
                seq.is_undefined_length = True
                for member in seq:
                    member.is_undefined_length_sequence_item = True
            inner = ds.ReferencedImageSequence[0].PurposeOfReferenceCodeSequence
            inner.is_undefined_length = True
    block = ds.private_block(0x0029, "PACS TEST", create=True)
    block.add_new(0x10, "LO", "private")
    if private_bytes:
        block.add_new(0x11, "OB", b"\x01" * private_bytes)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames:
        ds.NumberOfFrames = frames
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    if pixels is None:
        pixels = b"\x03\x00" * rows * rows * max(frames, 1)
    ds.PixelData = pixels
    if after_pixels:
        ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 8)  # Data Set Trailing Padding
    return ds


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def scan_file(path: Path, **announced) -> part10.Scanned | None:
    data = path.read_bytes()
    return part10.scan(data[:HEAD_BYTES], len(data), **announced)


def accepted_by_pydicom(path: Path, **announced) -> dict[str, str] | None:
    """What store() reads through pydicom: the summary values, or None if it refuses the object."""
    data = path.read_bytes()
    try:
        header = read_header(path, data[:HEAD_BYTES])
        check_identity(header, **announced)
        return summary_of(header)
    except Refused:
        return None
    except Exception:  # noqa: BLE001 - store() refuses what pydicom cannot decode
        return None


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("shape", ["defined lengths", "undefined lengths", "multi-frame", "no sequences",
                                   "pixels in the head", "no pixel data"])
def test_what_it_decides_is_what_pydicom_reads(tmp_path, syntax, shape):
    ds = image(syntax, undefined=shape == "undefined lengths", frames=3 if shape == "multi-frame" else 0,
               sequences=shape != "no sequences", rows=8 if shape == "pixels in the head" else 256)
    if shape == "no pixel data":
        for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                        "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation"):
            delattr(ds, keyword)
    path = write(ds, tmp_path / "object.dcm")
    announced = {"sop_class": CT, "sop_instance": ds.SOPInstanceUID}
    scanned = scan_file(path, **announced)
    assert scanned is not None
    assert scanned.transfer_syntax == syntax
    expected = accepted_by_pydicom(path, **announced)
    assert expected is not None
    assert {key: scanned.values[key] for key in SUMMARY_KEYS} == expected
    assert scanned.values["InstanceNumber"] == "12" and scanned.values["ContentTime"] == "081500.123"


def test_values_with_padding_and_spaces_read_as_pydicom_reads_them(tmp_path):
    ds = image(InstanceNumber=" 7 ", ContentDate="")
    ds.StudyInstanceUID = ds.StudyInstanceUID + "\0"  # pydicom would pad it anyway: written raw below
    path = write(ds, tmp_path / "object.dcm")
    scanned = scan_file(path)
    assert scanned is not None
    assert {key: scanned.values[key] for key in SUMMARY_KEYS} == accepted_by_pydicom(path)
    assert scanned.values["InstanceNumber"] == "7" and scanned.values["ContentDate"] == ""


def test_the_test_corpus_is_decided_or_left_to_pydicom(tmp_path):
    decided = []
    for file in corpus.build(tmp_path / "corpus"):
        scanned = scan_file(file.path)
        if scanned is None:
            continue
        decided.append(file.source)
        assert {key: scanned.values[key] for key in SUMMARY_KEYS} == accepted_by_pydicom(file.path)
        assert scanned.transfer_syntax == file.transfer_syntax
    assert {"MR_small_implicit.dcm", "chrX1.dcm", "chrX2.dcm"} <= set(decided)
    # deflated; encapsulated; Data Set Trailing Padding after the pixel data
    assert not {"image_dfl.dcm", "JPEG2000.dcm", "CT_small.dcm"} & set(decided)


def cut(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


LEFT_TO_PYDICOM = {
    "deflated": lambda tmp: write(image(DeflatedExplicitVRLittleEndian), tmp / "o.dcm"),
    "elements after the pixel data": lambda tmp: write(image(after_pixels=True), tmp / "o.dcm"),
    "a header longer than the head": lambda tmp: write(image(private_bytes=HEAD_BYTES), tmp / "o.dcm"),
    "pixel data cut short": lambda tmp: cut(write(image(), tmp / "o.dcm"), -100),
    "pixel data shorter than its matrix": lambda tmp: write(image(pixels=b"\0\0" * 100), tmp / "o.dcm"),
    "cut inside a sequence": lambda tmp: cut(write(image(undefined=True, sequences=True, rows=2, pixels=b""),
                                                   tmp / "o.dcm"), 900),
    "an invalid UID": lambda tmp: write(image(StudyInstanceUID="1.2.abc"), tmp / "o.dcm"),
    "a missing UID": lambda tmp: write(image(SeriesInstanceUID=""), tmp / "o.dcm"),
    "a multi-valued instance number": lambda tmp: write(image(InstanceNumber=["1", "2"]), tmp / "o.dcm"),
    "sequences nested too deep": lambda tmp: deeply_nested(tmp),
    "a number that is not one": lambda tmp: patch(write(image(frames=1, rows=16), tmp / "o.dcm"),
                                                  struct.pack("<HH", 0x0028, 0x0008) + b"IS\x02\x001 ", b"x1"),
}


def deeply_nested(tmp: Path) -> Path:
    """Sequences nested deeper than part10 walks (MAX_DEPTH), as a malicious sender might."""
    ds = image(sequences=False)
    inner = item(CodeValue="X")
    for _ in range(part10.MAX_DEPTH + 2):
        inner = item(ContentSequence=Sequence([inner]))
    ds.ContentSequence = inner.ContentSequence
    return write(ds, tmp / "o.dcm")


def patch(path: Path, element: bytes, value: bytes) -> Path:
    """The value of an element (its encoded header given) replaced by one of the same length."""
    data = bytearray(path.read_bytes())
    at = data.index(element) + len(element) - len(value)
    data[at:at + len(value)] = value
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("case", sorted(LEFT_TO_PYDICOM))
def test_what_it_does_not_decide_is_left_to_pydicom(tmp_path, case):
    path = LEFT_TO_PYDICOM[case](tmp_path)
    assert scan_file(path) is None


def test_an_object_other_than_the_one_announced_is_left_to_pydicom(tmp_path):
    ds = image()
    path = write(ds, tmp_path / "o.dcm")
    assert scan_file(path, sop_class=CT, sop_instance=ds.SOPInstanceUID) is not None
    assert scan_file(path, sop_class="1.2.840.10008.5.1.4.1.1.4", sop_instance=ds.SOPInstanceUID) is None
    assert scan_file(path, sop_class=CT, sop_instance=generate_uid()) is None


def test_a_uid_encoded_with_another_vr_is_left_to_pydicom(tmp_path):
    path = patch(write(image(), tmp_path / "o.dcm"), struct.pack("<HH", 0x0020, 0x000D) + b"UI", b"LO")
    assert accepted_by_pydicom(path) is None  # check_identity refuses it
    assert scan_file(path) is None


@pytest.mark.parametrize("undefined", [False, True])
def test_it_never_accepts_a_damaged_object_pydicom_refuses(tmp_path, undefined):
    """Bytes of the header changed at random, or the file cut anywhere: whatever scan() accepts,
    pydicom reads with the same values."""
    rng = random.Random(4 + undefined)
    original = write(image(undefined=undefined, rows=16), tmp_path / "original.dcm").read_bytes()
    header_end = original.index(struct.pack("<HH", 0x7FE0, 0x0010)) + 12
    path = tmp_path / "damaged.dcm"
    accepted = 0
    for attempt in range(600):
        data = bytearray(original)
        if attempt % 3 == 0:
            data = data[:rng.randrange(132, len(data))]
        else:
            for _ in range(rng.choice((1, 2, 4))):
                data[rng.randrange(132, header_end)] = rng.randrange(256)
        path.write_bytes(bytes(data))
        scanned = part10.scan(bytes(data[:HEAD_BYTES]), len(data))
        if scanned is None:
            continue
        accepted += 1
        assert {key: scanned.values[key] for key in SUMMARY_KEYS} == accepted_by_pydicom(path), attempt
    assert accepted > 50  # damage to values nobody reads (a name, a private element) is still decided


def test_the_whole_header_of_a_scanned_object_is_read_from_its_staged_file(tmp_path):
    """What the index writer reads beyond the scanned values (a new study's patient) comes from
    the file (store.Summary), as pydicom reads it."""
    from pacs.archive.store import Summary

    ds = image()
    path = write(ds, tmp_path / "o.dcm")
    scanned = scan_file(path)
    assert scanned is not None
    summary = Summary(scanned.values, path)
    assert str(summary.get("PatientName")) == "李^四"
    assert summary.get("StudyInstanceUID") == ds.StudyInstanceUID
    assert pydicom.dcmread(path).PatientID == summary.PatientID == "P7"

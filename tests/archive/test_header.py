"""read_header() (pacs.archive.store): the header parsed from the file's first bytes held in
memory (a received object's, kept as it was spooled) gives what parsing the file gives, whatever
part of the header those bytes hold; what lies beyond them is read from the file; a truncated
object is still refused."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs.archive.store import HEAD_BYTES, PrefixedFile, Refused, read_header


def ct_file(path: Path, *, after_pixels: bool = False, private_bytes: int = 0) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "张^三", "P1"
    if private_bytes:  # a large header: private data before the pixel data
        block = ds.private_block(0x0029, "PACS TEST", create=True)
        block.add_new(0x10, "OB", b"\x01" * private_bytes)
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = b"\x02\x00" * 64 * 64
    if after_pixels:
        ds.add_new(0x7FE10010, "LO", "AFTER THE PIXELS")  # an element after the pixel data
    ds.save_as(path, enforce_file_format=True)
    return path


def same(a: Dataset, b: Dataset) -> None:
    assert [e.tag for e in a] == [e.tag for e in b]
    for tag in (t for t in b.keys() if t >> 16 != 0x7FE0):
        assert a[tag].value == b[tag].value


@pytest.mark.parametrize("head_size", [0, 132, 300, 1000, HEAD_BYTES])
@pytest.mark.parametrize("shape", ["plain", "after pixels", "large header"])
def test_a_head_of_any_size_gives_the_header_the_file_gives(tmp_path, head_size, shape):
    path = ct_file(tmp_path / "ct.dcm", after_pixels=shape == "after pixels",
                   private_bytes=100_000 if shape == "large header" else 0)
    raw = path.read_bytes()
    expected = pydicom.dcmread(path, stop_before_pixels=False)
    header = read_header(path, raw[:head_size])
    same(header, expected)
    assert str(header.PatientName) == "张^三"
    if shape == "after pixels":
        assert header[0x7FE10010].value == "AFTER THE PIXELS"
    assert len(header[0x7FE00010].value) == 64 * 64 * 2  # deferred, read from the file when asked
    same(read_header(path), expected)  # no head: the first bytes read from the file at once


def test_a_truncated_object_is_refused_whatever_the_head(tmp_path):
    path = ct_file(tmp_path / "ct.dcm")
    raw = path.read_bytes()
    path.write_bytes(raw[:-1000])
    for head in (None, raw[:-1000][:HEAD_BYTES], raw[:500]):
        with pytest.raises(Refused):
            read_header(path, head)


def test_prefixed_file_reads_across_the_head_and_seeks_as_a_file(tmp_path):
    path = tmp_path / "bytes"
    data = bytes(range(256)) * 40
    path.write_bytes(data)
    source = PrefixedFile(path, len(data), data[:1000])
    assert source.read(10) == data[:10]
    source.seek(995)
    assert source.read(10) == data[995:1005]  # across the end of the head
    assert source.tell() == 1005
    source.seek(-6, 2)
    assert source.read() == data[-6:] and source.read(4) == b""
    source.seek(100)
    source.seek(50, 1)
    assert source.read(3) == data[150:153]
    source.close()
    assert source.read(0) == b""

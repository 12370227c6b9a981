"""A varied test corpus from pydicom's bundled files, each object given UIDs of its own, and the
storescu options that send each transfer syntax as it is."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.uid import generate_uid

# file, the storescu flag proposing its transfer syntax
SOURCES = [
    ("CT_small.dcm", ""),  # explicit VR little endian, ISO_IR 100
    ("MR_small_implicit.dcm", "-xi"),  # implicit VR little endian
    ("image_dfl.dcm", "-xd"),  # deflated explicit VR little endian
    ("SC_rgb_dcmtk_+eb+cr.dcm", "-xy"),  # JPEG baseline
    ("JPEG-lossy.dcm", "-xx"),  # JPEG extended (12 bit)
    ("SC_rgb_jpeg_gdcm.dcm", "-xs"),  # JPEG lossless, first-order prediction
    ("MR_small_jpeg_ls_lossless.dcm", "-xt"),  # JPEG-LS lossless
    ("MR_small_jp2klossless.dcm", "-xv"),  # JPEG 2000 lossless
    ("JPEG2000.dcm", "-xw"),  # JPEG 2000
    ("MR_small_RLE.dcm", "-xr"),  # RLE lossless
    ("chrX1.dcm", ""),  # ISO_IR 192: Wang^XiaoDong=王^小東
    ("chrX2.dcm", ""),  # GB18030: Wang^XiaoDong=王^小东
]


@dataclass
class CorpusFile:
    path: Path
    flag: str
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    source: str


def source_path(name: str) -> str:
    if name.startswith("chrX"):
        return get_charset_files(name)[0]
    return get_testdata_file(name)


def build(dest: Path, sources=SOURCES, patient_id: str | None = None) -> list[CorpusFile]:
    """Copies with fresh study, series and instance UIDs (pydicom's files share some)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for number, (name, flag) in enumerate(sources):
        ds = pydicom.dcmread(source_path(name))
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if patient_id is not None:
            ds.PatientID = patient_id
        elif not str(ds.get("PatientID", "")):
            ds.PatientID = f"TEST{number:03d}"
        path = dest / f"{number:02d}_{name}"
        ds.save_as(path, enforce_file_format=True)
        out.append(CorpusFile(path, flag, str(ds.file_meta.TransferSyntaxUID), str(ds.SOPClassUID),
                              str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), name))
    return out


def storescu(port: int, files: list[CorpusFile], calling: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    """Send every file in its own transfer syntax: one storescu run per proposal flag."""
    result = None
    for flag in sorted({f.flag for f in files}):
        paths = [str(f.path) for f in files if f.flag == flag]
        args = ["storescu", "-aet", calling, "-aec", "PACS"] + ([flag] if flag else []) + ["127.0.0.1", str(port)]
        result = subprocess.run(args + paths, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "TCP_NODELAY": "1"})
        if result.returncode != 0:
            return result
    assert result is not None
    return result


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file, without preamble and file meta information."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    group_length = int.from_bytes(raw[140:144], "little")  # (0002,0000) UL, explicit VR LE
    return raw[144 + group_length:]

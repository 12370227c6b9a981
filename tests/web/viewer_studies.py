"""Studies whose pixels are known, for the viewer's tests and benchmark: a CT phantom (water,
a bone insert, air around), an RGB photograph, a multi-frame ultrasound; stored through the
archive's STOW-RS (PS3.18 10.5) like any modality's images.

The CT's stored values go through a rescale (PS3.3 C.11.1.1.2: HU = stored × slope + intercept)
so that a viewer reading Hounsfield units has to apply it: water is 0 HU, the insert 1000 HU,
air −1000 HU.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from io import BytesIO

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
NAME = "ZHANG^SAN=张^三"  # PS3.5 6.2.1: the alphabetic group, then the ideographic one
PATIENT_ID = "P30001"
WATER_HU, BONE_HU, AIR_HU = 0, 1000, -1000
SLOPE, INTERCEPT = 1.0, -1024.0  # stored = (HU - INTERCEPT) / SLOPE
PIXEL_MM = 0.8
INSERT_RADIUS = 0.12  # of the image's width; the insert sits at (0.65, 0.5) of width and height


def _base(study_uid: str, series_uid: str, modality: str, sop_class: str, number: int, *,
          description: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "M"
    ds.StudyDate = "20261206"
    ds.StudyTime = "093000"
    ds.AccessionNumber = "A30001"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "WANG^WU=王^五"
    ds.StudyDescription = "胸部CT平扫"
    ds.Modality = modality
    ds.SeriesNumber = 1 if modality == "CT" else 2
    ds.SeriesDescription = description
    ds.InstanceNumber = number
    return ds


def ct_phantom(slices: int = 20, size: int = 256, *, study_uid: str | None = None,
               body_part: str = "CHEST") -> list[Dataset]:
    """``slices`` axial images of a water cylinder with a bone insert, in air: stored values
    rescaled (slope 1, intercept −1024) to 0 HU (water), 1000 HU (bone), −1000 HU (air)."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_of_reference = generate_uid()
    y, x = np.mgrid[0:size, 0:size] / size
    hu = np.full((size, size), AIR_HU, dtype=np.int16)
    hu[(x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.42 ** 2] = WATER_HU
    hu[(x - 0.65) ** 2 + (y - 0.5) ** 2 < INSERT_RADIUS ** 2] = BONE_HU
    stored = ((hu - INTERCEPT) / SLOPE).astype(np.uint16)
    out = []
    for number in range(1, slices + 1):
        ds = _base(study_uid, series_uid, "CT", CT_IMAGE, number, description="CT phantom 水 0 HU 骨 1000 HU")
        ds.FrameOfReferenceUID = frame_of_reference
        ds.BodyPartExamined = body_part
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SliceThickness = 2.0
        ds.ImagePositionPatient = [-size * PIXEL_MM / 2, -size * PIXEL_MM / 2, number * 2.0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = number * 2.0
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = INTERCEPT
        ds.RescaleSlope = SLOPE
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = stored.tobytes()
        out.append(ds)
    return out


def rgb_photo(study_uid: str, size: int = 192) -> Dataset:
    """A secondary-capture RGB image: red, green and blue bands."""
    ds = _base(study_uid, generate_uid(), "XC", SECONDARY_CAPTURE, 1, description="彩色照片")
    ds.ConversionType = "DI"
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    third = size // 3
    pixels[:third, :, 0] = 220
    pixels[third:2 * third, :, 1] = 200
    pixels[2 * third:, :, 2] = 240
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def ultrasound_cine(study_uid: str, frames: int = 30, size: int = 128) -> Dataset:
    """A multi-frame ultrasound whose bright bar moves across frame by frame (30 frames/s)."""
    ds = _base(study_uid, generate_uid(), "US", US_MULTIFRAME, 1, description="超声动态")
    pixels = np.zeros((frames, size, size), dtype=np.uint8)
    for frame in range(frames):
        column = int(frame * (size - 8) / max(frames - 1, 1))
        pixels[frame, :, column:column + 8] = 255
    ds.NumberOfFrames = frames
    ds.FrameTime = 1000 / 30
    ds.CineRate = 30
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def part10(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def stow(base_url: str, datasets: Iterable[Dataset], *, auth: httpx.Auth | tuple[str, str] | None = None,
         batch: int = 50) -> int:
    """STOW-RS the datasets to ``base_url``/dicomweb/studies, ``batch`` per request; how many were stored."""
    items = list(datasets)
    stored = 0
    with httpx.Client(base_url=base_url, auth=auth, timeout=120) as client:
        for start in range(0, len(items), batch):
            boundary = uuid.uuid4().hex
            body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                            + part10(ds) + b"\r\n" for ds in items[start:start + batch])
            body += b"--" + boundary.encode() + b"--\r\n"
            answer = client.post("/dicomweb/studies", content=body, headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json"})
            answer.raise_for_status()
            stored += len(items[start:start + batch])
    return stored

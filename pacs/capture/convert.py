"""Non-DICOM files made DICOM: photos and scans as VL or Secondary Capture images, PDFs as
Encapsulated PDF.

A file is first looked at (:func:`inspect`): what it is by its first bytes (not its name), and
whether it can be converted at all, so a file that cannot is refused before anything is kept.
:func:`to_dataset` then builds the object for an order:

- JPEG, baseline (SOF0) and 8 bits: its bytes, untouched, as the one frame of JPEG Baseline
  (Process 1), PS3.5 A.4.1 and 8.2.1 (YBR_FULL_422 for colour, as JFIF stores it). A progressive
  or 12-bit JPEG is not Baseline: its pixels are decoded and kept native (no second lossy pass);
- PNG, BMP, TIFF (one page): native pixels, Explicit VR Little Endian; 8-bit MONOCHROME2 or RGB
  for the VL images, which allow no other depth (PS3.3 C.8.12.1.1.2), 16-bit grey kept for
  Secondary Capture;
- PDF: Encapsulated PDF (PS3.3 A.45.1), the document's bytes as they came;
- HL7 aECG (XML): 12-Lead ECG Waveform (PS3.3 A.34.3), the rhythm strip's samples as they are
  (:mod:`pacs.capture.aecg`);
- MP4, MOV, AVI, MKV: Video Photographic, Endoscopic or Microscopic Image with the transfer
  syntax of its H.264 or HEVC stream, not transcoded when DICOM can hold it
  (:mod:`pacs.capture.video`).

Which image IOD is chosen by the device's kind (:class:`Kind`): VL Photographic (XC), VL
Endoscopic (ES), VL Microscopic (GM), Secondary Capture (OT). Every object carries the patient,
the order's Accession Number and Study Instance UID, the Request Attributes Sequence, the device
as equipment (General Equipment, PS3.3 C.7.5.1) and Specific Character Set ISO_IR 192 (UTF-8),
so Chinese names and descriptions are declared.

>>> source = inspect(open("photo.jpg", "rb").read(), "photo.jpg")   # doctest: +SKIP
>>> ds = to_dataset(source, order=target, device=device, now=datetime.now())  # doctest: +SKIP
>>> ds.file_meta.TransferSyntaxUID.name                              # doctest: +SKIP
'JPEG Baseline (Process 1)'
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    TwelveLeadECGWaveformStorage,
    VideoEndoscopicImageStorage,
    VideoMicroscopicImageStorage,
    VideoPhotographicImageStorage,
    VLEndoscopicImageStorage,
    VLMicroscopicImageStorage,
    VLPhotographicImageStorage,
    generate_uid,
)

from pacs.capture.aecg import ECG, AECGError, add_waveform, is_aecg
from pacs.capture.aecg import read as read_aecg
from pacs.capture.reasons import Coded
from pacs.capture.video import COMPRESSION_METHOD, Video, VideoError, prepare, sniff_video

CHARSET = "ISO_IR 192"  # (0008,0005): UTF-8, PS3.3 C.12.1.1.2
MAX_PIXELS = 100_000_000  # a larger image is refused, not decoded (Pillow's bomb guard is 89 M)
MAX_PDF_BYTES = 512 * 1024 * 1024  # EncapsulatedDocument is OB of even length below 2**32


class Kind(StrEnum):
    """What a capture device is, and so which IOD its images become."""

    PHOTO = "photo"  # VL Photographic Image, XC (PS3.3 A.32.4)
    ENDOSCOPE = "endoscope"  # VL Endoscopic Image, ES (A.32.1)
    MICROSCOPE = "microscope"  # VL Microscopic Image, GM (A.32.2)
    SECONDARY = "secondary"  # Secondary Capture Image, OT (A.8.1)


IMAGE_CLASSES: dict[Kind, tuple[UID, str]] = {
    Kind.PHOTO: (VLPhotographicImageStorage, "XC"),
    Kind.ENDOSCOPE: (VLEndoscopicImageStorage, "ES"),
    Kind.MICROSCOPE: (VLMicroscopicImageStorage, "GM"),
    Kind.SECONDARY: (SecondaryCaptureImageStorage, "OT"),
}
VIDEO_CLASSES: dict[Kind, UID] = {  # PS3.3 A.32.5-A.32.7; a secondary capture device's video is a photo's
    Kind.PHOTO: VideoPhotographicImageStorage,
    Kind.ENDOSCOPE: VideoEndoscopicImageStorage,
    Kind.MICROSCOPE: VideoMicroscopicImageStorage,
    Kind.SECONDARY: VideoPhotographicImageStorage,
}
FRAME_TIME = 0x00181063  # (0018,1063) Frame Time: what Frame Increment Pointer points at
# Body Part Examined (0018,0015) defined terms, as the procedure table gives them, and their SNOMED
# CT codes (PS3.16 CID 4031); what a video's Anatomic Region Sequence says (VL Image, PS3.3
# C.8.12.1: required of a multi-frame VL image). A body part not listed is "Unknown".
BODY_PARTS: dict[str, tuple[str, str]] = {
    "ABDOMEN": ("818981001", "Abdomen"), "CHEST": ("43799004", "Chest"), "HEAD": ("69536005", "Head"),
    "NECK": ("45048000", "Neck"), "PELVIS": ("816092008", "Pelvis"), "KNEE": ("72696002", "Knee"),
    "STOMACH": ("69695003", "Stomach"), "COLON": ("71854001", "Colon"), "ESOPHAGUS": ("32849002", "Esophagus"),
    "SKIN": ("39937001", "Skin"), "BREAST": ("76752008", "Breast"), "HEART": ("80891009", "Heart"),
}
UNKNOWN_REGION = ("261665006", "Unknown")  # SNOMED CT qualifier value
MICROSCOPE_SLIDE = ("433466003", "Microscope slide")  # PS3.16 CID 8101 Container Type
PAIRED = {"72696002", "76752008"}  # knee, breast: Laterality applies
DOCUMENT_MODALITY = "DOC"  # PS3.3 C.24.1: Encapsulated Document Series' usual modality
AECG_TYPE = "application/x-hl7-aecg+xml"  # HL7 v3 Annotated ECG (no registered media type)
ECG_MODALITY = "ECG"  # PS3.3 A.34.3.4.1
IMAGE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "TIFF": "image/tiff"}


class Unconvertible(Coded, ValueError):
    """A file this service cannot make DICOM; the message says why and what would do (a reason
    code and its values beside it, :mod:`pacs.capture.reasons`)."""

    default_code = "unconvertible"


@dataclass
class Source:
    """A file looked at: its bytes, name, media type and, for an image, what Pillow read."""

    data: bytes
    file_name: str
    media_type: str  # image/jpeg, image/png, image/bmp, image/tiff, application/pdf
    width: int = 0
    height: int = 0
    mode: str = ""  # Pillow's: L, RGB, I;16 ...
    baseline_jpeg: bool = False  # kept as it is, as JPEG Baseline
    subsampling: int = -1  # JpegImagePlugin.get_sampling: 0 4:4:4, 1 4:2:2, 2 4:2:0
    video: Video | None = None  # a video, ready to be encapsulated
    ecg: ECG | None = None  # an HL7 aECG's waveform

    @property
    def is_pdf(self) -> bool:
        return self.media_type == "application/pdf"


@dataclass(frozen=True)
class Equipment:
    """The device as General Equipment (PS3.3 C.7.5.1) names it."""

    name: str  # Station Name (0008,1010), and the calling AE the archive records
    kind: Kind = Kind.PHOTO
    modality: str = ""  # by kind when empty
    manufacturer: str = ""  # (0008,0070)
    model: str = ""  # (0008,1090)
    serial_number: str = ""  # (0018,1000)
    institution: str = ""  # (0008,0080)
    department: str = ""  # (0008,1040)

    @property
    def image_modality(self) -> str:
        return self.modality or IMAGE_CLASSES[self.kind][1]


@dataclass(frozen=True)
class Target:
    """Whose and which exam an object is: the order's identity and its patient's, as DICOM
    values (PN groups with carets, DA dates)."""

    patient_id: str
    issuer: str = ""
    name_alphabetic: str = ""  # ZHANG^SAN
    name_ideographic: str = ""  # 张^三
    sex: str = ""
    birth_date: date | None = None
    study_instance_uid: str = field(default_factory=lambda: str(generate_uid()))
    accession_number: str = ""
    requested_procedure_id: str = ""
    procedure_text: str = ""  # Study Description and Requested Procedure Description
    referring_physician: str = ""
    sps_id: str = ""  # (0040,0009) of the step done, when known
    body_part: str = ""  # the procedure's Body Part Examined (0018,0015) defined term


# -- looking at a file ------------------------------------------------------------------------

def sniff(data: bytes) -> str:
    """The media type the first bytes say (magic numbers, not the file name), or ""."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"  # SOI and the next marker (ISO/IEC 10918-1 B.1.1.3)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:2] == b"BM":
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[:5] == b"%PDF-" or (data[:1024].find(b"%PDF-") >= 0 and data[:3] == b"\xef\xbb\xbf"):
        return "application/pdf"
    if is_aecg(data):
        return AECG_TYPE
    return sniff_video(data)


def inspect(data: bytes, file_name: str = "") -> Source:
    """What ``data`` is and whether it can be converted; raises :class:`Unconvertible` with the
    reason when it cannot (not an image or PDF, truncated, several pages, too large)."""
    if not data:
        raise Unconvertible("the file is empty", "empty")
    media_type = sniff(data)
    if media_type == "application/pdf":
        if len(data) > MAX_PDF_BYTES:
            raise Unconvertible(f"the PDF has {len(data)} bytes; at most {MAX_PDF_BYTES} are taken", "pdf_too_large",
                                size=len(data), most=MAX_PDF_BYTES)
        if b"%%EOF" not in data[-2048:]:
            raise Unconvertible("the PDF has no %%EOF at its end: it is truncated (still being copied?)",
                                "pdf_truncated")
        return Source(data, file_name, media_type)
    if not media_type:
        suffix = file_name.rsplit(".", 1)[-1] if "." in file_name else ""
        raise Unconvertible("not a JPEG, PNG, BMP, TIFF, PDF or MP4/MOV/AVI/MKV/WebM video file (by its first bytes"
                            + (f"; its name says {suffix!r}" if suffix else "") + ")",
                            "not_supported_named" if suffix else "not_supported", suffix=suffix)
    if media_type == AECG_TYPE:
        try:
            ecg = read_aecg(data)
        except AECGError as exc:
            raise Unconvertible(str(exc), "aecg", detail=str(exc)) from None
        return Source(data, file_name, media_type, ecg=ecg)
    if media_type.startswith("video/"):
        try:
            video = prepare(data, media_type)
        except VideoError as exc:
            raise Unconvertible(str(exc), "video", detail=str(exc)) from None
        return Source(data, file_name, media_type, width=video.width, height=video.height, video=video)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, mode = image.width, image.height, image.mode
            if width * height > MAX_PIXELS:
                raise Unconvertible(f"the image is {width}x{height}; at most {MAX_PIXELS} pixels are taken",
                                    "image_too_large", width=width, height=height, most=MAX_PIXELS)
            pages = getattr(image, "n_frames", 1)
            if pages > 1:
                raise Unconvertible(f"the {image.format} file has {pages} pages; send one image per file", "pages",
                                    format=image.format, pages=pages)
            baseline = subsampling = None
            if image.format == "JPEG":
                # SOF0 is the baseline process; Pillow records a progressive (SOF2) file, and the
                # sample precision is 8 bits unless it says otherwise (SOF1 12-bit files).
                baseline = (not image.info.get("progressive") and not image.info.get("progression")
                            and getattr(image, "bits", 8) == 8 and mode in ("L", "RGB"))
                subsampling = JpegImagePlugin.get_sampling(image)
            if not (baseline and data.rstrip(b"\0")[-2:] == b"\xff\xd9"):
                # The whole file decodes: a truncated copy is refused here, not later. A baseline
                # JPEG kept as it is needs only its header and its EOI marker (ISO/IEC 10918-1
                # B.2.1) at the end: a copy cut short has none.
                image.load()
    except Unconvertible:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        kind = media_type.split("/")[1].upper()
        raise Unconvertible(f"the {kind} file cannot be read: {exc}", "unreadable", format=kind,
                            detail=str(exc)) from None
    return Source(data, file_name, media_type, width=width, height=height, mode=mode,
                  baseline_jpeg=bool(baseline), subsampling=-1 if subsampling is None else subsampling)


# -- building the object ----------------------------------------------------------------------

def to_dataset(source: Source, *, target: Target, device: Equipment, now: datetime,
               series_instance_uid: str | None = None, series_number: int = 1,
               instance_number: int = 1) -> Dataset:
    """The DICOM object (with its File Meta Information) of ``source`` for ``target``, made by
    ``device`` at ``now`` (the hospital's wall-clock time)."""
    ds = Dataset()
    ds.SpecificCharacterSet = CHARSET
    if source.is_pdf:
        sop_class, modality = EncapsulatedPDFStorage, DOCUMENT_MODALITY
    elif source.ecg is not None:
        sop_class, modality = TwelveLeadECGWaveformStorage, ECG_MODALITY
    elif source.video is not None:
        sop_class, modality = VIDEO_CLASSES[device.kind], device.image_modality
    else:
        sop_class, _ = IMAGE_CLASSES[device.kind]
        modality = device.image_modality
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    _patient(ds, target)
    _study(ds, target, now)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDate, ds.SeriesTime = _da(now), _tm(now)
    ds.InstanceNumber = instance_number
    ds.ContentDate, ds.ContentTime = _da(now), _tm(now)
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    _equipment(ds, device)
    _request(ds, target)
    if source.is_pdf:
        syntax = _pdf(ds, source)
    elif source.ecg is not None:  # Waveform Identification (C.10.8): when it was recorded
        if source.ecg.started is not None:
            ds.AcquisitionDateTime = source.ecg.started.strftime("%Y%m%d%H%M%S")
            ds.ContentDate, ds.ContentTime = _da(source.ecg.started), _tm(source.ecg.started)
        add_waveform(ds, source.ecg)
        syntax = ExplicitVRLittleEndian
    elif source.video is not None:
        syntax = _video(ds, source.video)
        _anatomy(ds, target, required=True)
    else:
        syntax = _image(ds, source, device)
        _anatomy(ds, target, required=False, sequence=device.kind != Kind.SECONDARY)
    if device.kind == Kind.MICROSCOPE and not source.is_pdf and source.ecg is None:
        _specimen(ds, source, target)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.SourceApplicationEntityTitle = device.name[:16]
    ds.file_meta = meta
    return ds


def _patient(ds: Dataset, target: Target) -> None:  # Patient Module, PS3.3 C.7.1.1
    groups = [target.name_alphabetic, target.name_ideographic]
    ds.PatientName = "=".join(groups).rstrip("=") if any(groups) else ""
    ds.PatientID = target.patient_id
    if target.issuer:
        ds.IssuerOfPatientID = target.issuer
    ds.PatientBirthDate = target.birth_date.strftime("%Y%m%d") if target.birth_date else ""
    ds.PatientSex = target.sex if target.sex in ("M", "F", "O") else ""


def _study(ds: Dataset, target: Target, now: datetime) -> None:  # General Study, PS3.3 C.7.2.1
    ds.StudyInstanceUID = target.study_instance_uid
    ds.StudyDate, ds.StudyTime = _da(now), _tm(now)
    ds.ReferringPhysicianName = target.referring_physician
    ds.StudyID = target.requested_procedure_id[:16]
    ds.AccessionNumber = target.accession_number
    if target.procedure_text:
        ds.StudyDescription = target.procedure_text[:64]


def _equipment(ds: Dataset, device: Equipment) -> None:  # General Equipment, PS3.3 C.7.5.1
    ds.Manufacturer = device.manufacturer
    if device.model:
        ds.ManufacturerModelName = device.model
    if device.serial_number:
        ds.DeviceSerialNumber = device.serial_number
    if device.institution:
        ds.InstitutionName = device.institution
    if device.department:
        ds.InstitutionalDepartmentName = device.department
    ds.StationName = device.name[:16]


def _request(ds: Dataset, target: Target) -> None:
    """Request Attributes Sequence (PS3.3 C.7.3.1, General Series): the order the object is for."""
    if not target.accession_number:
        return
    item = Dataset()
    item.AccessionNumber = target.accession_number
    item.StudyInstanceUID = target.study_instance_uid
    if target.requested_procedure_id:  # 1C: present with a value, or absent
        item.RequestedProcedureID = target.requested_procedure_id[:16]
    if target.procedure_text:
        item.RequestedProcedureDescription = target.procedure_text[:64]
    if target.sps_id:
        item.ScheduledProcedureStepID = target.sps_id[:16]
    ds.RequestAttributesSequence = [item]


def _image(ds: Dataset, source: Source, device: Equipment) -> UID:
    """General Image, Image Pixel and the IOD's own image module; returns the transfer syntax."""
    vl = device.kind != Kind.SECONDARY
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if vl else ["DERIVED", "SECONDARY"]
    ds.Laterality = ""  # General Series, type 2C: a paired body part may be shown, its side unknown
    ds.PatientOrientation = ""  # type 2C; nothing is known of it
    ds.BurnedInAnnotation = "NO"
    if vl:
        ds.AcquisitionContextSequence = []  # Acquisition Context Module, PS3.3 C.7.6.14 (type 2)
    else:
        ds.ConversionType = "DI"  # SC Equipment, PS3.3 C.8.6.1: digital interface
    if source.baseline_jpeg:
        # The file's own bytes: one fragment, no re-encoding (PS3.5 A.4.1, 8.2.1).
        colour = source.mode == "RGB"
        ds.SamplesPerPixel = 3 if colour else 1
        ds.PhotometricInterpretation = ("YBR_FULL_422" if colour and source.subsampling in (1, 2) else
                                        "YBR_FULL" if colour else "MONOCHROME2")
        if colour:
            ds.PlanarConfiguration = 0
        ds.Rows, ds.Columns = source.height, source.width
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([source.data])
        ds["PixelData"].VR = "OB"
        return JPEGBaseline8Bit
    with Image.open(io.BytesIO(source.data)) as image:
        pixels, photometric, bits = _native(image, vl)
    ds.set_pixel_data(pixels, photometric, bits)  # Rows, Columns, samples, bits; Explicit VR LE
    if source.media_type == "image/jpeg":  # a progressive or 12-bit JPEG, decoded once
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    elif vl:
        ds.LossyImageCompression = "00"
    return ExplicitVRLittleEndian


def _native(image: Image.Image, vl: bool) -> tuple[np.ndarray, str, int]:
    """Pixels as an array, their Photometric Interpretation and Bits Stored: 8-bit RGB or
    MONOCHROME2; 16-bit grey kept for Secondary Capture, scaled to 8 bits for VL."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "I;16S", "F") and not vl:
        pixels = np.asarray(image)
        if pixels.dtype.kind == "f" or pixels.min() < 0 or pixels.max() > 0xFFFF:
            pixels = np.clip(pixels, 0, 0xFFFF)
        return pixels.astype(np.uint16), "MONOCHROME2", 16
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "I;16S", "F"):
        wide = np.asarray(image).astype(np.float64)
        top = wide.max() or 1.0
        return (np.clip(wide, 0, None) * 255.0 / top).astype(np.uint8), "MONOCHROME2", 8
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.uint8), "MONOCHROME2", 8
    return np.asarray(image.convert("RGB"), dtype=np.uint8), "RGB", 8


def _video(ds: Dataset, video: Video) -> UID:
    """Cine, Multi-frame, Image Pixel and VL Image modules of a video object (PS3.3 C.7.6.5,
    C.7.6.6, C.7.6.3, C.8.12.1); the stream in one fragment (PS3.5 A.4.5)."""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Laterality = ""
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.AcquisitionContextSequence = []
    ds.NumberOfFrames = video.frames
    ds.FrameIncrementPointer = FRAME_TIME
    ds.FrameTime = f"{video.frame_time_ms:.6g}"
    ds.CineRate = max(1, round(video.frame_rate))
    ds.RecommendedDisplayFrameRate = max(1, round(video.frame_rate))
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"  # PS3.5 8.2.7: MPEG-4 AVC/H.264 and HEVC
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = video.height, video.width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = COMPRESSION_METHOD.get(video.codec, "ISO_14496_10")
    if video.how.startswith("transcoded"):
        ds.DerivationDescription = video.how[:1024]
    ds.PixelData = encapsulate([video.data])
    ds["PixelData"].VR = "OB"
    return video.transfer_syntax


def _anatomy(ds: Dataset, target: Target, *, required: bool, sequence: bool = True) -> None:
    """What was examined, from the order's body part (a PS3.16 Annex L defined term, the
    procedure table's ``body_part``): Body Part Examined (0018,0015, General Series) and the VL
    image's Anatomic Region Sequence (PS3.3 C.8.12.1) with its SNOMED CT code from CID 4031.
    A multi-frame VL image must have the sequence (``required``): Unknown when the order names
    no body part this table knows. Laterality (General Series, 2C) is removed for a known
    unpaired part and left empty, as unknown, for a paired one."""
    term = target.body_part.strip().upper()
    known = BODY_PARTS.get(term)
    if known is not None:
        ds.BodyPartExamined = term
        if known[0] not in PAIRED and "Laterality" in ds:
            del ds.Laterality
    code, meaning = known or UNKNOWN_REGION
    if sequence and (known is not None or required):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SCT", meaning
        ds.AnatomicRegionSequence = [item]


def container_identifier(file_name: str, target: Target) -> str:
    """The slide's Container Identifier (0040,0512): the file's name when it carries the order's
    accession number with the slide's own label after it (``A0017-S2.jpg`` → ``A0017-S2``), as
    slide scanners name their files by the label they read; else the accession number (the
    order's one container)."""
    stem = file_name.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0].strip()
    accession = target.accession_number
    if accession and stem.upper().startswith(accession.upper()) and len(stem) > len(accession) \
            and stem.isascii() and len(stem) <= 64:
        return stem
    return accession or stem[:64] or "UNKNOWN"


def _specimen(ds: Dataset, source: Source, target: Target) -> None:
    """Specimen Module (PS3.3 C.7.6.22), which a VL Microscopic image needs (A.32.2): the slide
    (Container Identifier, a microscope slide by CID 8101) and the one specimen on it, whose
    Specimen UID is derived from the study and the container so every image of the slide names
    the same specimen (PS3.3 C.7.6.22.1)."""
    container = container_identifier(source.file_name, target)
    if "Laterality" in ds:  # General Series 2C: a slide is no paired body part (what dciodvfy checks)
        del ds.Laterality
    ds.ContainerIdentifier = container[:64]
    ds.IssuerOfTheContainerIdentifierSequence = []  # type 2
    kind = Dataset()
    kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning = MICROSCOPE_SLIDE[0], "SCT", MICROSCOPE_SLIDE[1]
    ds.ContainerTypeCodeSequence = [kind]
    specimen = Dataset()
    specimen.SpecimenIdentifier = container[:64]
    specimen.SpecimenUID = generate_uid(entropy_srcs=[target.study_instance_uid, container])
    specimen.IssuerOfTheSpecimenIdentifierSequence = []  # type 2
    if target.procedure_text:
        specimen.SpecimenShortDescription = target.procedure_text[:64]
    specimen.SpecimenPreparationSequence = []  # type 2: how it was prepared is not known here
    ds.SpecimenDescriptionSequence = [specimen]


def _pdf(ds: Dataset, source: Source) -> UID:
    """SC Equipment and Encapsulated Document modules (PS3.3 C.8.6.1, C.24.2)."""
    ds.ConversionType = "SD"  # scanned document; a device's PDF report is one too
    ds.BurnedInAnnotation = "YES"  # a document shows who it is about
    title = source.file_name.rsplit("/", 1)[-1].rsplit(".", 1)[0] if source.file_name else ""
    ds.DocumentTitle = title[:64]
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = source.data + (b"\0" if len(source.data) % 2 else b"")  # OB, even length
    ds.EncapsulatedDocumentLength = len(source.data)  # the document's own length, PS3.3 C.24.2.1
    return ExplicitVRLittleEndian


def _da(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def _tm(moment: datetime) -> str:
    return moment.strftime("%H%M%S")

"""Conversions (pacs.capture.convert): each kind of device gives its IOD, the JPEG's bytes are
kept as JPEG Baseline, other images as native pixels, a PDF as Encapsulated PDF; dciodvfy
(Debian's dicom3tools) finds no error in any of them; what cannot be converted is refused with
the reason."""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames

from pacs.capture.convert import Equipment, Kind, Target, Unconvertible, inspect, sniff, to_dataset

NOW = datetime(2026, 11, 25, 10, 30, 5)
TARGET = Target(patient_id="P1", issuer="HOSP", name_alphabetic="ZHANG^SAN", name_ideographic="张^三", sex="M",
                birth_date=date(1980, 1, 2), study_instance_uid="1.2.826.0.1.3680043.8.498.1",
                accession_number="A0017", requested_procedure_id="RP17", procedure_text="胃镜检查", sps_id="SPS17")
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
RGB = np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def encoded(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **options)
    return out.getvalue()


def written(ds: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize(("kind", "sop_class", "modality"), [
    (Kind.PHOTO, "1.2.840.10008.5.1.4.1.1.77.1.4", "XC"),
    (Kind.ENDOSCOPE, "1.2.840.10008.5.1.4.1.1.77.1.1", "ES"),
    (Kind.MICROSCOPE, "1.2.840.10008.5.1.4.1.1.77.1.2", "GM"),
    (Kind.SECONDARY, "1.2.840.10008.5.1.4.1.1.7", "OT"),
])
def test_each_kind_of_device_gives_its_iod(kind, sop_class, modality, tmp_path):
    device = Equipment("ENDO2", kind, manufacturer="奥林巴斯", model="CV-290", institution="市第一人民医院")
    photo = encoded(RGB, "JPEG", quality=92)
    ds = written(to_dataset(inspect(photo, "a.jpg"), target=TARGET, device=device, now=NOW), tmp_path / "a.dcm")
    assert (ds.SOPClassUID, ds.Modality) == (sop_class, modality)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    [frame] = list(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame[:len(photo)] == photo and len(frame) - len(photo) in (0, 1)  # not re-encoded
    assert ds.PhotometricInterpretation == "YBR_FULL_422" and ds.LossyImageCompression == "01"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "ZHANG^SAN=张^三" and ds.PatientID == "P1" and ds.IssuerOfPatientID == "HOSP"
    assert ds.StudyInstanceUID == TARGET.study_instance_uid and ds.AccessionNumber == "A0017"
    assert ds.StudyDescription == "胃镜检查" and ds.StudyDate == "20261125" and ds.ContentTime == "103005"
    assert (ds.Manufacturer, ds.ManufacturerModelName, ds.StationName) == ("奥林巴斯", "CV-290", "ENDO2")
    assert ds.InstitutionName == "市第一人民医院"
    request = ds.RequestAttributesSequence[0]
    assert (request.AccessionNumber, request.RequestedProcedureID, request.ScheduledProcedureStepID) == (
        "A0017", "RP17", "SPS17")
    png = written(to_dataset(inspect(encoded(RGB, "PNG"), "b.png"), target=TARGET, device=device, now=NOW),
                  tmp_path / "b.dcm")
    assert png.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1" and np.array_equal(png.pixel_array, RGB)
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(tmp_path / "a.dcm") == []
        assert dciodvfy_errors(tmp_path / "b.dcm") == []


def test_body_part_from_the_order_with_its_cid_4031_code(tmp_path):
    """Body Part Examined and the Anatomic Region Sequence (PS3.3 C.8.12.1) from the order's body
    part: SNOMED CT codes of PS3.16 CID 4031; Laterality absent for an unpaired part, empty
    (unknown) for a paired one; Secondary Capture has Body Part Examined alone."""
    photo = encoded(RGB, "JPEG")
    for body_part, code, meaning, laterality in (("STOMACH", "69695003", "Stomach", False),
                                                  ("knee", "72696002", "Knee", True)):
        target = replace(TARGET, body_part=body_part)
        ds = written(to_dataset(inspect(photo, "a.jpg"), target=target, device=Equipment("ENDO2", Kind.ENDOSCOPE),
                                now=NOW), tmp_path / "a.dcm")
        assert ds.BodyPartExamined == body_part.upper()
        [region] = ds.AnatomicRegionSequence
        assert (region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning) == (code, "SCT", meaning)
        assert ("Laterality" in ds) is laterality
        if shutil.which("dciodvfy"):
            assert dciodvfy_errors(tmp_path / "a.dcm") == []
    unknown = to_dataset(inspect(photo, "a.jpg"), target=replace(TARGET, body_part="SPLEENISH"),
                         device=Equipment("CAM"), now=NOW)
    assert "BodyPartExamined" not in unknown and "AnatomicRegionSequence" not in unknown  # a still: type 3
    sc = to_dataset(inspect(photo, "a.jpg"), target=replace(TARGET, body_part="CHEST"),
                    device=Equipment("SCAN", Kind.SECONDARY), now=NOW)
    assert sc.BodyPartExamined == "CHEST" and "AnatomicRegionSequence" not in sc


def test_a_microscope_image_carries_its_slide_as_the_specimen_module(tmp_path):
    """VL Microscopic Image (PS3.3 A.32.2) with the Specimen Module (C.7.6.22): the slide's
    label from the file name, else the accession number; one specimen UID per slide."""
    scope = Equipment("PATHCAM", Kind.MICROSCOPE)
    photo = encoded(RGB, "JPEG")
    labelled = written(to_dataset(inspect(photo, "slides/A0017-S2.jpg"), target=TARGET, device=scope, now=NOW),
                       tmp_path / "s2.dcm")
    again = to_dataset(inspect(photo, "A0017-S2.jpg"), target=TARGET, device=scope, now=NOW)
    plain = to_dataset(inspect(photo, "IMG_0001.jpg"), target=TARGET, device=scope, now=NOW)
    assert labelled.ContainerIdentifier == "A0017-S2" and plain.ContainerIdentifier == "A0017"
    [slide] = labelled.ContainerTypeCodeSequence
    assert (slide.CodeValue, slide.CodingSchemeDesignator) == ("433466003", "SCT")
    [specimen] = labelled.SpecimenDescriptionSequence
    assert specimen.SpecimenIdentifier == "A0017-S2" and specimen.SpecimenShortDescription == "胃镜检查"
    assert specimen.SpecimenUID == again.SpecimenDescriptionSequence[0].SpecimenUID
    assert specimen.SpecimenUID != plain.SpecimenDescriptionSequence[0].SpecimenUID
    assert "ContainerIdentifier" not in to_dataset(inspect(photo, "a.jpg"), target=TARGET,
                                                   device=Equipment("CAM"), now=NOW)
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(tmp_path / "s2.dcm") == []


def test_native_pixels_of_every_image_format(tmp_path):
    grey = RGB[..., 0].copy()
    for fmt, options in (("PNG", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"})):
        for pixels, photometric in ((RGB, "RGB"), (grey, "MONOCHROME2")):
            data = encoded(pixels, fmt, **options)
            ds = written(to_dataset(inspect(data, "x"), target=TARGET, device=Equipment("CAM"), now=NOW),
                         tmp_path / "x.dcm")
            assert ds.PhotometricInterpretation == photometric, fmt
            assert np.array_equal(ds.pixel_array, pixels), fmt
    # A progressive JPEG is not Baseline: decoded once and kept native, marked lossy
    data = encoded(RGB, "JPEG", progressive=True)
    source = inspect(data, "p.jpg")
    assert not source.baseline_jpeg
    ds = written(to_dataset(source, target=TARGET, device=Equipment("CAM"), now=NOW), tmp_path / "p.dcm")
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1" and ds.LossyImageCompression == "01"
    assert ds.pixel_array.shape == RGB.shape


def test_sixteen_bit_grey_kept_for_secondary_capture_scaled_for_vl(tmp_path):
    wide = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50).astype(np.uint16)
    data = encoded(wide, "PNG")
    sc = written(to_dataset(inspect(data, "w.png"), target=TARGET, device=Equipment("SCAN", Kind.SECONDARY),
                            now=NOW), tmp_path / "sc.dcm")
    assert sc.BitsStored == 16 and np.array_equal(sc.pixel_array, wide)
    vl = written(to_dataset(inspect(data, "w.png"), target=TARGET, device=Equipment("CAM"), now=NOW),
                 tmp_path / "vl.dcm")
    assert vl.BitsStored == 8 and vl.pixel_array.max() == 255  # PS3.3 C.8.12.1.1.2: VL images are 8-bit
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(tmp_path / "sc.dcm") == [] and dciodvfy_errors(tmp_path / "vl.dcm") == []


def test_pdf_is_encapsulated_as_it_came(tmp_path):
    odd = PDF + b"x\n%%EOF"  # odd length: padded in the element, the document's length kept
    for data in (PDF, odd):
        ds = written(to_dataset(inspect(data, "scans/知情同意书.pdf"), target=TARGET, device=Equipment("SCANNER"),
                                now=NOW), tmp_path / "d.dcm")
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1" and ds.Modality == "DOC"
        assert ds.EncapsulatedDocument[:ds.EncapsulatedDocumentLength] == data
        assert len(ds.EncapsulatedDocument) % 2 == 0
        assert ds.DocumentTitle == "知情同意书" and ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
        if shutil.which("dciodvfy"):
            assert dciodvfy_errors(tmp_path / "d.dcm") == []


def test_what_cannot_be_converted_is_refused_with_the_reason():
    assert sniff(b"\x00\x00\x00\x18ftypmp42") == "video/mp4"  # a video: pacs.capture.video
    assert sniff(b"\x00\x00\x00\x18ftypqt  ") == "video/quicktime"
    cases = {
        b"": "empty",
        b"hello": "not a JPEG, PNG, BMP, TIFF, PDF or MP4",
        encoded(RGB, "PNG")[:300]: "cannot be read",
        encoded(RGB, "JPEG")[:400]: "cannot be read",
        PDF[:40]: "truncated",
    }
    for data, reason in cases.items():
        with pytest.raises(Unconvertible, match=reason):
            inspect(data, "f")
    pages = io.BytesIO()
    Image.fromarray(RGB).save(pages, "TIFF", save_all=True, append_images=[Image.fromarray(RGB)])
    with pytest.raises(Unconvertible, match="has 2 pages"):
        inspect(pages.getvalue(), "two.tif")

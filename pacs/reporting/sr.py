"""A signed report version as DICOM objects for the archive: a Basic Text SR (PS3.3 A.35.1), a
Key Object Selection document of its key images (A.35.4) and its PDF as Encapsulated PDF
(A.45.1), each with the order's patient, Study Instance UID and accession number, in UTF-8
(Specific Character Set ISO_IR 192).

The SR follows TID 2000 (Basic Diagnostic Imaging Report): a root CONTAINER "Diagnostic
Imaging Report" (LOINC 18748-4) with the language and the observer context, a "Findings"
CONTAINER holding the findings as TEXT and an "Impressions" CONTAINER holding the impression.
Its flags say where the version stands (PS3.3 C.17.2.1): a preliminary is PARTIAL and
UNVERIFIED; a final or corrected one COMPLETE and VERIFIED, with the Verifying Observer
Sequence naming who took responsibility for it. Each version after the first lists the SR of
the version before in the Predecessor Documents Sequence (C.17.2.2), an amendment included.

Every UID is derived from the report and the version (pydicom's ``generate_uid`` with entropy
sources), so building a version's objects again gives the same instances: storing them twice
stores them once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    UID,
    BasicTextSRStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    KeyObjectSelectionDocumentStorage,
    generate_uid,
)

CHARSET = "ISO_IR 192"  # UTF-8, PS3.3 C.12.1.1.2
MANUFACTURER = "pacs"
LOINC = "LN"
REPORT_CODE = ("18748-4", LOINC, "Diagnostic imaging report")
FINDINGS_SECTION = ("121070", "DCM", "Findings")
FINDING = ("121071", "DCM", "Finding")
IMPRESSIONS_SECTION = ("121072", "DCM", "Impressions")
IMPRESSION = ("121073", "DCM", "Impression")
LANGUAGE = ("121049", "DCM", "Language of Content Item and Descendants")
CHINESE = ("zh-CN", "RFC5646", "Chinese (China)")
OBSERVER_TYPE = ("121005", "DCM", "Observer Type")
PERSON = ("121006", "DCM", "Person")
PERSON_NAME = ("121008", "DCM", "Person Observer Name")
KEY_OBJECTS_TITLE = ("113000", "DCM", "Of Interest")  # CID 7010
KEY_OBJECT_DESCRIPTION = ("113012", "DCM", "Key Object Description")
SERIES_NUMBERS = {"sr": 9001, "ko": 9002, "pdf": 9003}  # after the modality's series


@dataclass(frozen=True)
class Identity:
    """Who and what the objects are about: the order's patient and study."""

    patient_name: str  # PN with its groups: ZHANG^SAN=张^三
    patient_id: str
    issuer: str
    birth_date: str  # DA
    sex: str
    study_instance_uid: str
    study_date: str  # DA
    study_time: str  # TM
    accession_number: str
    referring_physician: str
    study_id: str
    procedure_text: str
    placer_number: str
    filler_number: str


@dataclass(frozen=True)
class Version:
    """The version the objects record."""

    report: int
    number: int
    status: str  # P, F, C
    findings: str
    impression: str
    author: str
    author_name: str
    signed_at: datetime  # the hospital's wall clock
    verifier: str
    verifier_name: str
    verified_at: datetime | None
    key_images: list[dict[str, str]]
    uid_root: str | None = None


def object_uid(version: Version, identity: Identity, kind: str, number: int | None = None) -> UID:
    """The SOP Instance UID of a version's ``kind`` of object ("sr", "ko", "pdf"): always the same."""
    return generate_uid(prefix=version.uid_root or PYDICOM_ROOT_UID, entropy_srcs=[
        "pacs.report", identity.study_instance_uid, str(version.report),
        str(version.number if number is None else number), kind])


def series_uid(version: Version, identity: Identity, kind: str) -> UID:
    """One series per report and kind of object, its versions the series' instances."""
    return generate_uid(prefix=version.uid_root or PYDICOM_ROOT_UID, entropy_srcs=[
        "pacs.report.series", identity.study_instance_uid, str(version.report), kind])


def _code(code: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _da(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def _tm(moment: datetime) -> str:
    return moment.strftime("%H%M%S")


def _pn(name: str) -> str:
    """A signer's display name as PN (PS3.5 6.2.1.1): a Han name whole in the ideographic
    group's family name, any other in the alphabetic group's."""
    name = name.replace("^", " ").replace("=", " ")[:64]
    return name if name.isascii() else f"={name}^"


def _common(ds: Dataset, identity: Identity, *, sop_class: str, sop_instance: str, modality: str,
            series: str, series_number: int, instance_number: int, made: datetime) -> None:
    """Patient (C.7.1.1), General Study (C.7.2.1), the series, General Equipment (C.7.5.1) and
    SOP Common (C.12.1) modules."""
    ds.SpecificCharacterSet = CHARSET
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.InstanceCreationDate, ds.InstanceCreationTime = _da(made), _tm(made)
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    if identity.issuer:
        ds.IssuerOfPatientID = identity.issuer
    ds.PatientBirthDate = identity.birth_date
    ds.PatientSex = identity.sex if identity.sex in ("M", "F", "O") else ""
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.StudyDate = identity.study_date
    ds.StudyTime = identity.study_time
    ds.ReferringPhysicianName = identity.referring_physician
    ds.StudyID = identity.study_id[:16]
    ds.AccessionNumber = identity.accession_number[:16]
    if identity.procedure_text:
        ds.StudyDescription = identity.procedure_text[:64]
    ds.Modality = modality
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.Manufacturer = MANUFACTURER


def _meta(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def _requests(identity: Identity) -> list[Dataset]:
    """Referenced Request Sequence (C.17.2): the order the document answers."""
    item = Dataset()
    item.StudyInstanceUID = identity.study_instance_uid
    item.ReferencedStudySequence = []
    item.AccessionNumber = identity.accession_number[:16]
    item.PlacerOrderNumberImagingServiceRequest = identity.placer_number[:16]
    item.FillerOrderNumberImagingServiceRequest = identity.filler_number[:16]
    item.RequestedProcedureID = identity.study_id[:16]
    item.RequestedProcedureDescription = identity.procedure_text[:64]
    item.RequestedProcedureCodeSequence = []
    return [item]


def _reference(study: str, series: str, sop_class: str, sop_instance: str) -> Dataset:
    """One item of a Hierarchical SOP Instance Reference (C.17.2.1, Table C.17-3)."""
    instance = Dataset()
    instance.ReferencedSOPClassUID = sop_class
    instance.ReferencedSOPInstanceUID = sop_instance
    series_item = Dataset()
    series_item.SeriesInstanceUID = series
    series_item.ReferencedSOPSequence = [instance]
    item = Dataset()
    item.StudyInstanceUID = study
    item.ReferencedSeriesSequence = [series_item]
    return item


def _evidence(study: str, images: list[dict[str, str]]) -> list[Dataset]:
    """Current Requested Procedure Evidence Sequence: the images, by series (C.17.2.3)."""
    by_series: dict[str, list[Dataset]] = {}
    for image in images:
        instance = Dataset()
        instance.ReferencedSOPClassUID = image["sop_class"]
        instance.ReferencedSOPInstanceUID = image["sop"]
        by_series.setdefault(image["series"], []).append(instance)
    item = Dataset()
    item.StudyInstanceUID = study
    series_items = []
    for series, instances in by_series.items():
        series_item = Dataset()
        series_item.SeriesInstanceUID = series
        series_item.ReferencedSOPSequence = instances
        series_items.append(series_item)
    item.ReferencedSeriesSequence = series_items
    return [item]


def _item(relationship: str, value_type: str, concept: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [_code(concept)]
    return item


def _text(relationship: str, concept: tuple[str, str, str], value: str) -> Dataset:
    item = _item(relationship, "TEXT", concept)
    item.TextValue = value
    return item


def _observer(name: str) -> list[Dataset]:
    """TID 1002 Observer Context: a person, by name."""
    kind = _item("HAS OBS CONTEXT", "CODE", OBSERVER_TYPE)
    kind.ConceptCodeSequence = [_code(PERSON)]
    person = _item("HAS OBS CONTEXT", "PNAME", PERSON_NAME)
    person.PersonName = _pn(name)
    return [kind, person]


def _container(relationship: str, concept: tuple[str, str, str], children: list[Dataset]) -> Dataset:
    item = _item(relationship, "CONTAINER", concept)
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = children
    return item


def _template(identifier: str) -> list[Dataset]:
    item = Dataset()
    item.MappingResource = "DCMR"
    item.TemplateIdentifier = identifier
    return [item]


def basic_text_sr(version: Version, identity: Identity) -> Dataset:
    """The Basic Text SR of ``version`` (PS3.3 A.35.1), TID 2000."""
    ds = Dataset()
    made = version.verified_at or version.signed_at
    _common(ds, identity, sop_class=BasicTextSRStorage, sop_instance=object_uid(version, identity, "sr"),
            modality="SR", series=series_uid(version, identity, "sr"), series_number=SERIES_NUMBERS["sr"],
            instance_number=version.number, made=made)
    ds.SeriesDescription = "诊断报告"
    ds.ReferencedPerformedProcedureStepSequence = []  # SR Document Series, type 2 (C.17.1)
    # SR Document General (C.17.2)
    ds.ContentDate, ds.ContentTime = _da(made), _tm(made)
    final = version.status != "P"
    ds.CompletionFlag = "COMPLETE" if final else "PARTIAL"
    ds.VerificationFlag = "VERIFIED" if final else "UNVERIFIED"
    ds.PreliminaryFlag = "FINAL" if final else "PRELIMINARY"
    if final:
        observer = Dataset()
        observer.VerifyingObserverName = _pn(version.verifier_name or version.verifier
                                             or version.author_name or version.author)
        observer.VerifyingObserverIdentificationCodeSequence = []
        observer.VerifyingOrganization = MANUFACTURER
        observer.VerificationDateTime = made.strftime("%Y%m%d%H%M%S")
        ds.VerifyingObserverSequence = [observer]
    if version.number > 1:
        ds.PredecessorDocumentsSequence = [_reference(
            identity.study_instance_uid, str(series_uid(version, identity, "sr")), BasicTextSRStorage,
            str(object_uid(version, identity, "sr", version.number - 1)))]
    ds.ReferencedRequestSequence = _requests(identity)
    ds.PerformedProcedureCodeSequence = []
    # SR Document Content (C.17.3): the root container, TID 2000
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(REPORT_CODE)]
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentTemplateSequence = _template("2000")
    language = _item("HAS CONCEPT MOD", "CODE", LANGUAGE)
    language.ConceptCodeSequence = [_code(CHINESE)]
    children = [language, *_observer(version.author_name or version.author)]
    if version.findings.strip():
        children.append(_container("CONTAINS", FINDINGS_SECTION, [_text("CONTAINS", FINDING, version.findings)]))
    if version.impression.strip():
        children.append(_container("CONTAINS", IMPRESSIONS_SECTION,
                                   [_text("CONTAINS", IMPRESSION, version.impression)]))
    ds.ContentSequence = children
    return _meta(ds)


def key_object_selection(version: Version, identity: Identity) -> Dataset | None:
    """The Key Object Selection document of the version's key images (PS3.3 A.35.4, TID 2010),
    or None when none were marked."""
    images = [i for i in version.key_images if i.get("sop") and i.get("series") and i.get("sop_class")]
    if not images:
        return None
    ds = Dataset()
    made = version.verified_at or version.signed_at
    _common(ds, identity, sop_class=KeyObjectSelectionDocumentStorage,
            sop_instance=object_uid(version, identity, "ko"), modality="KO",
            series=series_uid(version, identity, "ko"), series_number=SERIES_NUMBERS["ko"],
            instance_number=version.number, made=made)
    ds.SeriesDescription = "关键图像"
    ds.ReferencedPerformedProcedureStepSequence = []  # Key Object Document Series, type 2
    # Key Object Document (C.17.6.2)
    ds.ContentDate, ds.ContentTime = _da(made), _tm(made)
    ds.ReferencedRequestSequence = _requests(identity)
    ds.CurrentRequestedProcedureEvidenceSequence = _evidence(identity.study_instance_uid, images)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(KEY_OBJECTS_TITLE)]
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentTemplateSequence = _template("2010")
    children = [*_observer(version.author_name or version.author),
                _text("CONTAINS", KEY_OBJECT_DESCRIPTION, f"诊断报告第 {version.number} 版的关键图像")]
    for image in images:
        item = Dataset()  # an IMAGE item of TID 2010 has no concept name
        item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
        reference = Dataset()
        reference.ReferencedSOPClassUID = image["sop_class"]
        reference.ReferencedSOPInstanceUID = image["sop"]
        item.ReferencedSOPSequence = [reference]
        children.append(item)
    ds.ContentSequence = children
    return _meta(ds)


def encapsulated_pdf(version: Version, identity: Identity, pdf: bytes, title: str) -> Dataset:
    """The version's PDF as Encapsulated PDF (PS3.3 A.45.1)."""
    ds = Dataset()
    made = version.verified_at or version.signed_at
    _common(ds, identity, sop_class=EncapsulatedPDFStorage, sop_instance=object_uid(version, identity, "pdf"),
            modality="DOC", series=series_uid(version, identity, "pdf"), series_number=SERIES_NUMBERS["pdf"],
            instance_number=version.number, made=made)
    ds.SeriesDescription = "诊断报告 PDF"
    ds.ConversionType = "WSD"  # SC Equipment (C.8.6.1): made at a workstation
    # Encapsulated Document (C.24.2)
    ds.ContentDate, ds.ContentTime = _da(made), _tm(made)
    ds.AcquisitionDateTime = made.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the document names the patient
    ds.DocumentTitle = title[:64]
    ds.ConceptNameCodeSequence = [_code(REPORT_CODE)]
    ds.VerificationFlag = "VERIFIED" if version.status != "P" else "UNVERIFIED"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")  # OB of even length
    ds.EncapsulatedDocumentLength = len(pdf)
    return _meta(ds)

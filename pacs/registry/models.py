"""Registry tables: patients and their identifiers, visits, imaging orders, procedure steps.

Columns that DICOM or HL7 carry cite their tag or field. Clinical times (birth date, scheduled
start) are local times as HL7 and DICOM send them; system timestamps are aware UTC.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from pacs.db import UTCDateTime, utcnow


class PatientClass(StrEnum):
    """HL7 table 0004, reduced to what radiology distinguishes."""

    OUTPATIENT = "outpatient"
    EMERGENCY = "emergency"
    INPATIENT = "inpatient"
    PREADMIT = "preadmit"
    OTHER = "other"


class VisitStatus(StrEnum):
    ACTIVE = "active"
    DISCHARGED = "discharged"
    CANCELLED = "cancelled"


class OrderStatus(StrEnum):
    """Where a requested procedure stands (IHE RAD TF-1 scheduled workflow)."""

    SCHEDULED = "scheduled"
    ARRIVED = "arrived"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    IMAGES_RECEIVED = "images_received"
    REPORTED = "reported"  # a report signed (preliminary or final)
    VERIFIED = "verified"  # the report final: signed or verified by an attending
    CANCELLED = "cancelled"
    DISCONTINUED = "discontinued"


class StepStatus(StrEnum):
    """Scheduled Procedure Step Status (0040,0020) and the MPPS states that end it."""

    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    STARTED = "STARTED"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"
    CANCELLED = "CANCELLED"


# A search key of the desk's patient search (pacs.registry.search): compared byte by byte on
# every database (PostgreSQL's "C" collation; SQLite's BINARY is the default), so that a prefix
# is a range of the key's index whatever the database's locale.
SEARCH_KEY = String().with_variant(String(collation="C"), "postgresql")


class Patient(SQLModel, table=True):
    """A person the department images. A merged patient keeps its row and points onward."""

    __tablename__ = "patient"
    # Name wildcards ignore case: ZHANG* is a range on this index, not a scan (migration 0008).
    __table_args__ = (Index("ix_patient_name_alphabetic_upper", text("upper(name_alphabetic)")),)

    id: int | None = Field(default=None, primary_key=True)
    patient_id: str = Field(index=True)  # (0010,0020) LO, the identifier the PACS presents
    issuer: str = ""  # (0010,0021) LO Issuer of Patient ID
    family_name: str = ""  # as sent (Han characters for a Chinese name)
    given_name: str = ""
    name_alphabetic: str = Field(default="", index=True)  # (0010,0010) PN alphabetic, ZHANG^SAN
    name_ideographic: str = Field(default="", index=True)  # (0010,0010) PN ideographic, 张^三
    name_phonetic: str = ""
    name_override: str | None = None  # analyst-set alphabetic group; wins over pinyin
    sex: str = ""  # (0010,0040) CS: M, F, O
    birth_date: date | None = None  # (0010,0030) DA
    address: str = ""  # PID-11
    phone: str = ""  # PID-13
    national_id: str = Field(default="", index=True)  # PID-19 or an NI identifier (resident ID card number)
    merged_into: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("patient.id"), index=True)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # Search keys, kept in step with the name and phone by the registry service (migration 0011):
    search_name: str = Field(default="", sa_type=SEARCH_KEY, index=True)  # 张三: the Han name, no separators
    search_pinyin: str = Field(default="", sa_type=SEARCH_KEY, index=True)  # ZHANGSAN; ü as U (LV, LYU: LU)
    search_initials: str = Field(default="", sa_type=SEARCH_KEY, index=True)  # ZS: a letter per syllable
    search_phone: str = Field(default="", sa_type=SEARCH_KEY, index=True)  # PID-13 digits: 13800138000


class PatientIdentifier(SQLModel, table=True):
    """Every identifier a patient is known by (PID-3 repetitions, with their authority)."""

    __tablename__ = "patient_identifier"
    __table_args__ = (UniqueConstraint("value", "authority", name="uq_identifier_value_authority"),)

    id: int | None = Field(default=None, primary_key=True)
    patient: int = Field(foreign_key="patient.id", index=True)
    value: str = Field(index=True)  # CX.1
    authority: str = ""  # CX.4 assigning authority (namespace ID)
    type_code: str = ""  # CX.5 identifier type: MR, PI, NI, ...
    active: bool = True  # False once replaced by an A47 or kept only as a merge alias


class Visit(SQLModel, table=True):
    """An encounter (PV1): outpatient, emergency or inpatient stay."""

    __tablename__ = "visit"

    id: int | None = Field(default=None, primary_key=True)
    patient: int = Field(foreign_key="patient.id", index=True)
    visit_number: str = Field(default="", index=True)  # PV1-19, (0038,0010) Admission ID
    patient_class: str = PatientClass.OUTPATIENT  # PV1-2
    ward: str = ""  # PV1-3.1 point of care
    room: str = ""  # PV1-3.2
    bed: str = ""  # PV1-3.3
    attending_doctor: str = ""  # PV1-7, PN
    admitted_at: datetime | None = Field(default=None, sa_type=DateTime)  # PV1-44, local time
    discharged_at: datetime | None = Field(default=None, sa_type=DateTime)  # PV1-45, local time
    status: str = VisitStatus.ACTIVE
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ImagingOrder(SQLModel, table=True):
    """A requested procedure: one ORC/OBR group or one ServiceRequest."""

    __tablename__ = "imaging_order"
    __table_args__ = (Index("ix_order_placer", "placer_number", "placer_authority"),)

    id: int | None = Field(default=None, primary_key=True)
    patient: int = Field(foreign_key="patient.id", index=True)
    visit: int | None = Field(default=None, foreign_key="visit.id")
    placer_number: str = ""  # ORC-2 / OBR-2, (0040,2016)
    placer_authority: str = ""  # ORC-2.2 namespace
    filler_number: str = Field(default="", index=True)  # ORC-3 / OBR-3, (0040,2017)
    accession_number: str = Field(default="", index=True)  # (0008,0050) SH
    requested_procedure_id: str = ""  # (0040,1001) SH
    procedure_code: str = ""  # (0032,1064) code value
    procedure_scheme: str = ""  # coding scheme designator
    procedure_text: str = ""  # (0032,1060) Requested Procedure Description
    body_part: str = ""  # (0018,0015) from the procedure table
    reason: str = ""  # (0040,1002) Reason for the Requested Procedure
    priority: str = "routine"  # (0040,1003): STAT, HIGH, ROUTINE, MEDIUM, LOW
    referring_physician: str = ""  # (0008,0090) PN
    requesting_physician: str = ""  # (0032,1032) PN
    department: str = ""  # (0032,1033) Requesting Service
    requisition_number: str = Field(default="", index=True)  # a paper requisition's number (desk booking)
    study_instance_uid: str = Field(unique=True)  # (0020,000D), fixed at scheduling
    status: str = Field(default=OrderStatus.SCHEDULED, index=True)
    source_message: int | None = None  # message store id that created it
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ProcedureStep(SQLModel, table=True):
    """A Scheduled Procedure Step (PS3.4 K.6.1.2.1): what one modality does, when, where."""

    __tablename__ = "procedure_step"
    __table_args__ = (Index("ix_step_status_start", "status", "start"),)

    id: int | None = Field(default=None, primary_key=True)
    order: int = Field(foreign_key="imaging_order.id", index=True)
    sps_id: str = ""  # (0040,0009) Scheduled Procedure Step ID
    modality: str = Field(default="", index=True)  # (0008,0060)
    station_ae_title: str = Field(default="", index=True)  # (0040,0001)
    station_name: str = ""  # (0040,0010)
    location: str = ""  # (0040,0011)
    start: datetime | None = Field(default=None, sa_type=DateTime)  # (0040,0002)+(0040,0003), local
    # The same start as DICOM strings, so that date and time ranges match as PS3.4 C.2.2.2.5
    # says (independently) with plain string comparison on every database.
    start_date: str = Field(default="", index=True)  # (0040,0002) DA YYYYMMDD
    start_time: str = ""  # (0040,0003) TM HHMMSS
    duration_minutes: int | None = None
    protocol_code: str = ""  # (0040,0008) Scheduled Protocol Code Sequence
    protocol_scheme: str = ""
    protocol_text: str = ""
    description: str = ""  # (0040,0007)
    performing_physician: str = ""  # (0040,0006) PN
    status: str = Field(default=StepStatus.SCHEDULED)  # (0040,0020)


class PerformedStepStatus(StrEnum):
    """Performed Procedure Step Status (0040,0252), PS3.3 C.4.14."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


class PerformedProcedureStep(SQLModel, table=True):
    """A Modality Performed Procedure Step (PS3.4 F.7, IHE RAD-6/RAD-7) as the modality reported it."""

    __tablename__ = "performed_procedure_step"

    id: int | None = Field(default=None, primary_key=True)
    sop_instance_uid: str = Field(unique=True)  # (0000,1000) Affected SOP Instance UID
    status: str = PerformedStepStatus.IN_PROGRESS  # (0040,0252)
    calling_ae_title: str = ""
    order: int | None = Field(default=None, foreign_key="imaging_order.id", index=True)
    step_ids: list[int] = Field(default_factory=list, sa_type=JSON)  # the SPS it performs
    patient_id: str = ""  # (0010,0020) as the modality sent it
    modality: str = ""  # (0008,0060)
    station_ae_title: str = ""  # (0040,0241) Performed Station AE Title
    pps_id: str = ""  # (0040,0253) Performed Procedure Step ID
    description: str = ""  # (0040,0254)
    started: datetime | None = Field(default=None, sa_type=DateTime)  # (0040,0244)+(0040,0245), local
    ended: datetime | None = Field(default=None, sa_type=DateTime)  # (0040,0250)+(0040,0251), local
    performed_series: list[dict[str, object]] = Field(default_factory=list, sa_type=JSON)  # (0040,0340)
    attributes: dict[str, object] = Field(default_factory=dict, sa_type=JSON)  # the last dataset, DICOM JSON
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class OrderEvent(SQLModel, table=True):
    """One transition of an order or step, timestamped and attributed."""

    __tablename__ = "order_event"

    id: int | None = Field(default=None, primary_key=True)
    order: int = Field(foreign_key="imaging_order.id", index=True)
    step: int | None = Field(default=None, foreign_key="procedure_step.id")
    from_status: str = ""
    to_status: str
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    by: str = ""  # "hl7:HIS/HOSP#MSG0001", "fhir:ServiceRequest", "mpps:CT1", "user:alice"
    note: str = ""


class RegistrySequence(SQLModel, table=True):
    """A counter the registry hands numbers out of, one per name (``walk_in:20261207``): the
    same number never twice, whichever process asks (:func:`pacs.registry.service.next_number`)."""

    __tablename__ = "registry_sequence"

    name: str = Field(primary_key=True)
    value: int = 0

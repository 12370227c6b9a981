"""Report tables: one report per imaging order, its working draft, and its signed versions.

A signed version is never changed: a correction is a new version with its reason (HL7 v2.5.1
OBR-25 result status P preliminary, F final, C correction; FHIR R4 DiagnosticReport.status
preliminary, final, corrected). The draft is the radiologist's working text, saved as they type,
and belongs to whoever holds the claim.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, UniqueConstraint
from sqlmodel import Field, SQLModel

from pacs.db import UTCDateTime, utcnow


class ReportStatus(StrEnum):
    """Where a report stands; the order's own status follows it (reported, verified)."""

    DRAFT = "draft"  # claimed and being written; nothing signed yet
    PRELIMINARY = "preliminary"  # signed by a resident, waiting for an attending (OBR-25 P)
    FINAL = "final"  # signed or verified by an attending (OBR-25 F)
    CORRECTED = "corrected"  # a final report amended after signing (OBR-25 C)


class VersionStatus(StrEnum):
    """HL7 table 0123 values a signed version is sent with (OBR-25)."""

    PRELIMINARY = "P"
    FINAL = "F"
    CORRECTED = "C"


class Report(SQLModel, table=True):
    """The report of one imaging order, with its draft and who is reading it."""

    __tablename__ = "report"

    id: int | None = Field(default=None, primary_key=True)
    order: int = Field(foreign_key="imaging_order.id", unique=True)
    study_instance_uid: str = Field(index=True)  # (0020,000D) of the order
    status: str = Field(default=ReportStatus.DRAFT, index=True)
    template: str = ""  # the template's key in mappings/ it was started from
    # The claim: one radiologist reads a study at a time.
    claimed_by: str = Field(default="", index=True)  # user name
    claimed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The working draft, saved as the radiologist types.
    findings: str = ""  # 检查所见
    impression: str = ""  # 诊断意见
    key_images: list[dict[str, str]] = Field(default_factory=list, sa_type=JSON)  # {series, sop, sop_class, frame?}
    critical: bool = False  # 危急值
    critical_told: str = ""  # the person told of a critical result (name, role)
    critical_told_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    draft_saved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    draft_revision: int = 0  # bumped by every save; a stale save is refused
    current_version: int = 0  # number of the latest signed version, 0 if none
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ReportVersion(SQLModel, table=True):
    """A signed version, written once and never updated.

    An attending's verification of a preliminary is a new version (F) naming the verifier; an
    amendment is a new version (C) with its reason.
    """

    __tablename__ = "report_version"
    __table_args__ = (UniqueConstraint("report", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    report: int = Field(foreign_key="report.id", index=True)
    number: int  # 1, 2, ... in signing order
    status: str  # VersionStatus: P, F, C
    findings: str
    impression: str
    key_images: list[dict[str, str]] = Field(default_factory=list, sa_type=JSON)
    critical: bool = False
    critical_told: str = ""
    critical_told_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    author: str  # user name of who wrote and signed it
    author_name: str = ""  # display name, as printed and sent (OBR-32 / DiagnosticReport.resultsInterpreter)
    signed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    verifier: str = ""  # the attending who verified it, when this F follows a P
    verifier_name: str = ""
    verified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    reason: str = ""  # why an amendment was made (required for C)
    sr_sop_instance_uid: str = ""  # the Basic Text SR stored in the archive for this version
    pdf_sop_instance_uid: str = ""  # the Encapsulated PDF stored for this version


class ReportPhrase(SQLModel, table=True):
    """A radiologist's own phrase (常用语), inserted into the findings or impression by its
    abbreviation. The department's shared phrases are in the mappings (``report_phrases.yaml``)."""

    __tablename__ = "report_phrase"
    __table_args__ = (UniqueConstraint("owner", "abbreviation"),)

    id: int | None = Field(default=None, primary_key=True)
    owner: str = Field(index=True)  # user name
    abbreviation: str  # what is typed to find it, e.g. "fjzc"
    title: str = ""  # as listed
    text: str  # what is inserted
    modality: str = ""  # offered for this modality only; "" for every one
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

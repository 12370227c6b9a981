"""The audit log's tables: one row per event, the patients and studies it concerns, and how far
the syslog forwarder has got."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, Integer
from sqlmodel import Field, SQLModel

from pacs.db import UTCDateTime, utcnow

# 64-bit ids on PostgreSQL; SQLite's rowid is 64-bit already, and only INTEGER aliases it.
ID = BigInteger().with_variant(Integer(), "sqlite")


class AuditEvent(SQLModel, table=True):
    """Who did what, from where, when, with what outcome (DICOM PS3.15 A.5.1 EventIdentification
    and ActiveParticipant, flattened)."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_event_id_recorded_at", "event_id", "recorded_at"),)

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True))
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)  # EventDateTime
    event_id: str  # EventID, a DCM code of PS3.16 CID 400 (110104, 110112 ...)
    event_type: str = ""  # EventTypeCode(s), DCM codes, backslash-separated (110120, 110131 ...)
    action: str  # EventActionCode: C, R, U, D, E
    outcome: int = 0  # EventOutcomeIndicator: 0, 4, 8, 12
    user_id: str = Field(default="", index=True)  # the requesting participant: AE title, HL7 sender, address, user
    user_kind: str = ""  # dicom, hl7, fhir, http, user, system
    address: str = ""  # NetworkAccessPointID of the requestor
    target: str = ""  # a destination: a C-MOVE destination AE title, a backup folder
    description: str = ""  # EventOutcomeDescription, or a one-line summary
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class AuditObject(SQLModel, table=True):
    """A patient or study an event concerns (ParticipantObjectIdentification), searchable."""

    __tablename__ = "audit_object"
    __table_args__ = (Index("ix_audit_object_kind_value", "kind", "value"),)

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True))
    event: int = Field(sa_column=Column(ID, ForeignKey("audit_event.id"), index=True, nullable=False))
    kind: str  # patient, study
    value: str  # Patient ID (0010,0020) or Study Instance UID (0020,000D)


class AuditCursor(SQLModel, table=True):
    """The last audit event a forwarder (the syslog sender) has delivered."""

    __tablename__ = "audit_cursor"

    name: str = Field(primary_key=True)
    last_id: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

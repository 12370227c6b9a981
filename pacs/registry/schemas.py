"""What a message asks of the registry, independent of where it came from.

The interface engine's mappings turn an HL7 v2 message or a FHIR resource into these; the
registry services take nothing else. A field left ``None`` was not sent and is not touched; an
empty string was sent as HL7's explicit null (``""``) and clears the stored value.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from pydantic import BaseModel, Field


class OrderAction(StrEnum):
    """What an order control code (ORC-1, HL7 table 0119) asks for."""

    NEW = "new"  # NW
    CHANGE = "change"  # XO
    CANCEL = "cancel"  # CA, OC, CR
    DISCONTINUE = "discontinue"  # DC, OD
    STATUS = "status"  # SC
    HOLD = "hold"  # HD, OH
    RELEASE = "release"  # RL, OE
    NUMBER_ASSIGNED = "number_assigned"  # NA: the placer's number for a filler order (IHE RAD-3)


class IdentifierIn(BaseModel):
    value: str
    authority: str = ""
    type_code: str = ""


class PatientIn(BaseModel):
    identifiers: list[IdentifierIn] = Field(default_factory=list)
    patient_id: IdentifierIn | None = None
    family_name: str | None = None
    given_name: str | None = None
    name_pinyin: str | None = None
    sex: str | None = None
    birth_date: date | None = None
    address: str | None = None
    phone: str | None = None
    national_id: str | None = None


class VisitIn(BaseModel):
    visit_number: str | None = None
    patient_class: str | None = None
    ward: str | None = None
    room: str | None = None
    bed: str | None = None
    attending_doctor: str | None = None
    admitted_at: datetime | None = None
    discharged_at: datetime | None = None


class StepIn(BaseModel):
    sps_id: str | None = None
    modality: str | None = None
    station_ae_title: str | None = None
    station_name: str | None = None
    location: str | None = None
    start: datetime | None = None
    duration_minutes: int | None = None
    protocol_code: str | None = None
    protocol_scheme: str | None = None
    protocol_text: str | None = None
    description: str | None = None
    performing_physician: str | None = None


class OrderIn(BaseModel):
    control: str = "NW"
    action: OrderAction = OrderAction.NEW
    placer_number: str | None = None
    placer_authority: str | None = None
    filler_number: str | None = None
    accession_number: str | None = None
    requested_procedure_id: str | None = None
    procedure_code: str | None = None
    procedure_scheme: str | None = None
    procedure_text: str | None = None
    body_part: str | None = None
    reason: str | None = None
    priority: str | None = None
    referring_physician: str | None = None
    requesting_physician: str | None = None
    department: str | None = None
    requisition_number: str | None = None  # a paper requisition's number (desk booking)
    study_instance_uid: str | None = None
    status: str | None = None
    steps: list[StepIn] = Field(default_factory=list)


class Action(StrEnum):
    """What a whole message does (chosen from its type and trigger event)."""

    PATIENT_UPDATE = "patient.update"  # ADT A01 A04 A05 A08 A28 A31 (and A02 A06 A07)
    PATIENT_MERGE = "patient.merge"  # ADT A40
    IDENTIFIER_CHANGE = "patient.change_identifier"  # ADT A47
    VISIT_DISCHARGE = "visit.discharge"  # ADT A03
    VISIT_CANCEL_ADMIT = "visit.cancel_admit"  # ADT A11
    VISIT_CANCEL_DISCHARGE = "visit.cancel_discharge"  # ADT A13
    ORDERS = "orders"  # ORM^O01, OMI^O23, FHIR ServiceRequest


class Mapped(BaseModel):
    """A whole message after mapping: the stage the message store keeps as TRANSFORMED."""

    event: str
    action: Action
    patient: PatientIn = Field(default_factory=PatientIn)
    prior_identifiers: list[IdentifierIn] = Field(default_factory=list)  # MRG-1
    visit: VisitIn | None = None
    orders: list[OrderIn] = Field(default_factory=list)

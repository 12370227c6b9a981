"""A signed radiology report to the HIS as HL7 ORU^R01 (HL7 v2.5.1 ch. 7.3.1; IHE RAD TF-2
"Results" and the DICOM PS3.17 Annex "HL7 V2 report" practice).

One message per signed version, in the HIS's version (``[his] version``) and character set
(``[his] charset``, MSH-18):

- PID, and PV1 when the order has a visit;
- ORC-1 RE (observations to follow), ORC-2 placer and ORC-3 filler numbers;
- OBR-2/OBR-3 the same, OBR-4 the procedure, OBR-7 when the study was made, OBR-18 the
  accession number, OBR-22 when this version was signed, OBR-24 the modality (HL7 table 0074
  diagnostic service section), OBR-25 the result status (HL7 table 0123: P preliminary, F
  final, C correction), OBR-32 the principal result interpreter (the attending who verified,
  else the author) and OBR-33 the assistant (the resident whose preliminary was verified);
- OBX: the Study Instance UID (HD, DCM 110180), then the findings and the impression one TX
  line per OBX (LOINC 18782-3 and 19005-8), each with OBX-11 the same status;
- NTE: the critical result (危急值) and whom it was told, and an amendment's reason.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from hl7apy.core import Message

from pacs.integration.ack import next_control_id
from pacs.integration.his import PATIENT_CLASS_OUT
from pacs.integration.hl7v2 import escape
from pacs.registry.models import ImagingOrder, Patient, Visit
from pacs.reporting.models import ReportVersion
from pacs.settings import HISDestination, Settings

MESSAGE_TYPE = "ORU^R01^ORU_R01"
STUDY_UID = "110180^Study Instance UID^DCM"  # PS3.16 DCM code for the study UID observation
FINDINGS = "18782-3^Radiology Study observation (narrative)^LN"
IMPRESSION = "19005-8^Radiology Imaging study [Impression] (narrative)^LN"
ORDER_CONTROL = "RE"  # HL7 table 0119: observations/performed service to follow
ORDER_COMPLETED = "CM"  # HL7 table 0038
# Characters of one OBX-5 value at most, escaped: OBX-5 "varies" is read as ST (199) by a strict
# reader such as hl7apy; longer lines go into several OBX.
TEXT_LINE = 199


def _ts(moment: datetime | None, zone: tzinfo | None) -> str:
    """HL7 TS of an aware moment as the hospital's wall clock (HL7 times carry no zone here)."""
    if moment is None:
        return ""
    if moment.tzinfo is not None:
        moment = moment.astimezone(zone) if zone else moment.astimezone()
    return moment.strftime("%Y%m%d%H%M%S")


def _person(user: str, name: str) -> str:
    """NDL.1 (a CNN: ID & family name & given name) of a signer: the user name as ID, the whole
    display name as family name (a Han name is written whole)."""
    return f"{escape(user).replace('&', ' ')}&{escape(name or user).replace('&', ' ')}"


def _lines(text: str) -> list[str]:
    """The text's lines as escaped TX values (HL7 v2.5.1 2.A.79, 2.7). A line longer than
    :data:`TEXT_LINE` characters once escaped is cut into several, never inside an escape
    sequence; trailing blank lines are dropped."""
    out: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        piece = ""
        for char in line.rstrip():
            if len(piece) + len(escape(char)) > TEXT_LINE:
                out.append(piece)
                piece = ""
            piece += escape(char)
        out.append(piece)
    while out and not out[-1]:
        out.pop()
    return out


def report_message(*, order: ImagingOrder, patient: Patient, visit: Visit | None, version: ReportVersion,
                   modality: str, study_started: datetime | None, his: HISDestination, settings: Settings,
                   zone: tzinfo | None) -> str:
    """ORU^R01 of one signed ``version`` of ``order``'s report, in ``his.version``."""
    message = Message("ORU_R01", version=his.version)
    msh = message.msh
    msh.msh_3 = escape(settings.hl7.application)
    msh.msh_4 = escape(settings.hl7.facility)
    msh.msh_5 = escape(his.application)
    msh.msh_6 = escape(his.facility)
    msh.msh_7 = _ts(datetime.now().astimezone(), zone)
    msh.msh_9 = MESSAGE_TYPE
    msh.msh_10 = next_control_id()
    msh.msh_11 = "P"
    msh.msh_18 = his.charset
    result = message.add_group("ORU_R01_PATIENT_RESULT")
    patient_group = result.add_group("ORU_R01_PATIENT")
    pid = patient_group.pid
    pid.pid_1 = "1"
    pid.pid_3 = f"{escape(patient.patient_id)}^^^{escape(patient.issuer)}"
    name = patient.name_ideographic or patient.name_alphabetic
    pid.pid_5 = "^".join(escape(p) for p in name.split("^")[:2]) or '""'
    if patient.birth_date:
        pid.pid_7 = patient.birth_date.strftime("%Y%m%d")
    if patient.sex:
        pid.pid_8 = escape(patient.sex)
    if visit is not None:
        pv1 = patient_group.add_group("ORU_R01_VISIT").pv1
        pv1.pv1_1 = "1"
        pv1.pv1_2 = PATIENT_CLASS_OUT.get(visit.patient_class, "U")
        if visit.visit_number:
            pv1.pv1_19 = escape(visit.visit_number)
    observation = result.add_group("ORU_R01_ORDER_OBSERVATION")
    orc = observation.orc
    orc.orc_1 = ORDER_CONTROL
    placer = f"{escape(order.placer_number)}^{escape(order.placer_authority)}" if order.placer_number else ""
    filler = f"{escape(order.filler_number or order.accession_number)}^{escape(settings.hl7.application)}"
    if placer:
        orc.orc_2 = placer
    orc.orc_3 = filler
    orc.orc_5 = ORDER_COMPLETED
    obr = observation.obr
    obr.obr_1 = "1"
    if placer:
        obr.obr_2 = placer
    obr.obr_3 = filler
    obr.obr_4 = (f"{escape(order.procedure_code)}^{escape(order.procedure_text)}^{escape(order.procedure_scheme)}"
                 if order.procedure_code else f"^{escape(order.procedure_text)}")
    if study_started is not None:
        obr.obr_7 = study_started.strftime("%Y%m%d%H%M%S")
    if order.accession_number:
        obr.obr_18 = escape(order.accession_number)
    if order.requested_procedure_id:
        obr.obr_19 = escape(order.requested_procedure_id)
    signed = version.verified_at or version.signed_at
    obr.obr_22 = _ts(signed, zone)
    if modality:
        obr.obr_24 = escape(modality[:10])
    obr.obr_25 = version.status
    if version.verifier:
        obr.obr_32 = _person(version.verifier, version.verifier_name)
        obr.obr_33 = _person(version.author, version.author_name)
    else:
        obr.obr_32 = _person(version.author, version.author_name)
    notes = []
    if version.critical:
        told = f"，已通知{version.critical_told}" if version.critical_told else ""
        at = f"（{_ts(version.critical_told_at, zone)}）" if version.critical_told_at else ""
        notes.append(f"危急值{told}{at}")
    if version.reason:
        notes.append(f"更正原因：{version.reason}")
    for number, note in enumerate(notes, 1):
        nte = observation.add_segment("NTE")
        nte.nte_1 = str(number)
        nte.nte_3 = escape(note)
    rows: list[tuple[str, str, str, str]] = [("HD", STUDY_UID, "1", escape(order.study_instance_uid))]
    rows += [("TX", FINDINGS, "2", line) for line in _lines(version.findings)]
    rows += [("TX", IMPRESSION, "3", line) for line in _lines(version.impression)]
    for number, (value_type, code, sub_id, value) in enumerate(rows, 1):
        obx = observation.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(number)
        obx.obx_2 = value_type
        obx.obx_3 = code
        obx.obx_4 = sub_id
        if value:
            obx.obx_5 = value
        obx.obx_11 = version.status
        obx.obx_14 = obr.obr_22.value
    return message.to_er7()

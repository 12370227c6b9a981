"""The audit vocabulary: DICOM PS3.15 A.5 audit messages and the PS3.16 codes they use.

Event IDs are CID 400 "Audit Event ID", event type codes CID 401 ("Audit Event Type Code",
application start/stop, login/logout) and the Security Alert type codes of PS3.15 A.5.3.11;
participant roles are CID 402 ("Audit Active Participant Role ID Code"); object ID types are
RFC 3881's and CID 404 ("Audit Participant Object ID Type Code").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


@dataclass(frozen=True)
class Code:
    """A coded value as the audit message schema writes it (csd-code, codeSystemName, originalText)."""

    value: str
    scheme: str
    meaning: str


def dcm(value: str, meaning: str) -> Code:
    return Code(value, "DCM", meaning)


class Action(StrEnum):
    """EventActionCode (PS3.15 A.5.1)."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.1)."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # the action was not carried out, or only in part
    SERIOUS_FAILURE = 8  # the action was not carried out: a fault
    MAJOR_FAILURE = 12  # the action made the system unavailable


# -- Event IDs: PS3.16 CID 400 ----------------------------------------------------------------
APPLICATION_ACTIVITY = dcm("110100", "Application Activity")
AUDIT_LOG_USED = dcm("110101", "Audit Log Used")
BEGIN_TRANSFERRING = dcm("110102", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = dcm("110105", "DICOM Study Deleted")
EXPORT = dcm("110106", "Export")
IMPORT = dcm("110107", "Import")
NETWORK_ENTRY = dcm("110108", "Network Entry")
ORDER_RECORD = dcm("110109", "Order Record")
PATIENT_RECORD = dcm("110110", "Patient Record")
PROCEDURE_RECORD = dcm("110111", "Procedure Record")
QUERY = dcm("110112", "Query")
SECURITY_ALERT = dcm("110113", "Security Alert")
USER_AUTHENTICATION = dcm("110114", "User Authentication")

EVENT_IDS = {code.value: code for code in (
    APPLICATION_ACTIVITY, AUDIT_LOG_USED, BEGIN_TRANSFERRING, INSTANCES_ACCESSED, INSTANCES_TRANSFERRED,
    STUDY_DELETED, EXPORT, IMPORT, NETWORK_ENTRY, ORDER_RECORD, PATIENT_RECORD, PROCEDURE_RECORD, QUERY,
    SECURITY_ALERT, USER_AUTHENTICATION)}

# -- Event type codes: PS3.16 CID 401 and the Security Alert types of PS3.15 A.5.3.11 ----------
APPLICATION_START = dcm("110120", "Application Start")
APPLICATION_STOP = dcm("110121", "Application Stop")
LOGIN = dcm("110122", "Login")
LOGOUT = dcm("110123", "Logout")
NODE_AUTHENTICATION = dcm("110126", "Node Authentication")
NETWORK_CONFIGURATION = dcm("110128", "Network Configuration")
SECURITY_CONFIGURATION = dcm("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = dcm("110131", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = dcm("110132", "Use of Restricted Function")
AUDIT_RECORDING_STOPPED = dcm("110133", "Audit Recording Stopped")
AUDIT_RECORDING_STARTED = dcm("110134", "Audit Recording Started")
SECURITY_ROLES_CHANGED = dcm("110136", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = dcm("110137", "User security Attributes Changed")

EVENT_TYPES = {code.value: code for code in (
    APPLICATION_START, APPLICATION_STOP, LOGIN, LOGOUT, NODE_AUTHENTICATION, NETWORK_CONFIGURATION,
    SECURITY_CONFIGURATION,
    SOFTWARE_CONFIGURATION, USE_OF_RESTRICTED_FUNCTION, AUDIT_RECORDING_STOPPED, AUDIT_RECORDING_STARTED, SECURITY_ROLES_CHANGED,
    USER_SECURITY_ATTRIBUTES_CHANGED)}

# -- Active participant roles: PS3.16 CID 402 -------------------------------------------------
ROLE_APPLICATION = dcm("110150", "Application")
ROLE_APPLICATION_LAUNCHER = dcm("110151", "Application Launcher")
ROLE_DESTINATION = dcm("110152", "Destination Role ID")
ROLE_SOURCE = dcm("110153", "Source Role ID")
ROLE_DESTINATION_MEDIA = dcm("110154", "Destination Media")
ROLE_SOURCE_MEDIA = dcm("110155", "Source Media")

# -- Participant object ID types: RFC 3881 and PS3.16 CID 404 ----------------------------------
ID_PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
ID_URI = Code("12", "RFC-3881", "URI")
ID_STUDY_INSTANCE_UID = dcm("110180", "Study Instance UID")
ID_SOP_CLASS_UID = dcm("110181", "SOP Class UID")
ID_NODE = dcm("110182", "Node ID")
ID_DEVICE_NAME = dcm("113877", "Device Name")
ID_ACCESSION = Code("ACSN", "HL7", "Accession Number")  # HL7 table 0203

# ParticipantObjectTypeCode and ParticipantObjectTypeCodeRole (RFC 3881 5.5)
OBJECT_PERSON, OBJECT_SYSTEM = 1, 2
ROLE_PATIENT, ROLE_REPORT, ROLE_SECURITY_RESOURCE, ROLE_JOB, ROLE_QUERY = 1, 3, 13, 20, 24

# AuditSourceTypeCode (RFC 3881 5.4): 4 = application server process
SOURCE_APPLICATION_SERVER = "4"

# IOCM rejection note titles (PS3.16 CID 7010 "Key Object Selection Document Title")
REJECTED_FOR_QUALITY = dcm("113001", "Rejected for Quality Reasons")
REJECTED_FOR_PATIENT_SAFETY = dcm("113037", "Rejected for Patient Safety Reasons")
INCORRECT_WORKLIST_ENTRY = dcm("113038", "Incorrect Modality Worklist Entry")
RETENTION_EXPIRED = dcm("113039", "Data Retention Policy Expired")
REJECTION_CODES = {code.value: code for code in (
    REJECTED_FOR_QUALITY, REJECTED_FOR_PATIENT_SAFETY, INCORRECT_WORKLIST_ENTRY, RETENTION_EXPIRED)}


def event_name(value: str) -> str:
    """The meaning of an event ID or event type code, for listings."""
    code = EVENT_IDS.get(value) or EVENT_TYPES.get(value)
    return code.meaning if code else value

"""Every table of the system, imported in one place so that Alembic and tests see them all."""

from pacs.archive.index import Instance, InstanceFile, Series, Study
from pacs.archive.reconciliation import ReconciliationItem
from pacs.archive.storage.tables import PendingReplica, ScrubRun
from pacs.audit.tables import AuditCursor, AuditEvent, AuditObject
from pacs.auth.links import SharedLink
from pacs.auth.models import ApiToken, User
from pacs.integration.message_store import StoredMessage
from pacs.integration.outbox import OutboxItem
from pacs.registry.models import (
    ImagingOrder,
    OrderEvent,
    Patient,
    PatientIdentifier,
    PerformedProcedureStep,
    ProcedureStep,
    Visit,
)
from pacs.reporting.models import Report, ReportPhrase, ReportVersion

__all__ = [
    "ApiToken",
    "AuditCursor",
    "AuditEvent",
    "AuditObject",
    "ImagingOrder",
    "Instance",
    "InstanceFile",
    "OrderEvent",
    "OutboxItem",
    "Patient",
    "PatientIdentifier",
    "PendingReplica",
    "PerformedProcedureStep",
    "ProcedureStep",
    "ReconciliationItem",
    "Report",
    "ReportPhrase",
    "ReportVersion",
    "ScrubRun",
    "Series",
    "SharedLink",
    "StoredMessage",
    "Study",
    "User",
    "Visit",
]

"""Every table of the system, imported in one place so that Alembic and tests see them all."""

from pacs.archive.index import Instance, InstanceFile, Series, Study
from pacs.archive.reconciliation import ReconciliationItem
from pacs.archive.storage.tables import PendingReplica, ScrubRun
from pacs.audit.tables import AuditCursor, AuditEvent, AuditObject
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

__all__ = [
    "ApiToken",
    "User",
    "AuditCursor",
    "AuditEvent",
    "AuditObject",
    "Instance",
    "InstanceFile",
    "Series",
    "Study",
    "ImagingOrder",
    "OrderEvent",
    "OutboxItem",
    "PendingReplica",
    "ReconciliationItem",
    "ScrubRun",
    "Patient",
    "PatientIdentifier",
    "PerformedProcedureStep",
    "ProcedureStep",
    "StoredMessage",
    "Visit",
]

"""/api/audit: search and export the audit log (what ``pacs audit search|export`` do, over HTTP).

Every use of these routes is itself audited ("Audit Log Used", 110101) by the HTTP middleware.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from pacs.audit import service
from pacs.audit.service import Filters
from pacs.http import Offset, ServicesDep
from pacs.auth.access import require
from pacs.auth.roles import Permission

router = APIRouter(prefix="/api/audit", tags=["audit"])


class AuditPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[dict[str, Any]]


def _filters(since: datetime | None, until: datetime | None, event: str | None, action: str | None,
             patient_id: str | None, study_uid: str | None, user: str | None, outcome: int | None) -> Filters:
    for moment in (since, until):
        if moment is not None and moment.tzinfo is None:
            raise HTTPException(422, "since/until need a time zone (e.g. 2026-11-25T08:00:00+08:00 or Z)")
    if outcome not in (None, 0, 4, 8, 12):
        raise HTTPException(422, "outcome is 0 (success), 4 (minor), 8 (serious) or 12 (major failure)")
    return Filters(since=since, until=until, event_id=event, action=action, patient_id=patient_id,
                   study_uid=study_uid, user=user, outcome=outcome)


Since = Annotated[datetime | None, Query(description="recorded at or after (ISO 8601 with a zone)")]
Until = Annotated[datetime | None, Query(description="recorded before (ISO 8601 with a zone)")]
EventQ = Annotated[str | None, Query(description="event ID (DCM code, e.g. 110112) or its name (Query)")]
ActionQ = Annotated[Literal["C", "R", "U", "D", "E"] | None, Query(description="EventActionCode")]
PatientQ = Annotated[str | None, Query(description="Patient ID")]
StudyQ = Annotated[str | None, Query(description="Study Instance UID")]
UserQ = Annotated[str | None, Query(description="who: AE title, HL7 sender, client address or user")]
OutcomeQ = Annotated[int | None, Query(description="EventOutcomeIndicator: 0, 4, 8 or 12")]


@router.get("", response_model=AuditPage, dependencies=[Depends(require(Permission.AUDIT_READ))])
def search_audit(services: ServicesDep, since: Since = None, until: Until = None, event: EventQ = None,
                 action: ActionQ = None, patient_id: PatientQ = None, study_uid: StudyQ = None, user: UserQ = None,
                 outcome: OutcomeQ = None, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                 offset: Offset = 0) -> AuditPage:
    """Audit entries, newest first, filtered by every parameter given."""
    filters = _filters(since, until, event, action, patient_id, study_uid, user, outcome)
    with service.reader(services.db).connect() as connection:
        total, rows = service.search(connection, filters, limit=limit, offset=offset)
    return AuditPage(total=total, offset=offset, limit=limit, items=[service.as_json(r) for r in rows])


@router.get("/export", dependencies=[Depends(require(Permission.AUDIT_READ))])
def export_audit(services: ServicesDep, format: Annotated[Literal["jsonl", "xml"], Query()] = "jsonl",
                 since: Since = None, until: Until = None, event: EventQ = None, action: ActionQ = None,
                 patient_id: PatientQ = None, study_uid: StudyQ = None, user: UserQ = None,
                 outcome: OutcomeQ = None) -> StreamingResponse:
    """Every matching entry, oldest first: JSON lines, or the DICOM audit messages of PS3.15 A.5.1
    in one ``<AuditMessages>`` document."""
    filters = _filters(since, until, event, action, patient_id, study_uid, user, outcome)
    source = services.audit.source

    def lines():  # type: ignore[no-untyped-def]
        with service.reader(services.db).connect() as connection:
            for line in service.export_lines(connection, filters, format, source):
                yield line.encode("utf-8")

    media = "application/xml" if format == "xml" else "application/x-ndjson"
    return StreamingResponse(lines(), media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="audit.{format}"'})

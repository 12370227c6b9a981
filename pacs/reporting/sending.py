"""What a signed report version becomes, enqueued in the signing transaction (the outbox).

``enqueue(session, order, report, version)`` is called by the report service inside the unit of
work that writes the version, so the version and every delivery commit together or not at all.
"""

from __future__ import annotations

from sqlmodel import Session

from pacs.registry.models import ImagingOrder
from pacs.reporting.models import Report, ReportVersion


def enqueue(session: Session, order: ImagingOrder, report: Report, version: ReportVersion) -> None:
    """Add the deliveries of ``version`` to the caller's unit of work."""

"""/api/reconciliation: the list of what arrived and found no order, and attaching it (IHE PIR).

``GET /api/reconciliation`` lists the items (open ones unless ``status`` says otherwise), each
with why it waits and the candidate orders; ``POST /api/reconciliation/{id}/attach`` with
``{"order": 17}``, ``{"accession_number": "A0017"}`` or ``{"patient_id": "P1", "issuer": "HOSP"}``
attaches it in the caller's name (:func:`pacs.archive.reconciliation.attach`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, model_validator
from sqlmodel import Session

from pacs.archive import reconciliation
from pacs.archive.reconciliation import ReconcileError, Status
from pacs.auth.access import Principal, require
from pacs.auth.roles import Permission
from pacs.db import MAX_ROW_ID
from pacs.http import Offset, RowId, ServicesDep, SessionDep
from pacs.registry.models import ImagingOrder, Patient

router = APIRouter(prefix="/api/reconciliation", tags=["reconciliation"])


class ReconciliationPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[dict[str, Any]]


class AttachIn(BaseModel):
    """Where an item goes: an order (by id or accession number), or a patient without an order."""

    order: int | None = None
    accession_number: str | None = None
    patient_id: str | None = None
    issuer: str | None = None  # the Patient ID's assigning authority, when it is ambiguous without

    @model_validator(mode="after")
    def one_target(self) -> AttachIn:
        given = [n for n in ("order", "accession_number", "patient_id") if getattr(self, n) not in (None, "")]
        if len(given) != 1:
            raise ValueError("give one of order, accession_number or patient_id")
        if self.order is not None and not 1 <= self.order <= MAX_ROW_ID:
            raise ValueError(f"order {self.order} names no order")
        return self


@router.get("", response_model=ReconciliationPage, dependencies=[Depends(require(Permission.RECONCILE))])
def list_items(
    session: SessionDep,
    status: Annotated[Status | None, Query(description="open (default), attached or resolved")] = Status.OPEN,
    every: Annotated[bool, Query(alias="all", description="every item, whatever its status")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> ReconciliationPage:
    total, rows = reconciliation.items(session, status=None if every else status, limit=limit, offset=offset)
    return ReconciliationPage(total=total, offset=offset, limit=limit,
                              items=[reconciliation.describe(session, item) for item in rows])


@router.get("/{item_id}", dependencies=[Depends(require(Permission.RECONCILE))])
def show_item(item_id: RowId, session: SessionDep) -> dict[str, Any]:
    return reconciliation.describe(session, _item(session, item_id))


@router.post("/{item_id}/attach")
def attach_item(item_id: RowId, body: AttachIn, request: Request, session: SessionDep, services: ServicesDep,
                principal: Annotated[Principal, Depends(require(Permission.RECONCILE))]) -> dict[str, Any]:
    """Attach the item to an order or to a patient, in the caller's name (audited)."""
    item = _item(session, item_id)
    order, patient = target(session, body)
    try:
        reconciliation.attach(session, item, order=order, patient=patient, by=principal.name or "api",
                              user_kind=principal.kind, address=request.client.host if request.client else "",
                              notify=services.notify)
    except ReconcileError as exc:
        raise HTTPException(409, str(exc)) from None
    request.state.audited = True  # attach() recorded it, in the user's name
    return reconciliation.describe(session, item)


def _item(session: Session, item_id: int) -> reconciliation.ReconciliationItem:
    try:
        return reconciliation.find_item(session, item_id)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None


def target(session: Session, body: AttachIn) -> tuple[ImagingOrder | None, Patient | None]:
    """The order or the patient ``body`` names; 404 when there is none, 409 when an accession
    number names more than one order."""
    try:
        return reconciliation.find_target(session, order=body.order, accession_number=body.accession_number,
                                          patient_id=body.patient_id, issuer=body.issuer)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
    except ReconcileError as exc:
        raise HTTPException(409, str(exc)) from None

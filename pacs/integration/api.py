"""/api/messages: browse and replay the message store (what ``pacs messages`` does, over HTTP)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel

from pacs.http import Offset, RowId, ServicesDep, SessionDep
from pacs.integration import message_store, outbox
from pacs.integration.channel import Inbound
from pacs.integration.message_store import MessageSummary, Status, StoredMessage
from pacs.integration.outbox import OutboxStatus
from pacs.auth.access import require
from pacs.auth.roles import Permission

router = APIRouter(prefix="/api/messages", tags=["messages"])


class MessagePage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[MessageSummary]


class MessageDetail(MessageSummary):
    peer: str
    endpoint: str
    receiving_application: str
    receiving_facility: str
    version: str
    charset: str
    raw: str
    mapped: dict[str, Any] | None
    applied: dict[str, Any] | None
    response: str
    reprocess_of: int | None
    processed_at: datetime | None


def summary(row: StoredMessage) -> MessageSummary:
    return MessageSummary.model_validate(row, from_attributes=True)


def detail(row: StoredMessage) -> MessageDetail:
    data = row.model_dump(exclude={"raw"})
    return MessageDetail(**data, raw=message_store.decoded(row))


@router.get("", response_model=MessagePage, dependencies=[Depends(require(Permission.MESSAGES_READ))])
def list_messages(
    session: SessionDep,
    type: Annotated[str | None, Query(description="message type, e.g. ADT or ORM^O01")] = None,
    status: Annotated[Status | None, Query()] = None,
    since: Annotated[datetime | None, Query(description="received at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="received before (ISO 8601)")] = None,
    patient_id: Annotated[str | None, Query()] = None,
    control_id: Annotated[str | None, Query(description="MSH-10")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
) -> MessagePage:
    """Messages, newest first, filtered by every parameter given."""
    for moment in (since, until):
        if moment is not None and moment.tzinfo is None:
            raise HTTPException(422, "since/until need a time zone (e.g. 2026-11-25T08:00:00+08:00 or Z)")
    total, rows = message_store.search(
        session, message_type=type, status=status, since=since, until=until,
        patient_id=patient_id, control_id=control_id, limit=limit, offset=offset,
    )
    return MessagePage(total=total, offset=offset, limit=limit, items=[summary(r) for r in rows])


@router.get("/{message_id}", response_model=MessageDetail, dependencies=[Depends(require(Permission.MESSAGES_READ))])
def show_message(message_id: RowId, session: SessionDep) -> MessageDetail:
    row = session.get(StoredMessage, message_id)
    if row is None:
        raise HTTPException(404, f"message {message_id} does not exist")
    return detail(row)


@router.post("/{message_id}/reprocess", response_model=MessageDetail, dependencies=[Depends(require(Permission.MESSAGES_REPROCESS))])
async def reprocess_message(message_id: RowId, services: ServicesDep) -> MessageDetail:
    """Run a stored message through the channel again; the result is a new message."""
    with services.db.session() as session:
        original = session.get(StoredMessage, message_id)
        if original is None:
            raise HTTPException(404, f"message {message_id} does not exist")
        inbound = Inbound(raw=original.raw, source="reprocess", peer="api", reprocess_of=message_id,
                          endpoint=original.endpoint)
    outcome = await asyncio.wrap_future(services.intake.submit(inbound))
    with services.db.session() as session:
        row = session.get_one(StoredMessage, outcome.message_id)
        return detail(row)


outbox_router = APIRouter(prefix="/api/outbox", tags=["outbox"])


class OutboxPublic(BaseModel):
    id: int
    destination: str
    kind: str
    description: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str
    response: str
    order: int | None
    created_at: datetime
    sent_at: datetime | None
    payload: str


class OutboxPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[OutboxPublic]


@outbox_router.get("", response_model=OutboxPage, dependencies=[Depends(require(Permission.OUTBOX_READ))])
def list_outbox(
    session: SessionDep,
    status: Annotated[OutboxStatus | None, Query()] = None,
    destination: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
) -> OutboxPage:
    """Outbound deliveries, newest first: what was sent, what waits, what was refused."""
    total, rows = outbox.search(session, status=status, destination=destination, limit=limit, offset=offset)
    return OutboxPage(total=total, offset=offset, limit=limit,
                      items=[OutboxPublic.model_validate(r, from_attributes=True) for r in rows])


@outbox_router.post("/{item_id}/retry", response_model=OutboxPublic, dependencies=[Depends(require(Permission.OUTBOX_RETRY))])
def retry_outbox(item_id: RowId, session: SessionDep, services: ServicesDep) -> OutboxPublic:
    """Send a delivery again now (one that was refused or is waiting for its next attempt)."""
    try:
        item = outbox.retry(session, item_id)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    session.flush()
    services.outbox.wake()
    return OutboxPublic.model_validate(item, from_attributes=True)

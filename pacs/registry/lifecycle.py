"""The procedure status lifecycle: which transitions are allowed, and the record of each.

scheduled → arrived (checked in) → in progress → completed → images received → reported, or
cancelled / discontinued on the way (IHE RAD TF-1 §3, scheduled workflow; HL7 table 0038).
Every transition is written as an :class:`~pacs.registry.models.OrderEvent`, timestamped and
attributed.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlmodel import Session

from pacs.db import utcnow
from pacs.registry.models import ImagingOrder, OrderEvent, OrderStatus, ProcedureStep, StepStatus

S = OrderStatus
ALLOWED: dict[OrderStatus, set[OrderStatus]] = {
    S.SCHEDULED: {S.ARRIVED, S.IN_PROGRESS, S.COMPLETED, S.IMAGES_RECEIVED, S.CANCELLED, S.DISCONTINUED},
    S.ARRIVED: {S.SCHEDULED, S.IN_PROGRESS, S.COMPLETED, S.IMAGES_RECEIVED, S.CANCELLED, S.DISCONTINUED},
    S.IN_PROGRESS: {S.COMPLETED, S.IMAGES_RECEIVED, S.DISCONTINUED},
    S.COMPLETED: {S.IMAGES_RECEIVED, S.REPORTED, S.IN_PROGRESS},
    S.IMAGES_RECEIVED: {S.COMPLETED, S.REPORTED, S.IN_PROGRESS},
    S.REPORTED: {S.REPORTED},
    S.CANCELLED: set(),
    S.DISCONTINUED: set(),
}
# Once an order has ended, the steps still open end with it.
STEP_ON_ORDER: dict[OrderStatus, StepStatus] = {
    S.CANCELLED: StepStatus.CANCELLED,
    S.DISCONTINUED: StepStatus.DISCONTINUED,
}
OPEN_STEPS = {StepStatus.SCHEDULED, StepStatus.ARRIVED, StepStatus.STARTED}

Notify = Callable[[Session, ImagingOrder, str, str, str], None]
"""Told of every transition, in the same unit of work: (session, order, before, after, by)."""


class InvalidTransition(ValueError):
    def __init__(self, order: ImagingOrder, to: OrderStatus) -> None:
        self.order = order
        self.to = to
        allowed = ", ".join(sorted(ALLOWED[OrderStatus(order.status)])) or "none: the order has ended"
        super().__init__(
            f"order {order.accession_number or order.placer_number} is {order.status};"
            f" it cannot become {to} (allowed: {allowed})"
        )


def can_transition(order: ImagingOrder, to: OrderStatus) -> bool:
    return to == order.status or to in ALLOWED[OrderStatus(order.status)]


def transition(
    session: Session,
    order: ImagingOrder,
    to: OrderStatus,
    *,
    by: str,
    steps: list[ProcedureStep] | None = None,
    note: str = "",
    notify: Notify | None = None,
) -> bool:
    """Move ``order`` to ``to``; returns False when it is already there. Raises
    :class:`InvalidTransition` for a move the lifecycle forbids."""
    if order.status == to:
        return False
    if to not in ALLOWED[OrderStatus(order.status)]:
        raise InvalidTransition(order, to)
    now = utcnow()
    before = order.status
    session.add(OrderEvent(order=order.id, from_status=before, to_status=to, at=now, by=by, note=note))
    order.status = to
    order.updated_at = now
    session.add(order)
    step_status = STEP_ON_ORDER.get(to)
    if step_status is not None:
        for step in steps or []:
            if step.status in OPEN_STEPS:
                step.status = step_status
                session.add(step)
    if notify is not None:
        notify(session, order, before, to, by)
    return True

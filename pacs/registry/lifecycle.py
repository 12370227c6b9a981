"""The procedure status lifecycle: which transitions are allowed, and the record of each.

scheduled → arrived (checked in) → in progress → completed → images received → reported (a report
signed, preliminary or final) → verified (the report final, HL7 OBR-25 F), or cancelled / discontinued on the way (IHE RAD TF-1 §3, scheduled workflow; HL7 table 0038).
Every transition is written as an :class:`~pacs.registry.models.OrderEvent`, timestamped and
attributed.

An order only moves forward. News of an earlier stage that comes late (a modality's N-SET
COMPLETED after the images, an N-CREATE after them, an HL7 "in process" for an order already
completed) leaves the order where it is, with one line in the log: whatever order MPPS, images and
messages arrive in, the order, its events and what the HIS is told follow the lifecycle above.
Images that arrive while one of the order's steps is being performed (STARTED by an MPPS
N-CREATE, PS3.4 F.7.2.1) leave the order in progress: the procedure is complete only when the
modality says so (F.7.2.2), and that is when the order moves on to images received.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlmodel import Session, col, select

from pacs.db import utcnow
from pacs.registry.models import ImagingOrder, OrderEvent, OrderStatus, ProcedureStep, StepStatus

log = logging.getLogger(__name__)

S = OrderStatus
# Where each status stands on the way; an order never moves to a lower rank.
RANK: dict[OrderStatus, int] = {
    S.SCHEDULED: 0,
    S.ARRIVED: 1,
    S.IN_PROGRESS: 2,
    S.COMPLETED: 3,
    S.IMAGES_RECEIVED: 4,
    S.REPORTED: 5,
    S.VERIFIED: 6,
}
# The ends: an order is cancelled before it starts, discontinued before it is complete, and
# neither leaves its end.
ENDED = frozenset({S.CANCELLED, S.DISCONTINUED})
# The forward moves and the ends each status may take (a move back is not listed: it is no move).
ALLOWED: dict[OrderStatus, set[OrderStatus]] = {
    S.SCHEDULED: {S.ARRIVED, S.IN_PROGRESS, S.COMPLETED, S.IMAGES_RECEIVED, S.CANCELLED, S.DISCONTINUED},
    S.ARRIVED: {S.IN_PROGRESS, S.COMPLETED, S.IMAGES_RECEIVED, S.CANCELLED, S.DISCONTINUED},
    S.IN_PROGRESS: {S.COMPLETED, S.IMAGES_RECEIVED, S.DISCONTINUED},
    S.COMPLETED: {S.IMAGES_RECEIVED, S.REPORTED, S.VERIFIED},
    S.IMAGES_RECEIVED: {S.REPORTED, S.VERIFIED},
    S.REPORTED: {S.VERIFIED},
    S.VERIFIED: set(),
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
            f"order {_name(order)} is {order.status};"
            f" it cannot become {to} (allowed: {allowed})"
        )


def _name(order: ImagingOrder) -> str:
    return order.accession_number or order.placer_number or f"#{order.id}"


def is_behind(order: ImagingOrder, to: OrderStatus) -> bool:
    """Whether ``to`` is a stage the order has already passed (a move back, which is no move)."""
    here = RANK.get(OrderStatus(order.status))
    there = RANK.get(to)
    return here is not None and there is not None and there < here


def can_transition(order: ImagingOrder, to: OrderStatus) -> bool:
    """Whether :func:`transition` to ``to`` goes through without :class:`InvalidTransition`
    (a move, or no move because the order is there or past it)."""
    return to == order.status or is_behind(order, to) or to in ALLOWED[OrderStatus(order.status)]


def hold(session: Session, order: ImagingOrder) -> list[ProcedureStep]:
    """Lock ``order`` for the rest of the unit of work and read it and its steps afresh.

    Two units of work deciding an order's next status at once (a modality's N-SET and the index
    writer filing its images) would each decide from what it read before the other wrote. The
    order's row lock (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite has one writer at a time
    already) makes the second wait for the first and see what it wrote. Whatever the caller
    changed and did not flush yet is flushed first, so nothing is lost by the fresh read."""
    session.flush()
    session.refresh(order, with_for_update=True)
    return list(session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id)
                             .order_by(col(ProcedureStep.id)).execution_options(populate_existing=True)))


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
    """Move ``order`` to ``to``; returns whether it moved.

    It does not move (and says so at INFO) when ``to`` is a stage the order has passed, or when
    ``to`` is images received while one of its steps is still being performed. Raises
    :class:`InvalidTransition` for a move the lifecycle forbids: out of an end, or to an end
    from too far on (cancelling a started order, discontinuing a completed one).

    The order and its steps are read afresh under the order's lock (:func:`hold`); ``steps``,
    the caller's copies of them, are refreshed with it."""
    current = hold(session, order)  # ``steps`` among them, the same objects
    if order.status == to:
        return False
    if is_behind(order, to):
        log.info("order %s is %s; %s from %s would move it back, so it stays", _name(order), order.status, to, by)
        return False
    if to not in ALLOWED[OrderStatus(order.status)]:
        raise InvalidTransition(order, to)
    if to == S.IMAGES_RECEIVED and any(step.status == StepStatus.STARTED for step in current):
        log.info("order %s has a step being performed; images from %s leave it %s until the step ends",
                 _name(order), by, order.status)
        return False
    now = utcnow()
    before = order.status
    session.add(OrderEvent(order=order.id, from_status=before, to_status=to, at=now, by=by, note=note))
    order.status = to
    order.updated_at = now
    session.add(order)
    step_status = STEP_ON_ORDER.get(to)
    if step_status is not None:
        for step in current:
            if step.status in OPEN_STEPS:
                step.status = step_status
                session.add(step)
    if notify is not None:
        notify(session, order, before, to, by)
    return True

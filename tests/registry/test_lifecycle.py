"""The order lifecycle: forward only, ends kept, images held while a step is being performed."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sqlmodel import Session, select

from pacs.db import Database
from pacs.registry import lifecycle
from pacs.registry.models import OrderEvent, OrderStatus, ProcedureStep, StepStatus
from tests.registry.test_device_rules import Registry, step

S = OrderStatus


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    db = Database(database_url)
    with Session(db.engine, expire_on_commit=False) as session:
        yield session
    db.dispose()


@pytest.fixture
def registry(session: Session) -> Registry:
    return Registry(session)


def events(session: Session, order) -> list[tuple[str, str]]:
    return [(e.from_status, e.to_status) for e in session.exec(
        select(OrderEvent).where(OrderEvent.order == order.id).order_by(OrderEvent.id))]


def heard(calls: list[tuple[str, str]]):
    return lambda _session, _order, before, after, _by: calls.append((before, after))


def test_each_move_goes_forward_and_a_move_back_is_one_line_at_info(session, registry: Registry, caplog):
    order = registry.order(registry.patient("P1"), step())
    calls: list[tuple[str, str]] = []
    for to in (S.IN_PROGRESS, S.IMAGES_RECEIVED):
        assert lifecycle.transition(session, order, to, by="t", notify=heard(calls))
    caplog.set_level(logging.INFO, logger="pacs.registry.lifecycle")
    for late in (S.COMPLETED, S.IN_PROGRESS, S.ARRIVED, S.SCHEDULED):
        assert lifecycle.transition(session, order, late, by="mpps:CT1", notify=heard(calls)) is False
    assert order.status == S.IMAGES_RECEIVED
    assert events(session, order) == [("scheduled", "in_progress"), ("in_progress", "images_received")]
    assert calls == [("scheduled", "in_progress"), ("in_progress", "images_received")]  # the HIS hears no more
    lines = [r for r in caplog.records if r.name == "pacs.registry.lifecycle"]
    assert len(lines) == 4 and all(r.levelno == logging.INFO and not r.exc_info for r in lines)
    assert "would move it back" in lines[0].getMessage()
    assert lifecycle.transition(session, order, S.REPORTED, by="t")


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (S.IN_PROGRESS, S.CANCELLED),  # cancelled only before it starts
        (S.COMPLETED, S.DISCONTINUED),  # discontinued only before it is complete
        (S.IMAGES_RECEIVED, S.DISCONTINUED),
        (S.CANCELLED, S.IN_PROGRESS),  # an end is kept
        (S.DISCONTINUED, S.IMAGES_RECEIVED),
        (S.CANCELLED, S.SCHEDULED),
        (S.SCHEDULED, S.REPORTED),  # no report before the procedure
    ],
)
def test_ends_and_skips_the_lifecycle_forbids(session, registry: Registry, start, to):
    order = registry.order(registry.patient("P1"), step(), status=start)
    with pytest.raises(lifecycle.InvalidTransition):
        lifecycle.transition(session, order, to, by="t")
    assert order.status == start and events(session, order) == []


def test_ending_an_order_ends_its_open_steps(session, registry: Registry):
    order = registry.order(registry.patient("P1"), step(), step(status=StepStatus.COMPLETED))
    assert lifecycle.transition(session, order, S.DISCONTINUED, by="t")
    steps = session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id).order_by(ProcedureStep.id))
    assert [s.status for s in steps] == [StepStatus.DISCONTINUED, StepStatus.COMPLETED]


def test_images_wait_while_a_step_is_being_performed(session, registry: Registry):
    order = registry.order(registry.patient("P1"), step(status=StepStatus.STARTED), status=S.IN_PROGRESS)
    assert lifecycle.transition(session, order, S.IMAGES_RECEIVED, by="archive:CT1") is False
    assert order.status == S.IN_PROGRESS
    performed = registry.step_of(order)
    performed.status = StepStatus.COMPLETED
    session.add(performed)
    assert lifecycle.transition(session, order, S.COMPLETED, by="mpps:CT1")
    assert lifecycle.transition(session, order, S.IMAGES_RECEIVED, by="mpps:CT1")
    assert events(session, order) == [("in_progress", "completed"), ("completed", "images_received")]


def test_the_decision_reads_the_order_afresh(session, registry: Registry, database_url):
    """What another unit of work committed meanwhile is what the transition decides from."""
    order = registry.order(registry.patient("P1"), step())
    other_db = Database(database_url)
    with Session(other_db.engine) as other:
        theirs = other.get_one(type(order), order.id)
        lifecycle.transition(other, theirs, S.IMAGES_RECEIVED, by="archive:CT1")
        other.commit()
    other_db.dispose()
    assert order.status == S.SCHEDULED  # this session's copy is stale
    assert lifecycle.transition(session, order, S.COMPLETED, by="mpps:CT1") is False
    assert order.status == S.IMAGES_RECEIVED

"""A message a node stored and never finished (it died between the intake's two commits), sent
again by the HIS to another node that applied it: the first node, back, files its copy as a
duplicate instead of applying the message a second time."""

from __future__ import annotations

from concurrent.futures import Future

from sqlmodel import Session, select

from pacs.integration.channel import Inbound
from pacs.integration.intake import Intake
from pacs.integration.message_store import Status, StoredMessage, store_raw
from tests.helpers import load


def test_a_message_stored_by_a_dead_node_and_applied_elsewhere_is_not_applied_again(server) -> None:
    services = server.server.services
    raw = load("adt_a01_ihe.hl7").replace(b"|ADT0001|", b"|REC1|")
    with Session(services.db.engine) as session:  # node 1: stored, committed, then killed
        store_raw(session, [services.channel.receive(Inbound(raw, "mllp", "node1"))])
        session.commit()
    # the HIS, unanswered, sends it again; it lands on another node, which applies it
    [outcome] = services.intake._process_batch([(Inbound(raw, "mllp", "node2"), Future())])
    assert outcome.status == Status.PROCESSED

    restarted = Intake(services.db, services.channel)  # node 1 starts again
    assert restarted.recover() == 1
    with Session(services.db.engine) as session:
        rows = session.exec(select(StoredMessage.id, StoredMessage.status, StoredMessage.error)
                            .where(StoredMessage.control_id == "REC1").order_by(StoredMessage.id)).all()
    assert [status for _, status, _ in rows] == [Status.FILTERED, Status.PROCESSED]
    assert rows[0][2] == f"duplicate of message {rows[1][0]}; not applied again"
    assert restarted.recover() == 0  # nothing left RECEIVED


def test_a_message_stored_after_the_process_started_is_left_to_its_node(server) -> None:
    """A node alive stores a batch, then takes its locks and applies it: a node starting at that
    moment must not take the batch from under it."""
    services = server.server.services
    starting = Intake(services.db, services.channel)
    raw = load("adt_a01_ihe.hl7").replace(b"|ADT0001|", b"|REC2|")
    with Session(services.db.engine) as session:
        store_raw(session, [services.channel.receive(Inbound(raw, "mllp", "node2"))])
        session.commit()
    assert starting.recover() == 0
    with Session(services.db.engine) as session:
        assert session.exec(select(StoredMessage.status).where(StoredMessage.control_id == "REC2")).all() == [
            Status.RECEIVED]

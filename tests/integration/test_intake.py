"""The intake worker: a batch of messages in one transaction gives what one message at a time
gives, and a message that fails part-way leaves nothing of itself behind."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
from sqlmodel import Session, col, func, select

from pacs.integration.channel import Inbound, Outcome
from pacs.integration.message_store import Status, StoredMessage
from pacs.registry.models import ImagingOrder, OrderEvent, Patient, ProcedureStep
from tests.helpers import golden, load, snapshot
from tests.integration.test_hl7_golden import SCENARIOS


def one_batch(server, messages: list[bytes]) -> list[Outcome]:
    """Process ``messages`` as one batch of the intake worker (one transaction, two commits)."""
    intake = server.server.services.intake
    return intake._process_batch([(Inbound(raw, "mllp", "test"), Future()) for raw in messages])


def count(db, model) -> int:
    with Session(db.engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_scenario_in_one_batch_gives_its_golden_result(server, scenario):
    outcomes = one_batch(server, [load(name) for name in SCENARIOS[scenario]])
    assert [o.ack_code for o in outcomes] == ["AA"] * len(outcomes), [o.response for o in outcomes]
    golden(f"hl7_{scenario}", snapshot(server.db))


def _order_groups(controls: list[str], control_id: str = "ORM0004") -> bytes:
    """One ORM^O01 whose order groups all name order PL0002 with the given order controls."""
    message = load("orm_o01_nw2_ihe.hl7").decode("utf-8").replace("|ORM0004|", f"|{control_id}|").split("\r")
    head, group = message[:2], message[2:4]
    groups = [line.replace("ORC|NW|", f"ORC|{control}|", 1) if line.startswith("ORC") else line
              for control in controls for line in group]
    return "\r".join([*head, *groups, ""]).encode("utf-8")


def test_a_message_failing_part_way_leaves_nothing_applied(server):
    # NW creates the order (Core), CA cancels it (the lifecycle, ORM), XO then finds it cancelled
    message = _order_groups(["NW", "CA", "XO"])
    [outcome] = one_batch(server, [message])
    assert outcome.ack_code == "AE" and "cancelled" in outcome.response.decode()
    assert count(server.db, Patient) == count(server.db, ImagingOrder) == 0
    assert count(server.db, ProcedureStep) == count(server.db, OrderEvent) == 0
    with Session(server.db.engine) as session:
        [row] = session.exec(select(StoredMessage)).all()
    assert row.status == Status.ERROR and row.raw == message and "cancelled" in (row.error or "")


def test_a_failing_message_in_a_batch_leaves_the_others_applied(server):
    failing = _order_groups(["NW", "CA", "XO"])
    cancel = load("orm_o01_ca_ihe.hl7")  # PL0002 again: created and cancelled in the same batch
    outcomes = one_batch(server, [load("adt_a01_ihe.hl7"), failing, _order_groups(["NW"], "ORM0009"), cancel])
    assert [o.ack_code for o in outcomes] == ["AA", "AE", "AA", "AA"]
    with Session(server.db.engine) as session:
        [order] = session.exec(select(ImagingOrder)).all()
        events = session.exec(select(OrderEvent).order_by(col(OrderEvent.id))).all()
        steps = session.exec(select(ProcedureStep)).all()
        statuses = [m.status for m in session.exec(select(StoredMessage).order_by(col(StoredMessage.id)))]
    assert order.placer_number == "PL0002" and order.status == "cancelled"
    assert [(e.from_status, e.to_status) for e in events] == [("", "scheduled"), ("scheduled", "cancelled")]
    assert [s.status for s in steps] == ["CANCELLED"]
    assert statuses == [Status.PROCESSED, Status.ERROR, Status.PROCESSED, Status.PROCESSED]


@pytest.mark.parametrize("odd", [
    load("adt_a01_ihe.hl7").replace(b"MSH|", b"MSH\r|", 1),  # a segment break where MSH-1 should be
    load("adt_a01_ihe.hl7").replace(b"UNICODE UTF-8", b"UNI\0CODE UTF-8", 1),  # a NUL in MSH-18
])
def test_a_message_with_an_unreadable_header_is_answered_ar_and_its_batch_goes_on(server, odd):
    outcomes = one_batch(server, [load("adt_a01_ihe.hl7"), odd, _order_groups(["NW"], "ORM0009")])
    assert [o.ack_code for o in outcomes] == ["AA", "AR", "AA"]
    with Session(server.db.engine) as session:
        rows = session.exec(select(StoredMessage).order_by(col(StoredMessage.id))).all()
    assert [r.status for r in rows] == [Status.PROCESSED, Status.ERROR, Status.PROCESSED]
    assert rows[1].raw == odd


# Python codecs that are not character sets (or none an HL7 message can be written in); each
# once passed the charset lookup and failed the whole batch in decoding.
NOT_CHARSETS = ["UU", "BASE64", "ROT13", "HEX", "QUOPRI", "UNDEFINED", "IDNA", "ZLIB", "BZ2", "CP037",
                "UNICODE_ESCAPE", "RAW_UNICODE_ESCAPE", "PUNYCODE", "UTF-7"]


@pytest.mark.parametrize("charset", NOT_CHARSETS)
def test_an_msh18_naming_a_codec_that_is_no_charset_is_answered_ar_alone(server, charset):
    odd = load("adt_a01_ihe.hl7").replace(b"UNICODE UTF-8", charset.encode(), 1)
    outcomes = one_batch(server, [load("adt_a01_ihe.hl7"), odd, _order_groups(["NW"], "ORM0009")])
    assert [o.ack_code for o in outcomes] == ["AA", "AR", "AA"]
    ack = outcomes[1].response.decode("ascii")
    assert "\rERR||MSH^1^18^1|102^" in ack and f"character set '{charset}' is not supported" in ack
    with Session(server.db.engine) as session:
        rows = session.exec(select(StoredMessage).order_by(col(StoredMessage.id))).all()
    assert [r.status for r in rows] == [Status.PROCESSED, Status.ERROR, Status.PROCESSED]
    assert rows[1].raw == odd


def test_a_message_sent_twice_in_one_batch_is_applied_once(server):
    order = load("orm_o01_nw_ihe.hl7")
    first, again, later = one_batch(server, [order, order, order])
    assert first.status == Status.PROCESSED and first.ack_code == "AA"
    assert again.status == later.status == Status.FILTERED and again.response == later.response == first.response
    assert count(server.db, ImagingOrder) == 1 and count(server.db, OrderEvent) == 1
    [next_batch] = one_batch(server, [order])
    assert next_batch.status == Status.FILTERED and next_batch.response == first.response


def test_each_commit_holds_one_batch_effects_and_the_next_batch_raw_messages(server):
    intake = server.server.services.intake
    first = [(Inbound(load("adt_a01_ihe.hl7"), "mllp", "test"), Future())]
    second = [(Inbound(load("orm_o01_nw_ihe.hl7"), "mllp", "test"), Future())]

    def stored() -> list[str]:  # read as another connection would: only what is committed
        with Session(server.db.reader) as session:
            return [m.status for m in session.exec(select(StoredMessage).order_by(col(StoredMessage.id)))]

    def committed(model) -> int:
        with Session(server.db.reader) as session:
            return session.exec(select(func.count()).select_from(model)).one()

    processed = intake._cycle(first, None)
    # the raw message was committed before it was processed; its effect is not committed yet
    assert stored() == [Status.RECEIVED] and committed(Patient) == 0
    assert not first[0][1].done()  # so it is not acknowledged
    processed = intake._cycle(second, processed)
    assert stored() == [Status.PROCESSED, Status.RECEIVED] and committed(Patient) == 1
    assert first[0][1].result().ack_code == "AA" and not second[0][1].done()
    assert intake._cycle([], processed) is None
    assert stored() == [Status.PROCESSED, Status.PROCESSED] and committed(ImagingOrder) == 1
    assert second[0][1].result().ack_code == "AA"


def test_the_worker_goes_on_after_a_failed_cycle_on_a_fresh_connection(server, monkeypatch):
    """A cycle that fails (here the commit) acknowledges nothing of its batch; the worker drops
    the connection it kept and serves the next message on a new one."""
    intake = server.server.services.intake
    real_commit = Session.commit
    failures = []

    def failing_commit(self):
        if not failures:
            failures.append(self.connection())
            raise RuntimeError("disk went away")
        return real_commit(self)

    monkeypatch.setattr(Session, "commit", failing_commit)
    refused = intake.submit(Inbound(load("adt_a01_ihe.hl7"), "mllp", "test"))
    with pytest.raises(RuntimeError, match="disk went away"):
        refused.result(30)
    outcome = intake.submit(Inbound(load("orm_o01_nw_ihe.hl7"), "mllp", "test")).result(30)
    assert outcome.ack_code == "AA"
    assert failures[0].invalidated or failures[0].closed  # the kept connection was let go
    assert count(server.db, ImagingOrder) == 1


def test_a_fault_in_one_message_fails_that_message_alone(server, monkeypatch):
    """Whatever escapes a message's processing (a bug of ours) fails that message with an AE
    naming an internal error, kept as ERROR to reprocess; the rest of its batch is applied."""
    from pacs.integration.channel import Channel

    real = Channel.process

    def faulty(self, session, row, inbound, *args, **kwargs):
        if b"ADT0001" in row.raw:
            raise RuntimeError("a fault of ours")
        return real(self, session, row, inbound, *args, **kwargs)

    monkeypatch.setattr(Channel, "process", faulty)
    outcomes = one_batch(server, [load("orm_o01_nw_ihe.hl7"), load("adt_a01_ihe.hl7"),
                                  _order_groups(["NW"], "ORM0009")])
    assert [o.ack_code for o in outcomes] == ["AA", "AE", "AA"]
    assert "internal error, message kept for reprocessing: a fault of ours" in outcomes[1].response.decode()
    with Session(server.db.engine) as session:
        rows = session.exec(select(StoredMessage).order_by(col(StoredMessage.id))).all()
    assert [r.status for r in rows] == [Status.PROCESSED, Status.ERROR, Status.PROCESSED]
    assert count(server.db, ImagingOrder) == 2


def test_a_batch_saves_each_message_result_and_audit_entry(server):
    """The results and audit entries of a batch are written together, each still its own: one
    entry per message, naming its message, patient and outcome."""
    from pacs.audit.tables import AuditEvent, AuditObject

    messages = [load("adt_a01_ihe.hl7"), _order_groups(["NW", "CA", "XO"]), _order_groups(["NW"], "ORM0009")]
    outcomes = one_batch(server, messages)
    assert [o.ack_code for o in outcomes] == ["AA", "AE", "AA"]
    with Session(server.db.engine) as session:
        rows = session.exec(select(StoredMessage).order_by(col(StoredMessage.id))).all()
        events = session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
        named = {(o.event, o.kind, o.value) for o in session.exec(select(AuditObject))}
    assert [r.status for r in rows] == [Status.PROCESSED, Status.ERROR, Status.PROCESSED]
    assert all(r.processed_at is not None and r.response for r in rows)
    assert [r.ack_code for r in rows] == ["AA", "AE", "AA"]
    by_message = {e.details["message"]: e for e in events if "message" in (e.details or {})}
    assert sorted(by_message) == [r.id for r in rows]
    for row in rows:
        event = by_message[row.id]
        assert event.outcome == (0 if row.status == Status.PROCESSED else 4)
        assert (event.id, "patient", row.patient_id) in named and row.patient_id


def test_a_slow_message_holds_up_its_own_patient_alone_on_postgresql(server, monkeypatch):
    """On PostgreSQL two workers take batches (``WORKERS``): while one message is slow to apply,
    another patient's message is applied and answered, and a message of the slow one's patient
    sent after it waits for it (the batch's advisory lock on the patient) and is applied after
    it. On SQLite one worker takes them in turn: the other patient's message waits too."""
    import threading

    from pacs.integration.channel import Channel
    from pacs.integration.intake import WORKERS

    intake = server.server.services.intake
    postgresql = server.db.engine.dialect.name == "postgresql"
    assert intake.workers == WORKERS[server.db.engine.dialect.name] == (2 if postgresql else 1)
    assert sum(thread.is_alive() for thread in intake._threads) == intake.workers
    started, gate = threading.Event(), threading.Event()
    real = Channel.process

    def slow(self, session, row, inbound, *args, **kwargs):
        if b"|ADT0001|" in row.raw:
            started.set()
            gate.wait(20)
        return real(self, session, row, inbound, *args, **kwargs)

    monkeypatch.setattr(Channel, "process", slow)
    first = intake.submit(Inbound(load("adt_a01_ihe.hl7"), "mllp", "his-1"))  # P10001, 东华门大街
    assert started.wait(20)
    other = intake.submit(Inbound(load("adt_a01_ihe.hl7").replace(b"|ADT0001|", b"|ADT0003|")
                                  .replace(b"P10001^", b"P20002^"), "mllp", "his-2"))
    try:
        if postgresql:
            assert other.result(20).ack_code == "AA" and not first.done()
        else:
            with pytest.raises(TimeoutError):
                other.result(1)
        # (sent once the other is answered: a batch waits for all its messages' locks)
        update = intake.submit(Inbound(load("adt_a08_ihe.hl7"), "mllp", "his-3"))  # P10001, 王府井大街
        with pytest.raises(TimeoutError):
            update.result(1)
    finally:
        gate.set()
    assert [f.result(20).ack_code for f in (first, other, update)] == ["AA", "AA", "AA"]
    with Session(server.db.engine) as session:
        address = session.exec(select(Patient.address).where(Patient.patient_id == "P10001")).one()
    assert "王府井" in address  # the update was applied after the message it followed

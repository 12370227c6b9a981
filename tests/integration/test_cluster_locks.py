"""The advisory locks a batch of HL7 messages is applied under on PostgreSQL (one per sender and
MSH-10, one per patient) are all taken, in one statement, and held to the end of the batch's
transaction: another node's batch cannot take any of them meanwhile."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlmodel import Session

from pacs.db import Database
from pacs.integration.channel import Inbound, cluster_lock_keys, take_cluster_locks
from pacs.integration.message_store import MessageRow


def message(control_id: str, patient: str) -> tuple[MessageRow, Inbound]:
    raw = (f"MSH|^~\\&|HIS|IHE_OP|PACS|RAD|20261207090000||ADT^A04|{control_id}|P|2.5\r"
           f"PID|1||{patient}^^^HOSP^MR||ZHANG^SAN\r").encode()
    row = MessageRow(raw=raw, sending_application="HIS", sending_facility="IHE_OP", control_id=control_id)
    return row, Inbound(raw, "mllp", "test")


def test_every_key_of_a_batch_is_held_until_its_transaction_ends(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite: one process owns the database, and there are no advisory locks")
    batch = [message("C1", "P1"), message("C2", "P2"), message("C3", "P1")]  # two messages of one patient
    rows, inbounds = [r for r, _ in batch], [i for _, i in batch]
    keys = cluster_lock_keys(rows, inbounds)
    assert len(keys) == 5 and keys == sorted(keys)  # three control IDs, two patients, in one order
    db = Database(database_url)
    try:
        with Session(db.engine) as session, db.engine.connect() as other:
            take_cluster_locks(session, rows, inbounds)
            for key in keys:
                with other.begin():
                    taken = other.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}).scalar()
                assert taken is False, f"lock {key} is not held"
            session.rollback()  # the batch's transaction ends: its locks go with it
            for key in keys:
                with other.begin():
                    assert other.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}).scalar()
    finally:
        db.dispose()

"""Two `pacs serve` nodes on one PostgreSQL database, the HIS's connections landing on both: a
message that reaches both nodes at the same moment is applied once, and the other copy is answered
with the same ACK and stored as a duplicate (FILTERED)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlmodel import select

from pacs.db import Database
from pacs.integration.message_store import Status, StoredMessage
from pacs.registry.models import ImagingOrder
from tests.helpers import MLLPClient, ack_fields, load
from tests.process import ServeProcess

ROUNDS = 12


def variant(name: str, n: int) -> bytes:
    """The golden message with its own MSH-10, patient, placer number, accession and study UID."""
    return (load(name).replace(b"|ORM0001|", f"|ORM-N{n}|".encode()).replace(b"|ADT0001|", f"|ADT-N{n}|".encode())
            .replace(b"P10001^", f"PN{n}^".encode()).replace(b"PL0001^", f"PLN{n}^".encode())
            .replace(b"|ACC0001|", f"|ACCN{n}|".encode())
            .replace(b"1.2.840.113619.2.55.3.1234567.20261125.1^", f"1.2.826.0.1.3680043.10.998.{n}^".encode()))


def test_the_same_message_on_two_nodes_at_once_is_applied_once(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite: one process owns the database, so there is no second node")
    nodes = [ServeProcess(tmp_path / f"node-{n}" / "data", database_url) for n in range(2)]
    for node in nodes:
        node.start()
    try:
        clients = [MLLPClient(node.mllp_port) for node in nodes]
        for n in range(ROUNDS):
            message = variant("orm_o01_nw_ihe.hl7" if n % 2 else "adt_a01_ihe.hl7", n)
            acks: list[bytes] = [b"", b""]
            start = threading.Barrier(2)

            def send(number: int, message: bytes = message, acks: list[bytes] = acks,
                     start: threading.Barrier = start) -> None:
                start.wait()
                acks[number] = clients[number].send(message)

            threads = [threading.Thread(target=send, args=(k,)) for k in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert ack_fields(acks[0])["code"] == "AA", acks[0]
            assert acks[0] == acks[1], "the duplicate's ACK is not the original's"
        for client in clients:
            client.close()
    finally:
        for node in nodes:
            node.terminate()
    db = Database(database_url)
    try:
        with db.session(read_only=True) as session:
            rows = session.exec(select(StoredMessage.control_id, StoredMessage.status, StoredMessage.error)).all()
            accessions = session.exec(select(ImagingOrder.accession_number)).all()
    finally:
        db.dispose()
    for n in range(ROUNDS):
        control_id = f"ORM-N{n}" if n % 2 else f"ADT-N{n}"
        mine = [(status, error) for control, status, error in rows if control == control_id]
        assert len(mine) == 2, (control_id, mine)
        assert sorted(status for status, _ in mine) == sorted([Status.PROCESSED, Status.FILTERED]), (control_id, mine)
        assert any(status == Status.FILTERED and "duplicate of message" in error for status, error in mine)
    orders = [a for a in accessions if a.startswith("ACCN")]
    assert sorted(orders) == sorted({f"ACCN{n}" for n in range(1, ROUNDS, 2)}), orders

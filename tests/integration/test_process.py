"""The server as a process: a client nobody here wrote, SIGKILL during a stream, SIGTERM."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlmodel import Session, col, func, select

from pacs.db import Database
from pacs.integration.message_store import Status, StoredMessage
from pacs.registry.models import Patient, PatientIdentifier
from tests.conftest import mappings_dir_default, one_database
from tests.helpers import MLLPClient, ack_fields, load
from tests.process import ServeProcess

ADT = load("adt_a01_ihe.hl7")


@pytest.fixture
def serve(tmp_path, database_url):
    started: list[ServeProcess] = []

    def start() -> ServeProcess:
        process = ServeProcess(tmp_path / "data", database_url).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def numbered(n: int) -> bytes:
    return (ADT.replace(b"ADT0001", f"K{n:05d}".encode())
               .replace(b"P10001^^^HOSP^PI~110101199001011234", f"K{n:05d}^^^HOSP^PI~N{n:05d}".encode()))


def test_mllp_send_from_python_hl7(serve, tmp_path):
    """`mllp_send` (PyPI package hl7) as the sender: a client written elsewhere."""
    server = serve()
    batch = tmp_path / "batch.hl7"
    batch.write_bytes(b"\n".join(
        load(name).replace(b"\r", b"\n") for name in ("adt_a01_ihe.hl7", "orm_o01_nw_ihe.hl7", "omi_o23_nw_ihe.hl7")))
    mllp_send = shutil.which("mllp_send") or str(Path(__import__("sys").executable).parent / "mllp_send")
    result = subprocess.run([mllp_send, "--loose", "--file", str(batch), "--port", str(server.mllp_port),
                             "127.0.0.1"], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    acks = [line for line in result.stdout.split(b"\x1c") if b"MSA|" in line]
    assert len(acks) == 3
    assert all(b"MSA|AA|" in ack for ack in acks), result.stdout
    for control in (b"ADT0001", b"ORM0001", b"OMI0001"):
        assert b"MSA|AA|" + control in result.stdout


def test_nothing_acknowledged_is_lost_when_the_server_is_killed(serve, database_url):
    server = serve()
    acknowledged: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        n = 0
        try:
            with MLLPClient(server.mllp_port, timeout=10) as client:
                while not stop.is_set():
                    if ack_fields(client.send(numbered(n)))["code"] == "AA":
                        acknowledged.append(n)
                    n += 1
        except (ConnectionError, OSError):
            pass  # the server died under us: what was not acknowledged will be resent

    sender = threading.Thread(target=stream)
    sender.start()
    while len(acknowledged) < 150:
        time.sleep(0.01)
    server.kill()
    stop.set()
    sender.join(30)
    sent_before_kill = max(acknowledged) + 2  # at most one was in flight, unacknowledged

    restarted = serve()  # recovery runs before the listeners open
    with MLLPClient(restarted.mllp_port) as client:  # the sender resends what it has no ACK for
        for n in range(max(acknowledged) + 1, sent_before_kill):
            assert ack_fields(client.send(numbered(n)))["code"] == "AA"

    db = Database(database_url)
    with Session(db.engine) as session:
        for n in acknowledged:
            rows = session.exec(select(PatientIdentifier).where(PatientIdentifier.value == f"K{n:05d}")).all()
            assert len(rows) == 1, f"message {n} was acknowledged but its patient is missing or doubled"
        patients = session.exec(select(func.count()).select_from(Patient)).one()
        assert patients == sent_before_kill
        processed = session.exec(select(StoredMessage.control_id).where(StoredMessage.status == Status.PROCESSED)
                                 .order_by(col(StoredMessage.id))).all()
        assert len(processed) == len(set(processed)) == sent_before_kill  # each applied exactly once
        assert session.exec(select(func.count()).select_from(StoredMessage)
                            .where(StoredMessage.status == Status.RECEIVED)).one() == 0
    db.dispose()


@one_database
def test_sigterm_stops_cleanly(serve, database_url):
    server = serve()
    with MLLPClient(server.mllp_port) as client:
        assert ack_fields(client.send(ADT))["code"] == "AA"
        assert server.terminate() == 0
        with pytest.raises((ConnectionError, OSError)):
            client.send(load("orm_o01_nw_ihe.hl7"))
    db = Database(database_url)
    with Session(db.engine) as session:
        statuses = session.exec(select(StoredMessage.status)).all()
    db.dispose()
    assert statuses == [Status.PROCESSED]
    assert "stopped" in server.log.read_text()


def test_stored_but_unprocessed_messages_are_finished_at_start(tmp_path, database_url, serve):
    """A message committed raw but not processed (the process died between the two commits)."""
    db = Database(database_url)
    with Session(db.engine) as session:
        session.add(StoredMessage(raw=load("orm_o01_nw_ihe.hl7"), source="mllp", sending_application="HIS",
                                  sending_facility="IHE_OP", control_id="ORM0001", message_type="ORM^O01"))
        session.commit()
    serve()
    with Session(db.engine) as session:
        [row] = session.exec(select(StoredMessage)).all()
        assert row.status == Status.PROCESSED and row.ack_code == "AA"
    db.dispose()


@one_database
def test_refuses_to_start_with_broken_mappings(tmp_path, database_url):
    broken = tmp_path / "mappings"
    shutil.copytree(mappings_dir_default(), broken)
    (broken / "codes" / "sex.csv").write_text("code,value\nM,Male\n", encoding="utf-8")
    process = ServeProcess(tmp_path / "data", database_url, PACS_MAPPINGS_DIR=str(broken))
    with pytest.raises(RuntimeError, match="sex.csv:2"):
        process.start()

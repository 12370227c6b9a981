"""Three `pacs serve` nodes behind HAProxy on one PostgreSQL database (deploy/cluster.sh): HL7
keeps flowing through HAProxy while a node is SIGKILLed, and every acknowledged message is
applied exactly once."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from sqlmodel import select

from pacs.db import Database
from pacs.integration.message_store import Status, StoredMessage
from tests.helpers import MLLPClient, ack_fields, load

CLUSTER = Path(__file__).resolve().parents[2] / "deploy" / "cluster.sh"
MESSAGES = 60


def cluster(*args: str, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run([str(CLUSTER), *args], check=False, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def send_until_acknowledged(port: int, message: bytes, deadline: float) -> bytes:
    """One connection per message, so HAProxy spreads them; a connection lost to a dead node is
    answered by sending again, as an HIS does (the duplicate check keeps it applied once)."""
    while True:
        try:
            with MLLPClient(port, timeout=20) as client:
                ack = client.send(message)
            if ack_fields(ack)["code"] == "AA":
                return ack
        except OSError:
            pass
        assert time.monotonic() < deadline, "a message was never acknowledged"
        time.sleep(0.2)


@pytest.mark.timeout(900)  # three nodes to start and stop on a loaded machine
def test_hl7_through_haproxy_while_a_node_is_killed(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite: one process owns the database, so there is no cluster")
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    base = random.randrange(30000, 59000, 100)
    env = {**os.environ, "PACS_DATABASE_URL": database_url, "PACS_CLUSTER_PORT": str(base),
           "PACS_TIMEZONE": "Asia/Shanghai"}
    folder = str(tmp_path / "cluster")
    cluster("start", folder, env=env)
    try:
        deadline = time.monotonic() + 300
        acknowledged = []
        for n in range(MESSAGES):
            if n == MESSAGES // 3:
                cluster("kill", "1", folder, env=env)
            message = (load("adt_a01_ihe.hl7").replace(b"|ADT0001|", f"|HA{n}|".encode())
                       .replace(b"P10001^", f"PHA{n}^".encode()))
            send_until_acknowledged(base + 1, message, deadline)
            acknowledged.append(f"HA{n}")
        status = cluster("status", folder, env=env)
        assert "node 1: down" in status and "node 2: ok" in status and "haproxy: ok" in status, status
    finally:
        cluster("stop", folder, env=env)
    db = Database(database_url)
    try:
        with db.session(read_only=True) as session:
            rows = session.exec(select(StoredMessage.control_id, StoredMessage.status)).all()
    finally:
        db.dispose()
    applied = [control for control, status in rows if status == Status.PROCESSED]
    assert sorted(applied) == sorted(acknowledged), "an acknowledged message is missing or applied twice"
    assert not [control for control, status in rows if status not in (Status.PROCESSED, Status.FILTERED)]

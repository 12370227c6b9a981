"""The MLLP front process: parses and maps ahead of the intake worker, and never outlives or
outweighs the main process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, func, select

from pacs.integration import channel as channel_module
from pacs.integration.message_store import Status, StoredMessage
from pacs.registry.models import ImagingOrder, Patient
from tests.conftest import front_process_settings, one_database
from tests.helpers import MLLPClient, ack_fields, load
from tests.process import ServeProcess, alive, spawned_children

ADT = load("adt_a01_ihe.hl7")
ORM = load("orm_o01_nw_ihe.hl7")


@pytest.fixture
def settings(settings):
    return front_process_settings(settings)


@pytest.fixture
def mapped_here(monkeypatch):
    """How many messages the main process parsed and mapped itself."""
    calls: list[str] = []
    original = channel_module.map_hl7

    def counting(message, mappings):
        calls.append(message.control_id)
        return original(message, mappings)

    monkeypatch.setattr(channel_module, "map_hl7", counting)
    return calls


def count(db, model) -> int:
    with Session(db.engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def front_pid(server) -> int:
    front = server.server._mllp
    assert front.process is not None and front.process.is_alive()
    return front.process.pid


def test_the_front_parses_and_maps_and_the_main_process_applies(server, mapped_here):
    assert front_pid(server) != os.getpid()
    with MLLPClient(server.mllp_port) as client:
        acks = [ack_fields(client.send(m)) for m in (ADT, ORM)]
    assert [a["code"] for a in acks] == ["AA", "AA"]
    assert mapped_here == []  # what the front made of them was used
    # The ACKs were built ahead by the front: control IDs of its own, never one of the main process's.
    assert all(a["msh"][9].startswith("PACSF") for a in acks)
    assert acks[0]["msh"][9] != acks[1]["msh"][9]
    assert count(server.db, Patient) == 1 and count(server.db, ImagingOrder) == 1
    with Session(server.db.engine) as session:
        rows = session.exec(select(StoredMessage)).all()
    assert {r.status for r in rows} == {Status.PROCESSED}
    assert all(r.mapped and r.mapped["patient"] for r in rows)  # the front's mapping is stored as the row's


def test_a_message_the_front_cannot_map_is_answered_by_the_main_process(server, mapped_here):
    unknown_sex = ADT.replace(b"|19900101|M|", b"|19900101|X|")
    with MLLPClient(server.mllp_port) as client:
        ack = ack_fields(client.send(unknown_sex))
    assert ack["code"] == "AE" and ack["err"] is not None and "103" in "|".join(ack["err"])
    assert not ack["msh"][9].startswith("PACSF")  # built by the main process
    assert mapped_here == ["ADT0001"]  # parsed and mapped again, to say what is wrong


def test_what_the_front_made_with_other_mappings_is_made_again(server, mapped_here):
    """Mappings changed in one process and not yet in the other: the main process's win."""
    server.server.services.mappings.version = "not the front's"
    with MLLPClient(server.mllp_port) as client:
        assert ack_fields(client.send(ADT))["code"] == "AA"
    assert mapped_here == ["ADT0001"]
    assert count(server.db, Patient) == 1


def health(server) -> tuple[int, dict]:
    response = httpx.get(f"{server.http_url}/healthz", timeout=10)
    return response.status_code, response.json()


@one_database
def test_a_front_that_dies_is_replaced_on_the_same_port(server):
    first = front_pid(server)
    assert health(server) == (200, {**health(server)[1], "mllp_front": "running"})
    with MLLPClient(server.mllp_port) as client:
        assert ack_fields(client.send(ADT))["code"] == "AA"
    os.kill(first, signal.SIGKILL)
    # Monitoring sees it until the next one is up (that takes a second at least).
    deadline = time.monotonic() + 5
    while health(server)[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    status, body = health(server)
    assert status == 503 and body["mllp_front"].startswith("not running")
    # The main process holds the listening socket: a sender connecting meanwhile waits in its
    # backlog until the next front takes it.
    with MLLPClient(server.mllp_port, timeout=30) as client:
        assert ack_fields(client.send(ORM))["code"] == "AA"
    assert front_pid(server) != first
    assert count(server.db, ImagingOrder) == 1
    assert health(server)[0] == 200


def listening_sockets(port: int) -> set[str]:
    """The inodes of the sockets listening on ``port`` (/proc/net/tcp, state 0A: LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            found.add(fields[9])
    return found


@one_database
def test_the_front_dies_with_a_killed_server_and_leaves_the_port_free(tmp_path, database_url):
    server = ServeProcess(tmp_path / "data", database_url).start()
    try:
        with MLLPClient(server.mllp_port) as client:
            assert ack_fields(client.send(ADT))["code"] == "AA"
        assert server.proc is not None
        fronts = spawned_children(server.proc.pid)
        assert fronts, "pacs serve runs its MLLP front process by default"
        ours = listening_sockets(server.mllp_port)
        assert ours
        server.kill()
        deadline = time.monotonic() + 10
        while (any(alive(pid) for pid in fronts) or ours & listening_sockets(server.mllp_port)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in fronts)
        # The listening socket the server and its front shared is closed: the port is free for
        # a restarted server (unless another test's server has taken it since).
        assert not ours & listening_sockets(server.mllp_port)
    finally:
        server.stop()


@one_database
def test_sigterm_stops_the_front_too(tmp_path, database_url):
    server = ServeProcess(tmp_path / "data", database_url).start()
    assert server.proc is not None
    fronts = spawned_children(server.proc.pid)
    assert fronts
    assert server.terminate() == 0
    assert not any(alive(pid) for pid in fronts)


@one_database
def test_sigterm_to_every_process_of_the_service_stops_it_cleanly(tmp_path, database_url):
    """systemd (KillMode=control-group) and timeout(1) signal the main process and the front at
    once: the front leaves stopping to the main process, which is not taken for a crash."""
    server = ServeProcess(tmp_path / "data", database_url).start()
    assert server.proc is not None
    fronts = spawned_children(server.proc.pid)
    assert fronts
    with MLLPClient(server.mllp_port) as client:
        assert ack_fields(client.send(ADT))["code"] == "AA"
    for pid in fronts:
        os.kill(pid, signal.SIGTERM)
    assert server.terminate() == 0
    assert not any(alive(pid) for pid in fronts)
    log = server.log.read_text()
    assert "stopped" in log and "starting another" not in log and "did not stop" not in log


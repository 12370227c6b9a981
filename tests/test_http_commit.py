"""A change over HTTP is answered only once it is committed (acknowledge after durable)."""

from __future__ import annotations

import httpx
from sqlmodel import Session

from tests.helpers import MLLPClient, ack_fields, load


def test_a_change_is_answered_only_after_its_commit(server, monkeypatch):
    """Were the unit of work committed after the answer went out (FastAPI's default for a
    dependency that yields), a client would be told of a change a failed commit then loses."""
    with MLLPClient(server.mllp_port) as mllp:
        assert ack_fields(mllp.send(load("orm_o01_nw_ihe.hl7")))["code"] == "AA"
    order = httpx.get(f"{server.http_url}/api/orders").json()["items"][0]

    def failing(self: Session) -> None:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(Session, "commit", failing)
    answer = httpx.post(f"{server.http_url}/api/orders/{order['id']}/arrive", json={})
    monkeypatch.undo()
    assert answer.status_code == 500
    assert httpx.get(f"{server.http_url}/api/orders/{order['id']}").json()["status"] == "scheduled"

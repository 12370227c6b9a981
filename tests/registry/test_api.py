"""/api/orders as a registration desk or the hospital platform reads it."""

from __future__ import annotations

from datetime import datetime

import httpx

from tests.helpers import send_all


def test_a_step_start_carries_the_hospital_zone_offset(server):
    """A scheduled start is a wall-clock time of the hospital (ORC-7/TQ1 carry no offset): the API
    gives it with the offset of [timezone] (Asia/Shanghai in the tests), as RFC 3339 asks."""
    assert [a["code"] for a in send_all(server.mllp_port, ["adt_a01_ihe.hl7", "orm_o01_nw_ihe.hl7"])] == ["AA", "AA"]
    [order] = httpx.get(server.http_url + "/api/orders", params={"accession_number": "ACC0001"}).json()["items"]
    [step] = order["steps"]
    assert step["start"] == "2026-11-25T10:00:00+08:00"
    assert datetime.fromisoformat(step["start"]).utcoffset().total_seconds() == 8 * 3600
    again = httpx.get(f"{server.http_url}/api/orders/{order['id']}").json()
    assert again["steps"][0]["start"] == step["start"]

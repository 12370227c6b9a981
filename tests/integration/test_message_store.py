"""Browsing and replaying the message store: /api/messages and `pacs messages`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx

from tests.helpers import MLLPClient, ack_fields, load


def pacs(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PACS_DATABASE_URL": settings.database_url, "PACS_DATA_DIR": str(settings.data_dir)}
    return subprocess.run([sys.executable, "-m", "pacs.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_filters_paging_and_detail(server):
    with MLLPClient(server.mllp_port) as client:
        for name in ("adt_a01_ihe.hl7", "orm_o01_nw_ihe.hl7", "orm_o01_xo_ihe.hl7"):
            assert ack_fields(client.send(load(name)))["code"] == "AA"
        client.send(load("orm_o01_ca_ihe.hl7"))  # PL0002 unknown: AE
    with MLLPClient(server.mllp_port) as client:
        client.send(load("adt_a04_china_gb18030.hl7"))
    api = server.http_url + "/api/messages"
    everything = httpx.get(api).json()
    assert everything["total"] == 5
    assert [m["control_id"] for m in everything["items"]] == ["CN0001", "ORM0005", "ORM0002", "ORM0001", "ADT0001"]
    assert httpx.get(api, params={"type": "ORM"}).json()["total"] == 3
    assert httpx.get(api, params={"type": "ADT^A04"}).json()["total"] == 1
    errors = httpx.get(api, params={"status": "ERROR"}).json()
    assert [m["control_id"] for m in errors["items"]] == ["ORM0005"] and "204" in errors["items"][0]["error"]
    assert httpx.get(api, params={"patient_id": "1000234"}).json()["total"] == 1
    assert httpx.get(api, params={"control_id": "ORM0002"}).json()["items"][0]["message_type"] == "ORM^O01"
    page = httpx.get(api, params={"limit": 2, "offset": 2}).json()
    assert [m["control_id"] for m in page["items"]] == ["ORM0002", "ORM0001"] and page["total"] == 5
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert httpx.get(api, params={"since": future}).json()["total"] == 0
    assert httpx.get(api, params={"until": future}).json()["total"] == 5
    assert httpx.get(api, params={"since": "2026-01-01T00:00:00"}).status_code == 422  # no zone
    assert httpx.get(api, params={"status": "BOGUS"}).status_code == 422

    china = httpx.get(f"{api}/{everything['items'][0]['id']}").json()
    assert "欧阳娜娜" in china["raw"] and china["charset"] == "GB 18030"  # decoded for display
    assert china["mapped"]["patient"]["family_name"] == "欧阳娜娜"
    assert china["applied"]["patient_created"] is True
    assert china["response"].startswith("MSH|")
    assert httpx.get(f"{api}/999999").status_code == 404


def test_reprocess_after_the_missing_order_arrives(server):
    with MLLPClient(server.mllp_port) as client:
        early = ack_fields(client.send(load("orm_o01_xo_ihe.hl7")))  # change before the order exists
        assert early["code"] == "AE"
        assert ack_fields(client.send(load("orm_o01_nw_ihe.hl7")))["code"] == "AA"
    api = server.http_url + "/api/messages"
    failed = httpx.get(api, params={"status": "ERROR"}).json()["items"][0]
    again = httpx.post(f"{api}/{failed['id']}/reprocess").json()
    assert again["status"] == "PROCESSED" and again["reprocess_of"] == failed["id"]
    assert httpx.post(f"{api}/424242/reprocess").status_code == 404


def test_cli_list_show_reprocess(server, settings):
    with MLLPClient(server.mllp_port) as client:
        client.send(load("orm_o01_xo_ihe.hl7"))
        client.send(load("adt_a04_china_gb18030.hl7"))
    listing = pacs(settings, "messages", "list")
    assert listing.returncode == 0, listing.stderr
    assert "ORM0002" in listing.stdout and "CN0001" in listing.stdout and "2 of 2" in listing.stdout
    as_json = json.loads(pacs(settings, "messages", "list", "--status", "ERROR", "--json").stdout)
    assert [m["control_id"] for m in as_json["items"]] == ["ORM0002"]
    message_id = str(as_json["items"][0]["id"])
    shown = pacs(settings, "messages", "show", message_id)
    assert shown.returncode == 0 and "ORC|XO|PL0001" in shown.stdout and '"status": "ERROR"' in shown.stdout
    assert pacs(settings, "messages", "show", "777").returncode == 1
    still_failing = pacs(settings, "messages", "reprocess", message_id)
    assert still_failing.returncode == 1 and "ERROR" in still_failing.stdout
    with MLLPClient(server.mllp_port) as client:
        client.send(load("orm_o01_nw_ihe.hl7"))
    fixed = pacs(settings, "messages", "reprocess", message_id)
    assert fixed.returncode == 0 and "PROCESSED" in fixed.stdout, fixed.stdout + fixed.stderr


def test_a_message_row_has_every_column_of_the_message_store():
    from dataclasses import fields

    from pacs.integration.message_store import MESSAGE, MessageRow

    assert {f.name for f in fields(MessageRow)} == set(MESSAGE.columns.keys())

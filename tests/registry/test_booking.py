"""The registration desk's bookings over real HTTP: rooms and slots from mappings/rooms.yaml, a
registration booked whole or not at all, a full slot, a clash, the past, unknown procedures, a
move, a confirmation, a cancellation with its reason reaching a test HIS, a paper requisition
going to the HIS as a filler order (IHE RAD-3, ORC-1 SN) and the HIS's NA answer, the pending
requisitions and the day's lists with their CSV."""

from __future__ import annotations

import base64
import csv
import io
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlmodel import Session, select

from pacs.audit.tables import AuditEvent
from pacs.auth import accounts
from pacs.integration.channel import _validate_strictly
from pacs.integration.hl7v2 import parse
from pacs.registry.models import ImagingOrder, OrderEvent
from pacs.settings import HISDestination, OutboxSettings
from tests.helpers import MLLPClient, ack_fields, load
from tests.integration.test_his_outbox import FakeHIS, wait_for

ZONE = ZoneInfo("Asia/Shanghai")  # the tests' [timezone]


def tomorrow() -> date:
    """The next weekday (every shipped room is open on weekdays)."""
    day = datetime.now(ZONE).date() + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def at(day: date, hour: int, minute: int = 0) -> str:
    return datetime(day.year, day.month, day.day, hour, minute).isoformat()


def admit(server, patient_id: str, family: str, given: str, pinyin: str, sex: str = "F",  # type: ignore[no-untyped-def]
          birth: str = "19810304", patient_class: str = "O") -> None:
    family_py, given_py = pinyin.split()
    message = (f"MSH|^~\\&|HIS|IHE_OP|PACS|RADIOLOGY|20261201083000||ADT^A04^ADT_A01|ADT{patient_id}|P|2.5|||AL|NE|CHN|"
               f"UNICODE UTF-8\rEVN|A04|20261201083000\r"
               f"PID|1||{patient_id}^^^HOSP^PI||{family}^{given}^^^^^L^I~{family_py}^{given_py}^^^^^L^A||{birth}|{sex}\r"
               f"PV1|1|{patient_class}|||||||||||||||||V{patient_id}\r")
    with MLLPClient(server.mllp_port) as mllp:
        assert ack_fields(mllp.send(message.encode()))["code"] == "AA"


def book(server, body: dict) -> httpx.Response:  # type: ignore[no-untyped-def,type-arg]
    return httpx.post(server.http_url + "/api/orders", json=body, timeout=30)


def exam(code: str, room: str, start: str, **more: str) -> dict[str, str]:
    return {"procedure_code": code, "room": room, "start": start, **more}


def orders_in(server) -> int:  # type: ignore[no-untyped-def]
    with Session(server.db.engine) as session:
        return len(session.exec(select(ImagingOrder)).all())


@pytest.fixture
def his():
    fake = FakeHIS()
    yield fake
    fake.close()


@pytest.fixture
def desk(start_server, his):  # type: ignore[no-untyped-def]
    server = start_server(his=HISDestination(host="127.0.0.1", port=his.port, version="2.4"),
                          outbox=OutboxSettings(base_delay_seconds=0.1, max_delay_seconds=0.5))
    admit(server, "P20001", "欧阳", "娜娜", "OUYANG NANA")
    admit(server, "P20002", "李", "雷", "LI LEI", sex="M", birth="19700101", patient_class="E")
    return server


def test_rooms_and_slots_come_from_rooms_yaml(server):
    rooms = httpx.get(server.http_url + "/api/desk/rooms").json()
    assert [r["room"] for r in rooms] == ["CT1", "CT2", "MR1", "DR1", "US1", "MG1"]
    ct2 = rooms[1]
    assert ct2["station_ae_title"] == "CT2" and ct2["modality"] == "CT" and ct2["capacity"] == 1
    assert ct2["hours"]["mon"] == ["08:00-12:00", "13:00-17:30", "18:00-20:00"]  # breaks cut out
    day = tomorrow()
    answer = httpx.get(server.http_url + "/api/desk/slots",
                       params={"room": "CT2", "date": day.isoformat(), "procedure": "CT0201"}).json()
    assert answer["minutes"] == 25  # the room's own length for CT0201
    first = answer["slots"][0]
    assert first["start"] == f"{day}T08:00:00+08:00" and first["end"] == f"{day}T08:25:00+08:00"
    assert (first["capacity"], first["booked"], first["free"]) == (1, 0, 1)
    assert all(not (s["start"][11:16] >= "12:00" and s["start"][11:16] < "13:00") for s in answer["slots"])
    default = httpx.get(server.http_url + "/api/desk/slots", params={"room": "CT2", "date": day.isoformat()}).json()
    assert default["minutes"] == 15
    assert httpx.get(server.http_url + "/api/desk/slots",
                     params={"room": "NOPE", "date": day.isoformat()}).status_code == 404
    assert httpx.get(server.http_url + "/api/desk/slots",
                     params={"room": "CT2", "date": day.isoformat(), "procedure": "MR0001"}).status_code == 400


def test_a_registration_is_booked_and_the_his_gets_filler_orders(desk, his):
    day = tomorrow()
    answer = book(desk, {"patient_id": "P20001", "requisition_number": "REQ-2026-0042", "department": "呼吸内科",
                         "requesting_physician": "王^五", "reason": "咳嗽两周",
                         "exams": [exam("CT0001", "CT2", at(day, 9)), exam("DR0001", "DR1", at(day, 10))]})
    assert answer.status_code == 201, answer.text
    ct, dr = answer.json()["orders"]
    assert ct["room"] == "CT2" and ct["station_ae_title"] == "CT2" and ct["modality"] == "CT"
    assert ct["start"] == f"{day}T09:00:00+08:00" and ct["end"] == f"{day}T09:15:00+08:00"
    assert ct["accession_number"].startswith("A") and ct["filler_number"] == ct["accession_number"]
    assert ct["requisition_number"] == "REQ-2026-0042" and ct["department"] == "呼吸内科"
    assert ct["name"] == "欧阳娜娜" and ct["name_pinyin"] == "OUYANG NANA" and ct["source"] == "outpatient"
    assert dr["modality"] == "DX" and dr["location"] == "门诊楼1层 放射科 105"
    # the worklist entry carries the room's station
    order = httpx.get(f"{desk.http_url}/api/orders/{ct['id']}").json()
    assert order["steps"][0]["station_ae_title"] == "CT2" and order["steps"][0]["status"] == "SCHEDULED"
    # each goes to the HIS as a filler order: ORC-1 SN, no placer number, the filler number in ORC-3
    wait_for(lambda: len(his.received) == 2, describe=lambda: str(his.received))
    sent = [parse(text) for text in his.received]
    for text, message in zip(his.received, sent, strict=True):
        _validate_strictly(text, message)
    first = sent[0]
    assert first.message_type == "ORM^O01"
    assert first.get("ORC-1") == "SN" and first.get("ORC-2") == "" and first.get("ORC-5") == "SC"
    assert first.get("ORC-3.1") == ct["accession_number"]
    assert first.get("OBR-4.1") == "CT0001" and first.get("OBR-18") == ct["accession_number"]
    assert first.get("OBR-27.4") == f"{day:%Y%m%d}090000" and first.get("PV1-2") == "O"
    assert first.get("ORC-17.2") == "呼吸内科" and first.get("NTE-3") == "requisition REQ-2026-0042"

    # the HIS answers NA with its placer number (an ORM^O01), and the order takes it
    na = (f"MSH|^~\\&|HIS|IHE_OP|PACS|RADIOLOGY|20261201090000||ORM^O01|NA0001|P|2.3.1|||AL|NE|CHN|UNICODE UTF-8\r"
          f"PID|1||P20001^^^HOSP^PI||欧阳^娜娜\r"
          f"ORC|NA|HIS7788^HIS|{ct['accession_number']}^PACS\r"
          f"OBR|1|HIS7788^HIS|{ct['accession_number']}^PACS|CT0001^胸部CT平扫^HOSP\r")
    with MLLPClient(desk.mllp_port) as mllp:
        assert ack_fields(mllp.send(na.encode()))["code"] == "AA"
    after = httpx.get(f"{desk.http_url}/api/orders/{ct['id']}").json()
    assert after["placer_number"] == "HIS7788" and after["status"] == "scheduled"
    assert after["steps"][0]["station_ae_title"] == "CT2"  # the booking stays as it was


def test_full_slot_clash_past_and_unknown_are_refused_before_anything_is_saved(desk):
    day = tomorrow()
    assert book(desk, {"patient_id": "P20001", "exams": [exam("CT0001", "CT2", at(day, 9))]}).status_code == 201
    before = orders_in(desk)

    full = book(desk, {"patient_id": "P20002", "exams": [exam("CT0101", "CT2", at(day, 9, 5))]})
    assert full.status_code == 409 and full.json()["detail"]["problem"] == "full"
    assert "CT2 is full" in full.json()["detail"]["message"]

    clash = book(desk, {"patient_id": "P20001", "exams": [exam("DR0001", "DR1", at(day, 9, 10))]})
    assert clash.status_code == 409 and clash.json()["detail"]["problem"] == "clash"
    assert "already booked" in clash.json()["detail"]["message"]

    past = book(desk, {"patient_id": "P20002", "exams": [exam("CT0001", "CT2", at(day - timedelta(days=2), 9))]})
    assert past.status_code == 400 and past.json()["detail"]["problem"] == "past"

    for far in (at(day + timedelta(days=800), 9), "9999-12-31T23:59:00", "9999-12-31T23:59:00-12:00"):
        answer = book(desk, {"patient_id": "P20002", "exams": [exam("CT0001", "CT2", far)]})
        assert answer.status_code == 400, (far, answer.text)

    unknown = book(desk, {"patient_id": "P20002", "exams": [exam("XX9999", "CT2", at(day, 10))]})
    assert unknown.status_code == 400 and "procedures.csv" in unknown.json()["detail"]["message"]
    wrong_room = book(desk, {"patient_id": "P20002", "exams": [exam("MR0001", "CT2", at(day, 10))]})
    assert wrong_room.status_code == 400 and "room CT2 does CT" in wrong_room.json()["detail"]["message"]
    closed = book(desk, {"patient_id": "P20002", "exams": [exam("CT0001", "CT2", at(day, 12, 15))]})
    assert closed.status_code == 409 and closed.json()["detail"]["problem"] == "closed"
    nobody = book(desk, {"patient_id": "NOBODY", "exams": [exam("CT0001", "CT2", at(day, 10))]})
    assert nobody.status_code == 400

    # several exams at one registration: the second clashes with the first, so neither is booked
    both = book(desk, {"patient_id": "P20002", "exams": [exam("CT0101", "CT2", at(day, 10)),
                                                         exam("DR0001", "DR1", at(day, 10, 5))]})
    assert both.status_code == 409
    assert both.json()["detail"]["refusals"] == [
        {"problem": "clash", "exam": 1, "message": both.json()["detail"]["refusals"][0]["message"]}]
    # the second room full: neither is booked either
    second_full = book(desk, {"patient_id": "P20002", "exams": [exam("DR0001", "DR1", at(day, 8)),
                                                                exam("CT0001", "CT2", at(day, 9))]})
    assert second_full.status_code == 409 and second_full.json()["detail"]["refusals"][0]["exam"] == 1
    assert orders_in(desk) == before
    slot = httpx.get(desk.http_url + "/api/desk/slots",
                     params={"room": "CT2", "date": day.isoformat(), "procedure": "CT0001"}).json()["slots"]
    nine = next(s for s in slot if s["start"].endswith("T09:00:00+08:00"))
    assert (nine["booked"], nine["free"]) == (1, 0)


def test_move_confirm_and_cancel_with_a_reason_that_reaches_the_his(desk, his):
    day = tomorrow()
    booked = book(desk, {"patient_id": "P20001", "exams": [exam("CT0001", "CT1", at(day, 9))]}).json()["orders"][0]
    other = book(desk, {"patient_id": "P20002", "exams": [exam("CT0001", "CT2", at(day, 11))]}).json()["orders"][0]
    url = f"{desk.http_url}/api/orders/{booked['id']}"
    wait_for(lambda: len(his.received) == 2)

    assert httpx.patch(url, json={"room": "CT2", "start": at(day, 11)}).status_code == 409  # taken by the other
    moved = httpx.patch(url, json={"room": "CT2", "start": f"{day}T02:30:00Z"})  # 10:30 in Shanghai
    assert moved.status_code == 200, moved.text
    assert moved.json()["room"] == "CT2" and moved.json()["start"] == f"{day}T10:30:00+08:00"
    assert httpx.patch(url, json={"start": at(day - timedelta(days=2), 9)}).status_code == 400

    confirmed = httpx.post(url + "/confirm", json={"note": "电话确认"})
    assert confirmed.status_code == 200 and confirmed.json()["confirmed"] is True

    assert httpx.post(url + "/cancel", json={}).status_code == 400
    assert httpx.post(url + "/cancel", json={"reason": "   "}).status_code == 400
    cancelled = httpx.post(url + "/cancel", json={"reason": "患者要求改期"})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert httpx.post(url + "/cancel", json={"reason": "again"}).status_code == 409
    assert httpx.patch(url, json={"start": at(day, 15)}).status_code == 409

    wait_for(lambda: len(his.received) == 5, describe=lambda: str([parse(t).get("ORC-1") for t in his.received]))
    controls = [(parse(t).get("ORC-1"), parse(t).get("ORC-5")) for t in his.received]
    assert controls[2:] == [("SC", "SC"), ("SC", "SC"), ("OC", "CA")]
    moved_message = parse(his.received[2])
    assert moved_message.get("OBR-27.4") == f"{day:%Y%m%d}103000"
    cancel = parse(his.received[4])
    assert cancel.get("ORC-16.2") == "患者要求改期" and cancel.get("NTE-3") == "患者要求改期"
    assert cancel.get("ORC-3.1") == booked["accession_number"]
    for text in his.received:
        _validate_strictly(text, parse(text))

    # the slot is free again, and the other booking stands
    slots = httpx.get(desk.http_url + "/api/desk/slots",
                      params={"room": "CT2", "date": day.isoformat(), "procedure": "CT0001"}).json()["slots"]
    assert next(s for s in slots if s["start"].endswith("T10:30:00+08:00"))["booked"] == 0
    assert httpx.get(f"{desk.http_url}/api/orders/{other['id']}").json()["status"] == "scheduled"
    with Session(desk.db.engine) as session:
        notes = [e.note for e in session.exec(select(OrderEvent).where(OrderEvent.order == booked["id"]))]
    assert any(n.startswith("moved from CT1") for n in notes) and "患者要求改期" in notes


def test_the_his_hears_of_a_desk_cancellation_in_v25(start_server, his):
    server = start_server(his=HISDestination(host="127.0.0.1", port=his.port, version="2.5.1"),
                          outbox=OutboxSettings(base_delay_seconds=0.1, max_delay_seconds=0.5))
    admit(server, "P20001", "欧阳", "娜娜", "OUYANG NANA")
    order = book(server, {"patient_id": "P20001", "exams": [exam("US0001", "US1", at(tomorrow(), 9))]}).json()["orders"][0]
    assert httpx.post(f"{server.http_url}/api/orders/{order['id']}/cancel",
                      json={"reason": "设备故障"}).status_code == 200
    wait_for(lambda: len(his.received) == 2)
    sn, oc = (parse(t) for t in his.received)
    assert sn.message_type == "OMI^O23" and sn.get("ORC-1") == "SN" and sn.get("TQ1-7")
    assert oc.get("ORC-1") == "OC" and oc.get("ORC-5") == "CA" and oc.get("ORC-16.2") == "设备故障"
    for text in his.received:
        _validate_strictly(text, parse(text))


def test_pending_requisitions_by_source_and_department(server):
    with MLLPClient(server.mllp_port) as mllp:
        for name in ("adt_a01_ihe.hl7", "orm_o01_nw_ihe.hl7"):
            assert ack_fields(mllp.send(load(name)))["code"] == "AA"
    answer = httpx.get(server.http_url + "/api/desk/requisitions", params={"date": "2026-11-25"}).json()
    assert answer["total"] == 1
    [group] = answer["groups"]
    assert (group["source"], group["department"], group["count"]) == ("ward", "放射科", 1)
    [item] = group["items"]
    assert item["accession_number"] == "ACC0001" and item["placer_number"] == "PL0001" and item["name"] == "张三"
    assert httpx.get(server.http_url + "/api/desk/requisitions",
                     params={"date": "2026-11-25", "source": "emergency"}).json()["total"] == 0
    assert httpx.get(server.http_url + "/api/desk/requisitions",
                     params={"date": "2026-11-26"}).json()["total"] == 0
    # checked in: no longer pending
    assert httpx.post(f"{server.http_url}/api/orders/{item['id']}/arrive", json={}).status_code == 200
    assert httpx.get(server.http_url + "/api/desk/requisitions",
                     params={"date": "2026-11-25"}).json()["total"] == 0


def test_todays_lists_with_totals_and_a_csv_excel_reads(server):
    admit(server, "P20001", "欧阳", "娜娜", "OUYANG NANA")
    admit(server, "P20002", "李", "雷", "LI LEI", sex="M", patient_class="E")
    day = tomorrow()
    first = book(server, {"patient_id": "P20001", "exams": [exam("CT0001", "CT2", at(day, 9)),
                                                            exam("DR0001", "DR1", at(day, 10))]}).json()["orders"]
    assert book(server, {"patient_id": "P20002", "exams": [exam("CT0001", "CT2", at(day, 10))]}).status_code == 201
    httpx.post(f"{server.http_url}/api/orders/{first[1]['id']}/cancel", json={"reason": "重复登记"})
    httpx.post(f"{server.http_url}/api/orders/{first[0]['id']}/arrive", json={})
    lists = httpx.get(server.http_url + "/api/desk/today", params={"date": day.isoformat()}).json()
    registered = lists["stages"]["registered"]
    assert registered["total"] == 2
    assert registered["by_modality"] == {"CT": 2} and registered["by_room"] == {"CT2": 2}
    assert registered["by_source"] == {"outpatient": 1, "emergency": 1}
    assert [i["status"] for i in registered["items"]] == ["arrived", "scheduled"]
    assert lists["stages"]["examined"]["total"] == 0 and lists["stages"]["completed"]["total"] == 0

    exported = httpx.get(server.http_url + "/api/desk/today", params={"date": day.isoformat(), "format": "csv"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert exported.content.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: Excel reads the Hanzi
    rows = list(csv.reader(io.StringIO(exported.content.decode("utf-8-sig"))))
    assert rows[0][:4] == ["stage", "status", "accession_number", "patient_id"]
    assert rows[1][0] == "registered" and rows[1][4] == "欧阳娜娜"
    assert ["registered", "total", "2"] in rows and ["registered", "room", "CT2", "2"] in rows


def basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def test_bookings_need_orders_write_and_are_audited_with_the_users_name(guarded_server):
    with Session(guarded_server.db.engine) as session:
        accounts.add_user(session, username="zhangli", password="correct horse 1", roles=["registrar"])
        accounts.add_user(session, username="doc", password="correct horse 1", roles=["clinician"])
        accounts.add_user(session, username="tech", password="correct horse 1", roles=["technologist"])
        session.commit()
    admit(guarded_server, "P20001", "欧阳", "娜娜", "OUYANG NANA")
    url = guarded_server.http_url
    body = {"patient_id": "P20001", "exams": [exam("CT0001", "CT2", at(tomorrow(), 9))]}
    assert httpx.post(url + "/api/orders", json=body).status_code == 401
    assert httpx.post(url + "/api/orders", json=body, headers=basic("doc", "correct horse 1")).status_code == 403
    assert httpx.get(url + "/api/desk/rooms", headers=basic("tech", "correct horse 1")).status_code == 200
    assert httpx.get(url + "/api/desk/rooms", headers=basic("doc", "correct horse 1")).status_code == 200
    assert httpx.get(url + "/api/desk/today", headers=basic("tech", "correct horse 1")).status_code == 200
    made = httpx.post(url + "/api/orders", json=body, headers=basic("zhangli", "correct horse 1"))
    assert made.status_code == 201, made.text
    order = made.json()["orders"][0]
    assert httpx.post(f"{url}/api/orders/{order['id']}/cancel", json={"reason": "改约"},
                      headers=basic("doc", "correct horse 1")).status_code == 403
    assert httpx.post(f"{url}/api/orders/{order['id']}/cancel", json={"reason": "改约"},
                      headers=basic("zhangli", "correct horse 1")).status_code == 200
    with Session(guarded_server.db.engine) as session:
        entries = session.exec(select(AuditEvent).where(AuditEvent.user_id == "zhangli",
                                                        AuditEvent.event_id == "110109")).all()
        events = session.exec(select(OrderEvent).where(OrderEvent.order == order["id"])).all()
    assert sorted(e.action for e in entries) == ["C", "U"]
    assert {e.target for e in entries} == {order["accession_number"]}
    assert [e.by for e in events] == ["user:zhangli", "user:zhangli"]

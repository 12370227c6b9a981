"""The desk's patient search and walk-ins (/api/patients) against a real server: patients come in
as the HIS's ADT over MLLP, searches go over HTTP; every kind of query, polyphonic surnames,
ranking, merged patients, bad input, permissions, the audit log, and a walk-in that the HIS's
A40 later makes its real patient without losing its order."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlmodel import Session, select

from pacs.audit.tables import AuditEvent, AuditObject
from pacs.db import MIGRATIONS_DIR, Database
from pacs.integration.names import NameRules
from pacs.registry import search, service
from pacs.registry.models import ImagingOrder, Patient
from pacs.registry.schemas import OrderIn, StepIn
from tests.auth.test_access import bearer, make_token
from tests.helpers import MLLPClient, ack_fields

TODAY = datetime.now(ZoneInfo("Asia/Shanghai")).date()  # the test server's zone (tests/conftest.py)


def adt(control: str, identifiers: str, name: str, *, sex: str = "M", birth: str = "19900101", phone: str = "",
        national_id: str = "", event: str = "A04") -> bytes:
    """An ADT from an IHE-conformant HIS (PID-3 identifiers, PID-5 name, PID-13 phone, PID-19)."""
    return (f"MSH|^~\\&|HIS|IHE_OP|PACS|RADIOLOGY|20261201090000||ADT^{event}^ADT_A01|{control}|P|2.5|||AL|NE|CHN|"
            f"UNICODE UTF-8\rEVN|{event}|20261201090000\r"
            f"PID|1||{identifiers}||{name}||{birth}|{sex}|||||{phone}||||||{national_id}\r").encode()


def a40(control: str, identifiers: str, name: str, prior: str) -> bytes:
    return (f"MSH|^~\\&|HIS|IHE_OP|PACS|RADIOLOGY|20261201100000||ADT^A40^ADT_A39|{control}|P|2.5|||AL|NE|CHN|"
            f"UNICODE UTF-8\rEVN|A40|20261201100000\rPID|1||{identifiers}||{name}||19900101|M\rMRG|{prior}\r").encode()


PATIENTS = [
    adt("S1", "P1^^^HOSP^PI~88001^^^HOSP^HC", "张^三", phone="138-0013-8000", national_id="110105199001011232"),
    adt("S2", "P2^^^HOSP^PI", "张^三丰", birth="19800505"),
    adt("S3", "P3^^^HOSP^PI", "单^田芳", sex="F", birth="19701010"),
    adt("S4", "P4^^^HOSP^PI", "曾^国藩", birth="19611111"),
    adt("S5", "P5^^^HOSP^PI", "欧阳^娜娜", sex="F", birth="19950505", national_id="11010519950505122x"),
    adt("S6", "P6^^^HOSP^PI~66006^^^HOSP^MC", "吕^小明", phone="+86 139 1234 5678"),
    adt("S7", "P7^^^HOSP^PI", "Smith^John"),
]


def send(server, *messages: bytes) -> None:
    with MLLPClient(server.mllp_port) as client:
        for message in messages:
            ack = ack_fields(client.send(message))
            assert ack["code"] == "AA", ack["text"]


def find(server, q: str, **params) -> dict:
    response = httpx.get(f"{server.http_url}/api/patients", params={"q": q, **params}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store" and "search;dur=" in response.headers["server-timing"]
    return response.json()


def ids(answer: dict) -> list[str]:
    return [item["patient_id"] for item in answer["items"]]


@pytest.fixture
def registry(server):
    send(server, *PATIENTS)
    return server


def test_every_kind_of_query_finds_its_patient(registry):
    assert ids(find(registry, "P1")) == ["P1"]
    [one] = find(registry, "P1")["items"]
    assert one | {"id": 0, "identifiers": []} == {
        "id": 0, "patient_id": "P1", "name": "张三", "pinyin": "Zhang San", "sex": "M", "birth_date": "1990-01-01",
        "age": search.age(date(1990, 1, 1), TODAY), "phone": "138-0013-8000", "national_id": "110105199001011232",
        "card_numbers": ["88001"], "identifiers": [], "source": "local", "open_orders": 0, "matched": "patient_id",
        "temporary": False}
    assert {(i["value"], i["type_code"]) for i in one["identifiers"]} == {("P1", "PI"), ("88001", "HC")}
    assert find(registry, "P1")["his"] == {"asked": False, "found": 0, "error": None}
    assert [(i["patient_id"], i["matched"]) for i in find(registry, "88001")["items"]] == [("P1", "card")]
    assert [(i["patient_id"], i["matched"]) for i in find(registry, "66006")["items"]] == [("P6", "card")]
    assert find(registry, "66006")["items"][0]["card_numbers"] == ["66006"]  # MC: medical insurance card
    assert [(i["patient_id"], i["matched"]) for i in find(registry, "110105199001011232")["items"]] == [
        ("P1", "national_id")]
    for national in ("11010519950505122X", "11010519950505122x"):  # kept as the HIS sent it: x
        assert [(i["patient_id"], i["matched"]) for i in find(registry, national)["items"]] == [("P5", "national_id")]
    for phone in ("13800138000", "138 0013 8000", "+86-138-0013-8000"):
        assert [(i["patient_id"], i["matched"]) for i in find(registry, phone)["items"]] == [("P1", "phone")]
    assert ids(find(registry, "13912345678")) == ["P6"]

    # Hanzi, from the start of the name; the whole name first, then longer ones
    assert ids(find(registry, "张")) == ["P1", "P2"]
    assert ids(find(registry, "张三")) == ["P1", "P2"]
    assert ids(find(registry, "张 三丰")) == ["P2"]
    assert ids(find(registry, "欧阳")) == ["P5"] and ids(find(registry, "三")) == []
    # full pinyin, however it is written
    for typed in ("zhangsan", "zhang san", "ZHANG^SAN", "Zhang San", "zhāng sān"):
        answer = find(registry, typed)
        assert ids(answer) == ["P1", "P2"], typed
        assert answer["items"][0]["matched"] == "pinyin"
    assert ids(find(registry, "zhangsanf")) == ["P2"]
    # initials
    assert [(i["patient_id"], i["matched"]) for i in find(registry, "zs")["items"]] == [("P1", "initials"),
                                                                                       ("P2", "initials")]
    assert ids(find(registry, "zsf")) == ["P2"]
    assert ids(find(registry, "oynn")) == ["P5"] and ids(find(registry, "ouyang")) == ["P5"]
    # a Latin name
    assert ids(find(registry, "smith")) == ["P7"] and find(registry, "smith")["items"][0]["name"] == "Smith John"


def test_polyphonic_surnames_are_read_as_surnames(registry):
    """单 is SHAN and 曾 ZENG as surnames (mappings/names/surnames.csv), in pinyin and initials."""
    [shan] = find(registry, "shantianfang")["items"]
    assert (shan["patient_id"], shan["pinyin"]) == ("P3", "Shan Tianfang")
    assert ids(find(registry, "stf")) == ["P3"] and ids(find(registry, "shan")) == ["P3"]
    assert ids(find(registry, "dtf")) == [] and ids(find(registry, "dantianfang")) == []
    assert ids(find(registry, "zgf")) == ["P4"] and ids(find(registry, "zengguofan")) == ["P4"]
    assert ids(find(registry, "cgf")) == []
    # ü: 吕 LYU is found typed lv, lu or lyu
    for typed in ("lv", "lu", "lyu", "lvxiaoming", "lyu xiao ming", "lxm"):
        assert ids(find(registry, typed)) == ["P6"], typed


def book(server, patient_id: str, placer: str) -> int:
    """An order for a patient, made through the registry service (as the desk's booking does)."""
    with Session(server.db.engine) as session:
        patient = service.patient_by_id(session, patient_id)
        assert patient is not None
        order, created = service.apply_order(
            session, patient, None,
            OrderIn(placer_number=placer, procedure_code="CT-CHEST", procedure_text="胸部CT平扫",
                    steps=[StepIn(modality="CT", station_ae_title="CT1")]),
            service.Context(by="test", names=NameRules({})))
        session.commit()
        assert created
        return order.id


def test_the_patient_seen_most_recently_comes_first(registry):
    send(registry, adt("S8", "P8^^^HOSP^PI", "张^三", birth="20000101"))
    assert ids(find(registry, "张三"))[:2] == ["P1", "P8"]  # neither seen yet: by key, then as registered
    book(registry, "P8", "ORD-8")
    answer = find(registry, "zhangsan")
    assert ids(answer) == ["P8", "P1", "P2"]
    assert [i["open_orders"] for i in answer["items"]] == [1, 0, 0]
    book(registry, "P1", "ORD-1")
    assert ids(find(registry, "zs")) == ["P1", "P8", "P2"]
    # an exact identifier still comes before any name
    assert ids(find(registry, "P2")) == ["P2"]


def test_a_merged_patient_is_shown_as_the_one_it_was_merged_into(registry):
    """ADT A40 merges P2 into P1: P2's identifier and name find P1, listed once."""
    send(registry, a40("M1", "P1^^^HOSP^PI", "张^三", "P2^^^HOSP^PI"))
    [merged] = find(registry, "P2")["items"]
    assert merged["patient_id"] == "P1"
    assert {(i["value"], i["active"]) for i in merged["identifiers"]} >= {("P1", True), ("P2", False)}
    assert ids(find(registry, "张三丰")) == ["P1"]
    assert ids(find(registry, "zs")) == ["P1"]


def test_a_broad_prefix_ranks_the_recently_seen_first(registry, monkeypatch):
    """More matches than the search reads from a key's index: the patients of the newest
    orders still come first."""
    monkeypatch.setattr(search, "CANDIDATES", 3)
    send(registry, *(adt(f"Z{n}", f"Z{n}^^^HOSP^PI", f"张^{given}") for n, given in enumerate("一二四五六七")))
    book(registry, "Z3", "ORD-Z3")  # 张五: not among the first three by key (张一, 张七, 张三)
    assert ids(find(registry, "张")) == ["Z3", "Z0", "Z5", "P1"]


@pytest.mark.parametrize("q, reason", [
    ("", "type what to look for"),
    ("   ", "type what to look for"),
    ("x" * 65, "at most 64"),
])
def test_a_query_that_is_no_query_is_refused(server, q, reason):
    response = httpx.get(f"{server.http_url}/api/patients", params={"q": q})
    assert response.status_code == 400 and reason in response.json()["detail"]
    assert httpx.get(f"{server.http_url}/api/patients").status_code == 400
    assert httpx.get(f"{server.http_url}/api/patients", params={"q": "x" * 64}).status_code == 200


def walk_in(server, **body) -> httpx.Response:
    return httpx.post(f"{server.http_url}/api/patients", json=body, timeout=30)


def test_walk_ins_get_temporary_ids_of_the_day(server):
    day = TODAY.strftime("%Y%m%d")
    first = walk_in(server, family_name="王", given_name="五", sex="F", birth_date="1995-05-05",
                    phone="13700137000", national_id="440306199505051223", card_number="99001")
    assert first.status_code == 201, first.text
    patient = first.json()
    assert patient["patient_id"] == f"TMP{day}0001" and patient["temporary"] is True
    assert (patient["name"], patient["pinyin"], patient["sex"], patient["card_numbers"]) == ("王五", "Wang Wu", "F",
                                                                                         ["99001"])
    second = walk_in(server, name="欧阳娜娜", sex="U")
    assert second.status_code == 201 and second.json()["patient_id"] == f"TMP{day}0002"
    assert (second.json()["pinyin"], second.json()["sex"]) == ("Ouyang Nana", "U")
    assert ids(find(server, "wangwu")) == [f"TMP{day}0001"] and ids(find(server, "99001")) == [f"TMP{day}0001"]
    assert ids(find(server, "oynn")) == [f"TMP{day}0002"]


@pytest.mark.parametrize("body, status, reason", [
    ({"name": "   "}, 400, "the name is empty"),
    ({"family_name": " ", "given_name": "  "}, 400, "the name is empty"),
    ({"name": "王五", "birth_date": (TODAY + timedelta(days=1)).isoformat()}, 400, "after today"),
    ({"name": "王五", "sex": "X"}, 400, "M, F, O, U"),
    ({"name": "王五", "national_id": "440306199505051224"}, 400, "should be 3"),
    ({"name": "王五", "national_id": "12345"}, 400, "18 characters"),
    ({"name": "王五", "national_id": "440306199505051223", "birth_date": "1995-05-06"}, 400, "says born 1995-05-05"),
    ({"name": "王五", "phone": "call me"}, 400, "not a phone number"),
    ({"name": "王五", "temporary": False}, 400, "temporary"),
    ({"name": "王五", "card_number": "88 001\u0000"}, 400, "is not one"),
    ({"name": "王\u0000五"}, 400, "control characters"),
])
def test_a_walk_in_that_cannot_be_is_refused(server, body, status, reason):
    response = walk_in(server, **body)
    assert response.status_code == status and reason in response.json()["detail"], response.text
    with Session(server.db.engine) as session:
        assert session.exec(select(Patient)).all() == []


def test_a_national_id_already_known_names_its_patient(registry):
    response = walk_in(registry, name="张三", national_id="110105199001011232", birth_date="1990-01-01")
    assert response.status_code == 409 and "P1 (张三)" in response.json()["detail"], response.text
    taken = walk_in(registry, name="王五", card_number="88001")
    assert taken.status_code == 409 and "P1" in taken.json()["detail"]


def test_the_his_merge_makes_the_walk_in_its_real_patient(server):
    """A walk-in booked while the HIS was down; the HIS's A40 (MRG-1 the temporary ID) merges it
    into the patient it registered: the order follows, and the temporary ID still finds them."""
    temporary = walk_in(server, name="李四", sex="M", birth_date="1990-01-01").json()["patient_id"]
    order = book(server, temporary, "ORD-W1")
    send(server, a40("M2", "P20001^^^HOSP^PI", "李^四", f"{temporary}^^^^PI"))
    with Session(server.db.engine) as session:
        real = service.patient_by_id(session, "P20001")
        assert real is not None and session.get_one(ImagingOrder, order).patient == real.id
    for q in (temporary, "P20001", "李四", "ls"):
        [found] = find(server, q)["items"]
        assert (found["patient_id"], found["open_orders"], found["temporary"]) == ("P20001", 1, False), q
        assert {(i["value"], i["active"]) for i in found["identifiers"]} >= {(temporary, False), ("P20001", True)}
    assert httpx.get(f"{server.http_url}/api/orders", params={"patient_id": "P20001"}).json()["total"] == 1


def test_searches_and_walk_ins_are_audited_with_the_user(guarded_server):
    send(guarded_server, PATIENTS[0])
    desk = make_token(guarded_server, "desk-pc-1", ["patients.read", "patients.write"])
    reader = make_token(guarded_server, "ward-viewer", ["patients.read"])
    url = f"{guarded_server.http_url}/api/patients"
    assert httpx.get(url, params={"q": "zs"}).status_code == 401
    assert httpx.get(url, params={"q": "zs"}, headers=bearer(reader)).json()["items"][0]["patient_id"] == "P1"
    refused = httpx.post(url, json={"name": "王五"}, headers=bearer(reader))
    assert refused.status_code == 403 and "patients.write" in refused.json()["detail"]
    assert httpx.get(url, params={"q": "zs"}, headers=bearer(make_token(guarded_server, "pacs-x", ["orders.read"]))
                     ).status_code == 403
    created = httpx.post(url, json={"name": "王五"}, headers=bearer(desk))
    assert created.status_code == 201
    assert guarded_server.server.services.audit.flush()
    with Session(guarded_server.db.engine) as session:
        def events(event_id: str) -> list[tuple[str, str, list[str]]]:
            rows = session.exec(select(AuditEvent).where(AuditEvent.event_id == event_id)).all()
            return [(row.user_id, row.action, sorted(o.value for o in session.exec(
                select(AuditObject).where(AuditObject.event == row.id)).all())) for row in rows]

        assert ("ward-viewer", "E", ["P1"]) in events("110112")
        assert ("desk-pc-1", "C", [created.json()["patient_id"]]) in events("110110")


def test_name_keys():
    assert search.name_keys("ZHANG^SAN", "张^三") == search.NameKeys("张三", "ZHANGSAN", "ZS")
    assert search.name_keys("OUYANG^NANA", "欧阳^娜娜") == search.NameKeys("欧阳娜娜", "OUYANGNANA", "OYNN")
    assert search.name_keys("SHAN^TIANFANG", "单^田芳").initials == "STF"
    assert search.name_keys("YUCHI^GONG", "尉迟^恭").initials == "YCG"  # compound surname, its own reading
    assert search.name_keys("LV^XIAOMING", "吕^小明").pinyin == search.name_keys("LYU^XIAOMING", "吕^小明").pinyin
    assert search.name_keys("AU YEUNG^NA NA", "欧阳^娜娜").initials == "AYNN"  # a Cantonese spelling from the HIS
    assert search.name_keys("Smith^John", "") == search.NameKeys("", "SMITHJOHN", "SJ")
    assert search.parse_query("zhang san").pinyin == "ZHANGSAN"
    assert search.parse_query("lyu").pinyin == search.parse_query("lv").pinyin == "LU"
    assert search.parse_query("13800138000").phone == "13800138000"
    assert search.parse_query("张 三").han == "张三"


def test_the_migration_fills_the_keys_of_patients_already_registered(database_url):
    """Patients registered before the search keys existed get them from the migration."""
    db = Database(database_url)
    with db.engine.begin() as connection:  # back to before the keys, then a patient as 0010 kept it
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.downgrade(config, "0010")
        connection.execute(text(
            "INSERT INTO patient (patient_id, issuer, family_name, given_name, name_alphabetic, name_ideographic,"
            " name_phonetic, sex, address, phone, national_id, created_at, updated_at) VALUES ('OLD1', '', '单',"
            " '田芳', 'SHAN^TIANFANG', '单^田芳', '', 'F', '', '(010) 6512-3456', '', :now, :now)"),
            {"now": "2026-01-01 00:00:00"})
    db.migrate()
    with Session(db.engine) as session:
        old = session.exec(select(Patient).where(Patient.patient_id == "OLD1")).one()
        assert (old.search_name, old.search_pinyin, old.search_initials, old.search_phone) == (
            "单田芳", "SHANTIANFANG", "STF", "01065123456")
    db.dispose()


def test_an_identifier_is_looked_up_in_either_case(registry):
    send(registry, adt("S9", "ab-77^^^HOSP^PI", "王^小二"))
    assert ids(find(registry, "AB-77")) == ids(find(registry, "ab-77")) == ["ab-77"]
    send(registry, adt("S10", "CD-88^^^HOSP^PI", "王^小三"))
    assert ids(find(registry, "cd-88")) == ["CD-88"]
    assert ids(find(registry, " ab-77 ")) == ["ab-77"]


def test_limit(registry):
    assert len(find(registry, "z", limit=1)["items"]) == 1
    assert httpx.get(f"{registry.http_url}/api/patients", params={"q": "z", "limit": 0}).status_code == 422


def test_id_is_the_registry_key(registry):
    """``id`` is the registry's key of the patient: the order list and the desk use it."""
    [p1] = find(registry, "P1")["items"]
    with Session(registry.db.engine) as session:
        assert session.get_one(Patient, p1["id"]).patient_id == "P1"


def test_a_patient_first_seen_in_an_image_is_found_too(server):
    """Patients the archive registers from an image's header (ORM writes) get their keys too."""
    with Session(server.db.engine) as session:
        session.add(Patient(patient_id="IMG1", name_alphabetic="ZHAO^LIU", name_ideographic="赵^六",
                            phone="13900001111"))
        session.commit()
    assert ids(find(server, "zl")) == ["IMG1"] and ids(find(server, "13900001111")) == ["IMG1"]


def test_a_changed_name_or_phone_is_found_by_the_new_one_only(server):
    """A patient the HIS updates (A08 with a new name and phone) is found by the new ones only."""
    send(server, PATIENTS[0], adt("U1", "P1^^^HOSP^PI", "张^珊", phone="13600136000", event="A08"))
    assert ids(find(server, "zhangshan")) == ["P1"] and ids(find(server, "13600136000")) == ["P1"]
    assert ids(find(server, "zhangsan")) == [] and ids(find(server, "13800138000")) == []

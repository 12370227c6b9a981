"""The desk's search asks the HIS when the registry finds no one: a test HIS on loopback that
answers IHE PDQ (ITI-21) over MLLP — it reads each QBP^Q22 with hl7apy and answers an RSP^K22
built with hl7apy — and one that answers PDQm (ITI-78) FHIR Patient searches; one that never
answers, one that is down. What the HIS knows is taken into the registry, audited."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hl7apy.core import Message
from hl7apy.parser import parse_message
from sqlmodel import Session, select

from pacs.audit.tables import AuditEvent, AuditObject
from pacs.integration import mllp
from pacs.integration.hl7v2 import escape, unescape
from pacs.registry.models import Patient, PatientIdentifier

VT, FS, CR = b"\x0b", b"\x1c", b"\r"


@dataclass
class HISPatient:
    identifiers: list[str]  # CX: P900001^^^HOSP^PI
    name: str  # PID-5 as the HIS writes it
    sex: str = "M"
    birth: str = "19880808"
    phone: str = ""
    national_id: str = ""


@dataclass
class PDQSupplier:
    """A Patient Demographics Supplier (ITI-21) on a loopback port."""

    patients: list[HISPatient]
    facility: str = "HIS_CN"
    mode: str = "answer"  # answer, refuse (AE), silent (never answers)
    charset: str = "UNICODE UTF-8"  # "" sends GB 18030 without MSH-18, as a Chinese HIS does
    queries: list[dict] = field(default_factory=list)

    def start(self) -> PDQSupplier:
        supplier = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                buffer = b""
                while True:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                    while FS + CR in buffer:
                        frame, _, buffer = buffer.partition(FS + CR)
                        answer = supplier.answer(frame[frame.index(VT) + 1:].decode("utf-8"))
                        if answer is None:  # silent: hold the connection, say nothing
                            time.sleep(30)
                            return
                        self.request.sendall(VT + answer + FS + CR)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"mllp://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, text: str) -> bytes | None:
        query = parse_message(text, find_groups=False)  # hl7apy reads the QBP^Q22
        parameters = []
        for repetition in query.qpd.qpd_3:
            name, _, value = repetition.to_er7().partition("^")
            parameters.append((name, unescape(value)))
        seen = {"message_type": query.msh.msh_9.to_er7(), "version": query.msh.msh_12.to_er7(),
                "query_name": query.qpd.qpd_1.to_er7(), "tag": query.qpd.qpd_2.to_er7(),
                "parameters": parameters, "quantity": query.rcp.rcp_2.to_er7(), "priority": query.rcp.rcp_1.to_er7()}
        self.queries.append(seen)
        if self.mode == "silent":
            return None
        response = Message("RSP_K21", version="2.5")
        msh = response.msh
        msh.msh_3, msh.msh_4, msh.msh_5, msh.msh_6 = "HIS", self.facility, "PACS", "RADIOLOGY"
        msh.msh_7 = "20261206120000"
        msh.msh_9 = "RSP^K22^RSP_K21"
        msh.msh_10 = f"R{len(self.queries)}"
        msh.msh_11 = "P"
        if self.charset:
            msh.msh_18 = self.charset
        response.msa.msa_1 = "AA" if self.mode == "answer" else "AE"
        response.msa.msa_2 = query.msh.msh_10.to_er7()
        if self.mode == "refuse":
            response.err.err_3 = "207^Application internal error^HL70357"
            response.err.err_4 = "E"
            response.err.err_8 = "the master patient index is being rebuilt"
        matches = [p for p in self.patients if self.matches(p, parameters)] if self.mode == "answer" else []
        response.qak.qak_1 = seen["tag"]
        response.qak.qak_2 = "AE" if self.mode == "refuse" else "OK" if matches else "NF"
        response.qpd.qpd_1 = seen["query_name"]
        response.qpd.qpd_2 = seen["tag"]
        for number, patient in enumerate(matches, 1):
            pid = response.add_group("RSP_K21_QUERY_RESPONSE").pid
            pid.pid_1 = str(number)
            pid.pid_3 = patient.identifiers[0]
            for more in patient.identifiers[1:]:
                pid.add_field("PID_3").value = more
            pid.pid_5 = escape(patient.name)
            pid.pid_7, pid.pid_8 = patient.birth, patient.sex
            if patient.phone:
                pid.pid_13 = patient.phone
            if patient.national_id:
                pid.pid_19 = patient.national_id
        return response.to_er7().encode("utf-8" if self.charset else "gb18030")

    @staticmethod
    def matches(patient: HISPatient, parameters: list[tuple[str, str]]) -> bool:
        name = patient.name.replace("^", "")
        for field_name, value in parameters:
            if field_name == "@PID.3.1" and value not in [cx.split("^")[0] for cx in patient.identifiers]:
                return False
            if field_name == "@PID.5.1.1" and not name.startswith(value):
                return False
            if field_name == "@PID.5.2" and not name.endswith(value):
                return False
        return True


HIS_PATIENTS = [
    HISPatient(["P900001^^^HOSP^PI", "77001^^^HOSP^HC"], "李四", phone="13511112222", national_id="110105198808081234"),
    HISPatient(["P900002^^^HOSP^PI"], "李四", sex="F", birth="19770707"),
    HISPatient(["P900005^^^HOSP^PI"], "单田芳", sex="F", birth="19700101"),
]


@pytest.fixture
def supplier() -> Iterator[PDQSupplier]:
    running = PDQSupplier(list(HIS_PATIENTS)).start()
    yield running
    running.stop()


def find(server, q: str, **params) -> dict:
    response = httpx.get(f"{server.http_url}/api/patients", params={"q": q, **params}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_patient_unknown_here_is_found_at_the_his_and_taken_in(start_server, supplier):
    server = start_server(his={"pdq": supplier.url})
    answer = find(server, "P900001")
    assert answer["his"] == {"asked": True, "found": 1, "error": None}
    [patient] = answer["items"]
    assert {k: patient[k] for k in ("patient_id", "name", "pinyin", "sex", "birth_date", "phone", "national_id",
                                    "card_numbers", "source", "open_orders")} == {
        "patient_id": "P900001", "name": "李四", "pinyin": "Li Si", "sex": "M", "birth_date": "1988-08-08",
        "phone": "13511112222", "national_id": "110105198808081234", "card_numbers": ["77001"], "source": "his",
        "open_orders": 0}
    [query] = supplier.queries
    assert query | {"tag": ""} == {"message_type": "QBP^Q22^QBP_Q21", "version": "2.5", "query_name": "IHE PDQ Query",
                                   "tag": "", "parameters": [("@PID.3.1", "P900001")], "quantity": "20^RD",
                                   "priority": "I"}
    # now in the registry: found there, by any of its identifiers, without asking the HIS again
    for q in ("P900001", "77001", "lisi", "李四"):
        again = find(server, q)
        assert [(i["patient_id"], i["source"]) for i in again["items"]] == [("P900001", "local")], q
        assert again["his"]["asked"] is False
    assert len(supplier.queries) == 1
    with Session(server.db.engine) as session:
        row = session.exec(select(Patient).where(Patient.patient_id == "P900001")).one()
        assert (row.issuer, row.name_alphabetic, row.name_ideographic) == ("HOSP", "LI^SI", "李^四")
        assert session.exec(select(PatientIdentifier).where(PatientIdentifier.patient == row.id)).all()
    assert server.server.services.audit.flush()
    with Session(server.db.engine) as session:
        created = session.exec(select(AuditEvent).where(AuditEvent.event_id == "110110")).all()
        assert [(e.action, e.details["transaction"]) for e in created] == [("C", "ITI-21")]
        assert [o.value for o in session.exec(select(AuditObject).where(AuditObject.event == created[0].id))] == [
            "P900001"]
        searched = session.exec(select(AuditEvent).where(AuditEvent.event_id == "110112")).all()
        assert searched[0].details["his"]["transaction"] == "ITI-21" and searched[0].details["found"] == 1


def test_a_name_is_asked_for_as_family_and_given_name(start_server, supplier):
    server = start_server(his={"pdq": supplier.url})
    answer = find(server, "李四")
    assert sorted(i["patient_id"] for i in answer["items"]) == ["P900001", "P900002"]
    assert {i["source"] for i in answer["items"]} == {"his"} and answer["his"]["found"] == 2
    assert supplier.queries[-1]["parameters"] == [("@PID.5.1.1", "李"), ("@PID.5.2", "四")]
    # a polyphonic surname, read as a surname once taken in
    [shan] = find(server, "单田芳")["items"]
    assert (shan["pinyin"], shan["source"]) == ("Shan Tianfang", "his")
    assert [i["patient_id"] for i in find(server, "stf")["items"]] == ["P900005"]


def test_a_whole_name_for_a_his_that_keeps_it_whole(start_server, supplier):
    server = start_server(his={"pdq": supplier.url, "pdq_name": "whole"})
    assert len(find(server, "李四")["items"]) == 2
    assert supplier.queries[-1]["parameters"] == [("@PID.5.1.1", "李四")]


def test_what_the_his_is_not_asked(start_server, supplier):
    """Pinyin, initials and single characters stay local (PDQ matches names as the HIS keeps
    them); ``his=false`` asks no one."""
    server = start_server(his={"pdq": supplier.url})
    for q in ("lisi", "ls", "l", "李", "李 "):
        assert find(server, q)["his"] == {"asked": False, "found": 0, "error": None}, q
    assert find(server, "P900001", his="false")["his"]["asked"] is False
    assert supplier.queries == []


def test_no_one_at_the_his_either(start_server, supplier):
    server = start_server(his={"pdq": supplier.url})
    assert find(server, "P404") == {"items": [], "his": {"asked": True, "found": 0, "error": None}}
    assert supplier.queries[-1]["parameters"] == [("@PID.3.1", "P404")]


def test_a_his_that_refuses_says_why(start_server, supplier):
    supplier.mode = "refuse"
    server = start_server(his={"pdq": supplier.url})
    answer = find(server, "P900001")
    assert answer["items"] == [] and answer["his"]["asked"] is True
    assert "refused" in answer["his"]["error"] and "master patient index is being rebuilt" in answer["his"]["error"]


def test_a_his_that_never_answers_costs_the_timeout_and_no_more(start_server, supplier):
    supplier.mode = "silent"
    server = start_server(his={"pdq": supplier.url, "query_timeout_seconds": 1.0})
    started = time.monotonic()
    answer = find(server, "P900001")
    elapsed = time.monotonic() - started
    assert answer["items"] == [] and "did not answer within 1 s" in answer["his"]["error"]
    assert 1.0 <= elapsed < 2.5, elapsed
    # the registry's own answer comes as ever
    assert find(server, "nobody-local", his="false")["items"] == []


def test_a_his_that_is_down(start_server):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start_server(his={"pdq": f"mllp://127.0.0.1:{port}"})
    answer = find(server, "P900001")
    assert answer["items"] == [] and "could not be reached" in answer["his"]["error"]


def test_a_chinese_his_answering_in_gb18030_without_msh18(start_server, supplier):
    """HIS_CN's character set when MSH-18 is empty is GB 18030 (facilities.yaml)."""
    supplier.charset = ""
    server = start_server(his={"pdq": supplier.url})
    [patient] = find(server, "P900005")["items"]
    assert (patient["name"], patient["pinyin"]) == ("单田芳", "Shan Tianfang")


# -- PDQm (ITI-78): a FHIR Patient search ------------------------------------------------------

FHIR_PATIENTS = [
    {"resourceType": "Patient", "id": "h3",
     "identifier": [{"system": "http://hospital.example.cn/fhir/sid/patient-id", "value": "P900003",
                     "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PI"}]}},
                    {"system": "urn:oid:1.2.156.112604.1.2.9", "value": "77003",
                     "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "HC"}]}}],
     "name": [{"family": "王", "given": ["小明"]}], "gender": "male", "birthDate": "1988-08-08",
     "telecom": [{"system": "phone", "value": "13511113333"}]},
]


@dataclass
class FHIRHIS:
    """A FHIR server answering Patient searches (PDQm Patient Demographics Supplier)."""

    delay: float = 0.0
    requests: list[dict] = field(default_factory=list)

    def start(self) -> FHIRHIS:
        his = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                parameters = {k: v[0] for k, v in parse_qs(url.query).items()}
                his.requests.append({"path": url.path, "parameters": parameters,
                                     "accept": self.headers.get("Accept")})
                time.sleep(his.delay)
                found = [p for p in FHIR_PATIENTS if his.matches(p, parameters)]
                body = json.dumps({"resourceType": "Bundle", "type": "searchset", "total": len(found),
                                   "entry": [{"fullUrl": f"http://his/fhir/Patient/{p['id']}", "resource": p,
                                              "search": {"mode": "match"}} for p in found]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @staticmethod
    def matches(patient: dict, parameters: dict[str, str]) -> bool:
        if "identifier" in parameters:
            return parameters["identifier"] in [i["value"] for i in patient["identifier"]]
        name = patient["name"][0]
        return parameters.get("family") == name["family"] and parameters.get("given") in name["given"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fhir_his() -> Iterator[FHIRHIS]:
    running = FHIRHIS().start()
    yield running
    running.stop()


def test_pdqm_a_fhir_patient_search_at_the_his(start_server, fhir_his):
    server = start_server(his={"fhir_base_url": fhir_his.url})
    answer = find(server, "77003")
    assert answer["his"] == {"asked": True, "found": 1, "error": None}
    [patient] = answer["items"]
    assert {k: patient[k] for k in ("patient_id", "name", "pinyin", "sex", "birth_date", "phone", "card_numbers",
                                    "source")} == {
        "patient_id": "P900003", "name": "王小明", "pinyin": "Wang Xiaoming", "sex": "M", "birth_date": "1988-08-08",
        "phone": "13511113333", "card_numbers": ["77003"], "source": "his"}
    assert fhir_his.requests == [{"path": "/fhir/Patient", "parameters": {"identifier": "77003", "_count": "20"},
                                  "accept": "application/fhir+json"}]
    assert [(i["patient_id"], i["source"]) for i in find(server, "wxm")["items"]] == [("P900003", "local")]
    assert [(i["patient_id"], i["source"]) for i in find(server, "王小明")["items"]] == [("P900003", "local")]
    with Session(server.db.engine) as session:  # identifier systems → the authority HL7 senders use
        assert session.exec(select(Patient).where(Patient.patient_id == "P900003")).one().issuer == "HOSP"


def test_pdqm_by_name(start_server, fhir_his):
    server = start_server(his={"fhir_base_url": fhir_his.url})
    assert [i["patient_id"] for i in find(server, "王小明")["items"]] == ["P900003"]
    assert fhir_his.requests[-1]["parameters"] == {"family": "王", "given": "小明", "_count": "20"}


def test_pdqm_a_slow_his(start_server, fhir_his):
    fhir_his.delay = 3.0
    server = start_server(his={"fhir_base_url": fhir_his.url, "query_timeout_seconds": 1.0})
    started = time.monotonic()
    answer = find(server, "77003")
    assert answer["items"] == [] and "did not answer within 1 s" in answer["his"]["error"]
    assert time.monotonic() - started < 2.5


def test_the_query_as_hl7apy_builds_it():
    """QBP^Q22 (ITI TF-2a 3.21.4.1): what goes on the wire, escaped."""
    from pacs.integration.pdq import PatientDemographics, Terms
    from pacs.settings import Settings

    text = PatientDemographics(Settings(his={"application": "HIS", "facility": "H1"})).query_message(
        Terms(family="A|B", given="三"), limit=5, tag="T1", control_id="C1")
    segments = text.split("\r")
    assert segments[0].split("|")[4:6] == ["HIS", "H1"] and segments[0].split("|")[8:12] == [
        "QBP^Q22^QBP_Q21", "C1", "P", "2.5"]
    assert segments[1] == "QPD|IHE PDQ Query|T1|@PID.5.1.1^A\\F\\B~@PID.5.2^三"
    assert segments[2] == "RCP|I|5^RD"
    assert mllp.declared_charset(text.encode()) == "UNICODE UTF-8"

"""Status changes to the HIS through the durable outbox, with a loopback HIS standing in."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from pacs.integration.channel import _validate_strictly
from pacs.integration.hl7v2 import parse
from pacs.settings import HISDestination, OutboxSettings
from tests.dicom import client, completion, mpps_attributes
from tests.helpers import CR, FS, VT, MLLPClient, ack_fields, load

STUDY = "1.2.840.113619.2.55.3.1234567.20261125.1"


class FakeHIS:
    """An MLLP receiver that records what it gets and answers AA (or what it is told to)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.received: list[str] = []
        self.answer = "AA"
        self.accepting = True
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            if not self.accepting:
                return  # drop the connection: the HIS is "down"
            buffer = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while FS + CR in buffer:
                    frame, _, buffer = buffer.partition(FS + CR)
                    text = frame[frame.index(VT) + 1:].decode("utf-8")
                    control = parse(text).control_id
                    if self.answer == "AA":
                        self.received.append(text)
                    ack = f"MSH|^~\\&|HIS|HOSP|PACS|RAD|20261125||ACK|A{control}|P|2.4\rMSA|{self.answer}|{control}|nope\r"
                    conn.sendall(VT + ack.encode() + FS + CR)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def his():
    fake = FakeHIS()
    yield fake
    fake.close()


def wait_for(predicate, timeout: float = 30.0, describe=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout} s {describe()}")


def run_procedure(server, ae_title="CT1", complete=True) -> None:
    with MLLPClient(server.mllp_port) as mllp:
        assert ack_fields(mllp.send(load("orm_o01_nw_ihe.hl7")))["code"] == "AA"
    assoc = client(ae_title).associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    uid = "1.2.3.77"
    assert assoc.send_n_create(mpps_attributes(study_uid=STUDY, accession="ACC0001"),
                               ModalityPerformedProcedureStep, uid)[0].Status == 0
    if complete:
        assert assoc.send_n_set(completion(), ModalityPerformedProcedureStep, uid)[0].Status == 0
    assoc.release()


@pytest.mark.parametrize("version", ["2.4", "2.5.1"])
def test_mpps_progress_reaches_the_his_in_order(start_server, his, version):
    server = start_server(his=HISDestination(host="127.0.0.1", port=his.port, version=version),
                          outbox=OutboxSettings(base_delay_seconds=0.1, max_delay_seconds=0.5))
    run_procedure(server)
    wait_for(lambda: len(his.received) == 2)
    statuses = [parse(text).get("ORC-5") for text in his.received]
    assert statuses == ["IP", "CM"]
    first = parse(his.received[0])
    assert first.message_type == ("OMI^O23" if version.startswith("2.5") else "ORM^O01")
    assert first.get("ORC-1") == "SC" and first.get("ORC-2.1") == "PL0001" and first.get("PID-3.1") == "P10001"
    assert first.get("MSH-12") == version
    for text in his.received:  # every segment valid for its version, as strict mode checks inbound ones
        _validate_strictly(text, parse(text))
    items = httpx.get(server.http_url + "/api/outbox").json()["items"]
    assert [i["status"] for i in items] == ["SENT", "SENT"]


def test_changes_from_the_his_are_not_echoed(start_server, his):
    server = start_server(his=HISDestination(host="127.0.0.1", port=his.port))
    with MLLPClient(server.mllp_port) as mllp:
        for name in ("orm_o01_nw2_ihe.hl7", "orm_o01_ca_ihe.hl7", "orm_o01_dc_ihe.hl7"):
            assert ack_fields(mllp.send(load(name)))["code"] == "AA"
    time.sleep(0.5)
    assert his.received == []
    assert httpx.get(server.http_url + "/api/outbox").json()["total"] == 0


def test_his_down_then_up_nothing_lost(start_server, his):
    his.accepting = False
    server = start_server(his=HISDestination(host="127.0.0.1", port=his.port),
                          outbox=OutboxSettings(base_delay_seconds=0.1, max_delay_seconds=0.3))
    run_procedure(server)
    wait_for(lambda: httpx.get(server.http_url + "/api/outbox").json()["items"][-1]["attempts"] >= 3)
    items = httpx.get(server.http_url + "/api/outbox").json()["items"]
    assert {i["status"] for i in items} == {"RETRYING", "PENDING"} or {i["status"] for i in items} == {"RETRYING"}
    assert items[-1]["last_error"]
    his.accepting = True
    wait_for(lambda: len(his.received) == 2)
    assert [parse(t).get("ORC-5") for t in his.received] == ["IP", "CM"]  # still in order


def test_refused_delivery_waits_for_a_person(start_server, his):
    his.answer = "AE"
    server = start_server(his=HISDestination(host="127.0.0.1", port=his.port),
                          outbox=OutboxSettings(base_delay_seconds=0.1, max_delay_seconds=0.3))
    run_procedure(server, complete=False)
    wait_for(lambda: httpx.get(server.http_url + "/api/outbox", params={"status": "DEAD"}).json()["total"] == 1,
             describe=lambda: httpx.get(server.http_url + "/api/outbox").json())
    dead = httpx.get(server.http_url + "/api/outbox", params={"status": "DEAD"}).json()["items"][0]
    assert "AE" in dead["last_error"] and "MSA|AE" in dead["response"]
    his.answer = "AA"
    retried = httpx.post(f"{server.http_url}/api/outbox/{dead['id']}/retry")
    assert retried.status_code == 200
    wait_for(lambda: len(his.received) == 1, describe=lambda: httpx.get(server.http_url + "/api/outbox").json())
    assert httpx.post(f"{server.http_url}/api/outbox/{dead['id']}/retry").status_code in (200, 409)
    assert httpx.post(f"{server.http_url}/api/outbox/99999/retry").status_code == 404


def test_his_hears_that_images_are_available(start_server, his, tmp_path):
    import pydicom

    from tests.archive.corpus import build
    from tests.archive.test_store import send_file

    server = start_server(his=HISDestination(host="127.0.0.1", port=his.port, notify_images_available=True),
                          outbox=OutboxSettings(base_delay_seconds=0.1, max_delay_seconds=0.3))
    with MLLPClient(server.mllp_port) as mllp:
        assert ack_fields(mllp.send(load("orm_o01_nw_ihe.hl7")))["code"] == "AA"
    ds = pydicom.dcmread(build(tmp_path / "c", [("CT_small.dcm", "")])[0].path)
    ds.StudyInstanceUID = STUDY
    ds.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    assert send_file(server.dicom_port, tmp_path / "ct.dcm").Status == 0
    wait_for(lambda: len(his.received) == 1)
    message = parse(his.received[0])
    assert message.get("ORC-1") == "SC" and message.get("ORC-5") == "A" and message.get("ORC-2.1") == "PL0001"

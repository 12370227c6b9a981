"""Each stable study goes to the hospital platform as an ImagingStudy (conditional update on its
study UID); later changes follow; a platform that is down for a while loses nothing."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pydicom
import pytest
from fhir.resources.R4B.imagingstudy import ImagingStudy
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from pacs.settings import OutboxSettings, PublishSettings
from tests.archive.test_store import send_file
from tests.dicom import client, completion, mpps_attributes
from tests.helpers import MLLPClient, ack_fields, load, send_all

STUDY_UID = "1.2.840.113619.2.55.3.1234567.20261125.1"


class FakePlatform:
    """A FHIR server that keeps what it is sent, and can be made to fail."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict]] = []
        self.failing = False
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if platform.failing:
                    self.send_response(503)
                    self.end_headers()
                    return
                query = parse_qs(urlparse(self.path).query)
                platform.received.append((query["identifier"][0], body))
                self.send_response(200 if len(platform.received) > 1 else 201)
                self.send_header("Content-Type", "application/fhir+json")
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def latest(self, uid: str) -> dict | None:
        found = [body for identifier, body in self.received if identifier == f"urn:dicom:uid|urn:oid:{uid}"]
        return found[-1] if found else None

    def close(self) -> None:
        # Closed too, not only stopped: a listening socket left open takes the server's next
        # connection into its backlog, and that request would wait out the client's timeout.
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def platform():
    fake = FakePlatform()
    yield fake
    fake.close()


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def image(tmp_path, name, **values):
    from tests.archive.corpus import build

    ds = pydicom.dcmread(build(tmp_path / f"c-{name}", [("CT_small.dcm", "")])[0].path)
    ds.StudyInstanceUID = STUDY_UID
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def publishing(start_server, platform, stable: float = 0.5):
    return start_server(publish=PublishSettings(fhir_base_url=platform.url, stable_after_seconds=stable),
                        outbox=OutboxSettings(base_delay_seconds=0.2, max_delay_seconds=0.5))


def test_stable_study_is_published_and_follows_changes(start_server, platform, tmp_path):
    server = publishing(start_server, platform)
    send_all(server.mllp_port, ["adt_a01_ihe.hl7", "orm_o01_nw_ihe.hl7"])
    assert send_file(server.dicom_port, image(tmp_path, "one.dcm")).Status == 0
    wait_for(lambda: platform.latest(STUDY_UID) is not None)
    first = platform.latest(STUDY_UID)
    ImagingStudy.model_validate(first)
    assert first["status"] == "available" and first["numberOfInstances"] == 1
    assert first["subject"]["identifier"]["value"] == "P10001"
    assert first["basedOn"][0]["identifier"]["value"] == "PL0001"
    assert "id" not in first

    assert send_file(server.dicom_port, image(tmp_path, "two.dcm", InstanceNumber=2)).Status == 0
    wait_for(lambda: platform.latest(STUDY_UID)["numberOfInstances"] == 2)

    with MLLPClient(server.mllp_port) as mllp:  # the patient's name is corrected at the HIS
        update = load("adt_a08_ihe.hl7").replace("张^三^^^^^L^I~ZHANG^SAN".encode(), "章^三^^^^^L^I~ZHANG^SAN".encode())
        assert ack_fields(mllp.send(update))["code"] == "AA"
    wait_for(lambda: platform.latest(STUDY_UID)["subject"]["display"].startswith("章三"))
    count = len(platform.received)
    time.sleep(2)
    assert len(platform.received) == count  # nothing changed, nothing sent again


def test_platform_down_for_a_while_loses_nothing(start_server, platform, tmp_path):
    platform.failing = True
    server = publishing(start_server, platform)
    send_all(server.mllp_port, ["orm_o01_nw_ihe.hl7"])
    assert send_file(server.dicom_port, image(tmp_path, "one.dcm")).Status == 0
    import httpx

    wait_for(lambda: any(i["attempts"] >= 2 for i in httpx.get(server.http_url + "/api/outbox").json()["items"]))
    assert platform.received == []
    platform.failing = False
    wait_for(lambda: platform.latest(STUDY_UID) is not None)
    items = httpx.get(server.http_url + "/api/outbox", params={"destination": "platform"}).json()["items"]
    assert {i["status"] for i in items} == {"SENT"}


def test_completed_mpps_publishes_at_once(start_server, platform, tmp_path):
    server = publishing(start_server, platform, stable=3600)  # would wait an hour without the MPPS
    send_all(server.mllp_port, ["orm_o01_nw_ihe.hl7"])
    assoc = client("CT1").associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert assoc.send_n_create(mpps_attributes(study_uid=STUDY_UID, accession="ACC0001"),
                               ModalityPerformedProcedureStep, "1.2.3.9")[0].Status == 0
    assert send_file(server.dicom_port, image(tmp_path, "one.dcm")).Status == 0
    time.sleep(1.5)
    assert platform.latest(STUDY_UID) is None  # in progress: more images may come
    assert assoc.send_n_set(completion(), ModalityPerformedProcedureStep, "1.2.3.9")[0].Status == 0
    assoc.release()
    wait_for(lambda: platform.latest(STUDY_UID) is not None, timeout=15)


def test_instance_availability_notification_to_a_dicom_peer(start_server, tmp_path):
    """IHE RAD-49: a RIS configured under [publish] ian_peers hears which instances are online."""
    import socket

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import InstanceAvailabilityNotification

    from pacs.settings import Peer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    heard: list = []

    def on_create(event):
        heard.append(event.attribute_list)
        return 0x0000, None

    ris = AE(ae_title="RIS")
    ris.add_supported_context(InstanceAvailabilityNotification)
    listener = ris.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_CREATE, on_create)])
    try:
        server = start_server(peers=[Peer(ae_title="RIS", host="127.0.0.1", port=port)],
                              publish=PublishSettings(ian_peers=["RIS"], stable_after_seconds=0.5),
                              outbox=OutboxSettings(base_delay_seconds=0.2, max_delay_seconds=0.5))
        path = image(tmp_path, "one.dcm")
        assert send_file(server.dicom_port, path).Status == 0
        wait_for(lambda: bool(heard))
        [notice] = heard
        assert notice.StudyInstanceUID == STUDY_UID
        [series] = notice.ReferencedSeriesSequence
        [sop] = series.ReferencedSOPSequence
        assert sop.ReferencedSOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID
        assert sop.InstanceAvailability == "ONLINE" and sop.RetrieveAETitle == "PACS"
    finally:
        listener.shutdown()

"""DICOM over TLS (PS3.15 Annex B, BCP 195) on the TLS port, with a test CA made for the test.

DCMTK's ``echoscu``, ``storescu`` and ``findscu +tls`` (its non-downgrading BCP 195 profile)
talk to the TLS port; a client without a certificate from the configured CA, one with a
certificate from another CA and one that does not speak TLS are refused during the handshake,
audited as Node Authentication alerts, and the port goes on serving. A C-MOVE and a storage
commitment report go to a peer with ``tls = true`` over TLS (a pynetdicom SCP with an
``ssl_context`` that requires this AE's certificate); a peer whose certificate this AE does not
trust gets nothing."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs.settings import Peer
from tests.archive.test_store import send_file
from tests.dicom import needs_dcmtk
from tests.process import free_port
from tests.test_audit import wait_for_entries
from tests.tls import PKI, Issued

pytestmark = needs_dcmtk
WELL_KNOWN = "1.2.840.10008.1.20.1.1"  # Storage Commitment Push Model SOP Instance (PS3.4 J.3.5)
QUICK = 10.0  # seconds a refused client may take to give up (none waits for a timeout)


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """TLS happens below the database: SQLite only."""
    target = tmp_path / "db" / "pacs.db"
    target.parent.mkdir()
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TCP_NODELAY": "1"})


def with_certificate(pki: PKI, issued: Issued | None = None) -> list[str]:
    """DCMTK's options for TLS with a client certificate, checking the server's against the CA."""
    issued = issued or pki.client
    return ["+tls", str(issued.key), str(issued.cert), "+cf", str(pki.ca.cert)]


def test_dcmtk_echo_store_and_find_over_tls(start_server, pki, tmp_path):
    server = start_server(dicom=pki.server_settings())
    port = str(server.server.dicom_tls_port)
    assert server.server.dicom_tls_port != server.dicom_port
    echo = dcmtk("echoscu", "-aec", "PACS", *with_certificate(pki), "127.0.0.1", port)
    assert echo.returncode == 0, echo.stdout + echo.stderr

    ct = get_testdata_file("CT_small.dcm")
    stored = dcmtk("storescu", "-aet", "CT1", "-aec", "PACS", *with_certificate(pki), "127.0.0.1", port, ct)
    assert stored.returncode == 0, stored.stdout + stored.stderr

    study = str(pydicom.dcmread(ct).StudyInstanceUID)
    for where, options in ((port, with_certificate(pki)), (str(server.dicom_port), [])):  # the same AE on both
        out = tmp_path / f"find-{where}"
        out.mkdir()
        found = dcmtk("findscu", "-S", "-aec", "PACS", *options, "-X", "-od", str(out),
                      "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "-k", "PatientName",
                      "127.0.0.1", where)
        assert found.returncode == 0, found.stdout + found.stderr
        [answer] = [pydicom.dcmread(path) for path in out.glob("rsp*.dcm")]
        assert answer.StudyInstanceUID == study and str(answer.PatientName) == "CompressedSamples^CT1"


def test_tls_associations_stay_in_the_main_process_beside_receivers(start_server, pki):
    """With receiver processes the plain port's connections are handed out; a TLS session cannot
    be, and the main process serves the TLS port's associations itself."""
    server = start_server(dicom={**pki.server_settings(), "processes": 2})
    ct = get_testdata_file("CT_small.dcm")
    for where, options in ((server.server.dicom_tls_port, with_certificate(pki)), (server.dicom_port, [])):
        stored = dcmtk("storescu", "-aet", "CT1", "-aec", "PACS", *options, "127.0.0.1", str(where), ct)
        assert stored.returncode == 0, stored.stdout + stored.stderr


def test_a_client_without_a_valid_certificate_is_refused(start_server, pki):
    server = start_server(dicom=pki.server_settings())
    port = str(server.server.dicom_tls_port)
    refused = {
        "no certificate": ["+tla", "+cf", str(pki.ca.cert)],
        "another CA's certificate": with_certificate(pki, pki.rogue),
        "no TLS at all": [],
    }
    for why, options in refused.items():
        started = time.monotonic()
        result = dcmtk("echoscu", "-aec", "PACS", "-to", "30", *options, "127.0.0.1", port)
        assert result.returncode != 0, f"{why}: {result.stdout}{result.stderr}"
        assert time.monotonic() - started < QUICK, f"{why}: the client waited for a timeout"
    good = dcmtk("echoscu", "-aec", "PACS", *with_certificate(pki), "127.0.0.1", port)
    assert good.returncode == 0, good.stdout + good.stderr  # the port goes on serving
    plain = dcmtk("echoscu", "-aec", "PACS", "127.0.0.1", str(server.dicom_port))
    assert plain.returncode == 0, plain.stdout + plain.stderr  # and the plain port is as it was

    alerts = wait_for_entries(server, event_id="110113",
                              where=lambda e: [t["code"] for t in e["event_type"]] == ["110126"])
    assert alerts and alerts[0]["address"] == "127.0.0.1" and alerts[0]["outcome"] == 4
    assert "certificate" in alerts[-1]["description"]  # the first refusal: the client offered none


def test_without_a_client_ca_a_client_needs_no_certificate(start_server, pki):
    server = start_server(dicom=pki.server_settings(client_ca=False))
    anonymous = dcmtk("echoscu", "-aec", "PACS", "+tla", "+cf", str(pki.ca.cert), "127.0.0.1",
                      str(server.server.dicom_tls_port))
    assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr
    # ... and the client still checks the server: a client trusting another CA refuses it
    distrustful = dcmtk("echoscu", "-aec", "PACS", "+tla", "+cf", str(pki.rogue_ca.cert), "127.0.0.1",
                        str(server.server.dicom_tls_port))
    assert distrustful.returncode != 0


class TLSPeer:
    """A DICOM peer on a TLS port of its own (pynetdicom with an ``ssl_context``) that requires a
    client certificate from ``client_ca``: a storage SCP, and a modality taking storage
    commitment reports. Notes the certificate each association came with."""

    def __init__(self, ae_title: str, issued: Issued, client_ca: Path) -> None:
        self.port = free_port()
        self.received: list[str] = []
        self.reports: list[Dataset] = []
        self.certificates: list[str] = []
        self.arrived = threading.Event()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(issued.cert, issued.key)
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=context, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_N_EVENT_REPORT, self._report),
            (evt.EVT_ACCEPTED, self._accepted)])

    def _accepted(self, event: evt.Event) -> None:
        subject = dict(part[0] for part in event.assoc.dul.socket.socket.getpeercert()["subject"])
        self.certificates.append(subject["commonName"])

    def _store(self, event: evt.Event) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        self.arrived.set()
        return 0x0000

    def _report(self, event: evt.Event) -> tuple[int, None]:
        self.reports.append(event.event_information)
        self.arrived.set()
        return 0x0000, None

    def stop(self) -> None:
        self.server.shutdown()


def move(port: int, study: str, destination: str, calling: str = "VIEWER") -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    try:
        statuses = [int(status.Status) for status, _ in
                    assoc.send_c_move(identifier, destination, StudyRootQueryRetrieveInformationModelMove)]
    finally:
        assoc.release()
    return statuses[-1]


def commitment_request(port: int, calling: str, sop_instance: str) -> None:
    """N-ACTION Request Storage Commitment, the association released at once: the report goes
    on a new association (PS3.4 J.3.3)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    info = Dataset()
    info.TransactionUID = "1.2.826.0.1.3680043.9.7433.99.1"
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = sop_instance
    info.ReferencedSOPSequence = [item]
    try:
        assert assoc.send_n_action(info, 1, StorageCommitmentPushModel, WELL_KNOWN)[0].Status == 0
    finally:
        assoc.release()


def test_move_and_commitment_report_to_a_tls_peer(start_server, pki):
    peer = TLSPeer("DEST", pki.ca.server("dest.test"), pki.ca.cert)
    try:
        server = start_server(dicom=pki.server_settings(), outbox={"base_delay_seconds": 0.2, "max_delay_seconds": 0.5},
                              peers=[Peer(ae_title="DEST", host="127.0.0.1", port=peer.port, tls=True)])
        ct = Path(get_testdata_file("CT_small.dcm"))
        assert send_file(server.dicom_port, ct).Status == 0
        sent = pydicom.dcmread(ct)
        assert move(server.dicom_port, str(sent.StudyInstanceUID), "DEST") == 0x0000
        assert peer.received == [str(sent.SOPInstanceUID)]
        assert peer.certificates == ["pacs.test"]  # the sub-association came with this AE's certificate

        commitment_request(server.dicom_port, "DEST", str(sent.SOPInstanceUID))
        deadline = time.monotonic() + 20
        while not peer.reports and time.monotonic() < deadline:
            time.sleep(0.05)
        [report] = peer.reports
        assert [str(i.ReferencedSOPInstanceUID) for i in report.ReferencedSOPSequence] == [str(sent.SOPInstanceUID)]
        assert peer.certificates == ["pacs.test", "pacs.test"]
    finally:
        peer.stop()


def test_a_tls_peer_whose_certificate_is_not_trusted_gets_nothing(start_server, pki):
    impostor = TLSPeer("DEST", pki.rogue_ca.server("dest.test"), pki.ca.cert)  # a certificate of another CA
    try:
        server = start_server(dicom=pki.server_settings(),
                              peers=[Peer(ae_title="DEST", host="127.0.0.1", port=impostor.port, tls=True)])
        ct = Path(get_testdata_file("CT_small.dcm"))
        assert send_file(server.dicom_port, ct).Status == 0
        assert move(server.dicom_port, str(pydicom.dcmread(ct).StudyInstanceUID), "DEST") == 0xA801
        assert impostor.received == []
    finally:
        impostor.stop()

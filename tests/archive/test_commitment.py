"""Storage Commitment (IHE RAD-10) with pynetdicom as the modality: the report on the same
association, and on a new one when the modality has gone."""

from __future__ import annotations

import threading
import time

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel

from pacs.settings import Peer
from tests.archive.test_store import ct, send_file, stored_path
from tests.process import free_port

WELL_KNOWN = "1.2.840.10008.1.20.1.1"


def request(uids: list[tuple[str, str]]) -> tuple[Dataset, str]:
    ds = Dataset()
    transaction = generate_uid()
    ds.TransactionUID = transaction
    items = []
    for sop_class, sop_instance in uids:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds, transaction


def test_report_on_the_same_association(server, tmp_path):
    path = ct(tmp_path)
    assert send_file(server.dicom_port, path).Status == 0
    stored_uid = pydicom.dcmread(path).SOPInstanceUID
    reports: list[tuple[int, Dataset]] = []
    arrived = threading.Event()

    def on_report(event):
        reports.append((event.event_type, event.event_information))
        arrived.set()
        return 0x0000, None

    ae = AE(ae_title="CT1")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS",
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    ds, transaction = request([(CTImageStorage, stored_uid), (CTImageStorage, "1.2.3.4.5.404")])
    status, _ = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, WELL_KNOWN)
    assert status.Status == 0
    assert arrived.wait(10), "no N-EVENT-REPORT on the same association"
    assoc.release()
    event_type, info = reports[0]
    assert event_type == 2 and info.TransactionUID == transaction  # some failed
    assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [stored_uid]
    assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in info.FailedSOPSequence] == [("1.2.3.4.5.404", 0x0112)]


def test_a_request_the_modality_sends_while_the_report_awaits_its_response_is_served(server, tmp_path):
    """Each side may have an operation outstanding (PS3.7 D.3.3.3): a modality that sends a
    C-ECHO before answering our N-EVENT-REPORT gets both, and its association stays up."""
    from pynetdicom.dimse_primitives import C_ECHO
    from pynetdicom.sop_class import Verification

    path = ct(tmp_path)
    assert send_file(server.dicom_port, path).Status == 0
    received: list[str] = []
    reported = threading.Event()

    def on_report(event):
        echo = C_ECHO()
        echo.MessageID, echo.AffectedSOPClassUID = 99, Verification
        context = event.assoc._get_valid_context(Verification, "", "scu")
        event.assoc.dimse.send_msg(echo, context.context_id)  # before this report is answered
        time.sleep(0.2)
        reported.set()
        return 0x0000, None

    def on_received(event):
        received.append(type(event.message).__name__)

    ae = AE(ae_title="CT1")
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS",
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report), (evt.EVT_DIMSE_RECV, on_received)])
    ds, _ = request([(CTImageStorage, str(pydicom.dcmread(path).SOPInstanceUID))])
    assert assoc.send_n_action(ds, 1, StorageCommitmentPushModel, WELL_KNOWN)[0].Status == 0
    assert reported.wait(10), "no N-EVENT-REPORT on the same association"
    deadline = time.monotonic() + 10
    while "C_ECHO_RSP" not in received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "C_ECHO_RSP" in received and assoc.is_established, received
    assoc.release()


def test_corrupt_copy_is_not_committed(server, tmp_path):
    path = ct(tmp_path)
    assert send_file(server.dicom_port, path).Status == 0
    uid = pydicom.dcmread(path).SOPInstanceUID
    stored = stored_path(server, uid)
    data = bytearray(stored.read_bytes())
    data[-100] ^= 0xFF  # a flipped bit on disk
    stored.write_bytes(bytes(data))
    report = server.server._dicom.commitment.verify("1.2.3", [(CTImageStorage, uid)])
    assert report.committed == [] and report.failed == [(CTImageStorage, uid, 0x0110)]


def test_report_on_a_new_association_when_the_modality_left(start_server, tmp_path):
    port = free_port()
    reports: list[Dataset] = []
    arrived = threading.Event()

    def on_report(event):
        reports.append(event.event_information)
        arrived.set()
        return 0x0000, None

    modality = AE(ae_title="CT1")
    modality.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    listener = modality.start_server(("127.0.0.1", port), block=False,
                                     evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        server = start_server(peers=[Peer(ae_title="CT1", host="127.0.0.1", port=port)],
                              outbox={"base_delay_seconds": 0.2, "max_delay_seconds": 0.5})
        path = ct(tmp_path)
        assert send_file(server.dicom_port, path).Status == 0
        uid = pydicom.dcmread(path).SOPInstanceUID
        ae = AE(ae_title="CT1")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
        ds, transaction = request([(CTImageStorage, uid)])
        assert assoc.send_n_action(ds, 1, StorageCommitmentPushModel, WELL_KNOWN)[0].Status == 0
        assoc.release()  # the modality does not wait on this association
        assert arrived.wait(20), "no N-EVENT-REPORT on a new association"
        assert reports[0].TransactionUID == transaction
        assert [i.ReferencedSOPInstanceUID for i in reports[0].ReferencedSOPSequence] == [uid]
        assert "FailedSOPSequence" not in reports[0]
    finally:
        listener.shutdown()
        time.sleep(0.1)

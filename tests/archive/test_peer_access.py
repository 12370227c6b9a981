"""What each DICOM peer may ask (``[[peers]] services``, ``retrieve_to``; ``[dicom]
unknown_peer_services``): a request for anything else is answered 0124H, Refused: Not
Authorized (PS3.7 C.5.21), never reaches its handler, and is a Security Alert of type Use of
Restricted Function in the audit log; what a peer may do goes on as before."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityPerformedProcedureStep,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacs.archive.access import NOT_AUTHORIZED, PeerAccess
from pacs.settings import Peer, Settings
from tests.dicom import mpps_attributes
from tests.test_audit import StoreSCP, wait_for_entries

WELL_KNOWN = "1.2.840.10008.1.20.1.1"  # Storage Commitment Push Model SOP Instance (PS3.4 J.3.5)
MOVE_DESTINATION_UNKNOWN = 0xA801  # PS3.4 C.4.2.1.5
CT = Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """Who may ask what is decided before any handler: SQLite only."""
    target = tmp_path / "db" / "pacs.db"
    target.parent.mkdir()
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


class Client:
    """One association of ``calling`` with every context these tests use."""

    def __init__(self, port: int, calling: str) -> None:
        ae = AE(ae_title=calling)
        for context in (Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind,
                        StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet,
                        ModalityPerformedProcedureStep, StorageCommitmentPushModel):
            ae.add_requested_context(context)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        self.assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
        assert self.assoc.is_established

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.assoc.release()

    def echo(self) -> int:
        return int(self.assoc.send_c_echo().Status)

    def store(self) -> Dataset:
        return self.assoc.send_c_store(pydicom.dcmread(CT))

    def find(self) -> tuple[list[Dataset], Dataset]:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = str(pydicom.dcmread(CT).StudyInstanceUID)
        answers = list(self.assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        return [ds for status, ds in answers if status.Status in (0xFF00, 0xFF01)], answers[-1][0]

    def move(self, destination: str) -> Dataset:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = str(pydicom.dcmread(CT).StudyInstanceUID)
        return list(self.assoc.send_c_move(query, destination, StudyRootQueryRetrieveInformationModelMove))[-1][0]

    def mpps(self) -> Dataset:
        return self.assoc.send_n_create(mpps_attributes(study_uid="1.2.3.4", accession="ACC0001"),
                                        ModalityPerformedProcedureStep, "1.2.826.0.1.3680043.9.7433.5.1")[0]

    def commit(self) -> Dataset:
        info = Dataset()
        info.TransactionUID = "1.2.826.0.1.3680043.9.7433.5.2"
        item = Dataset()
        item.ReferencedSOPClassUID = CTImageStorage
        item.ReferencedSOPInstanceUID = str(pydicom.dcmread(CT).SOPInstanceUID)
        info.ReferencedSOPSequence = [item]
        return self.assoc.send_n_action(info, 1, StorageCommitmentPushModel, WELL_KNOWN)[0]


def refused(status: Dataset) -> bool:
    return int(status.Status) == NOT_AUTHORIZED and "not allowed" in str(status.get("ErrorComment", ""))


def test_each_peer_may_use_what_it_is_allowed_and_nothing_else(start_server):
    viewer, other = StoreSCP(), StoreSCP()
    try:
        server = start_server(
            peers=[Peer(ae_title="CT1", host="127.0.0.1", port=104, services=["store", "worklist", "mpps"]),
                   Peer(ae_title="DEST", host="127.0.0.1", port=viewer.port, services=["query", "retrieve"],
                        retrieve_to=["DEST"]),
                   Peer(ae_title="OTHER", host="127.0.0.1", port=other.port)],
            dicom={"unknown_peer_services": ["store"]})
        incoming = server.server.services.archive.area.incoming

        with Client(server.dicom_port, "CT1") as ct1:  # a modality: stores and reports, never reads
            assert ct1.echo() == 0x0000  # C-ECHO is always answered
            assert int(ct1.store().Status) == 0x0000
            assert int(ct1.mpps().Status) != NOT_AUTHORIZED
            matches, final = ct1.find()
            assert matches == [] and refused(final)
            assert refused(ct1.move("DEST"))
            assert refused(ct1.commit())

        with Client(server.dicom_port, "DEST") as workstation:  # reads, and retrieves to itself only
            assert refused(workstation.store())
            assert not [p for p in incoming.iterdir() if p.name.startswith("spool-")]  # the refused object is gone
            matches, final = workstation.find()
            assert len(matches) == 1 and int(final.Status) == 0x0000
            assert int(workstation.move("DEST").Status) == 0x0000
            assert viewer.received == [str(pydicom.dcmread(CT).SOPInstanceUID)]
            assert refused(workstation.move("OTHER"))  # a known peer, but not one it may send to
            assert int(workstation.move("NOBODY").Status) == MOVE_DESTINATION_UNKNOWN
            assert other.received == []

        with Client(server.dicom_port, "STRANGER") as stranger:  # not under [[peers]]: unknown_peer_services
            status = int(stranger.store().Status)
            assert 0xB000 <= status <= 0xBFFF  # taken: the same instance again, a warning (already stored)
            assert refused(stranger.find()[1])

        alerts = wait_for_entries(server, event_id="110113",
                                  where=lambda e: [t["code"] for t in e["event_type"]] == ["110132"])
        said = sorted((e["user"], e["details"]["request"]) for e in alerts)
        assert said == [("CT1", "C-FIND"), ("CT1", "C-MOVE"), ("CT1", "N-ACTION"), ("DEST", "C-MOVE"),
                        ("DEST", "C-STORE"), ("STRANGER", "C-FIND")]
        assert all(e["outcome"] == 4 and e["address"] == "127.0.0.1" for e in alerts)
    finally:
        viewer.stop()
        other.stop()


def test_without_rules_no_association_is_checked():
    """The default lets every peer use everything, and then no association is touched at all
    (nothing added per request on the plain port's C-STOREs)."""
    assert PeerAccess(Settings()).bindings() == []
    assert PeerAccess(Settings(peers=[Peer(ae_title="CT1", host="h", port=104)])).bindings() == []
    restricted = PeerAccess(Settings(peers=[Peer(ae_title="CT1", host="h", port=104, services=["store"])]))
    assert restricted.bindings() and restricted.rules("CT1")[0] == frozenset({"store"})
    assert PeerAccess(Settings(dicom={"unknown_peer_services": []})).bindings()

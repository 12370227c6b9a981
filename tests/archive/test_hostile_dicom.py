"""Seeded hostile input on the DICOM port: damaged C-STORE data sets, odd C-FIND (Q/R and
worklist), C-MOVE and C-GET identifiers, damaged storage commitment requests.

The invariants, for every input: the answer is a status the service defines (never an abort, a
silence or a status of another service), the association and the server go on serving, and
whatever was answered Success is indexed, found by its UID and retrieved as it was sent; no
traceback is logged for a request that was answered. ``PACS_HOSTILE_INPUTS`` sets how many
inputs each test makes (``bench/hostile.py`` runs ten thousand and more), ``PACS_HOSTILE_SEED``
the seed; a failure names its seed and case."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import time
from io import BytesIO

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlmodel import Session, select

from pacs.archive.index import Instance
from tests.archive.mutate import commitment_request, mwl_identifier, qr_identifier, store_mutations
from tests.archive.raw import RawStorer, plain_ct, with_value
from tests.dicom import needs_dcmtk

INPUTS = int(os.environ.get("PACS_HOSTILE_INPUTS", "60"))
SEED = int(os.environ.get("PACS_HOSTILE_SEED", "18"))

# Statuses each service may answer with (PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5, C.4.3.1.4, K.4.1.1.4;
# PS3.7 10.1.4.1.10 for N-ACTION, Annex C)
STORE_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007, 0xA900, 0xC000, 0xA700, 0x0111}
FIND_STATUSES = {0x0000, 0xFF00, 0xFF01, 0xFE00, 0xA700, 0xA900, 0xC000, 0x0122}
RETRIEVE_STATUSES = {0x0000, 0xFF00, 0xFE00, 0xA701, 0xA702, 0xA801, 0xA900, 0xB000, 0xC000, 0x0122}
ACTION_STATUSES = {0x0000, 0x0105, 0x0106, 0x0110, 0x0112, 0x0115, 0x0117, 0x0120, 0x0121, 0x0123, 0x0211}


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records that carry a stack trace: a bug, where an expected refusal is one line."""
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info is not None]


def echo(port: int) -> int:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established, "the server no longer takes associations"
    status = int(assoc.send_c_echo().Status)
    assoc.release()
    return status


def sent_pixels(data: bytes) -> bytes:
    return pydicom.dcmread(BytesIO(data), force=True, stop_before_pixels=False).PixelData


def failure(status: int) -> bool:
    """0xCxxx: "cannot understand" / "unable to process", a range each service defines."""
    return status >> 12 == 0xC


def indexed(server, uid: str) -> bool:  # type: ignore[no-untyped-def]
    with Session(server.db.engine) as session:
        return session.exec(select(Instance.id).where(Instance.sop_instance_uid == uid)).first() is not None


def test_damaged_data_sets_are_refused_or_archived_whole(server, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    rng = random.Random(SEED)
    accepted: dict[str, tuple[str, bytes]] = {}  # SOP Instance UID → (study, bytes sent)
    refused: list[str] = []
    with RawStorer(server.dicom_port, [CTImageStorage]) as scu:
        for number in range(INPUTS):
            ds, data = plain_ct(tmp_path)
            label, damaged = store_mutations(rng, data)
            case = f"seed {SEED} case {number}: {label}"
            status = scu.store(CTImageStorage, ds.SOPInstanceUID, damaged)
            assert status.Status in STORE_STATUSES or failure(status.Status), case
            if status.Status == 0x0000:
                accepted[ds.SOPInstanceUID] = (ds.StudyInstanceUID, damaged)
            else:
                assert status.get("ErrorComment"), case  # a refusal says why
                refused.append(ds.SOPInstanceUID)
    assert echo(server.dicom_port) == 0
    staging = server.settings.storage_dir / ".staged"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and staging.exists() and any(p.is_file() for p in staging.rglob("*")):
        time.sleep(0.05)
    assert not staging.exists() or not any(p.is_file() for p in staging.rglob("*")), "objects left staged"
    assert not any(indexed(server, uid) for uid in refused)
    with httpx.Client(base_url=f"{server.http_url}/dicomweb", timeout=30) as http:
        for uid, (study, sent) in accepted.items():
            assert indexed(server, uid), uid
            found = http.get("/instances", params={"SOPInstanceUID": uid})
            assert found.status_code == 200 and len(found.json()) == 1, uid
            study_uid = found.json()[0]["0020000D"]["Value"][0]
            series_uid = found.json()[0]["0020000E"]["Value"][0]
            path = f"/studies/{study_uid}/series/{series_uid}/instances/{uid}"
            whole = http.get(path, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                                      'transfer-syntax=*'})
            assert whole.status_code == 200, uid
            # as sent, or with the index's patient and study attributes put in (retrieve.correct)
            if sent not in whole.content:
                [part] = [p for p in whole.content.split(b"\r\n\r\n", 1)[1:]]
                again = pydicom.dcmread(BytesIO(part))
                assert again.SOPInstanceUID == uid and again.PixelData == sent_pixels(sent), uid
            assert http.get(f"{path}/metadata").status_code == 200, uid
    assert accepted and refused  # both kinds were made
    assert tracebacks(caplog) == []


@pytest.mark.parametrize("charset", [b"\x00\x01\x02", b"ISO_IR 100\\\x00", b"\xff\xfe", b"ISO_IR 999 "])
def test_a_character_set_no_one_can_look_up_is_refused_or_archived(server, tmp_path, caplog, charset):
    """Specific Character Set (0008,0005) with terms PS3.3 C.12.1.1.2 does not define: NUL bytes
    (which the codec look-up rejects), bytes that are not ASCII, a term that does not exist.
    Either refused with a reason, or indexed: never answered Success and left staged."""
    caplog.set_level(logging.INFO)
    ds, data = plain_ct(tmp_path)
    with RawStorer(server.dicom_port, [CTImageStorage]) as scu:
        status = scu.store(CTImageStorage, ds.SOPInstanceUID, with_value(data, 0x00080005, charset))
    if status.Status == 0x0000:
        deadline = time.monotonic() + 10
        while not indexed(server, ds.SOPInstanceUID) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert indexed(server, ds.SOPInstanceUID), "answered Success, not indexed"
    else:
        assert failure(status.Status) and status.get("ErrorComment"), status
        assert not indexed(server, ds.SOPInstanceUID)
    assert tracebacks(caplog) == []


def query(port: int, model: str, identifiers: list[tuple[str, Dataset]], send: str) -> list[tuple[str, int]]:
    """Each identifier's final status over one association (a new one if the last was lost)."""
    ae = AE(ae_title="HOSTILE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(model, [ExplicitVRLittleEndian])  # so that an odd VR goes as sent
    answers = []
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    for label, identifier in identifiers:
        assert assoc.is_established, f"association lost before {label}"
        final = None
        if send == "find":
            responses = assoc.send_c_find(identifier, model)
        elif send == "move":
            responses = assoc.send_c_move(identifier, "HOSTILE", model)
        else:
            responses = assoc.send_c_get(identifier, model)
        for status, _ in responses:
            assert status is not None and "Status" in status, f"no answer to {label}"
            final = int(status.Status)
        assert final is not None, label
        answers.append((label, final))
    assoc.release()
    return answers


# A person's name ``^ `` under ISO 2022 IR 87: pydicom re-encodes the empty ideographic component
# when it reads the value and its JIS encoder raises IndexError. DCMTK sends the bytes as given.
JIS = "SpecificCharacterSet=ISO 2022 IR 87"
UNDECODABLE = "^ "


@needs_dcmtk
@pytest.mark.parametrize(("command", "model", "keys"), [
    ("findscu", "-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", f"PatientName={UNDECODABLE}"]),
    ("findscu", "-W", ["AccessionNumber", f"PatientName={UNDECODABLE}"]),
    ("findscu", "-W", ["AccessionNumber", f"ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName={UNDECODABLE}"]),
    ("getscu", "-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.3", f"PatientName={UNDECODABLE}"]),
])
def test_a_key_pydicom_cannot_read_is_refused_naming_it(server, caplog, command, model, keys):
    caplog.set_level(logging.INFO)
    args = [command, model, "-v", "-aec", "PACS", "-aet", "HOSTILE"]
    for key in [JIS, *keys]:
        args += ["-k", key]
    result = subprocess.run(args + ["127.0.0.1", str(server.dicom_port)], check=False, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"})
    said = result.stdout + result.stderr
    assert "DataSetDoesNotMatchSOPClass" in said or "0xa900" in said.lower(), said  # PS3.4 C.4.1.1.4
    assert tracebacks(caplog) == []
    assert echo(server.dicom_port) == 0


@pytest.mark.parametrize(("model", "make", "send", "allowed"), [
    (StudyRootQueryRetrieveInformationModelFind, qr_identifier, "find", FIND_STATUSES),
    (PatientRootQueryRetrieveInformationModelFind, qr_identifier, "find", FIND_STATUSES),
    (ModalityWorklistInformationFind, mwl_identifier, "find", FIND_STATUSES),
    (StudyRootQueryRetrieveInformationModelMove, qr_identifier, "move", RETRIEVE_STATUSES),
    (StudyRootQueryRetrieveInformationModelGet, qr_identifier, "get", RETRIEVE_STATUSES),
], ids=["study-root find", "patient-root find", "worklist", "move", "get"])
def test_odd_identifiers_get_a_status_of_the_service(server, tmp_path, caplog, model, make, send, allowed):
    caplog.set_level(logging.INFO)
    rng = random.Random(SEED)
    with RawStorer(server.dicom_port, [CTImageStorage]) as scu:  # something to find
        for _ in range(3):
            ds, data = plain_ct(tmp_path)
            assert scu.store(CTImageStorage, ds.SOPInstanceUID, data).Status == 0
    identifiers = [make(rng) for _ in range(INPUTS)]
    for label, final in query(server.dicom_port, model, identifiers, send):
        assert final in allowed or failure(final), f"seed {SEED}: {label} answered 0x{final:04X}"
    assert echo(server.dicom_port) == 0
    assert tracebacks(caplog) == []


def test_damaged_commitment_requests_are_answered(server, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    rng = random.Random(SEED)
    held = []
    with RawStorer(server.dicom_port, [CTImageStorage]) as scu:
        for _ in range(3):
            ds, data = plain_ct(tmp_path)
            assert scu.store(CTImageStorage, ds.SOPInstanceUID, data).Status == 0
            held.append((CTImageStorage, ds.SOPInstanceUID))
    ae = AE(ae_title="HOSTILE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian])
    reports = []  # the server reports on this association while it is open (PS3.4 J.3.3)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS",
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, lambda event: (reports.append(event), (0, None))[1])])
    for number in range(INPUTS):
        label, info = commitment_request(rng, held)
        assert assoc.is_established, f"association lost before case {number}: {label}"
        seen = len(reports)  # counted before the request: its report may come before the answer is read
        # an empty data set goes as none: pynetdicom would announce one and send no bytes of it
        status, _ = assoc.send_n_action(info if len(info) else None, 1, StorageCommitmentPushModel,
                                        "1.2.840.10008.1.20.1.1")
        assert status is not None and "Status" in status, f"seed {SEED} case {number}: {label}: no answer"
        if status.Status == 0:  # its report comes on this association before the next request goes
            deadline = time.monotonic() + 10
            while len(reports) == seen and time.monotonic() < deadline:
                time.sleep(0.001)
            assert len(reports) > seen, f"seed {SEED} case {number}: {label}: accepted, but no report came"
        assert int(status.Status) in ACTION_STATUSES, f"seed {SEED} case {number}: {label}: 0x{status.Status:04X}"
    assoc.release()
    assert echo(server.dicom_port) == 0
    assert tracebacks(caplog) == []

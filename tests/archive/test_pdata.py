"""C-STORE data sets spooled straight from the P-DATA-TF PDUs (pacs.archive.dul._read_pdu_data).

A pynetdicom SCU negotiates the association; the C-STORE request then goes out as hand-made
PDUs (PS3.8 9.3.5, E.2) on its socket, fragmented in the shapes a modality may use: every
object must be kept byte for byte, hashed right, answered Success, whichever path its PDUs took;
a connection lost in the middle of a PDU leaves nothing behind and the AE goes on serving."""

from __future__ import annotations

import hashlib
import struct
import time
from io import BytesIO
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlmodel import Session, func, select

from pacs.archive import dul
from pacs.archive.index import Instance, InstanceFile
from tests.archive.corpus import build, dataset_bytes

COMMAND, LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)


def pdu(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (context ID, control header, data) PDVs."""
    items = b"".join(struct.pack(">IBB", len(data) + 2, context, control) + data for context, control, data in pdvs)
    return struct.pack(">BBI", 0x04, 0, len(items)) + items


def command_set(sop_instance_uid: str, message_id: int) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Priority = 0
    primitive.DataSet = BytesIO(b"\0\0")  # a data set follows (Command Data Set Type, PS3.7 E.1-1)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


@contextmanager
def held(assoc) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The SCU's reactor held at its checkpoint, so the response is left for the test to take."""
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + 5
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0001)
    try:
        yield
    finally:
        assoc._reactor_checkpoint.set()


def ct(tmp_path: Path, number: int) -> tuple[str, bytes]:
    """A CT object of about 140 KB: its SOP Instance UID and its data set bytes."""
    source = build(tmp_path / f"src-{number}", [("CT_small.dcm", "")])[0].path
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{number}"
    ds.Rows = ds.Columns = 256
    ds.PixelData = bytes(range(256)) * 512
    path = tmp_path / f"ct-{number}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID, dataset_bytes(path)


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def shapes(context: int, data: bytes) -> dict[str, list[bytes]]:
    """The PDUs after the command's, per shape: data set fragments in PDUs of one or several."""
    pieces = chunks(data, 30_000)
    last = len(pieces) - 1
    return {
        # one fragment a PDU, the last alone (what DCMTK and pynetdicom send)
        "one a PDU": [pdu((context, LAST if i == last else 0, p)) for i, p in enumerate(pieces)],
        # two fragments a PDU, the last PDU holding the last fragment beside another
        "two a PDU": [pdu(*[(context, LAST if i == last else 0, p) for i, p in enumerate(pieces)][k:k + 2])
                      for k in range(0, len(pieces), 2)],
        # everything in one PDU (command set and data set apart, as PS3.8 E.2 requires)
        "all in one": [pdu(*[(context, LAST if i == last else 0, p) for i, p in enumerate(pieces)])],
        # tiny fragments in large numbers
        "many small": [pdu(*[(context, LAST if k + j == len(small) - 1 else 0, s)
                             for j, s in enumerate(small[k:k + 50])])
                       for small in [chunks(data, 997)] for k in range(0, len(small), 50)],
    }


def stored(server, uid: str) -> bytes:  # type: ignore[no-untyped-def]
    with Session(server.db.engine) as session:
        key, checksum = session.exec(select(InstanceFile.key, Instance.checksum)
                                     .join(Instance, Instance.id == InstanceFile.instance)
                                     .where(Instance.sop_instance_uid == uid)).one()
    raw = (server.settings.storage_dir / key[:2] / key[2:4] / key).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == checksum
    return raw


def test_every_fragmentation_is_kept_byte_for_byte(server, tmp_path, monkeypatch):
    fast: list[int] = []
    bulk = dul._bulk_fragments

    def counting(view, context_id):  # type: ignore[no-untyped-def]
        found = bulk(view, context_id)
        fast.append(len(found or ()))
        return found

    monkeypatch.setattr(dul, "_bulk_fragments", counting)
    area = server.server.services.archive.area
    stage, placed = area.stage, []

    def recording(source, tag, **options):  # type: ignore[no-untyped-def]
        placed.append(options.get("synced"))
        return stage(source, tag, **options)

    monkeypatch.setattr(area, "stage", recording)
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert assoc.is_established
    context = next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage)
    sent: dict[str, bytes] = {}
    try:
        for number, (shape, _) in enumerate(shapes(context, b"").items(), 1):
            uid, data = ct(tmp_path, number)
            with held(assoc):
                wire = assoc.dul.socket.socket
                wire.sendall(pdu((context, COMMAND | LAST, command_set(uid, number))))
                for piece in shapes(context, data)[shape]:
                    wire.sendall(piece)
                _, response = assoc.dimse.get_msg(block=True)
            assert response is not None and response.Status == 0, shape
            assert response.MessageIDBeingRespondedTo == number
            sent[uid] = data
        assert int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()
    for uid, data in sent.items():
        assert stored(server, uid).endswith(data)
        assert dataset_bytes_of(stored(server, uid)) == data
    assert sum(fast) > 5  # most fragments took the direct path
    assert 0 in fast  # and a PDU holding the last fragment went through pynetdicom's decoding
    assert placed == [True] * len(sent)  # each spool file fsynced before store() staged it


def dataset_bytes_of(raw: bytes) -> bytes:
    group_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_length:]


@pytest.mark.parametrize("cut", ["in a PDU header", "in a PDU"])
def test_a_connection_lost_mid_data_set_leaves_nothing(server, tmp_path, cut):
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert assoc.is_established
    context = assoc.accepted_contexts[0].context_id
    uid, data = ct(tmp_path, 1)
    pieces = shapes(context, data)["one a PDU"]
    with held(assoc):
        wire = assoc.dul.socket.socket
        wire.sendall(pdu((context, COMMAND | LAST, command_set(uid, 1))))
        wire.sendall(pieces[0])
        wire.sendall(pieces[1][:3] if cut == "in a PDU header" else pieces[1][:20_000])
        time.sleep(0.2)
        wire.shutdown(2)  # the peer just goes away
    deadline = time.monotonic() + 10
    incoming = server.settings.storage_dir / ".incoming"
    while time.monotonic() < deadline and any(incoming.iterdir()):
        time.sleep(0.05)
    assert list(incoming.iterdir()) == []  # the spool file went with the association
    with Session(server.db.engine) as session:
        assert session.exec(select(func.count()).select_from(Instance)).one() == 0
    echo = AE(ae_title="ECHOSCU")
    echo.add_requested_context(Verification)
    again = echo.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert again.is_established and int(again.send_c_echo().Status) == 0
    again.release()

"""C-FIND requests served by the DUL thread that reads them (pacs.archive.dul.serve_directly):
the same answers whatever PDUs the request comes in, answers within the requestor's maximum
PDU length, and anything that is not a whole C-FIND left to pynetdicom as before."""

from __future__ import annotations

import logging
import socket
import struct
import time
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_FIND_RQ
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from pacs.archive import dul
from tests.archive.raw import COMMAND, LAST, RawStorer, held, pdu, plain_ct

STUDIES = 3
MANY = 40  # studies whose answers stream while the peer aborts
MAX_PDU = 96  # the requestor's maximum PDU length: every answer needs more than one
ABORT = 0x07  # A-ABORT PDU type (PS3.8 9.3.8)
PDU_HEADER = 6  # type, reserved, length: outside the maximum length, which bounds the PDV items (PS3.8 D.1)


@pytest.fixture
def stored(server, tmp_path) -> str:
    """Three studies of one patient; their Patient ID."""
    with RawStorer(server.dicom_port, [CTImageStorage]) as scu:
        for _ in range(STUDIES):
            ds, data = plain_ct(tmp_path)
            assert scu.store(CTImageStorage, ds.SOPInstanceUID, data).Status == 0
    return str(ds.PatientID)


@pytest.fixture
def taken(monkeypatch) -> list[bool]:
    """For each request the DUL thread looked at: whether it served it itself."""
    seen: list[bool] = []
    take = dul._take_find

    def spy(provider, sock):  # type: ignore[no-untyped-def]
        result = take(provider, sock)
        if result is not False:  # False: the next PDU was not a P-DATA-TF, and nothing was read
            seen.append(isinstance(result, tuple))
        return result

    monkeypatch.setattr(dul, "_take_find", spy)
    return seen


def find_command(message_id: int, data_set_type: int = 1) -> bytes:
    primitive = C_FIND()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelFind
    primitive.Priority = 0
    primitive.Identifier = BytesIO(b"\0\0")
    message = C_FIND_RQ()
    message.primitive_to_message(primitive)
    if data_set_type != 1:
        message.command_set.CommandDataSetType = data_set_type
    return bytes(encode(message.command_set, True, True))


def identifier(patient_id: str) -> bytes:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient_id
    ds.PatientName = ""
    ds.StudyInstanceUID = ""
    ds.AccessionNumber = ""
    return bytes(encode(ds, True, True))


def shapes(context: int, command: bytes, data: bytes) -> dict[str, list[bytes]]:
    """The PDUs of one request, as requestors cut them."""
    half = len(command) // 2
    small = [data[i:i + 7] for i in range(0, len(data), 7)]
    return {
        "command, then identifier (DCMTK, pynetdicom)": [pdu((context, COMMAND | LAST, command)),
                                                         pdu((context, LAST, data))],
        "both in one PDU": [pdu((context, COMMAND | LAST, command), (context, LAST, data))],
        "fragments of a few bytes, one to a PDU": [
            pdu((context, COMMAND, command[:half])), pdu((context, COMMAND | LAST, command[half:])),
            *(pdu((context, LAST if n == len(small) - 1 else 0, piece)) for n, piece in enumerate(small))],
    }


class Requestor:
    """An association whose requests go out as hand-made PDUs; answers read by pynetdicom."""

    def __init__(self, port: int) -> None:
        ae = AE(ae_title="RAWFIND")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(Verification)
        self.received: list[int] = []
        self.assoc = ae.associate("127.0.0.1", port, ae_title="PACS", max_pdu=MAX_PDU,
                                  evt_handlers=[(evt.EVT_PDU_RECV, self._pdu)])
        assert self.assoc.is_established
        self.wire = self.assoc.dul.socket.socket
        self.wire.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.contexts = {cx.abstract_syntax: cx.context_id for cx in self.assoc.accepted_contexts}

    def _pdu(self, event) -> None:  # type: ignore[no-untyped-def]
        if event.pdu.pdu_type == 0x04:
            self.received.append(len(event.pdu.encode()))

    def ask(self, pdus: list[bytes]) -> tuple[list[Dataset], int | None]:
        """Send ``pdus``; the identifiers of the pending answers and the final status."""
        answers: list[Dataset] = []
        with held(self.assoc):
            for each in pdus:
                self.wire.sendall(each)
            while True:
                _, response = self.assoc.dimse.get_msg(block=True)
                if response is None:
                    return answers, None
                if response.Status in (0xFF00, 0xFF01):
                    answers.append(response.Identifier)
                    continue
                return answers, int(response.Status)

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


def decoded(answers: list[BytesIO]) -> list[tuple[str, str]]:
    from pynetdicom.dsutils import decode

    out = []
    for raw in answers:
        ds = decode(raw, True, True)
        out.append((str(ds.StudyInstanceUID), str(ds.PatientID)))
    return sorted(out)


def test_a_c_find_gets_the_same_answers_in_whatever_pdus_it_comes(server, stored, taken):
    requestor = Requestor(server.dicom_port)
    try:
        context = requestor.contexts[StudyRootQueryRetrieveInformationModelFind]
        results = {}
        for number, shape in enumerate(shapes(context, b"", b"")):
            answers, status = requestor.ask(shapes(context, find_command(number + 1), identifier(stored))[shape])
            assert status == 0x0000, shape
            results[shape] = decoded(answers)
        assert all(len(found) == STUDIES for found in results.values()), results
        assert len(set(map(tuple, results.values()))) == 1, results  # the same studies every time
        assert taken == [True] * len(results)  # each served by the DUL thread itself
        # each answer needed several PDUs, none longer than the requestor may receive (PS3.8 D.1)
        assert len(requestor.received) > 2 * STUDIES * len(results)
        assert max(requestor.received) <= MAX_PDU + PDU_HEADER
    finally:
        requestor.close()


def test_a_c_find_without_an_identifier_goes_pynetdicoms_way(server, stored, taken):
    """Command Data Set Type 0x0101 (PS3.7 E.1-1: no data set) on a C-FIND-RQ: not served
    directly; pynetdicom's answer, as before, and the association serves the next request."""
    requestor = Requestor(server.dicom_port)
    try:
        context = requestor.contexts[StudyRootQueryRetrieveInformationModelFind]
        answers, status = requestor.ask([pdu((context, COMMAND | LAST, find_command(1, 0x0101)))])
        assert answers == [] and status is not None and status != 0x0000
        assert taken == [False]
        answers, status = requestor.ask(shapes(context, find_command(2), identifier(stored))["both in one PDU"])
        assert status == 0x0000 and len(answers) == STUDIES
        assert requestor.assoc.send_c_echo().Status == 0x0000
    finally:
        requestor.close()


def test_an_identifier_in_another_context_goes_pynetdicoms_way(server, stored, taken):
    """A C-FIND-RQ whose identifier comes in a presentation context other than its command's
    is not served directly; pynetdicom's decoding takes it (and answers it) as before."""
    requestor = Requestor(server.dicom_port)
    try:
        context = requestor.contexts[StudyRootQueryRetrieveInformationModelFind]
        other = requestor.contexts[Verification]
        answers, status = requestor.ask([pdu((context, COMMAND | LAST, find_command(1))),
                                         pdu((other, LAST, identifier(stored)))])
        assert taken == [False]
        assert status == 0x0000 and len(answers) == STUDIES  # pynetdicom reads fragments whatever their context
        answers, status = requestor.ask(shapes(context, find_command(2), identifier(stored))["both in one PDU"])
        assert status == 0x0000 and len(answers) == STUDIES
        assert taken == [False, True]
    finally:
        requestor.close()


def test_a_peer_that_aborts_after_the_command_leaves_the_server_serving(server, stored, taken):
    """The command PDU, then an A-ABORT instead of the identifier: the command goes to
    pynetdicom's decoding, the abort is read after it, and the next association is served."""
    requestor = Requestor(server.dicom_port)
    context = requestor.contexts[StudyRootQueryRetrieveInformationModelFind]
    with held(requestor.assoc):
        requestor.wire.sendall(pdu((context, COMMAND | LAST, find_command(1)))
                               + struct.pack(">BBIBBBB", ABORT, 0, 4, 0, 0, 0, 0))
    requestor.assoc.abort()
    again = Requestor(server.dicom_port)
    try:
        pdus = shapes(again.contexts[StudyRootQueryRetrieveInformationModelFind], find_command(1),
                      identifier(stored))["command, then identifier (DCMTK, pynetdicom)"]
        answers, status = again.ask(pdus)
        assert status == 0x0000 and len(answers) == STUDIES
        assert taken[-1] is True
    finally:
        again.close()


def test_a_peer_that_aborts_during_the_answers_ends_only_its_association(server, tmp_path, caplog, taken):
    """Answers streaming, and the peer sends an A-ABORT (PS3.8 9.3.8) and closes: read between
    answers, it ends the association (AA-3) without a traceback; the next association is served."""
    caplog.set_level(logging.INFO)
    with RawStorer(server.dicom_port, [CTImageStorage]) as scu:
        for _ in range(MANY):
            ds, data = plain_ct(tmp_path)
            assert scu.store(CTImageStorage, ds.SOPInstanceUID, data).Status == 0
    requestor = Requestor(server.dicom_port)
    context = requestor.contexts[StudyRootQueryRetrieveInformationModelFind]
    with held(requestor.assoc):
        requestor.wire.sendall(b"".join(shapes(context, find_command(1), identifier(str(ds.PatientID)))["both in one PDU"])
                               + struct.pack(">BBIBBBB", ABORT, 0, 4, 0, 0, 0, 0))
        requestor.wire.close()
    again = Requestor(server.dicom_port)
    try:
        answers, status = again.ask(shapes(again.contexts[StudyRootQueryRetrieveInformationModelFind],
                                           find_command(1), identifier(str(ds.PatientID)))["both in one PDU"])
        assert status == 0x0000 and len(answers) == MANY
    finally:
        again.close()
    assert taken.count(True) == 2  # both queries served directly (the stores were not)
    assert [r.getMessage() for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR] == []


def test_a_query_longer_than_the_network_timeout_is_answered(start_server, tmp_path, monkeypatch, taken):
    """The association's thread, free while the DUL thread serves the query, watches the idle
    timer (the network timeout): a query that takes longer is not taken for a silent peer."""
    from pacs.archive.query_service import QueryService

    server = start_server(dicom={"network_timeout_seconds": 1})
    with RawStorer(server.dicom_port, [CTImageStorage]) as scu:
        ds, data = plain_ct(tmp_path)
        assert scu.store(CTImageStorage, ds.SOPInstanceUID, data).Status == 0
    archive = QueryService.archive

    def slow(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(2.5)
        yield from archive(self, *args, **kwargs)

    monkeypatch.setattr(QueryService, "archive", slow)
    requestor = Requestor(server.dicom_port)
    try:
        answers, status = requestor.ask(shapes(requestor.contexts[StudyRootQueryRetrieveInformationModelFind],
                                               find_command(1), identifier(str(ds.PatientID)))["both in one PDU"])
        assert status == 0x0000 and len(answers) == 1
        assert requestor.assoc.send_c_echo().Status == 0x0000
    finally:
        requestor.close()
    assert taken.count(True) == 1


def test_a_query_sent_before_the_association_is_set_up_is_answered(start_server, tmp_path, monkeypatch, taken):
    """The peer may send its C-FIND as soon as it has the A-ASSOCIATE-AC, while the server's
    thread still runs the EVT_ACCEPTED handlers (the access check among them): the request waits
    for them, is answered, and the association's later requests are served directly. (The one
    right after may still go the association thread's way: that thread can be finishing the first
    one, holding the association's serving lock, when it arrives.)"""
    from pacs.archive import handlers

    log_association = handlers.log_association

    def slow_to_accept(event, outcome):  # type: ignore[no-untyped-def]
        if outcome == "accepted":
            time.sleep(1.0)
        log_association(event, outcome)

    monkeypatch.setattr(handlers, "log_association", slow_to_accept)
    server = start_server()
    with RawStorer(server.dicom_port, [CTImageStorage]) as scu:
        ds, data = plain_ct(tmp_path)
        assert scu.store(CTImageStorage, ds.SOPInstanceUID, data).Status == 0
    requestor = Requestor(server.dicom_port)
    requestor.assoc.dimse_timeout = 10
    try:
        context = requestor.contexts[StudyRootQueryRetrieveInformationModelFind]
        for number in range(1, 6):
            answers, status = requestor.ask(shapes(context, find_command(number),
                                                   identifier(str(ds.PatientID)))["both in one PDU"])
            assert status == 0x0000 and len(answers) == 1, f"query {number}"
    finally:
        requestor.close()
    # The first waited for the handlers (never looked at here); later ones were served directly.
    assert 1 <= taken.count(True) == len(taken) <= 4

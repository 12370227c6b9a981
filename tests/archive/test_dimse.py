"""Responses and received-object framing written without pydicom: byte for byte what pynetdicom and pydicom give."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_FIND_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import ModalityWorklistInformationFind, StudyRootQueryRetrieveInformationModelFind

from pacs.archive.dimse import encode_pdu, find_response_command, pdata


def _identifier() -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "ZHANG^SAN=张^三"
    ds.PatientID = "P10001"
    ds.AccessionNumber = "ACC0001"
    return encode(ds, True, True)


def _wire(primitives) -> list[bytes]:
    out = []
    for primitive in primitives:
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out.append(pdu.encode())
    return out


def _received(primitives) -> tuple[Dataset, bytes]:
    """What pynetdicom's DIMSE provider makes of P-DATA as it receives them."""
    message = DIMSEMessage()
    complete = [message.decode_msg(primitive) for primitive in primitives]
    assert complete[-1] and not any(complete[:-1])
    return message.command_set, message.data_set.getvalue()


def _library(sop_class: str, status: int, identifier: bytes, max_pdu: int) -> list:
    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = sop_class
    primitive.Status = status
    primitive.Identifier = BytesIO(identifier)
    message = C_FIND_RSP()
    message.primitive_to_message(primitive)
    return list(message.encode_msg(3, max_pdu))


@pytest.mark.parametrize("sop_class", [ModalityWorklistInformationFind, StudyRootQueryRetrieveInformationModelFind])
@pytest.mark.parametrize("status", [0xFF00, 0xFF01])
@pytest.mark.parametrize("max_pdu", [0, 16382, 64, 7 + 6])
def test_received_as_pynetdicom_would_have_sent_it(sop_class, status, max_pdu):
    identifier = _identifier()
    expected = _library(sop_class, status, identifier, max_pdu)
    ours = list(pdata(3, find_response_command(sop_class, 7, status), identifier, max_pdu))
    command, data_set = _received(ours)
    assert command == _received(expected)[0] and data_set == identifier
    assert command.CommandField == 0x8020 and command.Status == status and command.MessageIDBeingRespondedTo == 7
    if max_pdu in (0, 16382):  # command and identifier in one PDU
        [pdu] = _wire(ours)
        assert len(pdu) == sum(len(p) for p in _wire(expected)) - 6  # one PDU header fewer
    else:  # fragmented exactly as pynetdicom fragments
        assert _wire(ours) == _wire(expected) and len(ours) > 2


@pytest.mark.parametrize("max_pdu", [0, 64])
def test_pdus_written_directly_are_the_ones_pynetdicom_writes(max_pdu):
    """The direct path (PendingSender) writes each P-DATA-TF PDU itself: byte for byte
    pynetdicom's, and a run of them read back PDU by PDU gives every message whole, in order."""
    identifiers = [_identifier(), _identifier()[:-8] + b"ACC0002\0", _identifier()]
    messages = [list(pdata(3, find_response_command(ModalityWorklistInformationFind, 7, 0xFF00), ident, max_pdu))
                for ident in identifiers]
    for primitives in messages:
        assert [encode_pdu(p) for p in primitives] == _wire(primitives)
    stream = b"".join(encode_pdu(p) for primitives in messages for p in primitives)
    read_back, offset = [], 0
    while offset < len(stream):  # PS3.8 9.3.1: type, reserved, 4-byte big-endian length
        assert stream[offset] == 0x04
        length = int.from_bytes(stream[offset + 2:offset + 6], "big")
        pdu = P_DATA_TF()
        pdu.decode(stream[offset:offset + 6 + length])
        read_back.append(pdu.to_primitive())
        offset += 6 + length
    got, message = [], DIMSEMessage()
    for primitive in read_back:
        if message.decode_msg(primitive):
            got.append(message.data_set.getvalue())
            message = DIMSEMessage()
    assert got == identifiers


@pytest.mark.parametrize("sop_class", [ModalityWorklistInformationFind, StudyRootQueryRetrieveInformationModelFind])
@pytest.mark.parametrize("status", [0x0000, 0xFE00])
@pytest.mark.parametrize("max_pdu", [0, 16382, 40])
def test_a_final_find_response_is_the_one_pynetdicom_would_send(sop_class, status, max_pdu):
    """The final C-FIND-RSP (Success or Cancel, PS3.7 9.3.2.2) has no identifier: the same
    command set as pynetdicom's, with Command Data Set Type 0x0101, fragmented the same way."""
    from pacs.archive.dimse import find_final_command

    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = sop_class
    primitive.Status = status
    message = C_FIND_RSP()
    message.primitive_to_message(primitive)
    expected = list(message.encode_msg(3, max_pdu))
    ours = list(pdata(3, find_final_command(sop_class, 7, status), None, max_pdu))
    assert _wire(ours) == _wire(expected)
    decoded = DIMSEMessage()
    assert [decoded.decode_msg(p) for p in ours][-1]
    assert decoded.command_set.CommandDataSetType == 0x0101 and decoded.command_set.Status == status


@pytest.mark.parametrize("status", [0x0000, 0xB006, 0xA700])
@pytest.mark.parametrize("max_pdu", [0, 16382, 40])
def test_a_store_response_is_the_one_pynetdicom_would_send(status, max_pdu):
    """C-STORE-RSP (PS3.7 9.3.1.2): the same command set, fragmented the same way."""
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.sop_class import CTImageStorage

    from pacs.archive.dimse import store_response_command

    for instance in ("1.2.3.4.5", "1.2.3.4.56"):  # odd and even length: padding
        primitive = C_STORE()
        primitive.MessageIDBeingRespondedTo = 7
        primitive.AffectedSOPClassUID = CTImageStorage
        primitive.AffectedSOPInstanceUID = instance
        primitive.Status = status
        message = C_STORE_RSP()
        message.primitive_to_message(primitive)
        expected = list(message.encode_msg(3, max_pdu))
        ours = list(pdata(3, store_response_command(CTImageStorage, instance, 7, status), None, max_pdu))
        assert _wire(ours) == _wire(expected)
        decoded = DIMSEMessage()
        assert [decoded.decode_msg(p) for p in ours][-1]
        assert decoded.command_set.CommandField == 0x8001 and decoded.command_set.Status == status
        assert decoded.command_set.AffectedSOPInstanceUID == instance


@pytest.mark.parametrize("instance", ["1.2.3.4.5", "1.2.3.4.56"])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"])
def test_the_file_meta_of_a_received_object_is_pydicom_s(instance, syntax):
    """The File Meta Information written before a received data set (PS3.10 7.1): the bytes
    pynetdicom's create_file_meta and pydicom's write_file_meta_info give."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom.dsutils import create_file_meta
    from pynetdicom.sop_class import CTImageStorage

    from pacs.archive.spool import FileMeta, file_meta_bytes

    expected = DicomBytesIO()
    write_file_meta_info(expected, create_file_meta(sop_class_uid=CTImageStorage, sop_instance_uid=instance,
                                                    transfer_syntax=syntax))
    assert file_meta_bytes(FileMeta(CTImageStorage, instance, syntax)) == expected.getvalue()


def _store_request_bytes(**values) -> bytes:
    """A C-STORE-RQ command set as pynetdicom encodes it from a primitive."""
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    primitive = C_STORE()
    primitive.MessageID = values.get("message_id", 7)
    primitive.AffectedSOPClassUID = values.get("sop_class", "1.2.840.10008.5.1.4.1.1.2")
    primitive.AffectedSOPInstanceUID = values.get("sop_instance", "1.2.826.0.1.3680043.8.498.1")
    primitive.Priority = values.get("priority", 2)
    if "originator" in values:
        primitive.MoveOriginatorApplicationEntityTitle = values["originator"]
        primitive.MoveOriginatorMessageID = 3
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    if "raw_instance" in values:  # a value pynetdicom would not put in a primitive
        message.command_set.AffectedSOPInstanceUID = values["raw_instance"]
    return encode(message.command_set, True, True)


@pytest.mark.parametrize("values", [
    {}, {"message_id": 0}, {"message_id": 65535, "priority": 1}, {"priority": 0},
    {"sop_instance": "1.2.3.45"},  # an even length: no padding
    {"sop_instance": "1.2.826.0.1.3680043.8.498." + "1" * 38},  # 64 characters
    {"sop_class": "1.2.840.10008.5.1.4.1.1.4"},
])
def test_a_store_request_is_read_as_pynetdicom_reads_it(values):
    """The primitive made from the command's bytes (dimse.decode_command, message_to_primitive)
    equals the one pynetdicom makes through pydicom, whatever the values."""
    from pynetdicom.dimse_messages import C_STORE_RQ

    from pacs.archive import dimse

    ours, theirs = _read_both_ways(_store_request_bytes(**values), dimse.C_STORE_RQ, C_STORE_RQ)
    for attribute in ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
                      "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID", "_context_id"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert isinstance(ours.AffectedSOPInstanceUID, type(theirs.AffectedSOPInstanceUID))


def _read_both_ways(data: bytes, command_field: int, message_class):  # type: ignore[no-untyped-def]
    """A request's primitive made from its command's bytes (dimse.decode_command,
    message_to_primitive) and pynetdicom's through pydicom, once both readings of the command
    elements are checked equal."""
    from pacs.archive import dimse

    command = dimse.decode_command(BytesIO(data), True, True)
    assert isinstance(command, dimse.RequestCommand)
    reference = dimse._pynetdicom_decode(BytesIO(data), True, True)
    for keyword in dimse.REQUESTS[command_field]:
        assert getattr(command, keyword) == reference[keyword].value
    data_set = BytesIO(b"data set")
    made, expected = message_class(), message_class()
    for message, command_set in ((made, command), (expected, reference)):
        message.command_set, message.context_id, message.data_set = command_set, 5, data_set
        message._data_set_path = message._data_set_file = None
    return dimse.message_to_primitive(made), dimse._pynetdicom_message_to_primitive(expected)


def _find_request_bytes(**values) -> bytes:
    """A C-FIND-RQ command set as pynetdicom encodes it from a primitive."""
    from pynetdicom.dimse_messages import C_FIND_RQ
    from pynetdicom.dimse_primitives import C_FIND

    primitive = C_FIND()
    primitive.MessageID = values.get("message_id", 9)
    primitive.AffectedSOPClassUID = values.get("sop_class", "1.2.840.10008.5.1.4.1.2.2.1")
    primitive.Priority = values.get("priority", 2)
    primitive.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    message = C_FIND_RQ()
    message.primitive_to_message(primitive)
    if "data_set_type" in values:
        message.command_set.CommandDataSetType = values["data_set_type"]
    return encode(message.command_set, True, True)


@pytest.mark.parametrize("values", [
    {}, {"message_id": 0}, {"message_id": 65535, "priority": 1}, {"priority": 0},
    {"sop_class": "1.2.840.10008.5.1.4.31"},  # the worklist: an odd length, padded
    {"sop_class": "1.2.840.10008.5.1.4.1.2.1.1"}, {"data_set_type": 0x0000}, {"data_set_type": 0x0101},
])
def test_a_find_request_is_read_as_pynetdicom_reads_it(values):
    """A C-FIND request's primitive made from its command's bytes equals pynetdicom's, identifier
    and context included."""
    from pynetdicom.dimse_messages import C_FIND_RQ

    from pacs.archive import dimse

    ours, theirs = _read_both_ways(_find_request_bytes(**values), dimse.C_FIND_RQ, C_FIND_RQ)
    assert type(ours) is type(theirs)
    for attribute in ("MessageID", "AffectedSOPClassUID", "Priority", "Identifier", "_context_id"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert isinstance(ours.AffectedSOPClassUID, type(theirs.AffectedSOPClassUID))


def test_any_other_command_is_left_to_pynetdicom():
    from pacs.archive.dimse import RequestCommand, decode_command, request_command

    good = _store_request_bytes()
    assert request_command(good) is not None
    with_originator = _store_request_bytes(originator="MOVESCU")
    priority = bytearray(good)
    at = good.index(bytes.fromhex("0000 0007 0200 0000".replace(" ", "")))  # (0000,0700) US, length 2
    priority[at + 8:at + 10] = b"\x05\x00"
    find_with_instance = bytearray(good)  # a C-STORE's elements under C-FIND's command field
    at = good.index(bytes.fromhex("0000 0001 0200 0000".replace(" ", "")))  # (0000,0100) US, length 2
    find_with_instance[at + 8:at + 10] = b"\x20\x00"
    echo = Dataset()
    echo.CommandGroupLength, echo.AffectedSOPClassUID, echo.CommandField = 0, "1.2.840.10008.1.1", 0x0030
    echo.MessageID, echo.CommandDataSetType = 1, 0x0101
    for data in (with_originator, bytes(priority), good[:-3], b"", bytes(find_with_instance),
                 encode(echo, True, True),
                 _store_request_bytes(raw_instance="1." + "2" * 64),  # over 64 characters
                 _store_request_bytes(raw_instance="1.2.3.é"), _store_request_bytes(raw_instance="1.2.abc")):
        assert request_command(data) is None
        if data:
            decoded = decode_command(BytesIO(data), True, True)
            assert isinstance(decoded, Dataset) and not isinstance(decoded, RequestCommand)

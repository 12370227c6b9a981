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

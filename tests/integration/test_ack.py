"""ACKs: structure checked by hl7apy in strict mode, for every kind and version."""

from __future__ import annotations

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from pacs.integration.ack import AckCode, ErrorCode, Header, MessageError, build_ack, header_from_raw
from pacs.integration.hl7v2 import Address, parse
from tests.helpers import load

ERRORS = {
    AckCode.ACCEPT: None,
    AckCode.ERROR: MessageError.content(ErrorCode.REQUIRED_FIELD_MISSING, Address("PID", 3), "no identifier"),
    AckCode.REJECT: MessageError.reject(ErrorCode.UNSUPPORTED_MESSAGE_TYPE, "ORU is not taken"),
}


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1"])
@pytest.mark.parametrize("ack", list(AckCode))
def test_ack_is_a_valid_hl7_message(version, ack):
    header = Header.of(parse(load("orm_o01_nw_ihe.hl7").decode().replace("|2.3.1|", f"|{version}|")))
    text = build_ack(header, ack, application="PACS", facility="RAD", error=ERRORS[ack])
    # hl7apy cannot instantiate any v2.3 ACK in strict mode (not even a bare MSH+MSA), so v2.3
    # is read tolerantly; its MSH-9 has no structure component before v2.3.1.
    strict = version != "2.3"
    if not strict:
        assert "|ACK^O01|" in text
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT if strict else VALIDATION_LEVEL.TOLERANT)
    if strict:
        message.validate()
    assert message.msa.msa_1.value == ack.value
    assert message.msa.msa_2.value == "ORM0001"
    assert message.msh.msh_5.value == "HIS" and message.msh.msh_3.value == "PACS"


def test_header_from_unparseable_bytes_is_best_effort():
    header = header_from_raw(b"MSH|^~\\&|LAB|L1|PACS|R|2026||ORU^R01|77|P|2.4\rgarbage")
    assert (header.sending_application, header.control_id, header.version) == ("LAB", "77", "2.4")
    assert header_from_raw(b"not hl7") == Header()


def test_error_text_with_delimiters_is_escaped():
    error = MessageError.content(ErrorCode.TABLE_VALUE_NOT_FOUND, Address("PID", 8), "code 'A|B^C' unknown")
    text = build_ack(Header(control_id="1"), AckCode.ERROR, application="P", facility="R", error=error)
    err = [s for s in text.split("\r") if s.startswith("ERR")][0]
    assert "A\\F\\B\\S\\C" in err

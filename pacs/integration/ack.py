"""Original-mode acknowledgements (HL7 v2.5.1 §2.9.2): AA, AE with an ERR segment, AR.

The ACK's MSH swaps sender and receiver, MSA-2 echoes the inbound MSH-10. For v2.5 and later
the error goes in ERR-2 (location), ERR-3 (HL7 table 0357 code), ERR-4 (severity) and ERR-8
(user message); for v2.3/2.4 in ERR-1 (ELD: segment^sequence^field^code&text&HL70357), with MSA-3
carrying the text as well.

ACKs are written directly as ER7: hl7apy takes about 2 ms to build one, as long as the rest of
the pipeline together. The tests parse every ACK kind with hl7apy in strict mode.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum

from pacs.integration.hl7v2 import DEFAULT_ENCODING, Address, Encoding, Message, build_segment, escape


class AckCode(StrEnum):
    """MSA-1, HL7 table 0008 (original mode)."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


class ErrorCode(IntEnum):
    """HL7 table 0357, message error condition codes."""

    ACCEPTED = 0
    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207


ERROR_TEXT = {
    ErrorCode.ACCEPTED: "Message accepted",
    ErrorCode.SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE_ERROR: "Data type error",
    ErrorCode.TABLE_VALUE_NOT_FOUND: "Table value not found",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    ErrorCode.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    ErrorCode.UNSUPPORTED_VERSION_ID: "Unsupported version id",
    ErrorCode.UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    ErrorCode.APPLICATION_RECORD_LOCKED: "Application record locked",
    ErrorCode.APPLICATION_INTERNAL_ERROR: "Application internal error",
}


@dataclass
class MessageError(Exception):
    """Why a message was not applied, and where: becomes the ACK's MSA-1 and ERR segment."""

    ack: AckCode
    code: ErrorCode
    text: str
    location: Address | str | None = None  # an HL7 field address or, for FHIR, a FHIRPath

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"{self.ack} {int(self.code)} {ERROR_TEXT[self.code]}{where}: {self.text}"

    @classmethod
    def content(cls, code: ErrorCode, location: Address | str | None, text: str) -> MessageError:
        """The content is wrong (AE): the sender should fix the message, not resend it as is."""
        return cls(AckCode.ERROR, code, text, location)

    @classmethod
    def reject(cls, code: ErrorCode, text: str, location: Address | str | None = None) -> MessageError:
        """The message can't be taken at all (AR)."""
        return cls(AckCode.REJECT, code, text, location)


@dataclass(frozen=True)
class Header:
    """What an ACK needs from the inbound MSH; filled best-effort for unparseable messages."""

    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    trigger_event: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = "2.5"
    charset: str = ""
    encoding: Encoding = DEFAULT_ENCODING

    @classmethod
    def of(cls, message: Message) -> Header:
        return cls(
            sending_application=message.sending_application,
            sending_facility=message.sending_facility,
            receiving_application=message.receiving_application,
            receiving_facility=message.receiving_facility,
            trigger_event=message.trigger_event,
            control_id=message.control_id,
            processing_id=message.processing_id or "P",
            version=message.version or "2.5",
            charset=message.charset,
            encoding=message.encoding,
        )


_counter = itertools.count(1)
_prefix = f"{int(time.time()) % 100000:05d}"
_origin = ""  # one letter per helper process of a pacs serve (set_origin), so theirs differ from ours


def next_control_id() -> str:
    """A control ID unique within this run of ``pacs serve`` (MSH-10 of what we send)."""
    return f"PACS{_origin}{_prefix}{next(_counter):08d}"


def set_origin(letter: str) -> None:
    """Mark this process's control IDs (the MLLP front process builds ACKs too)."""
    global _origin
    _origin = letter


def _version(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (2, 5)


def _version_at_least_25(version: str) -> bool:
    return _version(version) >= (2, 5)


def _message_type(header: Header, enc: Encoding) -> str:
    """MSH-9 of the ACK: ACK^trigger^ACK (the message structure component exists from v2.3.1)."""
    if not header.trigger_event:
        return "ACK"
    parts = ["ACK", escape(header.trigger_event, enc)]
    if _version(header.version) >= (2, 3, 1):
        parts.append("ACK")
    return enc.component.join(parts)


def build_ack(
    header: Header,
    ack: AckCode,
    *,
    application: str,
    facility: str,
    error: MessageError | None = None,
    now: datetime | None = None,
) -> str:
    """The ACK for ``header`` as ER7 text (segments joined with carriage returns)."""
    enc = header.encoding
    stamp = (now or datetime.now()).strftime("%Y%m%d%H%M%S")
    # The ACK names the receiver that answered, not whatever the sender addressed.
    msh = build_segment(
        "MSH",
        enc.msh2,
        escape(header.receiving_application or application, enc),
        escape(header.receiving_facility or facility, enc),
        escape(header.sending_application, enc),
        escape(header.sending_facility, enc),
        stamp,
        "",
        _message_type(header, enc),
        next_control_id(),
        escape(header.processing_id, enc) or "P",
        escape(header.version, enc) or "2.5",
        *([""] * 5 + [escape(header.charset, enc)] if header.charset else []),
        encoding=enc,
    )
    modern = _version_at_least_25(header.version)
    text = escape(error.text, enc) if error else ""
    msa = build_segment("MSA", ack.value, escape(header.control_id, enc),
                        text[:80] if (error and not modern) else None, encoding=enc)
    segments = [msh, msa]
    if error is not None:
        segments.append(_err(error, enc, modern))
    return "\r".join(segments) + "\r"


def _err(error: MessageError, enc: Encoding, modern: bool) -> str:
    loc = error.location if isinstance(error.location, Address) else None
    code = int(error.code)
    label = ERROR_TEXT[error.code]
    if modern:
        location = ""
        if loc is not None:
            location = enc.component.join(
                [loc.segment, str(loc.occurrence), str(loc.field), str(loc.repetition or 1),
                 str(loc.component or ""), str(loc.subcomponent or "")]
            ).rstrip(enc.component)
        severity = "E"
        return build_segment(
            "ERR",
            "",
            location,
            enc.component.join([str(code), escape(label, enc), "HL70357"]),
            severity,
            "", "", "",
            escape(error.text, enc),
            encoding=enc,
        )
    sub = enc.subcomponent
    eld = [loc.segment, str(loc.occurrence), str(loc.field)] if loc else ["", "", ""]
    eld.append(sub.join([str(code), escape(label, enc), "HL70357"]))
    return build_segment("ERR", enc.component.join(eld), encoding=enc)


def header_from_raw(raw: bytes) -> Header:
    """Best-effort header of a message that could not be decoded or parsed, for its AR."""
    if not raw.startswith(b"MSH") or len(raw) < 8:
        return Header()
    first = raw.replace(b"\n", b"\r").split(b"\r", 1)[0].decode("latin-1")
    if len(first) < 4:  # "MSH" and a segment break: no separator to read
        return Header()
    separator = first[3]
    if separator.isalnum() or separator.isspace():
        return Header()
    fields = first.split(separator)
    component = fields[1][0] if len(fields) > 1 and fields[1] else "^"

    def get(n: int, comp: int = 1) -> str:
        value = fields[n - 1] if len(fields) >= n else ""
        parts = value.split(component)
        return parts[comp - 1] if len(parts) >= comp else ""

    try:
        encoding = Encoding(separator, *fields[1][:4]) if len(fields) > 1 and len(fields[1]) >= 4 else DEFAULT_ENCODING
    except TypeError:
        encoding = DEFAULT_ENCODING
    if len({encoding.field, encoding.component, encoding.repetition, encoding.escape, encoding.subcomponent}) != 5:
        encoding = DEFAULT_ENCODING
    return Header(
        sending_application=get(3),
        sending_facility=get(4),
        receiving_application=get(5),
        receiving_facility=get(6),
        trigger_event=get(9, 2),
        control_id=get(10),
        processing_id=get(11) or "P",
        version=get(12) or "2.5",
        charset=get(18).split(encoding.repetition)[0] if get(18) else "",
        encoding=encoding,
    )

"""C-FIND pending responses (PS3.7 9.3.2.2) sent without pydicom building their command set.

pynetdicom turns every response it sends into a pydicom Dataset of command elements and writes
it with pydicom's writer: about a third of a millisecond each, most of what a worklist answer of
thirty steps costs the server. A pending C-FIND-RSP always has the same five command elements,
so :func:`install` lets the DIMSE provider write them directly, in the Implicit VR Little Endian
encoding command sets always use (PS3.7 6.3.1), and send command and identifier as the two PDV
items of one P-DATA-TF PDU where they fit (PS3.8 9.3.5, E.2). Anything else — final and failure responses, a response
carrying an Error Comment, a DIMSE-sent handler that wants the message as a Dataset — goes the
library's way.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from io import BytesIO
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.pdu_primitives import P_DATA

C_FIND_RSP = 0x8020  # Command Field (PS3.7 E.1)
DATA_SET_PRESENT = 0x0001  # Command Data Set Type: anything but 0x0101 (as pynetdicom sends it)
PENDING = (0xFF00, 0xFF01)
PDV_HEADER = 6  # item length (4), presentation context ID (1), message control header (1)
# Message control header (PS3.8 E.2): bit 0 command, bit 1 last fragment
COMMAND_LAST, COMMAND_MORE, DATA_LAST, DATA_MORE = b"\x03", b"\x01", b"\x02", b"\x00"


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def find_response_command(sop_class_uid: str, message_id: int, status: int) -> bytes:
    """The command set of a C-FIND-RSP with an identifier, Implicit VR Little Endian."""
    uid = sop_class_uid.encode("ascii")
    if len(uid) % 2:
        uid += b"\x00"  # UI values are padded with a NUL to an even length (PS3.5 6.2)
    body = b"".join((
        _element(0x0002, uid),  # Affected SOP Class UID
        _element(0x0100, struct.pack("<H", C_FIND_RSP)),  # Command Field
        _element(0x0120, struct.pack("<H", message_id)),  # Message ID Being Responded To
        _element(0x0800, struct.pack("<H", DATA_SET_PRESENT)),  # Command Data Set Type
        _element(0x0900, struct.pack("<H", status)),  # Status
    ))
    return _element(0x0000, struct.pack("<I", len(body))) + body  # Command Group Length first


def _fragments(payload: bytes, max_pdu: int) -> Iterator[bytes]:
    size = len(payload) if max_pdu == 0 else max_pdu - PDV_HEADER
    for start in range(0, max(len(payload), 1), max(size, 1)):
        yield payload[start:start + size]


def pdata(context_id: int, command: bytes, data_set: bytes, max_pdu: int) -> Iterator[P_DATA]:
    """The P-DATA primitives of one message. When the command and the identifier fit in one
    P-DATA-TF PDU of the peer's maximum length they go as its two PDV items (PS3.8 9.3.5 allows
    any number): one PDU for the DUL to send instead of two. Otherwise one fragment each, as
    pynetdicom fragments them."""
    if max_pdu == 0 or len(command) + len(data_set) + 2 * PDV_HEADER <= max_pdu:
        primitive = P_DATA()
        primitive.presentation_data_value_list.append((context_id, COMMAND_LAST + command))
        primitive.presentation_data_value_list.append((context_id, DATA_LAST + data_set))
        yield primitive
        return
    for payload, more, last in ((command, COMMAND_MORE, COMMAND_LAST), (data_set, DATA_MORE, DATA_LAST)):
        pieces = list(_fragments(payload, max_pdu))
        for number, piece in enumerate(pieces, 1):
            primitive = P_DATA()
            primitive.presentation_data_value_list.append((context_id, (last if number == len(pieces) else more)
                                                           + piece))
            yield primitive


def _fast(provider: DIMSEServiceProvider, primitive: Any) -> bool:
    return (isinstance(primitive, C_FIND) and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status in PENDING and isinstance(primitive.Identifier, BytesIO)
            and primitive.AffectedSOPClassUID is not None and primitive.ErrorComment is None
            and primitive.OffendingElement is None and not provider.assoc.get_handlers(evt.EVT_DIMSE_SENT))


def install() -> None:
    """Send pending C-FIND responses through :func:`find_response_command` (idempotent)."""
    original = DIMSEServiceProvider.send_msg
    if getattr(original, "_pacs_fast", False):
        return

    def send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
        if not _fast(self, primitive):
            original(self, primitive, context_id)
            return
        command = find_response_command(str(primitive.AffectedSOPClassUID),
                                        int(primitive.MessageIDBeingRespondedTo), int(primitive.Status))
        for item in pdata(context_id, command, primitive.Identifier.getvalue(), self.maximum_pdu_size):
            self.dul.send_pdu(item)

    send_msg._pacs_fast = True  # type: ignore[attr-defined]
    DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]

"""C-FIND pending responses (PS3.7 9.3.2.2) and C-STORE responses (PS3.7 9.3.1.2) sent without
pydicom building their command set; C-FIND answers several at a time.

pynetdicom turns every response it sends into a pydicom Dataset of command elements and writes
it with pydicom's writer: about a third of a millisecond each, most of what a worklist answer of
thirty steps costs the server. A pending C-FIND-RSP always has the same five command elements,
so :func:`install` lets the DIMSE provider write them directly, in the Implicit VR Little Endian
encoding command sets always use (PS3.7 6.3.1), and send command and identifier as the two PDV
items of one P-DATA-TF PDU where they fit (PS3.8 9.3.5, E.2). The final C-FIND-RSP (Success or
Cancel: five elements, no identifier) and a C-STORE-RSP without an Error Comment, the answer to
every object an archive receives (six elements, no data set), are written the same way. Anything
else — failure responses, a response carrying an Error Comment, a DIMSE-sent handler that wants
the message as a Dataset — goes the library's way.

:class:`PendingSender` goes further for answers already encoded (:class:`~pacs.archive.encoding.Encoded`):
a handler hands it the matches and it writes each one's P-DATA-TF PDUs itself (PS3.8 9.3.5), a
few answers to a write, so that pynetdicom's per-response loop and its DUL's per-PDU turn are paid
once per batch instead of once per match. The PDUs are the ones pynetdicom would send, one
message after another; the final response follows through the DIMSE provider.

The C-STORE request an archive gets for every object, and each C-FIND request, are read the same
way in reverse (:func:`decode_command`): their seven or six command elements (PS3.7 9.3.1.1,
9.3.2.1) are read straight from the bytes into a :class:`RequestCommand`, and the request
primitive is made from it, instead of a pydicom Dataset whose values are converted one by one
and copied to the primitive by name (about a quarter of a millisecond of the receiving thread's
time per object). A request with anything else (a Move Originator, an element of another kind,
a UID or priority pynetdicom would refuse) is decoded by pynetdicom, which also answers what is
wrong with it.
"""

from __future__ import annotations

import functools
import queue
import struct
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any, TypeVar

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config, dimse_messages, evt, fsm
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_FIND, C_STORE, DIMSEPrimitive
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import (
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from pacs.archive.encoding import Encoded

T = TypeVar("T")
C_FIND_RSP = 0x8020  # Command Field (PS3.7 E.1)
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
DATA_SET_PRESENT = 0x0001  # Command Data Set Type: anything but 0x0101 (as pynetdicom sends it)
NO_DATA_SET = 0x0101
PENDING = (0xFF00, 0xFF01)
FINAL = (0x0000, 0xFE00)  # Success; Cancel (PS3.4 C.4.1.1.4)
PDV_HEADER = 6  # item length (4), presentation context ID (1), message control header (1)
P_DATA_TF_TYPE = 0x04  # PS3.8 Table 9-22
BATCH = 8  # answers per write of the direct path
HELD = "_pacs_held_answers"  # an association's attribute: PDUs of answers waiting for the final response
DATA_TRANSFER_ACTION = "DT-1"  # PS3.8 Table 9-7: send a P-DATA-TF PDU (Sta6 + Evt9)
DATA_TRANSFER_STATE = "Sta6"  # PS3.8 9.2.1: association established, ready for data transfer
RESPONSE_POLL = 0.05  # seconds between two looks at the association while a response is awaited
# Message control header (PS3.8 E.2): bit 0 command, bit 1 last fragment
COMMAND_LAST, COMMAND_MORE, DATA_LAST, DATA_MORE = b"\x03", b"\x01", b"\x02", b"\x00"


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid(value: str) -> bytes:
    uid = value.encode("latin-1", "replace")  # never raises on a peer's bad UID
    return uid + b"\x00" if len(uid) % 2 else uid  # UI values are padded with a NUL to an even length (PS3.5 6.2)


def _response_command(sop_class_uid: str, command_field: int, message_id: int, data_set_type: int, status: int,
                      *more: bytes) -> bytes:
    """A response's command set, Implicit VR Little Endian: the Command Group Length, then the
    elements every response has, then ``more``, in tag order."""
    body = b"".join((
        _element(0x0002, _uid(sop_class_uid)),  # Affected SOP Class UID
        _element(0x0100, struct.pack("<H", command_field)),  # Command Field
        _element(0x0120, struct.pack("<H", message_id)),  # Message ID Being Responded To
        _element(0x0800, struct.pack("<H", data_set_type)),  # Command Data Set Type
        _element(0x0900, struct.pack("<H", status)),  # Status
        *more,
    ))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def find_response_command(sop_class_uid: str, message_id: int, status: int) -> bytes:
    """The command set of a C-FIND-RSP with an identifier (PS3.7 9.3.2.2)."""
    return _response_command(sop_class_uid, C_FIND_RSP, message_id, DATA_SET_PRESENT, status)


def find_final_command(sop_class_uid: str, message_id: int, status: int) -> bytes:
    """The command set of the final C-FIND-RSP, without an identifier (PS3.7 9.3.2.2)."""
    return _response_command(sop_class_uid, C_FIND_RSP, message_id, NO_DATA_SET, status)


def store_response_command(sop_class_uid: str, sop_instance_uid: str, message_id: int, status: int) -> bytes:
    """The command set of a C-STORE-RSP (PS3.7 9.3.1.2)."""
    return _response_command(sop_class_uid, C_STORE_RSP, message_id, NO_DATA_SET, status,
                             _element(0x1000, _uid(sop_instance_uid)))  # Affected SOP Instance UID


def _fragments(payload: bytes, max_pdu: int) -> Iterator[bytes]:
    size = len(payload) if max_pdu == 0 else max_pdu - PDV_HEADER
    for start in range(0, max(len(payload), 1), max(size, 1)):
        yield payload[start:start + size]


def pdata(context_id: int, command: bytes, data_set: bytes | None, max_pdu: int) -> Iterator[P_DATA]:
    """The P-DATA primitives of one message (``data_set`` None: a command alone). When the command
    and the identifier fit in one P-DATA-TF PDU of the peer's maximum length they go as its two
    PDV items (PS3.8 9.3.5 allows any number): one PDU for the DUL to send instead of two.
    Otherwise one fragment each, as pynetdicom fragments them."""
    if data_set is None:
        for number, piece in enumerate(pieces := list(_fragments(command, max_pdu)), 1):
            primitive = P_DATA()
            primitive.presentation_data_value_list.append(
                (context_id, (COMMAND_LAST if number == len(pieces) else COMMAND_MORE) + piece))
            yield primitive
        return
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


def encode_pdu(primitive: P_DATA) -> bytes:
    """A P-DATA-TF PDU (PS3.8 9.3.5): type, reserved, length, then each PDV item as item length,
    presentation context ID and the value (message control header and fragment)."""
    items = b"".join(struct.pack(">IB", len(value) + 1, context_id) + value
                     for context_id, value in primitive.presentation_data_value_list)
    return struct.pack(">BBI", P_DATA_TF_TYPE, 0, len(items)) + items


class EncodedPData(P_DATA):
    """The P-DATA-TF PDUs of several messages, encoded: the DUL writes them as they are."""

    def __init__(self, encoded: bytes) -> None:
        super().__init__()
        self.encoded = encoded


class PendingSender:
    """Pending C-FIND responses of one request written as PDUs, :data:`BATCH` answers to a write.

    :meth:`for_event` gives one when the request allows it (a little-endian, uncompressed
    transfer syntax; no handler watching sent messages or PDUs), else None and the handler yields
    its answers to pynetdicom as usual."""

    def __init__(self, assoc: Any, context_id: int, implicit: bool, sop_class_uid: str, message_id: int) -> None:
        self.assoc = assoc
        self.dul = assoc.dul
        self.context_id = context_id
        self.implicit = implicit
        self.max_pdu = assoc.dimse.maximum_pdu_size
        self.command = find_response_command(sop_class_uid, message_id, PENDING[0])
        self.waiting: list[bytes] = []
        self.queued = 0  # answers in ``waiting``
        self.sent = 0  # answers handed to the DUL

    @classmethod
    def for_event(cls, event: Any) -> PendingSender | None:
        syntax = str(event.context.transfer_syntax)
        assoc = event.assoc
        if syntax not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian) or any(
                assoc.get_handlers(e) for e in (evt.EVT_DIMSE_SENT, evt.EVT_PDU_SENT)):
            return None
        return cls(assoc, event.context.context_id, syntax == ImplicitVRLittleEndian,
                   str(event.request.AffectedSOPClassUID), int(event.request.MessageID))

    def add(self, answer: Encoded) -> bool:
        """Queue one answer; True when a batch is ready for :meth:`flush`."""
        encoded = answer.encoded(self.implicit)
        self.waiting.extend(encode_pdu(primitive)
                            for primitive in pdata(self.context_id, self.command, encoded, self.max_pdu))
        self.queued += 1
        return len(self.waiting) >= BATCH

    def flush(self) -> None:
        """Hand the queued answers' PDUs to the DUL as one write."""
        if self.waiting:
            self.dul.send_pdu(EncodedPData(b"".join(self.waiting)))
            self.waiting = []
            self.sent += self.queued
            self.queued = 0

    def finish(self) -> None:
        """The last answers: kept for the final response, which the DIMSE provider sends next, to
        go out with it in one write (one turn of the DUL and one send instead of two; most
        queries have fewer answers than a batch)."""
        if self.waiting:
            self.assoc.__dict__[HELD] = b"".join(self.waiting)
            self.waiting = []
            self.sent += self.queued
            self.queued = 0


def send_data(dul: Any) -> str:
    """DT-1 (PS3.8 9.2): send the P-DATA-TF PDU(s) of the next P-DATA request; stays in Sta6."""
    primitive = dul.to_provider_queue.get(False)
    if isinstance(primitive, EncodedPData):
        if dul.socket is not None:
            dul.socket.send(primitive.encoded)
    else:
        dul._send(P_DATA_TF(primitive))
    return DATA_TRANSFER_STATE


def _fast(provider: DIMSEServiceProvider, primitive: Any) -> bytes | None:
    """The command set of a response that can go without pydicom, or None."""
    if (primitive.MessageIDBeingRespondedTo is None or primitive.AffectedSOPClassUID is None
            or primitive.Status is None or provider.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
        return None
    if (isinstance(primitive, C_FIND) and primitive.Status in PENDING and isinstance(primitive.Identifier, BytesIO)
            and primitive.ErrorComment is None and primitive.OffendingElement is None):
        return find_response_command(str(primitive.AffectedSOPClassUID), int(primitive.MessageIDBeingRespondedTo),
                                     int(primitive.Status))
    if (isinstance(primitive, C_FIND) and primitive.Status in FINAL and primitive.Identifier is None
            and primitive.ErrorComment is None and primitive.OffendingElement is None):
        return find_final_command(str(primitive.AffectedSOPClassUID), int(primitive.MessageIDBeingRespondedTo),
                                  int(primitive.Status))
    if (isinstance(primitive, C_STORE) and primitive.AffectedSOPInstanceUID is not None
            and primitive.ErrorComment is None and primitive.OffendingElement is None):
        return store_response_command(str(primitive.AffectedSOPClassUID), str(primitive.AffectedSOPInstanceUID),
                                      int(primitive.MessageIDBeingRespondedTo), int(primitive.Status))
    return None


def after_response(assoc: Any, message_id: int, callback: Callable[[], None]) -> None:
    """Call ``callback`` once the response to request ``message_id`` of ``assoc`` has been
    queued for the DUL, so that a message an SCP sends afterwards on the same association (the
    N-EVENT-REPORT of a storage commitment, PS3.4 J.3.3) follows the response on the wire."""
    assoc.__dict__.setdefault("_pacs_after_response", {})[message_id] = callback


def awaiting_response(assoc: Any, send: Callable[[], T]) -> T:
    """Run ``send``, one of pynetdicom's ``send_*`` calls by which an SCP sends a request on an
    association its peer opened (the N-EVENT-REPORT of a storage commitment), keeping the
    requests the peer sends meanwhile for the association to serve afterwards.

    Each side may have an operation outstanding at once (PS3.7 D.3.3.3, one invoked by each
    side by default): a modality may send its next request before our N-EVENT-REPORT has been
    answered. pynetdicom takes whatever message comes next as the response and, finding a
    request, aborts the association; here a request is set aside and put back at the head of
    the queue, in order, once the response is in.

    The wait ends (no response, as pynetdicom's own wait ends on an abort) as soon as the peer
    asks to release the association: a modality that releases right after its own request
    answers nothing more on it, and waiting out the DIMSE timeout would only delay the report
    the caller then sends another way."""
    provider = assoc.dimse
    set_aside: list[Any] = []
    original = provider.get_msg

    def next_message(block: bool) -> Any:
        if not block:
            return original(False)
        deadline = time.monotonic() + (provider.dimse_timeout or float("inf"))
        while True:
            try:
                return provider.msg_queue.get(block=True, timeout=RESPONSE_POLL)
            except queue.Empty:
                if assoc.dul.state_machine.current_state != DATA_TRANSFER_STATE or time.monotonic() > deadline:
                    return None, None

    def get_msg(block: bool = False) -> Any:
        while True:
            context_id, message = next_message(block)
            if message is None or getattr(message, "MessageIDBeingRespondedTo", None) is not None:
                return context_id, message
            set_aside.append((context_id, message))

    provider.get_msg = get_msg  # only this call takes messages: pynetdicom pauses the reactor meanwhile
    try:
        return send()
    finally:
        del provider.get_msg
        if set_aside:
            waiting = provider.msg_queue
            with waiting.mutex:
                waiting.queue.extendleft(reversed(set_aside))
                waiting.not_empty.notify()
            wake = getattr(assoc, "_pacs_wake", None)
            if wake is not None:
                wake.set()


def _responded(provider: DIMSEServiceProvider, primitive: Any) -> None:
    waiting = provider.assoc.__dict__.get("_pacs_after_response")
    responded = getattr(primitive, "MessageIDBeingRespondedTo", None)
    if waiting and responded is not None:
        callback = waiting.pop(int(responded), None)
        if callback is not None:
            callback()


def install() -> None:
    """Send pending C-FIND responses through :func:`find_response_command` and plain C-STORE
    responses through :func:`store_response_command`, run :func:`after_response` callbacks, and let the DUL
    write the PDUs of a :class:`PendingSender` as they are; read C-STORE requests with
    :func:`decode_command` (idempotent)."""
    install_store_requests()
    install_uid_setter()
    original = DIMSEServiceProvider.send_msg
    if getattr(original, "_pacs_fast", False):
        return

    def send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
        command = _fast(self, primitive)
        held = self.assoc.__dict__.pop(HELD, None)  # answers a PendingSender left for this response
        if held is not None and (command is None or not isinstance(primitive, C_FIND)
                                 or primitive.Identifier is not None):
            self.dul.send_pdu(EncodedPData(held))
            held = None
        if command is None:
            original(self, primitive, context_id)
        elif held is not None:  # the final C-FIND response, after the last answers, in one write
            self.dul.send_pdu(EncodedPData(held + b"".join(
                encode_pdu(item) for item in pdata(context_id, command, None, self.maximum_pdu_size))))
        elif isinstance(primitive, C_STORE) or primitive.Identifier is None:  # no data set
            for item in pdata(context_id, command, None, self.maximum_pdu_size):
                self.dul.send_pdu(item)
        else:
            for item in pdata(context_id, command, primitive.Identifier.getvalue(), self.maximum_pdu_size):
                self.dul.send_pdu(item)
        _responded(self, primitive)

    send_msg._pacs_fast = True  # type: ignore[attr-defined]
    DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]
    description, _, next_state = fsm.ACTIONS[DATA_TRANSFER_ACTION]
    fsm.ACTIONS[DATA_TRANSFER_ACTION] = (description, send_data, next_state)


# -- C-STORE and C-FIND requests received -----------------------------------------------------
# The elements of a C-STORE-RQ without Move Originator (PS3.7 Table 9.3-1) and of a C-FIND-RQ
# (Table 9.3-2): element → keyword, VR; then the elements each request has, exactly.
REQUEST_ELEMENTS = {0x0000: ("CommandGroupLength", "UL"), 0x0002: ("AffectedSOPClassUID", "UI"),
                    0x0100: ("CommandField", "US"), 0x0110: ("MessageID", "US"), 0x0700: ("Priority", "US"),
                    0x0800: ("CommandDataSetType", "US"), 0x1000: ("AffectedSOPInstanceUID", "UI")}
C_FIND_RQ = 0x0020
FIND_CLASSES = frozenset((ModalityWorklistInformationFind, PatientRootQueryRetrieveInformationModelFind,
                          StudyRootQueryRetrieveInformationModelFind))
REQUESTS = {C_STORE_RQ: frozenset(keyword for keyword, _vr in REQUEST_ELEMENTS.values()),
            C_FIND_RQ: frozenset(keyword for keyword, _vr in REQUEST_ELEMENTS.values()) - {"AffectedSOPInstanceUID"}}
PRIORITIES = (0x0000, 0x0001, 0x0002)  # medium, high, low (PS3.7 9.1.1.1.10)
UID_CHARACTERS = frozenset("0123456789.")
_COMMAND_ELEMENT = struct.Struct("<HHI")  # group, element, value length (implicit VR little endian)
_US = struct.Struct("<H")
_UL = struct.Struct("<I")


class RequestCommand:
    """The command set of a C-STORE or C-FIND request as pynetdicom's message decoding reads it
    (by keyword), read from its bytes by :func:`decode_command`."""

    __slots__ = tuple(keyword for keyword, _vr in REQUEST_ELEMENTS.values())

    def __init__(self, values: dict[str, Any]) -> None:
        for keyword, value in values.items():
            setattr(self, keyword, value)


def request_command(data: bytes) -> RequestCommand | None:
    """The command set ``data`` (PS3.7 6.3.1: implicit VR little endian) if it is a C-STORE or
    C-FIND request of exactly the elements :data:`REQUESTS` gives it, its UIDs of digits and dots
    and of a length pynetdicom accepts, its priority a valid one; None otherwise."""
    values: dict[str, Any] = {}
    position = 0
    while position < len(data):
        if position + 8 > len(data):
            return None
        group, element, length = _COMMAND_ELEMENT.unpack_from(data, position)
        position += 8
        known = REQUEST_ELEMENTS.get(element)
        if group != 0 or known is None or position + length > len(data):
            return None
        keyword, vr = known
        value = data[position:position + length]
        position += length
        if vr == "UI":  # anything but digits and dots (PS3.5 9.1) goes pynetdicom's way, as it did
            text = value.rstrip(b"\0 ").decode("latin-1")
            if not _acceptable_uid(text):
                return None
            values[keyword] = UID(text)
        elif len(value) != (2 if vr == "US" else 4):
            return None
        else:
            values[keyword] = (_US if vr == "US" else _UL).unpack(value)[0]
    wanted = REQUESTS.get(values.get("CommandField", -1))
    if (wanted is None or len(values) != len(wanted) or not wanted.issuperset(values)
            or values["Priority"] not in PRIORITIES):
        return None
    return RequestCommand(values)


@functools.lru_cache(maxsize=1024)
def _acceptable_uid(text: str) -> bool:
    """Whether a request's UID is of digits and dots and one pynetdicom's setters accept (its
    validator's regular expression, once per UID: a SOP class UID recurs in every request)."""
    return bool(text) and UID_CHARACTERS.issuperset(text) and _config.VALIDATORS["UI"](text)[0]


@functools.lru_cache(maxsize=1024)
def _settable_uid(text: str) -> bool:
    """Whether pynetdicom's ``set_uid`` takes ``text`` as it is, without an error or a warning."""
    return _acceptable_uid(text) and UID(text).is_valid


_AFFECTED_SOP_CLASS = DIMSEPrimitive.AffectedSOPClassUID


def _set_affected_sop_class_uid(self: Any, value: Any) -> None:
    """DIMSEPrimitive.AffectedSOPClassUID's setter, its checks made once per UID: a response
    takes its request's SOP class, the same few UIDs all day."""
    if isinstance(value, str) and _settable_uid(value):
        self._affected_sop_class_uid = value if isinstance(value, UID) else UID(value)
    else:
        _AFFECTED_SOP_CLASS.fset(self, value)


def install_uid_setter() -> None:
    """Put :func:`_set_affected_sop_class_uid` behind DIMSEPrimitive.AffectedSOPClassUID (idempotent)."""
    DIMSEPrimitive.AffectedSOPClassUID = property(  # type: ignore[method-assign]
        _AFFECTED_SOP_CLASS.fget, _set_affected_sop_class_uid, doc=_AFFECTED_SOP_CLASS.__doc__)


def set_uids(primitive: Any, command: RequestCommand) -> None:
    """The request's UIDs onto its primitive. They passed the check pynetdicom's setters make
    (:func:`_acceptable_uid`), so they go to the attributes behind the setters, which would
    check each again and match it against pydicom's regular expression only to log a warning."""
    primitive._affected_sop_class_uid = command.AffectedSOPClassUID
    if isinstance(primitive, C_STORE):
        primitive._affected_sop_instance_uid = command.AffectedSOPInstanceUID


_pynetdicom_decode = dimse_messages.decode  # type: ignore[attr-defined]
_pynetdicom_message_to_primitive = dimse_messages.DIMSEMessage.message_to_primitive


def decode_command(stream: BytesIO, is_implicit_vr: bool, is_little_endian: bool) -> Any:
    """What pynetdicom's message decoding calls to decode a command set: a C-STORE or C-FIND
    request's as a :class:`RequestCommand`, any other through pydicom."""
    command = request_command(stream.getvalue())
    return command if command is not None else _pynetdicom_decode(stream, is_implicit_vr, is_little_endian)


def message_to_primitive(self: Any) -> Any:
    """DIMSEMessage.message_to_primitive: a request read by :func:`decode_command` becomes its
    primitive directly; any other message as pynetdicom has it."""
    command = self.command_set
    if not isinstance(command, RequestCommand):
        return _pynetdicom_message_to_primitive(self)
    primitive: C_STORE | C_FIND
    if command.CommandField == C_STORE_RQ:
        primitive = C_STORE()
        primitive.DataSet = self.data_set
    else:
        primitive = C_FIND()
        primitive.Identifier = self.data_set
    primitive.MessageID = command.MessageID
    set_uids(primitive, command)
    primitive.Priority = command.Priority
    primitive._context_id = self.context_id
    primitive._dataset_path = self._data_set_path
    primitive._dataset_file = self._data_set_file
    return primitive


def install_store_requests() -> None:
    """Decode received C-STORE and C-FIND requests with :func:`decode_command` (idempotent)."""
    dimse_messages.decode = decode_command  # type: ignore[attr-defined]
    dimse_messages.DIMSEMessage.message_to_primitive = message_to_primitive  # type: ignore[method-assign]

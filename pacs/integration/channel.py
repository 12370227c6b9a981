"""The channel: source → filter → transformer → destination, for every inbound message.

One path for every kind (HL7 v2 over MLLP, FHIR over REST, a reprocessed message):

1. **receive** – the raw bytes become a message-store row (status RECEIVED), committed before
   anything else reads them (:mod:`pacs.integration.intake` does the commit);
2. **parse** – decode per MSH-18, read the ER7, check message type, event and version
   (AR when the message can't be taken);
3. **filter** – a message already applied (same sender and MSH-10) is acknowledged again and not
   applied twice; events this PACS does not act on are FILTERED;
4. **transform** – the mappings turn it into registry input (:class:`~pacs.registry.schemas.Mapped`);
5. **destination** – the registry services apply it, inside a savepoint, so a failure leaves the
   raw and mapped content stored with the reason and nothing half-applied.
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlmodel import Session

from pacs.db import nested, utcnow
from pacs.integration import hl7v2, mllp
from pacs.integration.ack import (
    AckCode,
    ErrorCode,
    Header,
    MessageError,
    build_ack,
    header_from_raw,
)
from pacs.integration.hl7v2 import Address
from pacs.integration.mapping import (
    SUPPORTED_MESSAGE_CODES,
    Filtered,
    MappingHolder,
    Mappings,
    Scope,
    _cx,
    choose_patient_id,
    map_hl7,
)
from pacs.integration.message_store import (
    AppliedIndex,
    Clean,
    MessageRow,
    Stage,
    Status,
    find_processed,
    save_results,
    storable,
)
from pacs.registry import lifecycle, service
from pacs.registry.models import VisitStatus
from pacs.registry.schemas import Action, Mapped, OrderAction
from pacs.settings import Settings

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
PROCESSING_IDS = {"P", "T", "D"}  # HL7 table 0103


@dataclass
class Transformed:
    """What parsing and mapping made of an HL7 v2 message before it reached the intake worker
    (:meth:`Channel.transform`, run by the MLLP front process): the channel uses it instead of
    parsing and mapping again, as long as the mappings it was made with are still in force."""

    mappings: str  # MappingHolder.version
    description: dict[str, str]  # the message-store row's header columns (Channel.receive)
    charset: str
    header: Header
    mapped: Mapped
    mapped_json: dict[str, Any]  # storable (message_store.Clean when it came from another process)
    accept: str  # the ACK if all goes well (AA)
    sources: dict[str, Address | None] | None  # None: found again if an error needs them

    def __getstate__(self) -> tuple[Any, ...]:
        # Between processes it travels as its JSON form, which rebuilds the same Mapped for a
        # fraction of what unpickling the models costs; the field each value came from is only
        # needed for an error's ERR segment, and then found again.
        return self.mappings, self.description, self.charset, self.header, self.mapped_json, self.accept

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.mappings, self.description, self.charset, self.header, mapped_json, self.accept = state
        self.mapped_json = Clean(mapped_json)  # made storable before it was sent
        self.mapped = Mapped.model_validate(mapped_json)
        self.sources = None


@dataclass
class Inbound:
    """Bytes as they arrived, and from where."""

    raw: bytes
    source: str = "mllp"
    peer: str = ""
    reprocess_of: int | None = None
    endpoint: str = "mllp"
    received: float = field(default_factory=time.perf_counter)
    transformed: Transformed | None = None


@dataclass
class Outcome:
    """What became of a message: its stored status and the response to send back."""

    message_id: int | None
    status: Status
    ack_code: str
    response: bytes = b""
    error: Any = None
    applied: dict[str, Any] | None = None
    mapped: Mapped | None = None


def apply_mapped(session: Session, mapped: Mapped, ctx: service.Context) -> dict[str, Any]:
    """The destination: carry out a mapped message in the registry. Returns what it changed."""
    result: dict[str, Any] = {"action": mapped.action.value}
    created = False
    if mapped.action == Action.PATIENT_MERGE:
        patient = service.merge_patients(session, mapped.patient, mapped.prior_identifiers, ctx)
        result["merged"] = [i.value for i in mapped.prior_identifiers]
    elif mapped.action == Action.IDENTIFIER_CHANGE:
        patient = service.change_identifier(session, mapped.patient, mapped.prior_identifiers, ctx)
    else:
        patient, created = service.upsert_patient(session, mapped.patient, ctx)
        result["patient_created"] = created
    result["patient"] = patient.id
    result["patient_id"] = patient.patient_id
    visit = None
    if mapped.action in (Action.VISIT_DISCHARGE, Action.VISIT_CANCEL_ADMIT, Action.VISIT_CANCEL_DISCHARGE):
        status = {
            Action.VISIT_DISCHARGE: VisitStatus.DISCHARGED,
            Action.VISIT_CANCEL_ADMIT: VisitStatus.CANCELLED,
            Action.VISIT_CANCEL_DISCHARGE: VisitStatus.ACTIVE,
        }[mapped.action]
        visit = service.end_visit(session, patient, mapped.visit, status)
    elif mapped.visit is not None and any(v is not None for v in mapped.visit.model_dump().values()):
        visit = service.upsert_visit(session, patient, mapped.visit, new_patient=created)
    if visit is not None:
        result["visit"] = visit.id
    orders = []
    for order_in in mapped.orders:
        order, created = service.apply_order(session, patient, visit, order_in, ctx)
        orders.append({
            "id": order.id,
            "created": created,
            "control": order_in.control,
            "placer_number": order.placer_number,
            "accession_number": order.accession_number,
            "study_instance_uid": order.study_instance_uid,
            "status": order.status,
        })
    if orders:
        result["orders"] = orders
    return result


REGISTRY_ERRORS = {
    service.Problem.UNKNOWN: ErrorCode.UNKNOWN_KEY_IDENTIFIER,
    service.Problem.DUPLICATE: ErrorCode.DUPLICATE_KEY_IDENTIFIER,
    service.Problem.CONFLICT: ErrorCode.APPLICATION_INTERNAL_ERROR,
}


class Channel:
    """Runs one message through the pipeline inside the caller's session."""

    def __init__(self, settings: Settings, mappings: MappingHolder,
                 notify: lifecycle.Notify | None = None) -> None:
        self.settings = settings
        self.mappings = mappings
        self.notify = notify
        self.audit: Any = None  # called with (session, rows) before their results are saved (the audit log)

    # -- 1. receive ----------------------------------------------------------------------------
    def receive(self, inbound: Inbound) -> MessageRow:
        """The message-store row for ``inbound``: raw bytes and what the header says."""
        row = MessageRow(raw=inbound.raw, source=inbound.source, peer=inbound.peer,
                         endpoint=inbound.endpoint, reprocess_of=inbound.reprocess_of)
        if inbound.transformed is not None:  # read by the front process already
            for name, value in inbound.transformed.description.items():
                setattr(row, name, value)
            return row
        # What this first reading does not foresee leaves the row's description empty: the
        # message is stored all the same and refused once parsed, and its batch goes on.
        if is_fhir(row):
            from pacs.integration import fhir_intake

            try:
                fhir_intake.describe(row)
            except Exception:
                log.exception("FHIR message from %s not described before parsing", inbound.peer)
            return _described(row)
        try:
            header = header_from_raw(inbound.raw)
        except Exception:
            log.exception("header of a message from %s not readable before parsing", inbound.peer)
            header = Header()
        row.sending_application = header.sending_application[:200]
        row.sending_facility = header.sending_facility[:200]
        row.receiving_application = header.receiving_application[:200]
        row.receiving_facility = header.receiving_facility[:200]
        row.control_id = header.control_id[:200]
        row.version = header.version[:20]
        row.charset = header.charset[:40]
        code = _msh9(inbound.raw, header)
        row.message_type = code[:40]
        return _described(row)

    # -- 2 to 5 --------------------------------------------------------------------------------
    def process(self, session: Session, row: MessageRow, inbound: Inbound,
                applied: AppliedIndex | None = None, finished: list[MessageRow] | None = None) -> Outcome:
        """Parse, filter, map and apply ``row`` (already stored). Never raises for bad input.

        ``applied`` answers the duplicate check for a batch (else it is one SELECT). With
        ``finished``, the row's result and audit entry are left there for the caller to
        :meth:`save` with the rest of its batch, in the same transaction; else they are saved now."""
        _forget_instances(session)
        if is_fhir(row):
            from pacs.integration import fhir_intake

            return fhir_intake.process(self, session, row)
        mappings = self.mappings.current()
        ready = inbound.transformed
        if ready is not None and (ready.mappings != self.mappings.version or inbound.source == "reprocess"):
            ready = None  # made with other mappings: parse and map again
        header = ready.header if ready is not None else header_from_raw(row.raw)
        try:
            if ready is not None:
                message = None
                row.charset, row.stage = ready.charset[:40], Stage.PARSED
            else:
                message = self._parse(row, mappings)
                header = Header.of(message)
            if inbound.source == "reprocess":
                duplicate = None
            elif applied is not None:
                duplicate = applied.find(row)
            else:
                duplicate = find_processed(
                    session, sending_application=row.sending_application, sending_facility=row.sending_facility,
                    control_id=row.control_id, before=row.id or 0,
                )
            if duplicate is not None:
                row.status, row.error = Status.FILTERED, f"duplicate of message {duplicate.id}; not applied again"
                row.ack_code, row.response = duplicate.ack_code, duplicate.response
                return self._finish(session, row, header, None, finished, duplicate.response)
            if ready is not None:
                mapped, sources, row.mapped = ready.mapped, ready.sources, ready.mapped_json
            else:
                assert message is not None
                mapped, sources = map_hl7(message, mappings)
                row.mapped = mapped.model_dump(mode="json", exclude_none=True)
            row.stage, row.status = Stage.MAPPED, Status.TRANSFORMED
            row.patient_id = (mapped.patient.patient_id.value if mapped.patient.patient_id else "")[:64]
            if mapped.orders:
                row.accession_number = (mapped.orders[0].accession_number or "")[:64]
            ctx = self.context(row, mappings)
            try:
                with applying(session, [mapped]):  # applied whole or not at all; the row says why
                    row.applied = apply_mapped(session, mapped, ctx)
            except service.RegistryError as exc:
                if sources is None:  # made elsewhere without them: map again to say which field
                    stage = row.stage
                    sources = map_hl7(self._parse(row, mappings), mappings)[1]
                    row.stage = stage
                raise MessageError.content(REGISTRY_ERRORS[exc.problem], sources.get(exc.target), exc.text) from None
            row.stage, row.status = Stage.APPLIED, Status.PROCESSED
            return self._finish(session, row, header, None, finished, mapped=mapped,
                                accept=ready.accept if ready is not None else None)
        except Filtered as exc:
            row.status, row.error = Status.FILTERED, str(exc)
            return self._finish(session, row, header, None, finished)
        except MessageError as exc:
            row.status, row.error = Status.ERROR, str(exc)
            return self._finish(session, row, header, exc, finished)
        except Exception as exc:  # a fault of ours: keep the message for reprocessing, say so
            return self.fault(session, row, exc, finished, header)

    def fault(self, session: Session, row: MessageRow, exc: Exception, finished: list[MessageRow] | None = None,
              header: Header | None = None) -> Outcome:
        """The outcome of a message whose processing failed for a reason of ours (a bug): AE
        with an internal-error ERR, the message kept as ERROR for reprocessing. The batch it
        came in goes on."""
        log.exception("message %s failed", row.id)
        error = MessageError.content(ErrorCode.APPLICATION_INTERNAL_ERROR, None,
                                     f"internal error, message kept for reprocessing: {exc}")
        row.status, row.error = Status.ERROR, str(error)
        return self._finish(session, row, header or header_from_raw(row.raw), error, finished)

    def transform(self, inbound: Inbound) -> Transformed | None:
        """Parse and map an HL7 v2 message without the database, ahead of :meth:`process`;
        None when it is not one that parses and maps cleanly (:meth:`process` then does it all
        itself and answers as it always does)."""
        version = self.mappings.version
        mappings = self.mappings.current()
        if self.mappings.version != version:
            return None  # reloaded in between: which set made it would be unclear
        row = self.receive(inbound)
        if is_fhir(row):
            return None
        try:
            message = self._parse(row, mappings)
            mapped, sources = map_hl7(message, mappings)
        except Exception:  # Filtered, MessageError, a fault: process() says what it is
            return None
        header = Header.of(message)
        return Transformed(mappings=version, description={name: getattr(row, name) for name in DESCRIPTION},
                           charset=row.charset, header=header, mapped=mapped,
                           mapped_json=storable(mapped.model_dump(mode="json", exclude_none=True)),
                           accept=self._ack(header, None), sources=sources)

    def context(self, row: MessageRow, mappings: Mappings) -> service.Context:
        who = f"{row.sending_application}/{row.sending_facility}".strip("/") or row.peer or row.source
        return service.Context(
            by=f"{row.source}:{who}#{row.control_id or row.id}",
            names=mappings.names,
            uid_root=self.settings.uid_root,
            accession_prefix=self.settings.accession_prefix,
            source_message=row.id,
            notify=self.notify,
            devices=mappings.devices,
        )

    def _parse(self, row: MessageRow, mappings: Mappings) -> hl7v2.Message:
        sender = mappings.sender(row.sending_application, row.sending_facility)
        default_charset = sender.charset or self.settings.mllp.default_charset
        try:
            text, charset = mllp.decode(row.raw, default_charset)
        except mllp.CharsetError as exc:
            raise MessageError.reject(ErrorCode.DATA_TYPE_ERROR, str(exc), Address("MSH", 18)) from None
        row.charset = charset[:40]
        try:
            message = hl7v2.parse(text)
        except hl7v2.HL7ParseError as exc:
            raise MessageError.reject(ErrorCode.SEGMENT_SEQUENCE_ERROR, str(exc)) from None
        row.stage = Stage.PARSED
        if not message.message_code:
            raise MessageError.reject(ErrorCode.REQUIRED_FIELD_MISSING, "MSH-9 (message type) is empty",
                                      Address("MSH", 9))
        if not message.control_id:
            raise MessageError.reject(ErrorCode.REQUIRED_FIELD_MISSING, "MSH-10 (message control ID) is empty",
                                      Address("MSH", 10))
        if message.message_code not in SUPPORTED_MESSAGE_CODES:
            raise MessageError.reject(ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
                                      f"message type {message.message_code} is not supported "
                                      f"(this PACS takes {', '.join(sorted(SUPPORTED_MESSAGE_CODES))})",
                                      Address("MSH", 9, component=1))
        if message.message_code in ("ORM", "OMI") and message.trigger_event not in ("O01", "O23"):
            raise MessageError.reject(ErrorCode.UNSUPPORTED_EVENT_CODE,
                                      f"event {message.message_type} is not supported", Address("MSH", 9, component=2))
        if message.version not in SUPPORTED_VERSIONS:
            raise MessageError.reject(ErrorCode.UNSUPPORTED_VERSION_ID,
                                      f"version {message.version or '(empty)'} is not supported "
                                      f"({', '.join(SUPPORTED_VERSIONS)})", Address("MSH", 12))
        if message.processing_id and message.processing_id.upper() not in PROCESSING_IDS:
            raise MessageError.reject(ErrorCode.UNSUPPORTED_PROCESSING_ID,
                                      f"processing ID {message.processing_id} is not P, T or D", Address("MSH", 11))
        if self.settings.hl7.strict:
            _validate_strictly(text, message)
        return message

    def _ack(self, header: Header, error: MessageError | None) -> str:
        return build_ack(header, AckCode.ACCEPT if error is None else error.ack,
                         application=self.settings.hl7.application, facility=self.settings.hl7.facility,
                         error=error)

    def _search_keys(self, row: MessageRow) -> None:
        """Fill a refused message's empty patient ID and accession number columns with what its
        raw text still yields, so that the message browser finds it by an index look-up.

        A message refused before or while it was mapped (AR for its header, AE for a code not in
        a table) never reached the step that sets them. The text is decoded per MSH-18 (else the
        sender's default), undecodable bytes replaced; the field map in force for its sender says
        where the keys are (``patient.identifiers``, the sender's Patient ID choice;
        ``order.accession_number`` in the first order group, HL7 v2.5.1 §4.4.1), read as they
        stand: no code table, no condition, nothing that could refuse it again."""
        try:
            mappings = self.mappings.current()
            sender = mappings.sender(row.sending_application, row.sending_facility)
            profile = mappings.profiles.get(sender.profile)
            if profile is None or profile.kind != "hl7v2" or is_fhir(row):
                return
            charset = mllp.declared_charset(row.raw) or sender.charset or self.settings.mllp.default_charset
            text = row.raw.decode(mllp.python_codec(charset) or "utf-8", errors="replace")
            message = hl7v2.parse(text.lstrip("\ufeff").replace("\x00", "\ufffd"))
            if not row.patient_id:
                identifiers = []
                for rule in profile.rules.get("patient.identifiers", []):
                    for address in rule.addresses:
                        segment = Scope(message).segment(address)
                        if segment is None:
                            continue
                        count = len(segment.repetitions(address.field))
                        for repetition in [address.repetition] if address.repetition else range(1, count + 1):
                            if (cx := _cx(segment, address.field, repetition)) is not None:
                                identifiers.append(cx)
                chosen = choose_patient_id(identifiers, sender) or (identifiers[0] if identifiers else None)
                row.patient_id = storable(chosen.value[:64]) if chosen else ""
            if not row.accession_number:
                head, groups = message.groups(profile.order_group)
                scope = Scope(groups[0], head) if groups else Scope(message)
                for rule in profile.rules.get("order.accession_number", []):
                    values = [segment.value(address.field, address.repetition or 1, address.component,
                                            address.subcomponent).strip()
                              for address in rule.addresses if (segment := scope.segment(address)) is not None]
                    found = next((v for v in values if v and v != '""'), "")
                    if found:
                        row.accession_number = storable(found[:64])
                        break
        except Exception:  # a best effort: the message is refused and stored whatever this finds
            log.debug("search keys of refused message %s not read", row.id, exc_info=True)

    def save(self, session: Session, rows: list[MessageRow]) -> None:
        """Write the results of finished messages and their audit entries (a few statements for
        a whole batch, not a few per message); they commit with the messages' effects."""
        if rows:
            if self.audit is not None:
                self.audit(session, rows)
            save_results(session, rows)

    def _finish(self, session: Session, row: MessageRow, header: Header, error: MessageError | None,
                finished: list[MessageRow] | None, response: str | None = None,
                mapped: Mapped | None = None, accept: str | None = None) -> Outcome:
        if response is None:
            ack = AckCode.ACCEPT if error is None else error.ack
            response = accept if error is None and accept is not None else self._ack(header, error)
            row.ack_code = ack.value
            row.response = response
        row.processed_at = utcnow()
        if row.status == Status.ERROR and not (row.patient_id and row.accession_number):
            self._search_keys(row)
        if finished is not None:
            finished.append(row)
        else:
            self.save(session, [row])
        charset = row.charset if mllp.python_codec(row.charset or "") else "ASCII"
        return Outcome(
            message_id=row.id,
            status=Status(row.status),
            ack_code=row.ack_code,
            response=mllp.encode(response, charset),
            error=error,
            applied=row.applied,
            mapped=mapped,
        )


def cluster_lock_keys(rows: list[MessageRow], inbounds: list[Inbound]) -> list[int]:
    """The advisory lock keys a batch of HL7 v2 messages is applied under on PostgreSQL, in the
    order to take them: each message's sender and MSH-10, and its patient (PID-3's first ID).

    Held to the end of the batch's transaction (``pg_advisory_xact_lock``, PostgreSQL 15
    §9.27.10), they make the duplicate check hold across nodes (a node applying a message holds
    its key until it has committed, and the other node's check then sees it applied) and apply
    one patient's messages one after another whichever node received them. Taken in one
    order, two batches never wait for each other in a cycle."""
    keys = set()
    for row, inbound in zip(rows, inbounds, strict=True):
        if not row.control_id or is_fhir(row):
            continue
        keys.add(_lock_key(f"hl7:{row.sending_application}|{row.sending_facility}|{row.control_id}"))
        patient = _patient_of(row, inbound)
        if patient:
            keys.add(_lock_key(f"patient:{patient}"))
    return sorted(keys)


# Every key of a batch in one round trip, in the order given: a volatile function of the target
# list is evaluated after ORDER BY (PostgreSQL 15 §7.5, since 9.6), and the ordinal is the array's.
TAKE_LOCKS = text("SELECT pg_advisory_xact_lock(taken.key) FROM unnest(CAST(:keys AS BIGINT[])) "
                  "WITH ORDINALITY AS taken(key, position) ORDER BY taken.position")


def take_cluster_locks(session: Session, rows: list[MessageRow], inbounds: list[Inbound]) -> None:
    """Take :func:`cluster_lock_keys` for the session's transaction (SQLite has one process), in
    one statement: a batch took one round trip to PostgreSQL per key, 1.5 a message."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return
    keys = cluster_lock_keys(rows, inbounds)
    if keys:
        connection.execute(TAKE_LOCKS, {"keys": keys})


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def _patient_of(row: MessageRow, inbound: Inbound) -> str:
    """PID-3's first identifier, from the mapping made ahead or read from the raw segment."""
    ready = inbound.transformed
    if ready is not None and ready.mapped.patient.patient_id is not None:
        return ready.mapped.patient.patient_id.value or ""
    raw = row.raw or b""
    if len(raw) < 8 or not raw.startswith(b"MSH"):
        return ""
    field, component = raw[3:4], raw[4:5]
    for segment in raw.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"PID" + field):
            fields = segment.split(field)
            if len(fields) > 3:
                return fields[3].split(b"~")[0].split(component)[0].decode("latin-1").strip()
    return ""


# What a message does through the ORM (whose flush may fail), rather than prepared statements.
ORM_ACTIONS = (Action.PATIENT_MERGE, Action.IDENTIFIER_CHANGE)
CORE_ORDER_ACTIONS = (OrderAction.NEW, OrderAction.CHANGE)


def applying(session: Session, mapped: list[Mapped]) -> AbstractContextManager[object]:
    """The savepoint a message's effect is applied under, so that it is applied whole or not at
    all: a plain one (:func:`pacs.db.nested`) for what the registry writes with prepared
    statements; SQLAlchemy's nested transaction when the ORM may flush (a merge, an identifier
    change, a status transition), so that a flush that fails leaves the session usable for the
    rest of the batch."""
    orm = any(m.action in ORM_ACTIONS or any(o.action not in CORE_ORDER_ACTIONS for o in m.orders)
              for m in mapped)
    return session.begin_nested() if orm else nested(session, "message")


def _forget_instances(session: Session) -> None:
    """Start each message with an empty identity map. The registry's per-message paths write
    with Core statements, which leave ORM instances loaded for an earlier message (by a merge,
    a status transition, a FHIR subject look-up) stale; the rare ORM paths flush before they
    return, so there is nothing pending to lose."""
    if session.identity_map:
        session.flush()
        session.expunge_all()


DESCRIPTION = ("sending_application", "sending_facility", "receiving_application", "receiving_facility",
               "control_id", "message_type", "version", "charset")


def _described(row: MessageRow) -> MessageRow:
    """``row`` with the header values it was described by made storable (no NUL: they are
    written and searched for before the message is parsed)."""
    for name in DESCRIPTION:
        setattr(row, name, storable(getattr(row, name)))
    return row


def is_fhir(row: MessageRow) -> bool:
    """FHIR resources arrive as JSON over HTTP; everything else is HL7 v2."""
    return row.endpoint.split(" ", 1)[0] in ("POST", "PUT") or row.raw.lstrip()[:1] == b"{"


def _msh9(raw: bytes, header: Header) -> str:
    first = raw.replace(b"\n", b"\r").split(b"\r", 1)[0].decode("latin-1")
    fields = first.split(header.encoding.field) if first.startswith("MSH") else []
    if len(fields) < 9:
        return ""
    parts = fields[8].split(header.encoding.component)
    return "^".join(p.strip().upper() for p in parts[:2] if p.strip())


def _validate_strictly(text: str, message: hl7v2.Message) -> None:
    """Every standard segment checked against its definition in MSH-12's version (hl7apy):
    field count, data types, lengths of dates and numbers. Z-segments are site-defined and
    pass. Whole-message structure is not checked: hl7apy's ORM^O01 definition demands an RQD
    segment in every order, which no radiology order has."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_segment

    separator = message.encoding.field
    for number, line in enumerate(text.replace("\n", "\r").split("\r"), 1):
        name = line[:3]
        if not line.strip() or name in ("MSH", "BHS", "FHS") or name.startswith("Z"):
            continue
        try:
            segment = parse_segment(line, version=message.version, encoding_chars={
                "FIELD": separator, "COMPONENT": message.encoding.component,
                "REPETITION": message.encoding.repetition, "ESCAPE": message.encoding.escape,
                "SUBCOMPONENT": message.encoding.subcomponent, "GROUP": "\r", "SEGMENT": "\r"},
                validation_level=VALIDATION_LEVEL.STRICT)
            segment.validate()
        except Exception as exc:  # hl7apy raises several unrelated exception types
            reason = str(exc) or type(exc).__name__
            if "unknown Element" in reason:
                reason = f"more fields than {name} has in v{message.version}, or an unknown segment"
            raise MessageError.reject(ErrorCode.DATA_TYPE_ERROR, f"strict validation of {name} (segment "
                                      f"{number}): {reason}", Address(name, 1)) from None

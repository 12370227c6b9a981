"""The message store: every inbound message, its content at each stage, and its status.

As in Mirth Connect's model, the raw message is saved (and committed) before it is parsed; the
mapped content (TRANSFORMED), what it changed in the registry (PROCESSED), and the response sent
are kept on the same row, so any message can be shown and reprocessed later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Index,
    LargeBinary,
    Table,
    bindparam,
    insert,
    or_,
    update,
)
from sqlalchemy import select as core_select
from sqlmodel import Field, Session, SQLModel, col, func, select

from pacs.db import Prepared, UTCDateTime, utcnow


class Status(StrEnum):
    RECEIVED = "RECEIVED"  # raw message stored, not yet processed (or interrupted)
    FILTERED = "FILTERED"  # valid, but nothing to do (event not acted on, or a duplicate)
    TRANSFORMED = "TRANSFORMED"  # mapped; applying it failed part-way and was rolled back
    PROCESSED = "PROCESSED"  # applied to the registry
    ERROR = "ERROR"  # rejected or failed; `error` says why


class Stage(StrEnum):
    RECEIVED = "received"
    PARSED = "parsed"
    MAPPED = "mapped"
    APPLIED = "applied"


class StoredMessage(SQLModel, table=True):
    __tablename__ = "message"
    __table_args__ = (
        Index("ix_message_sender_control", "sending_application", "sending_facility", "control_id"),
        Index("ix_message_status_received", "status", "received_at"),  # errors of the last day
    )

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    source: str = "mllp"  # mllp, fhir, reprocess
    peer: str = ""  # remote address or client
    endpoint: str = ""  # "mllp", or the HTTP method and path that received it
    sending_application: str = ""  # MSH-3
    sending_facility: str = ""  # MSH-4
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    control_id: str = Field(default="", index=True)  # MSH-10
    message_type: str = Field(default="", index=True)  # MSH-9.1^MSH-9.2, or the FHIR resource type
    version: str = ""  # MSH-12
    charset: str = ""  # MSH-18 or the default used
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # exactly as received
    status: str = Field(default=Status.RECEIVED)  # indexed with received_at
    stage: str = Stage.RECEIVED
    error: str | None = None
    mapped: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    applied: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    ack_code: str = ""  # AA, AE, AR (or the HTTP status for FHIR)
    response: str = ""  # the ACK or OperationOutcome sent back
    patient_id: str = Field(default="", index=True)
    accession_number: str = Field(default="", index=True)
    reprocess_of: int | None = None
    processed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


MESSAGE: Table = StoredMessage.__table__  # type: ignore[attr-defined]


@dataclass(slots=True, eq=False)
class MessageRow:
    """A message on its way through the channel: the columns of its :class:`StoredMessage` row,
    held in a plain object and written with one INSERT when it arrives (:func:`store_raw`) and
    one UPDATE when it is done (:func:`save_results`)."""

    raw: bytes
    source: str = "mllp"
    peer: str = ""
    endpoint: str = ""
    reprocess_of: int | None = None
    id: int | None = None
    received_at: datetime = field(default_factory=utcnow)
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    message_type: str = ""
    version: str = ""
    charset: str = ""
    status: str = Status.RECEIVED
    stage: str = Stage.RECEIVED
    error: str | None = None
    mapped: dict[str, Any] | None = None
    applied: dict[str, Any] | None = None
    ack_code: str = ""
    response: str = ""
    patient_id: str = ""
    accession_number: str = ""
    processed_at: datetime | None = None


ROW_COLUMNS = tuple(c.name for c in MESSAGE.columns if c.name != "id")
# What processing a message may change; the rest is fixed when it is stored.
RESULT_COLUMNS = ("charset", "status", "stage", "error", "mapped", "applied", "ack_code", "response",
                  "patient_id", "accession_number", "processed_at")
_INSERT = Prepared(insert(MESSAGE).returning(MESSAGE.c.id))
_SAVE_RESULT = Prepared(update(MESSAGE).where(MESSAGE.c.id == bindparam("row_id")))
_BY_ID = core_select(MESSAGE).where(MESSAGE.c.id == bindparam("row_id"))
_PROCESSED = (
    core_select(MESSAGE.c.id, MESSAGE.c.ack_code, MESSAGE.c.response)
    .where(MESSAGE.c.sending_application == bindparam("application"),
           MESSAGE.c.sending_facility == bindparam("facility"),
           MESSAGE.c.control_id == bindparam("control_id"),
           MESSAGE.c.status == Status.PROCESSED.value,
           MESSAGE.c.id < bindparam("before"))
    .order_by(MESSAGE.c.id)
    .limit(1)
)


class Clean(dict[str, Any]):
    """A JSON object already made :func:`storable` (in the MLLP front process): not walked again."""


def storable(value: Any) -> Any:
    """``value`` with every NUL character in its text replaced by U+FFFD: PostgreSQL's text
    cannot hold NUL, and a sender's bytes (kept whole in ``raw``) may carry one."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        if isinstance(value, Clean):
            return value
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


def _columns(row: MessageRow, names: tuple[str, ...]) -> dict[str, Any]:
    """The row's values for ``names``, its text storable (a NUL arrives as a byte, as a JSON
    ``\\u0000`` or as an HL7 ``\\X00\\`` escape)."""
    return {name: value if name == "raw" else storable(value)
            for name, value in ((name, getattr(row, name)) for name in names)}


def store_raw(session: Session, rows: list[MessageRow]) -> None:
    """INSERT the messages as received (status RECEIVED) and set their ids. The caller commits
    before parsing them."""
    inserted = _INSERT.insert_each(session.connection(), [_columns(row, ROW_COLUMNS) for row in rows])
    for row, new in zip(rows, inserted, strict=True):
        row.id = new


def save_results(session: Session, rows: list[MessageRow]) -> None:
    """UPDATE the stored messages with what processing made of them (status, stages, response):
    one statement, executed for every row (a batch's results are written together)."""
    if rows:
        _SAVE_RESULT.execute_many(session.connection(),
                                  [{**_columns(row, RESULT_COLUMNS), "row_id": row.id} for row in rows])


def load_row(session: Session, message_id: int) -> MessageRow:
    """A stored message as a :class:`MessageRow`, to process it again (recovery at start-up)."""
    stored = session.connection().execute(_BY_ID, {"row_id": message_id}).one()
    return MessageRow(**stored._mapping)


class MessageSummary(SQLModel):
    """One line of a message listing (no raw content)."""

    id: int
    received_at: datetime
    source: str
    sending_application: str
    sending_facility: str
    control_id: str
    message_type: str
    status: str
    stage: str
    error: str | None
    ack_code: str
    patient_id: str
    accession_number: str


def decoded(message: StoredMessage) -> str:
    """The raw content as text, for display (undecodable bytes shown as replacement marks)."""
    from pacs.integration.mllp import python_codec

    codec = python_codec(message.charset) or "utf-8"
    return message.raw.decode(codec, errors="replace")


def find_processed(
    session: Session, *, sending_application: str, sending_facility: str, control_id: str, before: int
) -> Any:
    """An earlier message from the same sender with the same MSH-10 that was applied: its
    ``id``, ``ack_code`` and ``response``, or None."""
    if not control_id:
        return None
    return session.connection().execute(_PROCESSED, {
        "application": sending_application, "facility": sending_facility, "control_id": control_id,
        "before": before,
    }).first()


_SENT_BEFORE: dict[int, Prepared] = {}


def _sent_before(count: int) -> Prepared:
    """One sender's messages with any of ``count`` control IDs (``control_0`` …), one statement
    per count. The status is checked on the rows found: a condition on it would let SQLite
    choose the status index and scan every processed message instead of the (sending
    application, sending facility, control ID) index."""
    statement = _SENT_BEFORE.get(count)
    if statement is None:
        statement = _SENT_BEFORE[count] = Prepared(
            core_select(MESSAGE.c.id, MESSAGE.c.control_id, MESSAGE.c.status, MESSAGE.c.ack_code,
                        MESSAGE.c.response)
            .where(MESSAGE.c.sending_application == bindparam("application"),
                   MESSAGE.c.sending_facility == bindparam("facility"),
                   MESSAGE.c.control_id.in_([bindparam(f"control_{i}") for i in range(count)]),
                   MESSAGE.c.id < bindparam("before"))
            .order_by(MESSAGE.c.id))
    return statement


@dataclass(slots=True)
class Applied:
    """An applied message, as the duplicate check needs it."""

    id: int
    ack_code: str
    response: str


ANY_ID = 2**31 - 1  # the largest message id (an INTEGER column)


class AppliedIndex:
    """:func:`find_processed` for a batch of stored messages: one SELECT per sender in the batch,
    then the batch's own messages as they are applied (:meth:`add`), so a message sent twice in
    one batch is applied once."""

    def __init__(self, session: Session, rows: list[MessageRow]) -> None:
        self._by_key: dict[tuple[str, str, str], list[Applied]] = {}
        senders: dict[tuple[str, str], set[str]] = {}
        for row in rows:
            if row.control_id:
                senders.setdefault((row.sending_application, row.sending_facility), set()).add(row.control_id)
        # Any message applied already, whatever its id: with several nodes, one that came later
        # to another node may have been applied first (the batch holds its messages' locks,
        # pacs.integration.channel.take_cluster_locks). The batch's own come from add().
        before = ANY_ID
        for (application, facility), control_ids in senders.items():
            wanted = {f"control_{i}": control_id for i, control_id in enumerate(sorted(control_ids))}
            found = _sent_before(len(wanted)).rows(session.connection(), {
                "application": application, "facility": facility, "before": before, **wanted})
            for hit in found:
                if hit["status"] == Status.PROCESSED:
                    key = (application, facility, hit["control_id"])
                    self._by_key.setdefault(key, []).append(Applied(hit["id"], hit["ack_code"], hit["response"]))

    def find(self, row: MessageRow) -> Applied | None:
        """The first message applied before ``row`` with its sender and MSH-10, or None."""
        if not row.control_id:
            return None
        for earlier in self._by_key.get((row.sending_application, row.sending_facility, row.control_id), ()):
            if earlier.id != row.id:
                return earlier
        return None

    def add(self, row: MessageRow) -> None:
        """``row`` was applied (PROCESSED)."""
        if row.control_id and row.id is not None:
            key = (row.sending_application, row.sending_facility, row.control_id)
            self._by_key.setdefault(key, []).append(Applied(row.id, row.ack_code, row.response))


def search(
    session: Session,
    *,
    message_type: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    patient_id: str | None = None,
    control_id: str | None = None,
    sender: str | None = None,
    accession_number: str | None = None,
    text: str | None = None,
    ids: list[int] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[int, list[StoredMessage]]:
    """Messages matching every filter given, newest first, and how many match in all.

    ``sender`` is a sending application (MSH-3) or facility (MSH-4); control ID, patient ID and
    accession number are index look-ups (a refused message has the patient ID and accession number
    its raw text still yields, :meth:`pacs.integration.channel.Channel._search_keys`); ``text`` is
    looked for in the raw bytes as sent, in UTF-8 and in GB18030 (a scan of every message the
    other filters leave: narrow by time or type first at scale)."""
    query = select(StoredMessage)
    dialect = session.get_bind().dialect.name
    if message_type:
        if "^" in message_type:
            query = query.where(StoredMessage.message_type == message_type.upper())
        else:
            query = query.where(col(StoredMessage.message_type).startswith(message_type.upper()))
    if status:
        query = query.where(StoredMessage.status == status.upper())
    if since:
        query = query.where(StoredMessage.received_at >= since)
    if until:
        query = query.where(StoredMessage.received_at < until)
    if patient_id:
        query = query.where(StoredMessage.patient_id == patient_id)
    if control_id:
        query = query.where(StoredMessage.control_id == control_id)
    if sender:
        query = query.where(or_(StoredMessage.sending_application == sender,
                                StoredMessage.sending_facility == sender))
    if accession_number:
        query = query.where(StoredMessage.accession_number == accession_number)
    if text:
        query = query.where(_raw_holds(dialect, text))
    if ids is not None:
        query = query.where(col(StoredMessage.id).in_(ids))
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(StoredMessage.id).desc()).offset(offset).limit(limit)).all()
    return total, list(rows)


def _raw_holds(dialect: str, text: str) -> Any:
    """The raw bytes hold ``text``, in UTF-8 or in GB18030: ``instr`` on SQLite (whose LIKE does
    not match inside a BLOB), ``LIKE`` on PostgreSQL's bytea (backslash its escape character)."""
    raw = col(StoredMessage.raw)
    found, seen = [], set()
    for codec in ("utf-8", "gb18030"):
        try:
            encoded = text.encode(codec)
        except UnicodeEncodeError:
            continue
        if encoded in seen:
            continue
        seen.add(encoded)
        if dialect == "sqlite":
            condition = func.instr(raw, bindparam(None, encoded, type_=LargeBinary)) > 0
        else:
            pattern = b"%" + encoded.replace(b"\\", b"\\\\").replace(b"%", b"\\%").replace(b"_", b"\\_") + b"%"
            condition = raw.op("LIKE")(bindparam(None, pattern, type_=LargeBinary))
        found.append(condition)
    return or_(*found)


@dataclass(slots=True)
class Traffic:
    """What one sender sent of one message type since a moment, by status."""

    sending_application: str
    sending_facility: str
    message_type: str
    counts: dict[str, int]


def traffic(session: Session, since: datetime) -> list[Traffic]:
    """Messages received since ``since``, counted by sender, type and status (the dashboard)."""
    rows = session.exec(
        select(StoredMessage.sending_application, StoredMessage.sending_facility, StoredMessage.message_type,
               StoredMessage.status, func.count())
        .where(StoredMessage.received_at >= since)
        .group_by(StoredMessage.sending_application, StoredMessage.sending_facility, StoredMessage.message_type,
                  StoredMessage.status)
    ).all()
    found: dict[tuple[str, str, str], Traffic] = {}
    for application, facility, message_type, status, count in rows:
        key = (application, facility, message_type)
        entry = found.setdefault(key, Traffic(application, facility, message_type, {}))
        entry.counts[status] = int(count)
    return [found[key] for key in sorted(found)]


def as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)

"""Recording, searching, exporting and purging audit events.

Two ways to record, and auditing never fails what it audits (a fault is logged, the action goes on):

- ``record(session, event)`` writes in the caller's unit of work, under a savepoint, so the entry
  commits with the change it describes (an HL7 patient update, a rejection, a deletion);
- ``Auditor.record(event)`` queues the event for the audit writer thread, which writes whatever
  is queued in one transaction: queries, retrieves, reads and transfers, so that no C-FIND, WADO
  request or association waits on a commit for its audit entry.

Patients and studies an event names by an indirect key (the SOP instances of an association, a
FHIR resource id, study UIDs alone) are resolved by the writer from the index.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select
from sqlalchemy.engine import make_url
from sqlmodel import Session

from pacs import batching
from pacs.audit import codes
from pacs.audit.codes import Action, Code, Outcome
from pacs.audit.message import Source
from pacs.audit.tables import AuditEvent, AuditObject
from pacs.db import Database, Prepared, row_id, savepoint, utcnow

log = logging.getLogger("pacs.audit")

EVENT = AuditEvent.__table__  # type: ignore[attr-defined]
OBJECT = AuditObject.__table__  # type: ignore[attr-defined]
MAX_OBJECTS = 2000  # patients and studies named in one event (an import of a whole archive names fewer)
NUL = "\x00"  # U+0000, which PostgreSQL's text and json types refuse
NUL_WRITTEN = "\\u0000"  # how an entry shows it: the JSON escape, as six characters


def storable(value: Any) -> Any:
    """``value`` as the database can keep it: U+0000 in a string (a client's query, a path, an
    identifier from the wire), a dict's keys and values or a list's items is written as the six
    characters ``\\u0000``. PostgreSQL refuses the character in text (and json) columns, so
    an entry that quoted it whole would be lost; SQLite ends a string there in LIKE."""
    if isinstance(value, str):
        return value.replace(NUL, NUL_WRITTEN)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return value


@dataclass
class Event:
    """One audit event before it is written."""

    event_id: Code
    action: Action | str
    outcome: int = Outcome.SUCCESS
    types: tuple[Code, ...] = ()
    user: str = ""
    user_kind: str = "system"
    address: str = ""
    target: str = ""
    description: str = ""
    patients: list[str] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=utcnow)
    # Resolved from the index by the writer:
    instances: list[str] = field(default_factory=list)  # SOP Instance UIDs → their studies and patients
    fhir: tuple[str, str] | None = None  # (resource type, logical id) → its patient (and study)
    resolve_patients: bool = False  # add the patients of ``studies``


# -- writing ----------------------------------------------------------------------------------

def lock_for_writing(connection: Connection) -> None:
    """On SQLite, take the write lock before the first read of a unit of work that will write:
    a deferred transaction that has read cannot write once another connection has committed
    (SQLITE_BUSY at once, without waiting). A write that changes nothing takes the lock, and
    waits for it as long as the busy timeout allows."""
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("UPDATE audit_cursor SET name = name WHERE 0")


def reader(db: Database) -> Any:
    """The engine for units of work that only read (no write lock on SQLite), where there is one."""
    return getattr(db, "reader", db.engine)


def _resolve(connection: Connection, event: Event) -> None:
    from pacs.archive.index import Instance, Series, Study
    from pacs.registry.models import ImagingOrder, Patient

    study = Study.__table__  # type: ignore[attr-defined]
    patient = Patient.__table__  # type: ignore[attr-defined]
    if event.instances:
        instance, series = Instance.__table__, Series.__table__  # type: ignore[attr-defined]
        uids = list(dict.fromkeys(event.instances))
        per_study: dict[str, dict[str, int]] = {}
        for start in range(0, len(uids), 500):
            rows = connection.execute(
                select(study.c.study_instance_uid, instance.c.sop_class_uid, func.count())
                .select_from(instance.join(series, series.c.id == instance.c.series)
                             .join(study, study.c.id == series.c.study))
                .where(instance.c.sop_instance_uid.in_(uids[start:start + 500]))
                .group_by(study.c.study_instance_uid, instance.c.sop_class_uid))
            for uid, sop_class, n in rows:
                classes = per_study.setdefault(uid, {})
                classes[sop_class] = classes.get(sop_class, 0) + n
        event.studies.extend(per_study)
        event.details.setdefault("sop_classes", per_study)
        event.resolve_patients = True
    if event.fhir is not None:
        kind, logical = event.fhir
        key = row_id(logical)
        if key is not None:
            if kind == "Patient":
                row = connection.execute(select(patient.c.patient_id).where(patient.c.id == key)).first()
                event.patients.extend([row[0]] if row else [])
            elif kind == "ImagingStudy":
                row = connection.execute(select(study.c.study_instance_uid).where(study.c.id == key)).first()
                event.studies.extend([row[0]] if row else [])
                event.resolve_patients = True
            elif kind == "Message":
                from pacs.integration.message_store import StoredMessage

                message = StoredMessage.__table__  # type: ignore[attr-defined]
                row = connection.execute(select(message.c.patient_id).where(message.c.id == key)).first()
                event.patients.extend([row[0]] if row and row[0] else [])
            elif kind == "ServiceRequest":
                order = ImagingOrder.__table__  # type: ignore[attr-defined]
                row = connection.execute(select(patient.c.patient_id, order.c.accession_number)
                                         .join(order, order.c.patient == patient.c.id)
                                         .where(order.c.id == key)).first()
                if row:
                    event.patients.append(row[0])
                    event.details.setdefault("accession_number", row[1])
    if event.resolve_patients and event.studies:
        uids = list(dict.fromkeys(event.studies))[:MAX_OBJECTS]
        rows = connection.execute(select(patient.c.patient_id).distinct()
                                  .join(study, study.c.patient == patient.c.id)
                                  .where(study.c.study_instance_uid.in_(uids)))
        event.patients.extend(r[0] for r in rows)


_INSERT_EVENT = Prepared(insert(EVENT).returning(EVENT.c.id))
_INSERT_OBJECT = Prepared(insert(OBJECT))


def write(connection: Connection, events: list[Event]) -> None:
    """Insert ``events`` (and their patients and studies) on ``connection``: one statement for
    each event, one for all the objects they name."""
    rows = []
    for event in events:
        # what the writer looks up and writes as the database can take it
        event.patients, event.studies = storable(event.patients), storable(event.studies)
        event.instances = storable(event.instances)
        if event.instances or event.fhir or event.resolve_patients:
            _resolve(connection, event)
        rows.append({
            "recorded_at": event.at,
            "event_id": event.event_id.value,
            "event_type": "\\".join(t.value for t in event.types),
            "action": str(event.action),
            "outcome": int(event.outcome),
            "user_id": storable(event.user)[:256],
            "user_kind": event.user_kind,
            "address": storable(event.address)[:256],
            "target": storable(event.target)[:1024],
            "description": storable(event.description)[:2000],
            "details": storable(event.details),
        })
    if not rows:
        return
    for row in rows:  # checked before any row is written (psycopg serialises as it sends)
        try:
            json.dumps(row["details"])
        except (TypeError, ValueError):  # a value JSON does not know: written as its text
            row["details"] = json.loads(json.dumps(row["details"], default=str))
    ids = _INSERT_EVENT.insert_each(connection, rows)
    objects: list[dict[str, Any]] = []
    for event_id, event in zip(ids, events, strict=True):
        named = [{"event": event_id, "kind": "patient", "value": v[:256]}
                 for v in dict.fromkeys(p for p in event.patients if p)]
        named += [{"event": event_id, "kind": "study", "value": v[:128]}
                  for v in dict.fromkeys(s for s in event.studies if s)]
        objects += named[:MAX_OBJECTS]
    if objects:
        _INSERT_OBJECT.execute_many(connection, objects)


def record(session: Session | Connection, event: Event) -> bool:
    """Write ``event`` in the caller's unit of work (it commits with the caller's change).

    Under a savepoint: a fault in auditing is logged and rolled back alone, and the caller's
    transaction goes on. Returns whether the event was written."""
    return record_all(session, [event])


def record_all(session: Session | Connection, events: list[Event]) -> bool:
    """:func:`record` for several events at once, under one savepoint."""
    connection = session.connection() if isinstance(session, Session) else session
    what = ", ".join(sorted({f"{e.event_id.meaning} {e.action}" for e in events}))
    try:
        savepoint(connection, "SAVEPOINT audit")
    except Exception:
        log.exception("cannot audit %s: no savepoint", what)
        return False
    try:
        write(connection, events)
    except Exception:
        log.exception("audit entries %s not written", what)
        try:
            savepoint(connection, "ROLLBACK TO SAVEPOINT audit")
            savepoint(connection, "RELEASE SAVEPOINT audit")
        except Exception:
            log.exception("rolling back the audit savepoint failed")
        return False
    savepoint(connection, "RELEASE SAVEPOINT audit")
    return True


LINGER_SECONDS = 0.05  # how long the writer waits after an event for others to write with it


class Auditor:
    """The process's audit log: a writer thread for queued events, and what reads the log."""

    def __init__(self, db: Database, settings: Any, *, batch_max: int = 500) -> None:
        self.db = db
        self.settings = settings
        self.batch_max = batch_max
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._idle = threading.Condition()
        self.forwarder: Any = None

    @property
    def source(self) -> Source:
        audit = self.settings.audit
        return Source(audit_source_id=audit.source_id or self.settings.ae_title, ae_title=self.settings.ae_title,
                      enterprise_site_id=audit.enterprise_site_id, host=socket.gethostname())

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()
        if self.settings.audit.syslog and self.forwarder is None:
            from pacs.audit.syslog import Forwarder

            self.forwarder = Forwarder(self.db, self.settings.audit.syslog, self.source,
                                       poll_seconds=self.settings.audit.syslog_poll_seconds)
            self.forwarder.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(batching.STOP)
            self._thread.join(30)
            self._thread = None
        if self.forwarder is not None:
            self.forwarder.stop()
            self.forwarder = None

    @property
    def backlog(self) -> int:
        """Events queued and not yet written (pacs.metrics)."""
        return self._pending

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is written (tests, shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    # -- recording ----------------------------------------------------------------------------
    def record(self, event: Event, session: Session | None = None) -> None:
        """Write ``event`` in ``session`` when given, else queue it for the writer (or write it
        at once in a short transaction when no writer runs, as in a command-line tool)."""
        if session is not None:
            record(session, event)
            return
        if self._thread is None:
            self._write([event])
            return
        with self._idle:
            self._pending += 1
        self._queue.put(event)

    def _run(self) -> None:
        while True:
            batch, stop = batching.take(self._queue, self.batch_max)
            if batch and not stop and len(batch) < self.batch_max:
                # Events come in bursts (a viewer's queries, a modality's associations): after the
                # first, those of the next moment join its transaction, one commit for them all.
                time.sleep(LINGER_SECONDS)
                more, stop = batching.take(self._queue, self.batch_max - len(batch), wait=False)
                batch += more
            if batch:
                self._write(batch)
                if self.forwarder is not None:
                    self.forwarder.wake()
                with self._idle:
                    self._pending -= len(batch)
                    self._idle.notify_all()
            if stop:
                return

    def _write(self, events: list[Event]) -> None:
        try:
            with self.db.engine.begin() as connection:
                lock_for_writing(connection)
                write(connection, events)
        except Exception:
            log.exception("%d audit event(s) could not be written; trying one by one", len(events))
            for event in events:
                try:
                    with self.db.engine.begin() as connection:
                        lock_for_writing(connection)
                        write(connection, [event])
                except Exception:
                    log.error("audit event lost: %s %s by %s: %s", event.event_id.meaning, event.action,
                              event.user, event.description)

    # -- application activity, configuration and mappings (PS3.15 A.5.3.1, A.5.3.11) --------
    def application_started(self, settings: Any, mappings_dir: Path | None = None) -> None:
        """Record the start (110100/110120), and any configuration or mapping change since the
        last recorded one."""
        self.record(Event(codes.APPLICATION_ACTIVITY, Action.EXECUTE, types=(codes.APPLICATION_START,),
                          user=_launcher(), user_kind="system", description="pacs serve started",
                          details={"pid": os.getpid(), "version": _version()}))
        try:
            self.check_configuration(settings)
            if mappings_dir is not None:
                self.check_mappings(mappings_dir)
        except Exception:
            log.exception("configuration change check failed")

    def application_stopped(self) -> None:
        self.record(Event(codes.APPLICATION_ACTIVITY, Action.EXECUTE, types=(codes.APPLICATION_STOP,),
                          user=_launcher(), user_kind="system", description="pacs serve stopped",
                          details={"pid": os.getpid()}))

    def login(self, user: str, *, address: str = "", success: bool = True, logout: bool = False,
              reason: str = "") -> None:
        """A user logged in or out (110114 with 110122/110123): ready for when authentication exists."""
        self.record(Event(codes.USER_AUTHENTICATION, Action.EXECUTE,
                          Outcome.SUCCESS if success else Outcome.MINOR_FAILURE,
                          types=(codes.LOGOUT if logout else codes.LOGIN,), user=user, user_kind="user",
                          address=address, description=reason))

    def check_configuration(self, settings: Any) -> bool:
        """Compare the effective settings (secrets masked) with the last recorded ones; record a
        Security Alert (110113) with the differences when they changed. Returns whether they did."""
        current = effective_settings(settings)
        digest = _digest(current)
        with reader(self.db).connect() as connection:
            last = connection.execute(
                select(EVENT.c.details).where(EVENT.c.event_id == codes.SECURITY_ALERT.value,
                                              EVENT.c.user_id == CONFIGURATION)
                .order_by(EVENT.c.id.desc()).limit(1)).first()
        previous = (last[0] or {}) if last else None
        if previous is not None and previous.get("hash") == digest:
            return False
        changes = diff(previous.get("settings", {}) if previous else {}, current)
        types = _configuration_types(changes) if previous is not None else (codes.SOFTWARE_CONFIGURATION,)
        self.record(Event(codes.SECURITY_ALERT, Action.EXECUTE, types=types, user=CONFIGURATION,
                          user_kind="system",
                          description=("first recorded configuration" if previous is None else
                                       f"configuration changed: {', '.join(sorted(changes)) or 'secrets'}"),
                          details={"kind": "configuration", "object": str(settings.config or "settings"),
                                   "hash": digest, "settings": current,
                                   "changes": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}}))
        return True

    def check_mappings(self, root: Path) -> bool:
        """Record a change of the mapping files since the last recorded set (made while stopped)."""
        files = mapping_hashes(root)
        previous = self._last_mappings()
        if previous is not None and previous == files:
            self._mapping_files = files
            return False
        self._mapping_change(root, previous or {}, files, accepted=True,
                             note="mappings at start" if previous is None else "mappings changed while stopped")
        return True

    def mappings_reloaded(self, root: Path) -> None:
        """MappingHolder's on_change: the new set is in force. Never raises."""
        try:
            files = mapping_hashes(root)
            self._mapping_change(root, getattr(self, "_mapping_files", None) or self._last_mappings() or {}, files,
                                 accepted=True, note="mappings reloaded")
        except Exception:
            log.exception("mapping reload not audited")

    def mappings_refused(self, root: Path, problems: list[str]) -> None:
        """MappingHolder's on_refused: a changed set was refused, the last good one stays. Never raises."""
        try:
            files = mapping_hashes(root)
            self._mapping_change(root, getattr(self, "_mapping_files", None) or self._last_mappings() or {}, files,
                                 accepted=False, note=f"mappings refused: {len(problems)} problem(s)",
                                 problems=problems)
        except Exception:
            log.exception("refused mapping reload not audited")

    def _last_mappings(self) -> dict[str, str] | None:
        with reader(self.db).connect() as connection:
            rows = connection.execute(
                select(EVENT.c.details).where(EVENT.c.event_id == codes.SECURITY_ALERT.value,
                                              EVENT.c.user_id == MAPPINGS, EVENT.c.outcome == 0)
                .order_by(EVENT.c.id.desc()).limit(1)).first()
        return dict((rows[0] or {}).get("files", {})) if rows else None

    def _mapping_change(self, root: Path, before: dict[str, str], after: dict[str, str], *, accepted: bool,
                        note: str, problems: list[str] | None = None) -> None:
        changed = sorted(k for k in after if k in before and before[k] != after[k])
        added = sorted(k for k in after if k not in before)
        removed = sorted(k for k in before if k not in after)
        details: dict[str, Any] = {"kind": "mappings", "object": str(root), "changes": changed, "added": added,
                                   "removed": removed, "files": after if accepted else before}
        if problems:
            details["problems"] = problems[:50]
        if accepted:
            self._mapping_files = after
        self.record(Event(codes.SECURITY_ALERT, Action.EXECUTE,
                          Outcome.SUCCESS if accepted else Outcome.MINOR_FAILURE,
                          types=(codes.SOFTWARE_CONFIGURATION,), user=MAPPINGS, user_kind="system",
                          description=note, details=details))

    # -- reading ------------------------------------------------------------------------------
    def used(self, *, user: str, user_kind: str, address: str = "", action: Action = Action.READ,
             description: str = "", object_: str = "audit log") -> None:
        """The audit log itself was searched, exported or purged (110101)."""
        self.record(Event(codes.AUDIT_LOG_USED, action, user=user, user_kind=user_kind, address=address,
                          description=description, details={"object": object_}))


CONFIGURATION = "configuration"  # user_id of configuration change events
MAPPINGS = "mappings"  # user_id of mapping change events
SECRET_WORDS = ("password", "secret", "token", "access_key", "api_key", "credential", "private_key")


def _launcher() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


def _version() -> str:
    from pacs import __version__

    return __version__


def effective_settings(settings: Any) -> dict[str, Any]:
    """The settings in force as flat ``section.key`` → value, secrets masked."""
    data = settings.model_dump(mode="json")
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for index, item in enumerate(value):
                walk(f"{prefix}[{index}]", item)
        else:
            flat[prefix] = _mask(prefix, value)

    walk("", data)
    return flat


def _mask(key: str, value: Any) -> Any:
    name = key.rsplit(".", 1)[-1].lower()
    if value is not None and any(word in name for word in SECRET_WORDS):
        return "***"
    if name in ("database_url", "syslog", "fhir_base_url", "endpoint_url") and isinstance(value, str):
        try:
            return make_url(value).render_as_string(hide_password=True) if "://" in value else value
        except Exception:
            return value
    return value


def _digest(flat: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``key`` → (old, new) for every key whose value changed, appeared or went away."""
    keys = set(before) | set(after)
    return {k: (before.get(k), after.get(k)) for k in sorted(keys) if before.get(k) != after.get(k)}


NETWORK_KEYS = ("host", "dicom_port", "mllp_port", "http_port", "ae_title", "peers", "public_url", "his.",
                "publish.", "mllp.")
SECURITY_KEYS = ("dicom.accept_unknown_peers", "dicom.require_called_ae_title", "dicom.unknown_peer_services",
                 "http.plain", "audit.")
SECURITY_FIELDS = (".tls", ".services", ".retrieve_to", ".oauth_", ".fhir_token")  # in any section or peer


def _configuration_types(changes: dict[str, Any]) -> tuple[Code, ...]:
    types = [codes.SOFTWARE_CONFIGURATION]
    if any(k.startswith(NETWORK_KEYS) for k in changes):
        types.append(codes.NETWORK_CONFIGURATION)
    if any(k.startswith(SECURITY_KEYS) or any(field in k for field in SECURITY_FIELDS) for k in changes):
        types.append(codes.SECURITY_CONFIGURATION)
    return tuple(types)


def mapping_hashes(root: Path) -> dict[str, str]:
    """Every file of the mappings folder → its SHA-256."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
            try:
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                continue
    return out


# -- search, export, purge --------------------------------------------------------------------

@dataclass
class Filters:
    since: datetime | None = None
    until: datetime | None = None
    event_id: str | None = None
    action: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    user: str | None = None
    outcome: int | None = None


def _where(filters: Filters) -> list[Any]:
    conditions: list[Any] = []
    if filters.since is not None:
        conditions.append(EVENT.c.recorded_at >= filters.since)
    if filters.until is not None:
        conditions.append(EVENT.c.recorded_at < filters.until)
    if filters.event_id:
        wanted = filters.event_id.strip()
        by_name = [c.value for c in codes.EVENT_IDS.values() if c.meaning.lower() == wanted.lower()]
        conditions.append(EVENT.c.event_id == (by_name[0] if by_name else wanted))
    if filters.action:
        conditions.append(EVENT.c.action == filters.action.upper())
    if filters.user:
        conditions.append(EVENT.c.user_id == filters.user)
    if filters.outcome is not None:
        conditions.append(EVENT.c.outcome == filters.outcome)
    for kind, value in (("patient", filters.patient_id), ("study", filters.study_uid)):
        if value:
            conditions.append(EVENT.c.id.in_(select(OBJECT.c.event).where(OBJECT.c.kind == kind,
                                                                          OBJECT.c.value == value)))
    return conditions


def search(connection: Connection, filters: Filters, *, limit: int = 50, offset: int = 0,
           newest_first: bool = True) -> tuple[int, list[dict[str, Any]]]:
    """Events matching every filter given, with their patients and studies."""
    where = and_(*_where(filters)) if _where(filters) else None
    count = select(func.count()).select_from(EVENT)
    rows_query = select(EVENT)
    if where is not None:
        count, rows_query = count.where(where), rows_query.where(where)
    total = connection.execute(count).scalar_one()
    order = EVENT.c.id.desc() if newest_first else EVENT.c.id
    rows = [dict(r._mapping) for r in connection.execute(rows_query.order_by(order).offset(offset).limit(limit))]
    _attach_objects(connection, rows)
    return total, rows


def _attach_objects(connection: Connection, rows: list[dict[str, Any]]) -> None:
    by_id = {row["id"]: row for row in rows}
    for row in rows:
        row["patients"], row["studies"] = [], []
    if not by_id:
        return
    for event, kind, value in connection.execute(select(OBJECT.c.event, OBJECT.c.kind, OBJECT.c.value)
                                                 .where(OBJECT.c.event.in_(list(by_id)))
                                                 .order_by(OBJECT.c.id)):
        by_id[event]["patients" if kind == "patient" else "studies"].append(value)


def iterate(connection: Connection, filters: Filters, chunk: int = 1000) -> Iterator[dict[str, Any]]:
    """Every matching event, oldest first (for export)."""
    conditions = _where(filters)
    last = 0
    while True:
        query = select(EVENT).where(EVENT.c.id > last, *conditions).order_by(EVENT.c.id).limit(chunk)
        rows = [dict(r._mapping) for r in connection.execute(query)]
        if not rows:
            return
        _attach_objects(connection, rows)
        yield from rows
        last = rows[-1]["id"]


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    """An event as the API and JSON-lines export give it."""
    out = {
        "id": row["id"],
        "time": row["recorded_at"].isoformat().replace("+00:00", "Z"),
        "event_id": row["event_id"],
        "event": codes.event_name(row["event_id"]),
        "event_type": [{"code": t, "meaning": codes.event_name(t)} for t in (row["event_type"] or "").split("\\") if t],
        "action": row["action"],
        "outcome": row["outcome"],
        "user": row["user_id"],
        "user_kind": row["user_kind"],
        "address": row["address"],
        "target": row["target"],
        "description": row["description"],
        "patients": row.get("patients", []),
        "studies": row.get("studies", []),
        "details": row["details"] or {},
    }
    return out


def export_lines(connection: Connection, filters: Filters, fmt: str, source: Source) -> Iterable[str]:
    """The matching events as JSON lines, or as one XML document of DICOM audit messages."""
    from pacs.audit.message import XML_DECLARATION, to_xml

    if fmt == "xml":
        yield XML_DECLARATION + "\n<AuditMessages>\n"
        for row in iterate(connection, filters):
            objects = [("patient", p) for p in row["patients"]] + [("study", s) for s in row["studies"]]
            yield to_xml(row, objects, source, declaration=False) + "\n"
        yield "</AuditMessages>\n"
        return
    for row in iterate(connection, filters):
        yield json.dumps(as_json(row), ensure_ascii=False, default=str) + "\n"


def purge(db: Database, retention_days: float, *, now: datetime | None = None, chunk: int = 5000) -> int:
    """Remove events older than ``retention_days``; returns how many went."""
    if retention_days <= 0:
        return 0
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    removed = 0
    while True:
        with db.engine.begin() as connection:
            lock_for_writing(connection)
            ids = [r[0] for r in connection.execute(select(EVENT.c.id).where(EVENT.c.recorded_at < cutoff)
                                                    .order_by(EVENT.c.id).limit(chunk))]
            if not ids:
                return removed
            connection.execute(delete(OBJECT).where(OBJECT.c.event.in_(ids)))
            connection.execute(delete(EVENT).where(EVENT.c.id.in_(ids)))
            removed += len(ids)

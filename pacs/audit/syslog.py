"""Audit messages to a syslog collector (an audit record repository): RFC 5424 messages over UDP
(RFC 5426, DICOM PS3.15 A.7) or TCP with octet-counting framing (RFC 6587 3.4.1, as RFC 5425 frames
TLS), each carrying one DICOM audit message (PS3.15 A.5.1) as its MSG.

The forwarder reads committed entries from the audit table in id order and remembers the last one
it delivered (``audit_cursor``), so nothing that was rolled back is sent, nothing is sent twice
after a restart, and entries recorded while the collector was unreachable over TCP follow when it
is back. A new forwarder starts from the newest entry: history is not replayed.

With several nodes on one PostgreSQL database, one of them forwards (the leader of ``syslog``,
:class:`pacs.cluster.Leadership`); a node that takes the lead over reads the cursor the last leader
left, so entries are sent once (an entry being sent as its leader died may be sent again).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import select

from pacs.audit.message import Source, to_xml
from pacs.audit.service import lock_for_writing
from pacs.audit.tables import AuditCursor, AuditEvent, AuditObject
from pacs.cluster import Leadership
from pacs.db import Database, utcnow

log = logging.getLogger("pacs.audit.syslog")

EVENT = AuditEvent.__table__  # type: ignore[attr-defined]
OBJECT = AuditObject.__table__  # type: ignore[attr-defined]
CURSOR = AuditCursor.__table__  # type: ignore[attr-defined]

FACILITY_AUTHPRIV = 10  # security/authorization messages (PS3.15 A.6, A.7)
SEVERITY_NOTICE, SEVERITY_WARNING = 5, 4
MSGID = "DICOM+RFC3881"  # PS3.15 A.7: the MSGID audit messages may carry
APP_NAME = "pacs"
BOM = b"\xef\xbb\xbf"  # RFC 5424 6.4: MSG-UTF8 starts with a byte order mark
MAX_UDP = 65000  # what fits one datagram; PS3.15 A.7 warns that longer messages are truncated
GAP_WAIT = timedelta(seconds=10)  # how long a missing id may still be an uncommitted transaction


@dataclass(frozen=True)
class Target:
    transport: str  # udp, tcp
    host: str
    port: int


def parse_target(url: str) -> Target:
    """``udp://host:514`` or ``tcp://host:6514`` (port 514 when left out)."""
    parts = urlsplit(url if "://" in url else f"udp://{url}")
    if parts.scheme not in ("udp", "tcp") or not parts.hostname:
        raise ValueError(f"[audit] syslog = {url!r}: write udp://host:514 or tcp://host:514")
    return Target(parts.scheme, parts.hostname, parts.port or 514)


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_message(xml: str, *, at: datetime, outcome: int, hostname: str, procid: str | None = None,
                   event_ref: int | None = None) -> bytes:
    """One RFC 5424 SYSLOG-MSG: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG``."""
    severity = SEVERITY_NOTICE if not outcome else SEVERITY_WARNING
    pri = FACILITY_AUTHPRIV * 8 + severity
    stamp = at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    host = "".join(c for c in hostname if 33 <= ord(c) <= 126)[:255] or "-"
    structured = f'[origin@pacs id="{event_ref}"]' if event_ref is not None else "-"
    header = f"<{pri}>1 {stamp} {host} {APP_NAME} {procid or os.getpid()} {MSGID} {structured} "
    return header.encode("ascii") + BOM + xml.encode("utf-8")


class Sender:
    """A socket to the collector, opened on demand and reopened after a failure (TCP)."""

    def __init__(self, target: Target, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def send(self, message: bytes) -> None:
        if self.target.transport == "udp":
            if self._sock is None:
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            if len(message) > MAX_UDP:
                log.warning("audit message of %d bytes truncated to one UDP datagram", len(message))
                message = message[:MAX_UDP]
            self._sock.sendto(message, (self.target.host, self.target.port))
            return
        if self._sock is None:
            self._sock = socket.create_connection((self.target.host, self.target.port), timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._sock.sendall(str(len(message)).encode("ascii") + b" " + message)  # RFC 6587 octet counting
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class Forwarder:
    """Sends every committed audit entry to the collector, in order, from where it left off."""

    NAME = "syslog"

    def __init__(self, db: Database, url: str, source: Source, *, poll_seconds: float = 1.0,
                 batch: int = 200) -> None:
        self.db = db
        self.target = parse_target(url)
        self.source = source
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.sender = Sender(self.target)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.delay = 1.0
        self.sent = 0
        self._last: int | None = None
        self.leadership = Leadership(db, self.NAME)

    def start(self) -> None:
        """Start forwarding; a first start takes the newest entry as the point to send after."""
        with self.db.engine.begin() as connection:
            self._last = self._cursor(connection)
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        if self.delay == 1.0:  # the collector answered last time: send what came while stopping
            try:
                self.forward_once()
            except Exception:
                log.warning("audit entries left for the next start: the collector is unreachable")
        self.sender.close()
        self.leadership.resign()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.forward_once()
                self.delay = 1.0
            except OSError as exc:
                log.warning("syslog collector %s:%d unreachable (%s); retrying in %.0f s", self.target.host,
                            self.target.port, exc, self.delay)
                self._stop.wait(self.delay)
                self.delay = min(self.delay * 2, 300.0)
                continue
            except Exception:
                log.exception("audit forwarding failed")
                sent = 0
            if sent < self.batch:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    def _cursor(self, connection) -> int:  # type: ignore[no-untyped-def]
        lock_for_writing(connection)
        row = connection.execute(select(CURSOR.c.last_id).where(CURSOR.c.name == self.NAME)).first()
        if row is not None:
            return int(row[0])
        newest = connection.execute(select(EVENT.c.id).order_by(EVENT.c.id.desc()).limit(1)).first()
        start = int(newest[0]) if newest else 0
        connection.execute(CURSOR.insert().values(name=self.NAME, last_id=start, updated_at=utcnow()))
        return start

    def forward_once(self) -> int:
        """Send what was committed since the last call; returns how many were sent."""
        if not self.leadership.leads():
            self._last = None  # another node forwards; read its cursor when this one leads
            return 0
        if self._last is None:
            with self.db.engine.begin() as connection:
                self._last = self._cursor(connection)
        last = self._last
        with getattr(self.db, "reader", self.db.engine).connect() as connection:
            rows = [dict(r._mapping) for r in connection.execute(
                select(EVENT).where(EVENT.c.id > last).order_by(EVENT.c.id).limit(self.batch))]
            objects: dict[int, list[tuple[str, str]]] = {}
            if rows:
                for event, kind, value in connection.execute(
                        select(OBJECT.c.event, OBJECT.c.kind, OBJECT.c.value)
                        .where(OBJECT.c.event.in_([r["id"] for r in rows])).order_by(OBJECT.c.id)):
                    objects.setdefault(event, []).append((kind, value))
        sent = 0
        expected = last + 1
        now = utcnow()
        try:
            for row in rows:
                if row["id"] != expected and now - row["recorded_at"] < GAP_WAIT:
                    break  # an earlier id may still commit (PostgreSQL sequences): wait for it
                xml = to_xml(row, objects.get(row["id"], []), self.source)
                self.sender.send(format_message(xml, at=row["recorded_at"], outcome=row["outcome"],
                                                hostname=self.source.host, event_ref=row["id"]))
                sent += 1
                expected = row["id"] + 1
        finally:
            if sent:
                self._advance(expected - 1)
        self.sent += sent
        return sent

    def _advance(self, last_id: int) -> None:
        self._last = last_id
        with self.db.engine.begin() as connection:
            connection.execute(CURSOR.update().where(CURSOR.c.name == self.NAME)
                               .values(last_id=last_id, updated_at=utcnow()))


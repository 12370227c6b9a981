"""Several `pacs serve` nodes on one PostgreSQL database: which node runs a singleton job.

Work that is not split into rows (the retention pass, the audit purge, scheduled backups, the
storage rules, the scrub, replica repair, prior prefetch, forwarding the audit log to syslog) runs
on one node at a time, the leader of that job. A node leads while it holds the job's session-level
advisory lock (PostgreSQL 15 §9.27.10, ``pg_try_advisory_lock``) on a connection it keeps for the
purpose. The lock belongs to that connection: when the node dies, or its connection is cut
(``pg_terminate_backend``), PostgreSQL releases the lock and the next node to ask becomes the
leader, within one turn of its scheduler.

Work that is split into rows is claimed row by row instead (the outbox, by destination in
:mod:`pacs.integration.outbox`; the publication of studies, ``FOR UPDATE SKIP LOCKED`` in
:mod:`pacs.integration.publisher`).

On SQLite one process owns the database: it always leads.
"""

from __future__ import annotations

import hashlib
import logging
import threading

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from pacs.db import Database

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """The advisory lock key (a signed 64-bit integer) of the singleton job ``name``."""
    digest = hashlib.blake2b(f"leader:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Leadership:
    """Whether this process is the one that runs the job ``name``.

    >>> leadership = Leadership(db, "retention")
    >>> if leadership.leads():
    ...     retention.run()

    :meth:`leads` asks again at each call: a follower takes the lead as soon as the leader's
    connection is gone, and a leader whose connection was cut learns it at its next call.
    """

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self.key = lock_key(name)
        self._connection: Connection | None = None
        self._guard = threading.Lock()

    def leads(self) -> bool:
        """True while this process holds the job's lock; takes it when it is free."""
        if self.db.is_sqlite:
            return True
        with self._guard:
            if self._connection is not None:
                try:
                    self._connection.execute(text("SELECT 1"))
                    return True
                except DBAPIError:
                    log.warning("lost the lead of %s: its database connection is gone", self.name)
                    self._drop()
            try:
                connection = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            except DBAPIError:
                return False
            try:
                got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                              {"key": self.key}).scalar())
            except DBAPIError:
                connection.invalidate()
                connection.close()
                return False
            if not got:
                connection.close()
                return False
            log.info("this node leads %s", self.name)
            self._connection = connection
            return True

    def resign(self) -> None:
        """Give the lead up (at stop), so that another node takes it at once."""
        with self._guard:
            if self._connection is None:
                return
            try:
                self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
                self._connection.close()
            except DBAPIError:
                self._drop()
            self._connection = None

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.invalidate()
            connection.close()
        except DBAPIError:
            pass

"""The database: one engine per process, one session per unit of work, Alembic owns the schema.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``: a commit is on disk
when it returns, which is what lets the engine acknowledge an HL7 message or a DICOM object
right after committing it. PostgreSQL is selected with ``PACS_DATABASE_URL``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, DateTime, Engine, bindparam, create_engine, event, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.sql.expression import Executable
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def utcnow() -> datetime:
    """Now, as an aware UTC datetime (what every system timestamp uses)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A system timestamp: stored as naive UTC, returned as aware UTC on every database.

    Clinical times (scheduled start, birth date, study date) are local times as HL7 and DICOM
    carry them, and use plain ``DateTime``.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("system timestamps must be timezone-aware (use pacs.db.utcnow())")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


WRITER_WAIT = 0.00005, 0.001  # seconds between two tries for the writer lock: first, and at most
# The largest key a client can name a row by, on either database: PostgreSQL's keys are INTEGER
# (32 bits; a larger number in a query is an error there, "integer out of range"), SQLite's 64.
MAX_ROW_ID = 2**31 - 1
ROW_ID_DIGITS = len(str(MAX_ROW_ID))  # 10: a number of more digits is past every key
SQLITE_CACHE_KIB = 65536  # page cache per connection (SQLite's default is 2 MiB): the index B-trees of a large archive
# WAL pages before a commit checkpoints them into the database file (SQLite's default: 1,000).
# The pages every message or object touches (the newest leaf of each index, the counters) are
# rewritten commit after commit; a checkpoint copies each page once, whatever its versions in
# the log, so a longer log copies far fewer pages in all (about 40 MiB of log at most).
SQLITE_CHECKPOINT_PAGES = 10000
WRITER_TIMEOUT = 30.0  # then BEGIN IMMEDIATE goes ahead and SQLite's busy timeout decides


def row_id(text: str) -> int | None:
    """The row key a client's text names (a FHIR logical id, an id in a URL): ASCII decimal
    digits up to :data:`MAX_ROW_ID`, else None. "³" and "８" are digits to ``str.isdigit``
    but name no row; a number past the largest key names none either. A number longer than
    the largest key is known to be past it before ``int()`` reads it: ``int()`` refuses a text
    of more than 4,300 digits (``sys.get_int_max_str_digits()``) with a ValueError."""
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0") or "0"
        if len(digits) > ROW_ID_DIGITS:
            return None
        number = int(digits)
        return number if number <= MAX_ROW_ID else None
    return None


class WriterConnection(sqlite3.Connection):
    """A pysqlite connection that takes the database's writer lock before a write transaction
    and gives it up once the transaction has ended.

    SQLite lets one writer in at a time; a writer that finds the database locked sleeps in
    SQLite's busy handler by steps of 1, 2, 5, 10 ms and more before it tries again, however soon
    the other writer finishes. With ``[dicom] processes`` the index writers of several processes
    meet there at every commit: queueing them on an advisory lock beside the
    database file (flock(2), released by the kernel if its holder dies) hands the database from
    one writer to the next within tens of microseconds instead. The lock only orders writers
    that SQLite would serialise anyway: when it cannot be had in :data:`WRITER_TIMEOUT`, the
    transaction begins without it and SQLite's own locking decides, as it always does."""

    lock_path: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writer_fd: int | None = None
        self._holding = False

    def take_writer_lock(self) -> None:
        if self.lock_path is None:
            return
        if self._writer_fd is None:
            self._writer_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + WRITER_TIMEOUT
        wait, longest = WRITER_WAIT
        while True:
            try:
                fcntl.flock(self._writer_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._holding = True
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning("writer lock %s not had in %.0f s; beginning without it", self.lock_path,
                                WRITER_TIMEOUT)
                    return
                time.sleep(wait)
                wait = min(wait * 2, longest)

    def give_writer_lock(self) -> None:
        if self._holding and self._writer_fd is not None:
            self._holding = False
            fcntl.flock(self._writer_fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.give_writer_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.give_writer_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.give_writer_lock()
            if self._writer_fd is not None:
                os.close(self._writer_fd)
                self._writer_fd = None


def _connection_class(database: str) -> type[WriterConnection]:
    """:class:`WriterConnection` locking ``<database>.writer`` (none for an in-memory one)."""
    return type("WriterConnection", (WriterConnection,), {"lock_path": f"{database}.writer"})


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
    cursor.close()


def make_engine(url: str, *, writer_lock: bool = False) -> Engine:
    """Create the process's engine for ``url`` (SQLite file or PostgreSQL); ``writer_lock``:
    SQLite writers take turns through :class:`WriterConnection` (for several processes writing
    at once: with one, the lock costs more than SQLite's own waiting)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": 30}
        if writer_lock and path and path != ":memory:":
            connect_args["factory"] = _connection_class(path)
        engine = create_engine(
            url,
            connect_args=connect_args,
            # SQLite allows one writer; a small pool keeps readers (HTTP, DICOM queries)
            # from opening a file handle per request.
            pool_size=8,
            max_overflow=16,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # Let SQLAlchemy, not pysqlite, issue BEGIN so that SAVEPOINTs work (SQLAlchemy
        # documentation, "Serializable isolation / Savepoints / Transactional DDL").
        event.listen(engine, "connect", _disable_pysqlite_begin)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url, pool_size=10, max_overflow=20)
    dialect = engine.dialect

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        _ping_if_idle(dialect, dbapi_connection, record)

    def connect(_dialect: Any, _record: Any, _args: Any, parameters: dict[str, Any]) -> None:
        parameters.setdefault("application_name", application_name())  # unless the URL names it

    event.listen(engine, "checkin", _checked_in)
    event.listen(engine, "checkout", checkout)
    event.listen(engine, "do_connect", connect)
    return engine


def application_name() -> str:
    """How this process's PostgreSQL connections are named (``application_name``, shown in
    ``pg_stat_activity`` and the server's log with ``%a``): the machine and the process, so
    that an administrator of several nodes sees which one holds a connection, a transaction or
    an advisory lock (``pg_locks.pid`` joined to ``pg_stat_activity``)."""
    return f"pacs {socket.gethostname()} {os.getpid()}"[:APPLICATION_NAME_BYTES]


APPLICATION_NAME_BYTES = 63  # PostgreSQL keeps NAMEDATALEN - 1 bytes of it


PING_AFTER_IDLE_SECONDS = 5.0
"""A pooled PostgreSQL connection idle this long is pinged when it is checked out again."""


def _checked_in(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dialect: Dialect, dbapi_connection: Any, record: Any) -> None:
    """Pessimistic disconnect handling (SQLAlchemy, "Dealing with Disconnects") for connections
    that sat in the pool: a database restarted, or a firewall that dropped an idle connection,
    is found by a ping at checkout, and the pool replaces the connection before anyone uses it.
    A connection back from work a moment ago is not pinged: ``pool_pre_ping`` pinged every
    checkout, a round trip that cost a study-level C-FIND on PostgreSQL 0.1-0.4 ms of its
    2.2-3.5 ms (bench/cfind.py, three runs). A database that goes away within those seconds
    fails the statement that finds it, and SQLAlchemy then renews the whole pool."""
    since = record.info.get("checked_in")
    if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
        return  # a new connection, or one in use moments ago
    try:
        alive = dialect.do_ping(dbapi_connection)
    except Exception as exc:
        raise DisconnectionError(f"idle connection failed its ping: {exc}") from exc
    if not alive:
        raise DisconnectionError("idle connection failed its ping")


def _disable_pysqlite_begin(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Any) -> None:
    """Writers take SQLite's write lock when they begin (BEGIN IMMEDIATE): a deferred transaction
    that reads, then writes after another writer committed, fails at once with SQLITE_BUSY
    (the busy timeout does not apply to it). Readers opt out with the ``sqlite_deferred``
    execution option (:attr:`Database.reader`), so a long query never holds the write lock."""
    deferred = conn.get_execution_options().get("sqlite_deferred", False)
    if deferred:
        conn.exec_driver_sql("BEGIN")
        return
    dbapi = conn.connection.dbapi_connection
    if isinstance(dbapi, WriterConnection):
        dbapi.take_writer_lock()
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        if isinstance(dbapi, WriterConnection):
            dbapi.give_writer_lock()
        raise


def newest_revision() -> str:
    """The newest migration's revision id. Each file under ``migrations/versions`` is named after
    its revision, numbered in order (``0017_message_status_received.py`` is revision 0017)."""
    return max(path.name.split("_", 1)[0] for path in (MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py"))


def schema_revision(engine: Engine) -> str | None:
    """The revision the database's schema is at (alembic's ``alembic_version``), or None for a
    database alembic has not touched."""
    try:
        with engine.execution_options(sqlite_deferred=True).connect() as connection:
            return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except DBAPIError:  # no such table
        return None


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (``alembic upgrade head``). A schema already there
    is left alone without loading alembic and the models (most of a command's start-up)."""
    if schema_revision(engine) == newest_revision():
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Reading:
    """What a query reads through with :meth:`Shapes.rows`: a pooled DB-API connection, put in a
    SQLAlchemy Connection only when a statement goes SQLAlchemy's way. Making and closing a
    Connection that nothing was read through cost a study-level C-FIND a twentieth of its time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.connection = engine.raw_connection()  # the pool's proxy: .driver_connection is the driver's
        self._wrapped: Connection | None = None

    def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        if self._wrapped is None:
            self._wrapped = Connection(self.engine, connection=self.connection)
        return self._wrapped.execute(statement, *args, **kwargs)

    def close(self) -> None:
        """Back to the pool (through the Connection, which ends what it began, where there is one)."""
        if self._wrapped is not None:
            self._wrapped.close()
        else:
            self.connection.close()


class Database:
    """The process's engine and its sessions."""

    def __init__(self, url: str, *, writer_lock: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, writer_lock=writer_lock)
        # For units of work that only read: no write lock on SQLite.
        self.reader = self.engine.execution_options(sqlite_deferred=True)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def migrate(self) -> None:
        migrate(self.engine)

    @contextmanager
    def reading(self) -> Iterator[Reading]:
        """A :class:`Reading` on the reader engine for the length of a query."""
        reading = Reading(self.reader)
        try:
            yield reading
        finally:
            reading.close()

    @contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on error."""
        with Session(self.reader if read_only else self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()



# --------------------------------------------------------------------------------------------
# Statements every message or object runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """A statement compiled for one dialect: its SQL, how to turn the caller's values into the
    driver's parameters, and how to read the columns it returns."""

    sql: str
    positional: bool  # qmark (SQLite) or named (psycopg's pyformat)
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...]  # in order when positional
    constants: Mapping[str, Any]  # values the statement carries itself (LIMIT 1, a fixed status, a default)
    computed: tuple[tuple[str, Callable[[Any], Any]], ...]  # column defaults computed for each execution
    columns: tuple[str, ...]
    readers: tuple[Callable[[Any], Any] | None, ...]

    def parameters(self, values: Mapping[str, Any]) -> Any:
        if self.constants or self.computed:
            values = {**self.constants, **{name: make(None) for name, make in self.computed}, **values}
        if self.positional:
            return [values[name] if convert is None else convert(values[name]) for name, convert in self.binds]
        return {name: values[name] if convert is None else convert(values[name]) for name, convert in self.binds}

    def row(self, raw: Sequence[Any]) -> dict[str, Any]:
        return {name: value if read is None or value is None else read(value)
                for name, read, value in zip(self.columns, self.readers, raw, strict=True)}


# n new values of a table's id sequence (SERIAL), in one statement (Prepared.insert_each)
_NEXT_IDS = "SELECT nextval(pg_get_serial_sequence(%(table)s, 'id')) FROM generate_series(1, %(count)s)"


class Prepared:
    """A Core statement for the paths that run for every message or object (registry upserts,
    message results, index rows): compiled once per dialect and set of columns, then executed
    on the DB-API cursor of the caller's connection, in the transaction it has begun.

    SQLAlchemy's own execution of a cached statement costs about 70 µs on a 2-core server
    against the driver's 20; a message runs a dozen statements. Values go through the column
    types' bind and result processors exactly as SQLAlchemy would run them (timestamps on
    SQLite, :class:`UTCDateTime`, JSON). Statements whose SQL depends on the values (an
    expanding IN) are refused: they are built per value count by the caller."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._dml = bool(getattr(statement, "is_dml", False))
        self._plans: dict[tuple[str, str, tuple[str, ...]], _Plan] = {}  # by dialect, driver and columns
        self._plain: Prepared | None = None  # the INSERT without RETURNING (insert_each)

    def _plan(self, dialect: Dialect, keys: tuple[str, ...]) -> _Plan:
        plan = self._plans.get((dialect.name, dialect.driver, keys))
        if plan is not None:
            return plan
        compiled = self.statement.compile(dialect=dialect, column_keys=list(keys) if self._dml else None)
        if compiled.post_compile_params:
            raise ValueError("a statement with values rendered at execution time cannot be prepared")
        convert: dict[str, Callable[[Any], Any] | None] = {}
        constants: dict[str, Any] = {}
        for bind, name in compiled.bind_names.items():
            convert[name] = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if not bind.required:
                constants[name] = bind.effective_value
        # Columns left out of an INSERT (or UPDATE) that have a Python-side default (onupdate):
        # SQLAlchemy computes those at execution; so does the plan.
        defaults: dict[str, Any] = {}
        for column in getattr(compiled, "insert_prefetch", ()):
            defaults[column.key] = column.default
        for column in getattr(compiled, "update_prefetch", ()):
            defaults[column.key] = column.onupdate
        for name, default in defaults.items():
            if not (default.is_scalar or default.is_callable):
                raise ValueError(f"the default of column {name} cannot be computed before the statement runs")
        order = compiled.positiontup if compiled.positiontup is not None else list(convert)
        columns = list(getattr(self.statement, "exported_columns", ()))  # a SELECT's, or RETURNING
        plan = _Plan(
            sql=compiled.string,
            positional=compiled.positiontup is not None,
            binds=tuple((name, convert[name]) for name in order),
            constants={**constants, **{name: d.arg for name, d in defaults.items() if d.is_scalar}},
            computed=tuple((name, d.arg) for name, d in defaults.items() if d.is_callable),
            columns=tuple(c.key for c in columns),
            readers=tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns),
        )
        self._plans[(dialect.name, dialect.driver, keys)] = plan
        return plan

    def _cursor(self, conn: Connection) -> Any:
        if not conn.in_transaction():
            raise RuntimeError("prepared statements run in the caller's transaction; none has begun")
        return conn.connection.driver_connection.cursor()  # type: ignore[union-attr]

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> None:
        """Run the statement once."""
        plan = self._plan(conn.dialect, tuple(values) if self._dml else ())
        cursor = self._cursor(conn)
        try:
            cursor.execute(plan.sql, plan.parameters(values))
        finally:
            cursor.close()

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run the statement for every row (every row gives the same columns)."""
        if not rows:
            return
        plan = self._plan(conn.dialect, tuple(rows[0]) if self._dml else ())
        parameters = [plan.parameters(row) for row in rows]
        cursor = self._cursor(conn)
        try:
            if len(parameters) == 1:  # psycopg would set up a pipeline for it: 110 against 170 µs of CPU
                cursor.execute(plan.sql, parameters[0])
            else:
                cursor.executemany(plan.sql, parameters)
        finally:
            cursor.close()

    def rows(self, conn: Connection, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run the statement; the rows it returns (a SELECT's, or an INSERT's RETURNING) as
        dicts by column key."""
        plan = self._plan(conn.dialect, tuple(values) if self._dml else ())
        cursor = self._cursor(conn)
        try:
            cursor.execute(plan.sql, plan.parameters(values))
            return [plan.row(raw) for raw in cursor.fetchall()]
        finally:
            cursor.close()

    def returning_each(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Run an INSERT … RETURNING for every row, in turn; the row each returned (the new ids,
        in the order of ``rows``: a multi-row INSERT does not promise its RETURNING order)."""
        if not rows:
            return []
        plan = self._plan(conn.dialect, tuple(rows[0]) if self._dml else ())
        parameters = [plan.parameters(row) for row in rows]
        cursor = self._cursor(conn)
        try:
            out = []
            for each in parameters:
                cursor.execute(plan.sql, each)
                out.append(plan.row(cursor.fetchall()[0]))
            return out
        finally:
            cursor.close()

    def insert_each(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """For an INSERT … RETURNING the table's ``id``: insert every row, and the new ids in the
        order of ``rows``. On PostgreSQL the ids come from the column's sequence in one statement
        and the rows go in one executemany (psycopg pipelines it): two round trips for a batch
        instead of one a row, which the intake worker paid for every message it stored and every
        audit entry. Elsewhere :meth:`returning_each`."""
        if not rows or conn.dialect.name != "postgresql":
            return [row["id"] for row in self.returning_each(conn, rows)]
        table = self.statement.table  # type: ignore[attr-defined]
        if self._plain is None:
            self._plain = Prepared(insert(table))
        cursor = self._cursor(conn)
        try:
            cursor.execute(_NEXT_IDS, {"table": table.name, "count": len(rows)})
            ids = sorted(new for (new,) in cursor.fetchall())
        finally:
            cursor.close()
        self._plain.execute_many(conn, [{**row, "id": new} for row, new in zip(rows, ids, strict=True)])
        return ids

    def first(self, conn: Connection, values: Mapping[str, Any]) -> dict[str, Any] | None:
        found = self.rows(conn, values)
        return found[0] if found else None

    def first_alone(self, engine: Engine, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run a SELECT by itself on a pooled connection, outside any transaction SQLAlchemy
        begins: one statement's snapshot, without the BEGIN and COMMIT round of
        ``engine.begin()`` (a lookup made for every object received). On SQLite the statement
        runs in autocommit (pysqlite begins nothing here); on PostgreSQL too, for the statement
        (:func:`lone_statement`)."""
        plan = self._plan(engine.dialect, ())
        connection = engine.raw_connection()
        try:
            with lone_statement(connection.driver_connection, engine.dialect):
                cursor = connection.cursor()
                try:
                    cursor.execute(plan.sql, plan.parameters(values))
                    raw = cursor.fetchone()
                finally:
                    cursor.close()
        finally:
            connection.close()  # back to the pool
        return plan.row(raw) if raw is not None else None


@contextmanager
def lone_statement(conn: Any, dialect: Dialect) -> Iterator[None]:
    """Run one SELECT on the DB-API connection ``conn`` outside any transaction: on PostgreSQL,
    in autocommit while it runs, where psycopg would otherwise send BEGIN first (a round trip
    of its own) and the pool a ROLLBACK when the connection goes back (another): three round
    trips for one statement. Within a transaction, or on SQLite (which begins nothing for a
    lone statement here), it changes nothing."""
    if dialect.name != "postgresql" or conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE:
        yield
        return
    conn.autocommit = True
    try:
        yield
    finally:
        if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            conn.autocommit = False  # a broken connection is left as it is, for the pool to discard


@dataclass(frozen=True, slots=True)
class _Shape:
    """A query's SQL for one dialect, and where each value the statement carries goes."""

    sql: str
    positional: bool
    names: tuple[str, ...]  # the compiled name of each value, in the order the cache key extracts them
    convert: Mapping[str, Callable[[Any], Any] | None]  # by compiled name
    constants: Mapping[str, Any]  # binds the cache key does not extract
    order: tuple[str, ...]  # positional parameters, in order
    readers: tuple[Callable[[Any], Any] | None, ...]

    def parameters(self, values: Sequence[Any]) -> Any:
        named = dict(self.constants)
        for name, value in zip(self.names, values, strict=True):
            convert = self.convert[name]
            named[name] = value if convert is None or value is None else convert(value)
        return [named[name] for name in self.order] if self.positional else named

    def rows(self, raw: list[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Each of ``raw`` with its columns' readers applied, touching only the columns that have
        one (most have none: a worklist of 850 items read 40 columns each through a generator)."""
        readers = [(at, read) for at, read in enumerate(self.readers) if read is not None]
        out = []
        for values in raw:
            if len(values) != len(self.readers):
                raise ValueError(f"a row of {len(values)} columns, not {len(self.readers)}")
            if readers:
                values = list(values)
                for at, read in readers:
                    if values[at] is not None:
                        values[at] = read(values[at])
            out.append(tuple(values))
        return out


_UNPREPARABLE = object()


class Shapes:
    """SELECTs built for each request from the keys it gives (a C-FIND, a QIDO-RS search, a
    worklist query) whose SQL depends only on which keys were given and how: compiled once per
    shape and dialect, then run on the DB-API cursor of the caller's connection.

    The shape is SQLAlchemy's own cache key of the statement (the structure without the values),
    and the values are the bound parameters that key extracts, in the same order each time, as
    SQLAlchemy's compiled cache pairs them. What this leaves out of SQLAlchemy's execution of a
    cached statement is its connection events, its autobegun transaction and its result objects:
    about a quarter of a study-level C-FIND's time on the association's thread. A SELECT outside any
    transaction is one statement's snapshot on either database, and on PostgreSQL it runs in
    autocommit (:func:`lone_statement`): no BEGIN before it, no ROLLBACK after. Statements whose SQL depends
    on the values (an IN list, expanded at execution) run through SQLAlchemy."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._shapes: dict[Any, _Shape | object] = {}
        self._adding = threading.Lock()  # a miss compiles and makes room under it; a hit takes no lock

    def __len__(self) -> int:
        """Shapes held (compiled, or known to need SQLAlchemy)."""
        return len(self._shapes)

    def _compile(self, statement: Any, dialect: Dialect, extracted: Sequence[Any]) -> _Shape | object:
        compiled = statement.compile(dialect=dialect)
        if compiled.post_compile_params:
            return _UNPREPARABLE
        by_key = {bind.key: name for bind, name in compiled.bind_names.items()}
        names = tuple(by_key.get(bind.key, "") for bind in extracted)
        if "" in names:
            return _UNPREPARABLE
        convert = {name: bind.type.dialect_impl(dialect).bind_processor(dialect)
                   for bind, name in compiled.bind_names.items()}
        constants = {name: bind.effective_value for bind, name in compiled.bind_names.items() if name not in names}
        return _Shape(sql=compiled.string, positional=compiled.positiontup is not None, names=names,
                      convert=convert, constants=constants, order=tuple(compiled.positiontup or ()),
                      readers=tuple(column.type.dialect_impl(dialect).result_processor(dialect, None)
                                    for column in statement.selected_columns))

    def _add(self, cache_key: Any, make: Callable[[], _Shape | object]) -> _Shape | object:
        with self._adding:
            if len(self._shapes) >= self.size:
                self._shapes.pop(next(iter(self._shapes)), None)  # the oldest shape
            shape = self._shapes[cache_key] = make()
        return shape

    def rows(self, conn: Connection | Reading, statement: Any) -> list[Sequence[Any]]:
        """The rows of ``statement`` (a SELECT, or a :class:`Shaped` one), each a sequence of its
        selected columns' values."""
        dialect = conn.dialect
        if isinstance(statement, Shaped):
            cache_key = (dialect.name, dialect.driver, Shaped, statement.key)
            shape = self._shapes.get(cache_key)
            if shape is None:
                binds = [bindparam(f"shaped_{number}") for number in range(len(statement.values))]
                shape = self._add(cache_key, lambda: self._compile(statement.build(binds), dialect, binds))
            if not isinstance(shape, _Shape):
                return list(conn.execute(statement.build(statement.values)))
            return self._run(conn, shape, statement.values)
        key = statement._generate_cache_key()
        if key is None:
            return list(conn.execute(statement))
        cache_key = (dialect.name, dialect.driver, key.key)
        shape = self._shapes.get(cache_key)
        if shape is None:
            shape = self._add(cache_key, lambda: self._compile(statement, dialect, key.bindparams))
        if not isinstance(shape, _Shape):
            return list(conn.execute(statement))
        return self._run(conn, shape, [bind.effective_value for bind in key.bindparams])

    @staticmethod
    def _run(conn: Connection | Reading, shape: _Shape, values: Sequence[Any]) -> list[Sequence[Any]]:
        driver = conn.connection.driver_connection
        with lone_statement(driver, conn.dialect):
            cursor = driver.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(shape.sql, shape.parameters(values))
                raw = cursor.fetchall()
            finally:
                cursor.close()
        return shape.rows(raw)


@dataclass(frozen=True, slots=True)
class Shaped:
    """A SELECT whose SQL depends only on ``key``: ``build`` makes it from one value, or one bound
    parameter, for each of ``values``. :meth:`Shapes.rows` builds and compiles it once per key,
    with parameters, so a query of a known shape builds no expression and computes no
    SQLAlchemy cache key; it is built with the values themselves only where its SQL cannot be
    prepared (SQLAlchemy's expanding IN)."""

    key: Any
    values: tuple[Any, ...]
    build: Callable[[Sequence[Any]], Any]


_TO_RELEASE = "pacs.db.savepoint_to_release"  # Session.info: (its transaction, a savepoint's name)


@contextmanager
def nested(session: Session, name: str) -> Iterator[Connection]:
    """A savepoint around one message's or one object's writes: if they fail, everything they
    changed is undone and the session's transaction goes on.

    Plain SAVEPOINT statements, the same on SQLite and PostgreSQL (``Session.begin_nested``
    costs several times more, per message); ORM changes made inside are flushed before the
    savepoint is released, and on failure the session forgets its ORM instances, as a
    rolled-back nested transaction would have it do. A failed ORM flush, though, leaves the
    session needing a rollback of its whole transaction: writes whose flush can fail (a unique
    key another writer may take first) belong under ``Session.begin_nested`` instead.

    A savepoint whose writes succeeded is released with the next one in the same transaction,
    in one round trip (``RELEASE SAVEPOINT a; SAVEPOINT b``), or by the commit that ends it: a
    batch of messages or objects paid a round trip to PostgreSQL for each release, one in ten
    of a message's. Until then later writes of the transaction sit inside it, which changes
    nothing: it is never rolled back to once its block has ended."""
    connection = session.connection()
    transaction = session.get_transaction()
    waiting = session.info.pop(_TO_RELEASE, None)
    if waiting is not None and waiting[0] is transaction:
        savepoint(connection, f"RELEASE SAVEPOINT {waiting[1]}", f"SAVEPOINT {name}")
    else:
        savepoint(connection, f"SAVEPOINT {name}")
    try:
        yield connection
        if session.new or session.dirty or session.deleted:
            session.flush()
    except BaseException:
        savepoint(connection, f"ROLLBACK TO SAVEPOINT {name}", f"RELEASE SAVEPOINT {name}")
        session.expunge_all()
        raise
    session.info[_TO_RELEASE] = (transaction, name)


def savepoint(conn: Connection, *statements: str) -> None:
    """``SAVEPOINT name``, ``RELEASE SAVEPOINT name`` or ``ROLLBACK TO SAVEPOINT name``, the
    same on SQLite and PostgreSQL, on the driver's cursor (plain statements, in order; on
    PostgreSQL several go in one round trip, the simple query protocol taking them as one
    string). Begins the connection's transaction first if nothing has (as executing through
    SQLAlchemy would)."""
    if not conn.in_transaction():
        conn.begin()
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn.dialect.name == "postgresql":
            cursor.execute("; ".join(statements))
        else:
            for statement in statements:  # sqlite3 runs one statement an execute
                cursor.execute(statement)
    finally:
        cursor.close()

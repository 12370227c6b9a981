"""Shared fixtures: a real database (SQLite and, when PACS_TEST_DATABASE_URL is set, PostgreSQL)
and a real server on loopback ports."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import create_engine, text

from pacs.archive import dul
from pacs.auth import accounts
from pacs.auth.access import Principal, current_principal
from pacs.auth.roles import Permission
from pacs.db import Database
from pacs.runtime import new_event_loop
from pacs.server import Server
from pacs.settings import SHIPPED_MAPPINGS, Settings

# The tests' DICOM clients are pynetdicom associations as well: the same fix of the reactor's
# pause (a response taken as an unexpected message under load) as the server's.
dul.close_pause_race()



def pytest_configure(config: pytest.Config) -> None:
    """argon2id at the cost the server uses (RFC 9106's second parameter set: 64 MiB, 3 passes)
    takes about 0.14 s a hash and as long a check here, by design. The suite makes the first
    administrator at each of about 1,400 server starts, and the users of every browser flow, and
    logs them in: in a test run's processes passwords are hashed with argon2id at its lowest
    cost instead. They are still argon2id hashes made and checked by the same code; servers the
    tests start as processes keep the full cost, and test_access checks what the shipped hasher
    makes. (Here, not at import: the benchmarks that import this module keep the full cost.)"""
    accounts._hasher = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8, parallelism=1),))

PG_URL = os.environ.get("PACS_TEST_DATABASE_URL")
DATA = Path(__file__).parent / "data"
# The pinned third-party files (pacs.assets: the labels' CJK font, the viewer), fetched once and
# kept across runs: the `installed_assets` and `installed_viewer` fixtures install them there.
ASSETS_DIR = Path(os.environ.get("PACS_TEST_ASSETS_DIR") or Path.home() / ".cache" / "pacs" / "assets")


def _pg_admin_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating each time would cost seconds)."""
    path = tmp_path_factory.mktemp("template") / "pacs.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    raw = db.engine.raw_connection()  # outside any transaction: a checkpoint can't run inside one
    try:
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
    db.dispose()
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    """A PostgreSQL database of this test run's own, migrated once."""
    if not PG_URL:
        yield None
        return
    name = f"pacs_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(_pg_admin_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    db = Database(url)
    db.migrate()
    db.dispose()
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate(url: str) -> None:
    """Empty every table a test may have written, and start every sequence again at 1.

    Only the tables holding rows are truncated: TRUNCATE gives each table it names new files,
    about 0.3 s for all of them, where asking which hold rows takes a few milliseconds."""
    db = Database(url)
    with db.engine.begin() as connection:
        tables = [r[0] for r in connection.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"))]
        holding = [r[0] for r in connection.execute(text(" UNION ALL ".join(
            f"SELECT '{t}' WHERE EXISTS (SELECT 1 FROM \"{t}\")" for t in tables)))] if tables else []
        if holding:
            connection.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in holding) + " CASCADE"))
        connection.execute(text(
            "SELECT setval(c.oid, 1, false) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'S' AND n.nspname = 'public'"))
    db.dispose()


# The database a test runs on when it checks what does not depend on the database (a process's
# life, a protocol's framing, who may call what): PostgreSQL where the run has one, as CI does.
ONE_DATABASE = "postgresql" if PG_URL else "sqlite"
one_database = pytest.mark.parametrize("database_url", [ONE_DATABASE], indirect=True)
"""Run a test once, on :data:`ONE_DATABASE`, where ``database_url`` would run it on each; what
it exercises reaches the database through services whose own tests run on both."""


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path,
                 pg_database: str | None) -> str:
    """Each test that asks for a database runs once per database."""
    return database_on(request.param, tmp_path, sqlite_template, pg_database)


def database_on(kind: str, tmp_path: Path, sqlite_template: Path, pg_database: str | None) -> str:
    """A fresh database of ``kind`` ("sqlite" or "postgresql") for one test."""
    if kind == "sqlite":
        target = tmp_path / "db" / "pacs.db"
        target.parent.mkdir()
        shutil.copy(sqlite_template, target)
        return f"sqlite:///{target}"
    if pg_database is None:
        pytest.skip("PostgreSQL run: set PACS_TEST_DATABASE_URL (as .ci/run does) to run this on PostgreSQL too")
    _truncate(pg_database)
    return pg_database


def mappings_dir_default() -> Path:
    return SHIPPED_MAPPINGS


@pytest.fixture
def mappings_dir() -> Path:
    return mappings_dir_default()


@pytest.fixture
def settings(tmp_path: Path, database_url: str, mappings_dir: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        mappings_dir=mappings_dir,
        host="127.0.0.1",
        mllp_port=0,
        http_port=0,
        dicom_port=0,
        mappings_poll_seconds=0.2,
        timezone="Asia/Shanghai",
        archive={"min_free_bytes": 0},
        # MLLP served in this process: a front process costs a Python start per server. The MLLP
        # tests turn it on (front_process_settings), as `pacs serve` has it by default.
        mllp={"front_process": False},
        # DICOM served in this process too: a receiver is a Python start per server, and tests
        # that patch a handler must see it called here. test_receivers covers the default.
        dicom={"processes": 1},
        admin_password=ADMIN_PASSWORD,
        assets={"dir": ASSETS_DIR},
    )


@pytest.fixture(scope="session")
def installed_assets() -> Path:
    """``pacs assets install`` of the labels' font into :data:`ASSETS_DIR`, once (a no-op when
    it is there)."""
    from pacs import assets

    assets.install(ASSETS_DIR, [assets.NOTO_SANS_SC])
    return ASSETS_DIR


@pytest.fixture(scope="session")
def installed_viewer(installed_assets: Path) -> Path:
    """The viewer's build (OHIF from the npm registry: unpacked, relocated and precompressed in
    about 10 s; 50 MB and 18 MB of compressed copies) installed beside it, once. A machine
    without the registry installs it first: ``pacs assets install --from FILE.tgz --dir`` and
    :data:`ASSETS_DIR`."""
    from pacs import assets

    assets.install(ASSETS_DIR, [assets.OHIF_VIEWER])
    return ASSETS_DIR


def front_process_settings(settings: Settings) -> Settings:
    """``settings`` with the MLLP front process on (``pacs serve``'s default)."""
    return settings.model_copy(update={"mllp": settings.mllp.model_copy(update={"front_process": True})})


ADMIN_PASSWORD = "test-admin-password"  # the first administrator's, on every test server
EVERYONE = Principal(name="", kind="user", permissions=frozenset(Permission), roles=("admin",))


def anyone_may_do_anything() -> Principal:
    return EVERYONE


class RunningServer:
    """A :class:`pacs.server.Server` on its own event loop in a background thread."""

    def __init__(self, settings: Settings, *, guarded: bool = False) -> None:
        self.settings = settings
        self.server = Server(settings)
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.guarded = guarded

    def start(self) -> RunningServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(60)
        if not self.guarded:
            # Tests of what the HTTP side does, not of who may: every request may do everything
            # (FastAPI's dependency overrides). The access-control tests use `guarded_server`.
            self.server.app.dependency_overrides[current_principal] = anyone_may_do_anything
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(60)
        # what asyncio.run does on the way out: the loop's worker threads and its selector go too,
        # or each test would leave them behind in the test process
        asyncio.run_coroutine_threadsafe(self.loop.shutdown_default_executor(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()

    @property
    def mllp_port(self) -> int:
        return self.server.mllp_port

    @property
    def dicom_port(self) -> int:
        return self.server.dicom_port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def db(self) -> Database:
        assert self.server.services is not None
        return self.server.services.db


@pytest.fixture
def server(settings: Settings) -> Iterator[RunningServer]:
    running = RunningServer(settings).start()
    yield running
    running.stop()


@pytest.fixture
def guarded_server(settings: Settings) -> Iterator[RunningServer]:
    """A server whose HTTP side asks who is calling, as `pacs serve` does (admin's password:
    :data:`ADMIN_PASSWORD`)."""
    running = RunningServer(settings, guarded=True).start()
    yield running
    running.stop()


@pytest.fixture
def start_server(settings: Settings) -> Iterator:
    """Start a server with changed settings: ``start_server(mllp={"max_message_bytes": 2000})``."""
    started: list[RunningServer] = []

    def start(guarded: bool = False, **changes: object) -> RunningServer:
        update = {}
        for key, value in changes.items():
            current = getattr(settings, key)
            update[key] = current.model_copy(update=value) if isinstance(value, dict) else value
        running = RunningServer(settings.model_copy(update=update), guarded=guarded).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()

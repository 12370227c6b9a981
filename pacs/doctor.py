"""``pacs doctor``: is this installation able to run, and is anything about to go wrong?

Each check prints one line per finding, ``ok: ...`` or ``problem: ...``, and the command exits 1
when there is any problem. What it looks at, in order:

- **configuration**: the settings load (environment, ``--config`` file);
- **database**: it answers, and its schema is at the newest migration (``pacs serve`` migrates
  at start; a schema newer than this installation's migrations is a problem too);
- **storage areas**: each one is writable (a file written, synced and removed) and the area new
  objects go to has more free space than ``[archive] min_free_bytes``;
- **ports**: DICOM, MLLP, HTTP (and the TLS ports configured, ``[metrics] port``) are free, or
  held by a running ``pacs serve`` (named with its pid); held by anything else is a problem;
- **certificates**: every certificate file the settings name (a field whose name says
  certificate or CA, in any section) parses, is valid now and for :data:`EXPIRY_WARNING_DAYS`
  more days;
- **mappings**: what ``pacs mappings check`` reports;
- **peers**: each ``[[peers]]`` entry answers a C-ECHO (PS3.4 Annex A, Verification), over TLS
  for one with ``tls = true``;
- **clock**: on PostgreSQL, this machine's clock against the database server's ``now()``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pacs.settings import Settings

EXPIRY_WARNING_DAYS = 30  # a certificate expiring sooner than this is a problem now
CLOCK_SKEW_MAX_SECONDS = 2.0  # this machine's clock may differ from the database server's by this
DEFAULT_TIMEOUT = 5.0  # seconds for the database to connect and a peer to answer
PROBE_BYTES = b"pacs doctor\n"  # written to each storage area and removed
CERTIFICATE_FIELD = re.compile(r"cert|(^|_)ca(_|$)")  # a settings field naming a certificate file
ECHO_SUCCESS = 0x0000  # C-ECHO status Success (PS3.4 A.4.2)
TCP_LISTEN = "0A"  # the LISTEN state in /proc/net/tcp (include/net/tcp_states.h)


@dataclass
class Finding:
    ok: bool
    what: str

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'problem'}: {self.what}"


def ok(what: str) -> Finding:
    return Finding(True, what)


def problem(what: str) -> Finding:
    return Finding(False, what)


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    doctor = sub.add_parser("doctor", help="check the configuration, database, storage, ports, certificates, "
                                           "mappings, peers and clock; a line per finding, exit 1 on a problem")
    common(doctor)
    doctor.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds a database or a peer may take to answer (default {DEFAULT_TIMEOUT:g})")


def run(args: argparse.Namespace, load: Callable[[], Settings]) -> int:
    """Print every finding; 0 if none is a problem."""
    problems = 0
    for finding in check_all(load, timeout=args.timeout):
        print(finding, flush=True)
        problems += not finding.ok
    print(f"{problems} problem(s)" if problems else "no problem found")
    return 1 if problems else 0


def check_all(load: Callable[[], Settings], *, timeout: float = DEFAULT_TIMEOUT) -> Iterator[Finding]:
    try:
        settings = load()
    except Exception as exc:
        yield from configuration_problems(exc)
        return
    yield ok(f"configuration: loaded{f' from {settings.config}' if settings.config else ''}")
    server_time = yield from database(settings, timeout)
    yield from storage(settings)
    yield from ports(settings)
    yield from certificates(settings)
    yield from mappings(settings)
    yield from peers(settings, timeout)
    yield from clock(settings, server_time)


def configuration_problems(exc: Exception) -> Iterator[Finding]:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic's ValidationError: one line per setting
        for error in errors():
            where = ".".join(str(part) for part in error.get("loc", ())) or "settings"
            yield problem(f"configuration: {where}: {error.get('msg', '')}")
        return
    yield problem(f"configuration: {exc}")


# -- database -----------------------------------------------------------------------------------
def _engine(url: str, timeout: float) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    connect_args = {"connect_timeout": max(1, round(timeout))} if url.startswith("postgresql") else {}
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def database(settings: Settings, timeout: float) -> Iterator[Finding]:
    """The database answers and its schema is at the newest migration; returns the server's
    clock reading (PostgreSQL) as ``(its now, this machine's now)`` for :func:`clock`."""
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from pacs.db import MIGRATIONS_DIR

    url = settings.effective_database_url
    shown = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)  # no password in the output
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        yield problem(f"database: {shown} does not exist yet (pacs serve makes it at its first start)")
        return None
    engine = _engine(url, timeout)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            server_time = None
            if engine.dialect.name == "postgresql":
                before = time.time()
                server_now = connection.execute(text("SELECT now()")).scalar_one()
                server_time = (server_now, datetime.fromtimestamp((before + time.time()) / 2, UTC))
            current = set(MigrationContext.configure(connection).get_current_heads())
    except Exception as exc:
        yield problem(f"database: {shown} does not answer: {_first_line(exc)}")
        return None
    finally:
        engine.dispose()
    yield ok(f"database: {shown} answers")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    heads = set(ScriptDirectory.from_config(config).get_heads())
    if current == heads:
        yield ok(f"database: schema at the newest migration ({', '.join(sorted(heads))})")
    elif not current:
        yield problem("database: no schema yet (pacs serve makes it at its first start)")
    else:
        yield problem(f"database: schema at {', '.join(sorted(current)) or 'none'}, this installation's newest is "
                      f"{', '.join(sorted(heads))} (pacs serve migrates at start; a newer schema needs a newer pacs)")
    return server_time


# -- storage ------------------------------------------------------------------------------------
def storage(settings: Settings) -> Iterator[Finding]:
    from pacs.archive.storage.manager import build_area
    from pacs.settings import StorageAreaSettings

    specs = list(settings.storage.areas)
    if not any(spec.name == "online" for spec in specs):
        specs.insert(0, StorageAreaSettings(name="online"))
    first = settings.storage.write[0] if settings.storage.write else "online"
    for spec in specs:
        try:
            area = build_area(spec, settings)
        except OSError as exc:  # a folder area makes its folders as it is built
            folder = spec.path or (settings.storage_dir if spec.name == "online"
                                   else settings.data_dir / f"storage-{spec.name}")
            yield problem(f"storage area {spec.name} ({spec.kind}, {folder}) is not writable: {_first_line(exc)}")
            continue
        except Exception as exc:
            yield problem(f"storage area {spec.name}: {_first_line(exc)}")
            continue
        root = getattr(area, "root", None)
        where = f"{spec.name} ({spec.kind}{f', {root}' if root else ''})"
        try:
            _probe(area, root)
        except Exception as exc:
            yield problem(f"storage area {where} is not writable: {_first_line(exc)}")
            continue
        try:
            free = area.free_bytes()
        except Exception as exc:
            yield problem(f"storage area {where}: free space unknown: {_first_line(exc)}")
            continue
        minimum = settings.archive.min_free_bytes
        if spec.name == first and free < minimum:
            yield problem(f"storage area {where}: {_size(free)} free, below [archive] min_free_bytes "
                          f"({_size(minimum)}): new objects are refused")
        else:
            yield ok(f"storage area {where} is writable, {_size(free)} free")


def _probe(area: Any, root: Path | None) -> None:
    """Write, sync and remove a small file (a folder area) or object (an object store)."""
    if root is None:
        stored = area.put_bytes(PROBE_BYTES)
        area.remove(stored.key)
        return
    if not Path(root).is_dir():
        raise OSError(f"{root} does not exist (pacs serve makes it at start)")
    with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-") as handle:
        handle.write(PROBE_BYTES)
        handle.flush()
        os.fsync(handle.fileno())


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


# -- ports --------------------------------------------------------------------------------------
def ports(settings: Settings) -> Iterator[Finding]:
    wanted = [("DICOM", settings.host, settings.dicom_port), ("MLLP", settings.host, settings.mllp_port)]
    if settings.http.plain:
        wanted.append(("HTTP", settings.host, settings.http_port))
    for name, section in (("DICOM TLS", settings.dicom), ("MLLP TLS", settings.mllp), ("HTTPS", settings.http)):
        if section.tls:
            wanted.append((name, settings.host, section.tls_port))
    if settings.metrics.port:
        wanted.append(("metrics", "127.0.0.1", settings.metrics.port))
    for name, host, port in wanted:
        if not port:
            continue
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
                sock.bind((host, port))
            yield ok(f"port {port} ({name}) is free")
            continue
        except OSError as exc:
            reason = exc.strerror or str(exc)
        holders = listening_processes(port)
        serving = sorted({main for pid, command in holders if (main := _pacs_serve(pid, command)) is not None})
        if serving:
            yield ok(f"port {port} ({name}) is held by a running pacs serve (pid {', '.join(map(str, serving))})")
        elif holders:
            pid, command = holders[0]
            yield problem(f"port {port} ({name}) is taken by another program: pid {pid}, {command}")
        else:
            yield problem(f"port {port} ({name}) cannot be bound on {host}: {reason}")


def _pacs_serve(pid: int, command: str) -> int | None:
    """The pid of the ``pacs serve`` that process ``pid`` is, or is a helper process of (the MLLP
    front holds the MLLP port too); None for any other program."""
    if command.startswith("pacs serve"):
        return pid
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        command = (Path(f"/proc/{parent}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    except (OSError, StopIteration, ValueError):
        return None
    return parent if _command(command.strip()).startswith("pacs serve") else None


def listening_processes(port: int) -> list[tuple[int, str]]:
    """(pid, command line) of each process holding the socket listening on TCP ``port`` (Linux
    /proc; none seen for another user's process without root)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == TCP_LISTEN:
                inodes.add(f"socket:[{fields[9]}]")
    found: list[tuple[int, str]] = []
    if not inodes:
        return found
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            for fd in (process / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    command = (process / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found.append((int(process.name), _command(command.strip())))
                    break
        except OSError:
            continue
    return sorted(found)


def _command(command: str) -> str:
    """A command line as people say it: ``/opt/pacs/bin/python /opt/pacs/bin/pacs serve ...``
    becomes ``pacs serve ...``."""
    words = command.split()
    for index, word in enumerate(words):
        if Path(word).name == "pacs" or word == "pacs.cli":
            return " ".join(["pacs", *words[index + 1:]])
    return command


# -- certificates -------------------------------------------------------------------------------
def certificate_files(settings: Settings) -> list[tuple[str, Path]]:
    """Every certificate file the settings name: fields whose name says certificate or CA, in
    any section or list entry (``[http] certificate``, ``[[peers]] ca_file`` ...)."""
    found: list[tuple[str, Path]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(f"{prefix}.{name}" if prefix else name, getattr(value, name))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(f"{prefix}[{index}]", item)
        elif isinstance(value, Path | str) and value and "key" not in prefix.rsplit(".", 1)[-1]:
            if CERTIFICATE_FIELD.search(prefix.rsplit(".", 1)[-1].lower()):
                found.append((prefix, Path(value)))

    walk("", settings)
    return found


def certificates(settings: Settings, now: datetime | None = None) -> Iterator[Finding]:
    files = certificate_files(settings)
    if not files:
        yield ok("certificates: none configured")
    for setting, path in files:
        yield from check_certificate(setting, path, now)


def check_certificate(setting: str, path: Path, now: datetime | None = None) -> Iterator[Finding]:
    """Each certificate in the PEM file ``path`` is valid now and for :data:`EXPIRY_WARNING_DAYS`
    more days (RFC 5280 4.1.2.5, the validity period)."""
    from cryptography import x509

    now = now or datetime.now(UTC)
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        yield problem(f"certificate {path} ({setting}) cannot be read: {_first_line(exc)}")
        return
    for certificate in certificates:
        subject = certificate.subject.rfc4514_string() or "(no subject)"
        start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        if now < start:
            yield problem(f"certificate {path} ({setting}) {subject}: not valid before {start:%Y-%m-%d %H:%M} UTC")
        elif now >= end:
            yield problem(f"certificate {path} ({setting}) {subject}: expired on {end:%Y-%m-%d}")
        elif end - now < timedelta(days=EXPIRY_WARNING_DAYS):
            yield problem(f"certificate {path} ({setting}) {subject}: expires on {end:%Y-%m-%d}, "
                          f"in {(end - now).days} day(s)")
        else:
            yield ok(f"certificate {path} ({setting}) {subject}: valid until {end:%Y-%m-%d}")


# -- mappings -----------------------------------------------------------------------------------
def mappings(settings: Settings) -> Iterator[Finding]:
    from pacs.integration import mapping

    loaded, problems = mapping.load(settings.mappings_dir)
    for text in problems:
        yield problem(f"mappings: {text}")
    if loaded is not None and not problems:
        yield ok(f"mappings in {settings.mappings_dir}: {len(loaded.profiles)} field maps, "
                 f"{len(loaded.codes)} code tables, {len(loaded.procedures)} procedures")


# -- peers --------------------------------------------------------------------------------------
def peers(settings: Settings, timeout: float) -> Iterator[Finding]:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from pacs.archive import transport
    from pacs.tls import TLSConfigurationError

    if not settings.peers:
        yield ok("peers: none configured")
    for peer in settings.peers:
        where = f"peer {peer.ae_title} ({peer.host}:{peer.port}{', TLS' if peer.tls else ''})"
        ae = AE(ae_title=settings.ae_title)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.connection_timeout = timeout
        started = time.monotonic()
        try:
            assoc = transport.associate(ae, settings, peer)  # over TLS to a peer with tls = true
        except TLSConfigurationError as exc:
            yield problem(f"{where}: {exc}")
            continue
        try:
            if assoc.is_rejected:
                yield problem(f"{where} rejected the association (is {settings.ae_title} known there?)")
            elif not assoc.is_established:
                yield problem(f"{where} does not answer within {timeout:g} s")
            else:
                status = assoc.send_c_echo()
                code = int(status.Status) if "Status" in status else None
                if code == ECHO_SUCCESS:
                    yield ok(f"{where} answers C-ECHO ({(time.monotonic() - started) * 1000:.0f} ms)")
                else:
                    yield problem(f"{where}: C-ECHO answered {f'0x{code:04X}' if code is not None else 'nothing'}")
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()


# -- clock --------------------------------------------------------------------------------------
def clock(settings: Settings, server_time: tuple[datetime, datetime] | None) -> Iterator[Finding]:
    if server_time is None:
        if settings.effective_database_url.startswith("sqlite"):
            yield ok("clock: the database runs in this process (SQLite); no server clock to compare with")
        return
    theirs, ours = server_time
    skew = (ours - theirs).total_seconds()
    if abs(skew) > CLOCK_SKEW_MAX_SECONDS:
        yield problem(f"clock: this machine is {abs(skew):.1f} s {'ahead of' if skew > 0 else 'behind'} the "
                      f"database server (more than {CLOCK_SKEW_MAX_SECONDS:g} s): set both from one NTP source")
    else:
        yield ok(f"clock: within {abs(skew):.2f} s of the database server's")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]

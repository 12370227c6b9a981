"""Backup and restore: the database and every stored object, incrementally, and a way to check a
backup without restoring it.

A backup folder holds database snapshots and the objects they reference, each object once::

    DEST/BACKUP.json                  what this folder is, and its latest snapshot
    DEST/objects/ab/cd/<sha256>       every stored object, named by its SHA-256 (copied once)
    DEST/areas/<area>/...             container areas (tape-like tar files), mirrored file by file
    DEST/snapshots/<UTC time>/
        database.sqlite | database.pgdump
        files.jsonl                   every copy the snapshot's index holds: area, key, sha256, size
        mirror.jsonl                  the container files the snapshot needs: area, path, sha256, size
        manifest.json                 when, which database, its SHA-256, counts, problems

``pacs backup DEST`` takes a consistent database snapshot — SQLite through its online backup API,
PostgreSQL with ``pg_dump -Fc`` inside an exported snapshot from which the list of copies is read
too — then copies every object the snapshot references that DEST does not hold yet, checking each
against the SHA-256 the index recorded when it was stored (a copy that no longer matches is
reported, and another copy of the instance is used when one is intact). Objects are shared by all
snapshots; the oldest snapshots beyond ``[backup] keep`` go, with the objects no snapshot needs.
The trash is not emptied while a backup runs (:func:`pacs.archive.retention.backup_lock`).

``pacs backup --verify DEST`` checks the newest snapshot (or all): the database copy's SHA-256 and
integrity (``PRAGMA integrity_check``; ``pg_restore --list``), and every object it needs, re-hashed.

``pacs restore SRC`` refuses a data folder, storage area or database that is not empty; it puts the
database back (a copy of the SQLite file; ``pg_restore`` into the empty PostgreSQL database), brings
its schema up to date, and writes every object back under the key the index knows it by, checking
each one's SHA-256: the same index, byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from pacs.archive.retention import backup_lock
from pacs.archive.storage import CHUNK, StorageArea, _fsync_dir
from pacs.db import Database, schema_revision, utcnow
from pacs.settings import Settings

log = logging.getLogger(__name__)

FORMAT = 1
SQLITE_FILE, PG_FILE = "database.sqlite", "database.pgdump"
Progress = Callable[[str, int, int], None]  # (stage, done, total)


class BackupError(Exception):
    """The backup or restore cannot go on; the message says why and what to do."""


@dataclass
class BackupResult:
    snapshot: str
    database: str
    files: int = 0
    copied: int = 0
    bytes_copied: int = 0
    mirrored: int = 0
    pruned_snapshots: list[str] = field(default_factory=list)
    pruned_objects: int = 0
    problems: list[str] = field(default_factory=list)  # copies the backup lacks
    warnings: list[str] = field(default_factory=list)  # damaged copies in the archive, backed up from another

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyResult:
    snapshots: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.snapshots)


@dataclass
class RestoreResult:
    snapshot: str
    database: str
    files: int = 0
    bytes: int = 0
    mirrored: int = 0


# -- helpers ----------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _object_path(dest: Path, checksum: str) -> Path:
    return dest / "objects" / checksum[:2] / checksum[2:4] / checksum


def _write_json(path: Path, data: Any) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    with staging.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(staging, path)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def _copy_hashing(source: Any, target: Path) -> tuple[str, int]:
    """Stream ``source`` (a binary file object) to ``target``, fsynced; returns (sha256, size)."""
    digest = hashlib.sha256()
    size = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def storage_areas(settings: Settings, db: Database | None = None) -> dict[str, StorageArea]:
    """Every configured storage area by name, as the server builds them."""
    from pacs.archive.storage.manager import StorageManager

    own = db is None
    db = db or Database(settings.effective_database_url)  # not connected to: the manager only keeps it
    try:
        manager = StorageManager.from_settings(settings, db)
        areas = dict(manager.areas)
        manager.stop()
        return areas
    finally:
        if own:
            db.dispose()


def _is_container(area: StorageArea) -> bool:
    from pacs.archive.storage.container import ContainerArea

    return isinstance(area, ContainerArea)


def _pg_url(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL for pg_dump/pg_restore (no password on the command line) and its environment."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


def snapshots(dest: Path) -> list[str]:
    """Complete snapshots in a backup folder, oldest first."""
    folder = dest / "snapshots"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / "manifest.json").is_file())


def last_backup_time(dest: Path) -> datetime | None:
    names = snapshots(dest)
    if not names:
        return None
    manifest = json.loads((dest / "snapshots" / names[-1] / "manifest.json").read_text())
    return datetime.fromisoformat(manifest["created"])


# -- backup -----------------------------------------------------------------------------------

def _copies_sqlite(path: Path) -> list[tuple[str, str, str, int, int]]:
    """(area, key, checksum, size, instance) of every copy in a SQLite database file."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in connection.execute(  # type: ignore[misc]
            "SELECT area, key, checksum, size, instance FROM instance_file ORDER BY id")]
    finally:
        connection.close()


def _snapshot_sqlite(source: Path, target: Path) -> None:
    """SQLite's online backup API: a consistent copy while the server keeps writing."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)
    dst = sqlite3.connect(target)
    try:
        # In one step: a read transaction on the WAL snapshot, which writers do not disturb (a
        # stepwise backup starts over whenever another connection writes, and a busy archive
        # always writes).
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        dst.close()
        src.close()
    _fsync_file(target)
    problem = _sqlite_integrity(target)
    if problem:
        raise BackupError(f"the database copy fails its integrity check ({problem}); the previous snapshots "
                          "are kept. Check the archive's database before backing up again.")


def _sqlite_integrity(path: Path) -> str | None:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = [r[0] for r in connection.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        connection.close()
    return None if result == ["ok"] else "; ".join(result[:5])


def _snapshot_postgresql(url: str, target: Path) -> list[tuple[str, str, str, int, int]]:
    """pg_dump -Fc inside an exported snapshot; the list of copies is read in that snapshot too."""
    if shutil.which("pg_dump") is None:
        raise BackupError("pg_dump is not installed; install the PostgreSQL client tools (apt-get install "
                          "postgresql-client) in the version of the server or newer")
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1)
                           if url.startswith("postgresql://") else url)
    try:
        with engine.connect().execution_options(isolation_level="REPEATABLE READ",
                                                postgresql_readonly=True) as connection:
            with connection.begin():  # one snapshot for the list of copies and for pg_dump
                snapshot = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
                copies = [tuple(r) for r in connection.execute(text(
                    "SELECT area, key, checksum, size, instance FROM instance_file ORDER BY id"))]
                libpq, env = _pg_url(url)
                done = subprocess.run(["pg_dump", "-Fc", "--no-owner", f"--snapshot={snapshot}", "-f", str(target),
                                       libpq], capture_output=True, text=True, env=env)
    finally:
        engine.dispose()
    if done.returncode != 0:
        raise BackupError(f"pg_dump failed: {done.stderr.strip()}")
    _fsync_file(target)
    return copies  # type: ignore[return-value]


def _alembic_revision(url: str) -> str:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1)
                           if url.startswith("postgresql://") else url)
    try:
        return schema_revision(engine) or ""
    finally:
        engine.dispose()


def backup(settings: Settings, dest: Path, *, areas: dict[str, StorageArea] | None = None,
           progress: Progress | None = None, keep: int | None = None, audit: Any = None) -> BackupResult:
    """Back up the database and every object it references into ``dest`` (incrementally)."""
    url = settings.effective_database_url
    areas = areas if areas is not None else storage_areas(settings)
    keep = settings.backup.keep if keep is None else keep
    dest.mkdir(parents=True, exist_ok=True)
    marker = dest / "BACKUP.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("format") != FORMAT:
            raise BackupError(f"{dest} holds a backup of format {info.get('format')}, not {FORMAT}")
    elif any(p for p in dest.iterdir() if not p.name.startswith(".")):
        raise BackupError(f"{dest} is not empty and is not a pacs backup folder; give an empty or new folder")
    else:
        _write_json(marker, {"format": FORMAT, "kind": "pacs backup", "latest": None})
    sqlite_file = _sqlite_path(url)
    with backup_lock(settings.data_dir):
        name = utcnow().strftime("%Y%m%dT%H%M%S%fZ")
        partial = dest / "snapshots" / f".{name}.partial"
        partial.mkdir(parents=True)
        result = BackupResult(snapshot=name, database="sqlite" if sqlite_file else "postgresql")
        try:
            if sqlite_file is not None:
                if not sqlite_file.is_file():
                    raise BackupError(f"the database {sqlite_file} does not exist")
                _snapshot_sqlite(sqlite_file, partial / SQLITE_FILE)
                copies = _copies_sqlite(partial / SQLITE_FILE)
                db_file = partial / SQLITE_FILE
            else:
                copies = _snapshot_postgresql(url, partial / PG_FILE)
                db_file = partial / PG_FILE
            result.files = len(copies)
            entries = _copy_objects(dest, copies, areas, url, result, progress)
            mirror = _mirror_containers(dest, areas, result, progress)
            _write_lines(partial / "files.jsonl", entries)
            _write_lines(partial / "mirror.jsonl", mirror)
            manifest = {
                "format": FORMAT, "created": utcnow().isoformat(), "database": result.database,
                "database_file": db_file.name, "database_sha256": _sha256(db_file),
                "database_bytes": db_file.stat().st_size, "alembic_revision": _alembic_revision(url),
                "pacs_version": _version(), "files": len(entries), "mirrored_files": len(mirror),
                "bytes": sum(e["size"] for e in entries), "problems": result.problems,
                "warnings": result.warnings[:1000],
            }
            _write_json(partial / "manifest.json", manifest)
            _fsync_dir(partial)
            os.replace(partial, dest / "snapshots" / name)
            _fsync_dir(dest / "snapshots")
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        _write_json(marker, {"format": FORMAT, "kind": "pacs backup", "latest": name})
        result.pruned_snapshots, result.pruned_objects = prune(dest, keep)
    log.info("backup %s to %s: %d copies, %d object(s) new (%d bytes), %d problem(s)", name, dest, result.files,
             result.copied, result.bytes_copied, len(result.problems))
    if audit is not None:
        from pacs.audit import Event, codes

        audit.record(Event(codes.EXPORT, "R", 0 if result.ok else 4, user="backup", user_kind="system",
                           target=str(dest), description=f"backup {name}: {result.files} copies, "
                                                         f"{result.copied} new object(s)"
                                                         + (f", {len(result.problems)} problem(s)"
                                                            if result.problems else ""),
                           details={"object": str(dest), **{k: v for k, v in asdict(result).items()
                                                             if k != "problems"},
                                    "problems": result.problems[:100]}))
    return result


def _version() -> str:
    from pacs import __version__

    return __version__


def _write_lines(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w") as out:
        for row in rows:
            out.write(json.dumps(row, sort_keys=True) + "\n")
        out.flush()
        os.fsync(out.fileno())


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open() as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _copy_objects(dest: Path, copies: list[tuple[str, str, str, int, int]], areas: dict[str, StorageArea],
                  url: str, result: BackupResult, progress: Progress | None) -> list[dict[str, Any]]:
    """Every copy's object into DEST/objects unless it is there already; the snapshot's entries."""
    entries: list[dict[str, Any]] = []
    staging = dest / "objects" / ".incoming"
    staging.mkdir(parents=True, exist_ok=True)
    alternatives: dict[int, list[tuple[str, str, str]]] | None = None
    for number, (area_name, key, checksum, size, instance) in enumerate(copies, 1):
        if progress is not None:
            progress("objects", number, len(copies))
        area = areas.get(area_name)
        if area is not None and _is_container(area):
            entries.append({"area": area_name, "key": key, "sha256": checksum, "size": size, "mirrored": True})
            continue
        if checksum and _object_path(dest, checksum).is_file():
            entries.append({"area": area_name, "key": key, "sha256": checksum, "size": size})
            continue
        sources = [(area_name, key, checksum)]
        if alternatives is None:
            alternatives = _all_copies(url)
        sources += [c for c in alternatives.get(instance, []) if c[:2] != (area_name, key) and c[2] == checksum]
        copied, failures = None, []
        for source_area, source_key, _checksum in sources:
            got = _copy_one(dest, staging, areas.get(source_area), source_key, checksum)
            if isinstance(got, str):
                failures.append(f"{source_area}/{source_key}: {got}")
                continue
            copied = got
            break
        if copied is None:
            result.problems += failures
            continue
        result.warnings += failures
        digest, length, new = copied
        if new:
            result.copied += 1
            result.bytes_copied += length
        entries.append({"area": area_name, "key": key, "sha256": digest, "size": length})
    return entries


def _all_copies(url: str) -> dict[int, list[tuple[str, str, str]]]:
    """Every copy in the live index, by instance (to take another copy when one is damaged)."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1)
                           if url.startswith("postgresql://") else url)
    out: dict[int, list[tuple[str, str, str]]] = {}
    try:
        with engine.connect() as connection:
            for instance, area, key, checksum in connection.execute(text(
                    "SELECT instance, area, key, checksum FROM instance_file")):
                out.setdefault(instance, []).append((area, key, checksum))
    finally:
        engine.dispose()
    return out


def _copy_one(dest: Path, staging: Path, area: StorageArea | None, key: str,
              checksum: str) -> tuple[str, int, bool] | str:
    """Copy one object into DEST/objects; (sha256, size, newly copied) or what went wrong."""
    if area is None:
        return "its storage area is not configured here"
    temporary = staging / f"{os.getpid()}-{key.replace('/', '_')}"
    try:
        with closing(area.open(key)) as source:
            digest, size = _copy_hashing(source, temporary)
    except Exception as exc:
        temporary.unlink(missing_ok=True)
        return f"cannot be read ({exc})"
    if checksum and digest != checksum:
        temporary.unlink(missing_ok=True)
        return f"its bytes no longer match the SHA-256 recorded at storage ({digest[:12]}… ≠ {checksum[:12]}…)"
    target = _object_path(dest, digest)
    if target.is_file():
        temporary.unlink(missing_ok=True)
        return digest, size, False
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temporary, target)
    _fsync_dir(target.parent)
    return digest, size, True


def _mirror_containers(dest: Path, areas: dict[str, StorageArea], result: BackupResult,
                       progress: Progress | None) -> list[dict[str, Any]]:
    """Container areas file by file (tar files are written once: only new ones are copied)."""
    entries: list[dict[str, Any]] = []
    for name, area in areas.items():
        if not _is_container(area):
            continue
        root: Path = area.root  # type: ignore[attr-defined]
        known_file = dest / "areas" / f"{name}.jsonl"
        known = {e["path"]: e for e in _read_lines(known_file)}
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if not path.is_file() or relative.parts[0].startswith("."):
                continue
            stat = path.stat()
            rel = str(relative)
            target = dest / "areas" / name / rel
            seen = known.get(rel)
            if seen and seen["size"] == stat.st_size and seen["mtime_ns"] == stat.st_mtime_ns and target.is_file():
                entries.append({"area": name, **seen})
                continue
            with path.open("rb") as source:
                staging = target.with_name(f".{target.name}.tmp")
                digest, size = _copy_hashing(source, staging)
            os.replace(staging, target)
            entry = {"path": rel, "sha256": digest, "size": size, "mtime_ns": stat.st_mtime_ns}
            known[rel] = entry
            entries.append({"area": name, **entry})
            result.mirrored += 1
            result.bytes_copied += size
        if known:
            _write_lines(known_file, [e for e in known.values() if (root / e["path"]).is_file()])
    return entries


def prune(dest: Path, keep: int) -> tuple[list[str], int]:
    """Remove snapshots beyond the newest ``keep``, and objects no remaining snapshot needs."""
    names = snapshots(dest)
    if keep < 1 or len(names) <= keep:
        return [], 0
    gone = names[:-keep]
    for name in gone:
        shutil.rmtree(dest / "snapshots" / name)
    needed: set[str] = set()
    for name in names[-keep:]:
        needed.update(e["sha256"] for e in _read_lines(dest / "snapshots" / name / "files.jsonl"))
    removed = 0
    for path in (dest / "objects").glob("??/??/*"):
        if path.is_file() and path.name not in needed:
            path.unlink()
            removed += 1
    return gone, removed


# -- verify -----------------------------------------------------------------------------------

def verify(dest: Path, *, snapshot: str | None = None, every: bool = False, quick: bool = False,
           progress: Progress | None = None) -> VerifyResult:
    """Check a backup without restoring it: database copy and every object of the snapshot(s)."""
    result = VerifyResult()
    names = snapshots(dest)
    if not (dest / "BACKUP.json").is_file() or not names:
        result.problems.append(f"{dest} holds no complete pacs backup")
        return result
    chosen = names if every else [snapshot] if snapshot else names[-1:]
    checked: set[str] = set()
    for name in chosen:
        folder = dest / "snapshots" / name
        if not (folder / "manifest.json").is_file():
            result.problems.append(f"snapshot {name} does not exist (have: {', '.join(names)})")
            continue
        result.snapshots.append(name)
        manifest = json.loads((folder / "manifest.json").read_text())
        for problem in manifest.get("problems", [])[:20]:
            result.problems.append(f"{name}: when backed up: {problem}")
        db_file = folder / manifest["database_file"]
        if not db_file.is_file():
            result.problems.append(f"{name}: the database copy {db_file.name} is missing")
        else:
            if _sha256(db_file) != manifest["database_sha256"]:
                result.problems.append(f"{name}: the database copy does not match its recorded SHA-256")
            if manifest["database"] == "sqlite":
                problem = _sqlite_integrity(db_file)
                if problem:
                    result.problems.append(f"{name}: PRAGMA integrity_check: {problem}")
                else:
                    held = len(_copies_sqlite(db_file))
                    if held != manifest["files"]:
                        result.problems.append(f"{name}: {held - manifest['files']} of the database's {held} "
                                               "copies have no object in the backup")
            else:
                problem = _pg_restore_list(db_file)
                if problem:
                    result.problems.append(f"{name}: pg_restore --list: {problem}")
        entries = list(_read_lines(folder / "files.jsonl"))
        if len(entries) != manifest["files"]:
            result.problems.append(f"{name}: files.jsonl lists {len(entries)} copies, the manifest {manifest['files']}")
        for number, entry in enumerate(entries, 1):
            if progress is not None:
                progress("objects", number, len(entries))
            if entry.get("mirrored"):
                continue
            result.files += 1
            digest = entry["sha256"]
            path = _object_path(dest, digest)
            if not path.is_file():
                result.problems.append(f"{name}: {entry['area']}/{entry['key']}: object {digest[:12]}… is missing")
                continue
            if path.stat().st_size != entry["size"]:
                result.problems.append(f"{name}: {entry['area']}/{entry['key']}: object {digest[:12]}… has "
                                       f"{path.stat().st_size} bytes, not {entry['size']}")
                continue
            result.bytes += entry["size"]
            if not quick and digest not in checked:
                if _sha256(path) != digest:
                    result.problems.append(f"{name}: object {digest[:12]}… is damaged (its SHA-256 changed)")
                checked.add(digest)
        for entry in _read_lines(folder / "mirror.jsonl"):
            path = dest / "areas" / entry["area"] / entry["path"]
            if not path.is_file() or path.stat().st_size != entry["size"]:
                result.problems.append(f"{name}: container file {entry['area']}/{entry['path']} is missing or "
                                       "truncated")
            elif not quick and _sha256(path) != entry["sha256"]:
                result.problems.append(f"{name}: container file {entry['area']}/{entry['path']} is damaged")
    return result


def _pg_restore_list(dump: Path) -> str | None:
    if shutil.which("pg_restore") is None:
        return "pg_restore is not installed (PostgreSQL client tools)"
    done = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True)
    if done.returncode != 0:
        return done.stderr.strip() or f"exit status {done.returncode}"
    if "TABLE DATA" not in done.stdout:
        return "the dump holds no table data"
    return None


# -- restore ----------------------------------------------------------------------------------

def _not_empty(path: Path, ignore: tuple[str, ...] = ()) -> bool:
    return path.exists() and any(p for p in path.iterdir() if p.name not in ignore)


def _area_in_use(area: StorageArea) -> bool:
    root = getattr(area, "root", None)
    if isinstance(root, Path):
        return root.exists() and any(p for p in root.iterdir() if not p.name.startswith("."))
    try:
        return next(iter(area.keys()), None) is not None
    except Exception:
        return False


def _pg_tables(url: str) -> list[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1)
                           if url.startswith("postgresql://") else url)
    try:
        with engine.connect() as connection:
            return [r[0] for r in connection.execute(text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"))]
    finally:
        engine.dispose()


def _put_at(area: StorageArea, key: str, source: Path) -> None:
    """Write ``source`` into ``area`` under ``key`` (the key the restored index knows), durably."""
    path_of = getattr(area, "path", None)
    if callable(path_of):
        target: Path = path_of(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = getattr(area, "incoming", target.parent) / f".restore-{key.replace('/', '_')}"
        shutil.copyfile(source, staging)
        _fsync_file(staging)
        os.replace(staging, target)
        _fsync_dir(target.parent)
        return
    client, bucket, name_of = getattr(area, "client", None), getattr(area, "bucket", None), getattr(area, "_name", None)
    if client is not None and bucket and callable(name_of):  # an S3 area
        client.upload_file(str(source), bucket, name_of(key), ExtraArgs={"Metadata": {"sha256": _sha256(source)}})
        return
    raise BackupError(f"storage area {area.name} cannot be written by key; restore it from its own backup")


def restore(settings: Settings, src: Path, *, snapshot: str | None = None, areas: dict[str, StorageArea] | None = None,
            progress: Progress | None = None) -> RestoreResult:
    """Restore a snapshot (the newest by default) into an empty data folder and database."""
    names = snapshots(src)
    if not names:
        raise BackupError(f"{src} holds no complete pacs backup")
    name = snapshot or names[-1]
    folder = src / "snapshots" / name
    if not (folder / "manifest.json").is_file():
        raise BackupError(f"snapshot {name} is not in {src} (have: {', '.join(names)})")
    manifest = json.loads((folder / "manifest.json").read_text())
    url = settings.effective_database_url
    sqlite_file = _sqlite_path(url)
    kind = "sqlite" if sqlite_file else "postgresql"
    if manifest["database"] != kind:
        raise BackupError(f"snapshot {name} is a {manifest['database']} database and this configuration uses "
                          f"{kind}; restore with PACS_DATABASE_URL naming a {manifest['database']} database")
    if _not_empty(settings.data_dir):
        raise BackupError(f"the data folder {settings.data_dir} is not empty; restore into a new or empty folder "
                          "(--data-dir) so nothing is overwritten")
    areas = areas if areas is not None else storage_areas(settings)
    for area in areas.values():
        if _area_in_use(area):
            raise BackupError(f"storage area {area.name} already holds objects; restore into empty storage")
    if sqlite_file is None and _pg_tables(url):
        raise BackupError("the PostgreSQL database named by PACS_DATABASE_URL has tables; create an empty "
                          "database to restore into")
    db_file = folder / manifest["database_file"]
    if _sha256(db_file) != manifest["database_sha256"]:
        raise BackupError(f"the database copy of snapshot {name} is damaged (SHA-256 mismatch); restore an "
                          "earlier snapshot with --snapshot")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    result = RestoreResult(snapshot=name, database=kind)
    if sqlite_file is not None:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(db_file, sqlite_file)
        _fsync_file(sqlite_file)
        _fsync_dir(sqlite_file.parent)
    else:
        libpq, env = _pg_url(url)
        done = subprocess.run(["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "-d", libpq,
                               str(db_file)], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise BackupError(f"pg_restore failed: {done.stderr.strip()}")
    db = Database(url)
    try:
        db.migrate()  # a snapshot from an older version gets the newer schema
        if sqlite_file is None:
            # pg_dump carries no planner statistics: until autovacuum gathers them, PostgreSQL
            # plans without them (the HL7 duplicate check read every message of a sender, 4.9 ms
            # at 3,400 messages against 0.08 with statistics; bench/README.md, hl7_throughput.py).
            with db.engine.begin() as connection:
                connection.exec_driver_sql("ANALYZE")
    finally:
        db.dispose()
    entries = list(_read_lines(folder / "files.jsonl"))
    for number, entry in enumerate(entries, 1):
        if progress is not None:
            progress("objects", number, len(entries))
        if entry.get("mirrored"):
            continue
        area = areas.get(entry["area"])
        if area is None:
            raise BackupError(f"the snapshot has copies in storage area {entry['area']}, which the configuration "
                              f"does not define ([[storage.areas]]); areas here: {', '.join(areas)}")
        source = _object_path(src, entry["sha256"])
        if not source.is_file() or _sha256(source) != entry["sha256"]:
            raise BackupError(f"object {entry['sha256'][:12]}… ({entry['area']}/{entry['key']}) is missing or "
                              "damaged in the backup; run pacs backup --verify")
        _put_at(area, entry["key"], source)
        result.files += 1
        result.bytes += entry["size"]
    for entry in _read_lines(folder / "mirror.jsonl"):
        area = areas.get(entry["area"])
        root = getattr(area, "root", None)
        if not isinstance(root, Path):
            raise BackupError(f"container area {entry['area']} is not configured here")
        target = root / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        with (src / "areas" / entry["area"] / entry["path"]).open("rb") as source_file:
            digest, _size = _copy_hashing(source_file, target)
        if digest != entry["sha256"]:
            raise BackupError(f"container file {entry['area']}/{entry['path']} is damaged in the backup")
        result.mirrored += 1
    _audit_restore(settings, src, result)
    log.info("restored snapshot %s from %s: %d object(s), %d container file(s)", name, src, result.files,
             result.mirrored)
    return result


def _audit_restore(settings: Settings, src: Path, result: RestoreResult) -> None:
    from pacs.audit import Auditor, Event, codes

    db = Database(settings.effective_database_url)
    try:
        Auditor(db, settings).record(Event(
            codes.IMPORT, "C", user="restore", user_kind="system", target=str(src),
            description=f"restored snapshot {result.snapshot}: {result.files} object(s)",
            details={"object": str(src), **asdict(result)}))
    finally:
        db.dispose()


def scheduled_due(settings: Settings, now: datetime | None = None) -> bool:
    """Whether the server should back up now (``[backup] dest`` and ``interval_hours``)."""
    dest, hours = settings.backup.dest, settings.backup.interval_hours
    if dest is None or hours <= 0:
        return False
    last = last_backup_time(Path(dest))
    now = now or datetime.now(UTC)
    return last is None or (now - last).total_seconds() >= hours * 3600


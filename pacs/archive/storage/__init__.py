"""Storage areas: where DICOM files live, addressed by an opaque key, never by a DICOM UID.

A storage area creates, reads (whole or a range) and removes objects by key and reports a
SHA-256 checksum of what it holds. The index records which area holds each copy of each
instance; what an area is (a local folder, an object store, an offline container) is its own
business.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024


class StorageFull(OSError):
    """The area has no room for the object (ENOSPC, a quota, a watermark)."""


@dataclass(frozen=True)
class Stored:
    key: str
    size: int
    checksum: str  # SHA-256, hex


def new_key() -> str:
    return uuid.uuid4().hex


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class StorageArea(Protocol):
    name: str

    def put_file(self, source: Path, *, move: bool = False, checksum: str | None = None,
                 synced: bool = False) -> Stored:
        """Store the file at ``source`` (moving it when allowed) under a new key, durably.
        ``checksum``, the SHA-256 of ``source`` when the caller knows it, spares reading back a
        file that is renamed into place; a copy is always hashed as written. ``synced`` says
        ``source``'s data is already on disk (fsynced): a rename then only syncs the folder."""

    def put_bytes(self, data: bytes) -> Stored: ...

    def open(self, key: str) -> BinaryIO: ...

    def read(self, key: str) -> bytes: ...

    def read_range(self, key: str, start: int, length: int) -> bytes: ...

    def local_path(self, key: str) -> Path | None:
        """A path to read the object from directly, if the area has one."""

    def remove(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def checksum(self, key: str) -> str: ...

    def keys(self) -> Iterator[str]: ...

    def free_bytes(self) -> int:
        """Space left for new objects (an object store without a quota: a very large number)."""


UNLIMITED = 1 << 62  # free_bytes() of an area without a limit


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_parents(target: Path, *, sync: bool = True) -> list[Path]:
    """Create the folders above ``target``, each new one's entry synced into its parent (a new
    file's name is only as durable as the folders leading to it); with ``sync`` False, the
    folders that need syncing are returned instead."""
    folder = target.parent
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    unsynced = []
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
        if sync:
            _fsync_dir(made.parent)
        else:
            unsynced.append(made.parent)
    return unsynced


def sync_folders(folders: set[Path]) -> None:
    """fsync each folder (what :meth:`FilesystemArea.place` left unsynced)."""
    for folder in sorted(folders, key=lambda f: len(f.parts)):
        _fsync_dir(folder)


@contextmanager
def _full_reported(area: str) -> Iterator[None]:
    """ENOSPC raised as :class:`StorageFull`."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StorageFull(exc.errno, f"storage area {area} is full") from exc
        raise


def _staged_name(key: str, tag: str) -> str:
    return f"{key}.{tag.encode('utf-8').hex()}"


class FilesystemArea:
    """A folder: ``root/ab/cd/<key>``, written with write → fsync → rename → fsync(dir).

    It can also *stage* a received file: rename it, already fsynced, into ``root/.staged``
    under a new key and sync that one folder, so that the object is durable before it is
    filed under ``ab/cd`` (:meth:`place`, a hard link) and indexed; the staged name goes once
    the index holds the object and the filed name is synced (:meth:`unstage`). What is still
    staged after a crash is what was acknowledged but perhaps not indexed or not durably filed
    (:meth:`staged`). See :mod:`pacs.archive.store`."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.incoming = root / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.staging = root / ".staged"
        self.staging.mkdir(exist_ok=True)
        self._device = root.stat().st_dev  # the file system a file must be on to be renamed in

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:4] / key

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def put_file(self, source: Path, *, move: bool = False, checksum: str | None = None,
                 synced: bool = False) -> Stored:
        key = new_key()
        target = self.path(key)
        renamed = False
        try:
            _make_parents(target)
            if move and source.stat().st_dev == self.root.stat().st_dev:
                if not synced:
                    with source.open("rb+") as handle:
                        os.fsync(handle.fileno())
                os.replace(source, target)
                renamed = True
            else:
                staging = self.incoming / key
                shutil.copyfile(source, staging)
                with staging.open("rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(staging, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC
                raise StorageFull(exc.errno, f"storage area {self.name} is full") from exc
            raise
        return Stored(key, target.stat().st_size, checksum if renamed and checksum else sha256_file(target))

    def put_bytes(self, data: bytes) -> Stored:
        key = new_key()
        target = self.path(key)
        staging = self.incoming / key
        try:
            _make_parents(target)
            with staging.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            staging.unlink(missing_ok=True)
            if exc.errno == 28:
                raise StorageFull(exc.errno, f"storage area {self.name} is full") from exc
            raise
        return Stored(key, len(data), hashlib.sha256(data).hexdigest())

    def stage(self, source: Path, tag: str, *, checksum: str | None, synced: bool) -> Stored | None:
        """Move ``source`` into the staging folder under a new key, durably, with ``tag`` (any
        text: who sent it) kept in its name; None when it is not on this area's file system."""
        status = source.stat()  # one system call for both (each one a turn for the process's other threads)
        if status.st_dev != self._device:
            return None
        key = new_key()
        staged = self.staging / _staged_name(key, tag)
        with _full_reported(self.name):
            if not synced:
                with source.open("rb+") as handle:
                    os.fsync(handle.fileno())
            size = status.st_size
            os.replace(source, staged)
            _fsync_dir(self.staging)
        return Stored(key, size, checksum if checksum is not None else sha256_file(staged))

    def place(self, key: str, tag: str, *, sync: bool = True) -> list[Path]:
        """File a staged object under its key (a second name for it), durably; idempotent. With
        ``sync`` False the new name is not synced: the folders to sync (:func:`sync_folders`)
        are returned, and the staged name must stay until they are."""
        target = self.path(key)
        folders = _make_parents(target, sync=sync)
        try:
            os.link(self.staging / _staged_name(key, tag), target)
        except FileExistsError:
            pass  # placed before a crash or a failed index transaction
        if sync:
            _fsync_dir(target.parent)
            return []
        return [*folders, target.parent]

    def staged_path(self, key: str, tag: str) -> Path:
        return self.staging / _staged_name(key, tag)

    def unstage(self, key: str, tag: str) -> None:
        """Forget a staged object's staged name (once the index holds it and its filed name is
        synced, or once it was discarded)."""
        (self.staging / _staged_name(key, tag)).unlink(missing_ok=True)

    def staged(self) -> Iterator[tuple[str, str, Path]]:
        """(key, tag, path) of every object still staged."""
        for path in sorted(self.staging.iterdir()):
            key, _, tag = path.name.partition(".")
            try:
                yield key, bytes.fromhex(tag).decode("utf-8"), path
            except ValueError:
                continue  # not a name stage() gives

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with self.path(key).open("rb") as handle:
            handle.seek(start)
            return handle.read(length)

    def remove(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def checksum(self, key: str) -> str:
        return sha256_file(self.path(key))

    def keys(self) -> Iterator[str]:
        for path in self.root.glob("??/??/*"):
            if path.is_file():
                yield path.name

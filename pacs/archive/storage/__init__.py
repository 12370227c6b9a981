"""Storage areas: where DICOM files live, addressed by an opaque key, never by a DICOM UID.

A storage area creates, reads (whole or a range) and removes objects by key and reports a
SHA-256 checksum of what it holds. The index records which area holds each copy of each
instance; what an area is (a local folder, an object store, an offline container) is its own
business.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
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

    def put_file(self, source: Path, *, move: bool = False, checksum: str | None = None) -> Stored:
        """Store the file at ``source`` (moving it when allowed) under a new key, durably.
        ``checksum``, the SHA-256 of ``source`` when the caller knows it, spares reading back a
        file that is renamed into place; a copy is always hashed as written."""

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


class FilesystemArea:
    """A folder: ``root/ab/cd/<key>``, written with write → fsync → rename → fsync(dir)."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.incoming = root / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:4] / key

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def put_file(self, source: Path, *, move: bool = False, checksum: str | None = None) -> Stored:
        key = new_key()
        target = self.path(key)
        renamed = False
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if move and source.stat().st_dev == self.root.stat().st_dev:
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
            target.parent.mkdir(parents=True, exist_ok=True)
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

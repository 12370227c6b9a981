"""An offline, tape-like area: each study packed into one container file on a slow volume.

A container is a POSIX tar file (``<root>/<ab>/<container>.tar``, readable by any tar tool)
with an index beside it (``<container>.json``: each member's offset, size and SHA-256), so one
object can be read without scanning the tar, and a whole study is read back in one sequential
pass (:meth:`ContainerArea.read_container`), as a tape drive would. Keys name the container and
the member: ``<container>/<member>``.

Tapes are written once: removing an object records it in ``<container>.removed`` and the
container goes when its last member has been removed. Both files are written as the filesystem
area writes: to a staging name, fsync, rename, fsync of the folder; the index is written after
the tar, so a container without an index is an unfinished write (removed by :meth:`tidy`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from pacs.archive.storage import CHUNK, StorageFull, Stored, _fsync_dir, new_key

Source = Path | bytes


class ContainerArea:
    """Folder of tar containers, one per migration batch (a study)."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.incoming = root / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._indexes: dict[str, dict[str, list]] = {}  # container → member → [offset, size, sha256]

    # -- layout ---------------------------------------------------------------------------------
    def _folder(self, container: str) -> Path:
        return self.root / container[:2]

    def tar_path(self, container: str) -> Path:
        return self._folder(container) / f"{container}.tar"

    def _index_path(self, container: str) -> Path:
        return self._folder(container) / f"{container}.json"

    def _removed_path(self, container: str) -> Path:
        return self._folder(container) / f"{container}.removed"

    @staticmethod
    def split(key: str) -> tuple[str, str]:
        container, _, member = key.partition("/")
        if not member:
            raise KeyError(f"{key!r} is not a container key (container/member)")
        return container, member

    # -- writing --------------------------------------------------------------------------------
    def put_many(self, sources: Sequence[Source]) -> list[Stored]:
        """Write one container holding every source (a path, streamed, or bytes), durably."""
        container = new_key()
        folder = self._folder(container)
        staging = self.incoming / f"{container}.tar"
        members: dict[str, list] = {}
        stored: list[Stored] = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with staging.open("wb") as raw:
                with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for source in sources:
                        member = new_key()
                        info = tarfile.TarInfo(f"{member}.dcm")
                        info.mode = 0o444
                        if isinstance(source, bytes):
                            info.size = len(source)
                            checksum = hashlib.sha256(source).hexdigest()
                            tar.addfile(info, io.BytesIO(source))
                        else:
                            info.size = source.stat().st_size
                            checksum = _sha256_path(source)
                            with source.open("rb") as handle:
                                tar.addfile(info, handle)
                        members[member] = [0, info.size, checksum]
                        stored.append(Stored(f"{container}/{member}", info.size, checksum))
                raw.flush()
                os.fsync(raw.fileno())
            with tarfile.open(staging, "r") as tar:  # where each member's data begins
                for info in tar:
                    members[info.name.removesuffix(".dcm")][0] = info.offset_data
            index = self.incoming / f"{container}.json"
            index.write_text(json.dumps({"members": members}))
            with index.open("rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(staging, self.tar_path(container))
            os.replace(index, self._index_path(container))
            _fsync_dir(folder)
        except OSError as exc:
            staging.unlink(missing_ok=True)
            (self.incoming / f"{container}.json").unlink(missing_ok=True)
            if exc.errno == 28:  # ENOSPC
                raise StorageFull(exc.errno, f"storage area {self.name} is full") from exc
            raise
        with self._lock:
            self._indexes[container] = members
        return stored

    def put_file(self, source: Path, *, move: bool = False, checksum: str | None = None,
                 synced: bool = False) -> Stored:
        # the copy is hashed as it is written, whatever the caller knows
        [stored] = self.put_many([source])
        if move:
            source.unlink(missing_ok=True)
        return stored

    def put_bytes(self, data: bytes) -> Stored:
        [stored] = self.put_many([data])
        return stored

    # -- reading --------------------------------------------------------------------------------
    def _index(self, container: str) -> dict[str, list]:
        with self._lock:
            found = self._indexes.get(container)
        if found is None:
            try:
                found = json.loads(self._index_path(container).read_text())["members"]
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.name}: no container {container}") from None
            with self._lock:
                self._indexes[container] = found
        return found

    def _removed(self, container: str) -> set[str]:
        try:
            return set(self._removed_path(container).read_text().split())
        except FileNotFoundError:
            return set()

    def _entry(self, key: str) -> list:
        container, member = self.split(key)
        entry = self._index(container).get(member)
        if entry is None or member in self._removed(container):
            raise FileNotFoundError(f"{self.name}: no object {key}")
        return entry

    def read_range(self, key: str, start: int, length: int) -> bytes:
        offset, size, _ = self._entry(key)
        start = max(0, min(start, size))
        length = max(0, min(length, size - start))
        with self.tar_path(self.split(key)[0]).open("rb") as handle:
            handle.seek(offset + start)
            return handle.read(length)

    def read(self, key: str) -> bytes:
        offset, size, _ = self._entry(key)
        return self.read_range(key, 0, size)

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.read(key))

    def read_container(self, container: str, members: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
        """Every (key, bytes) of one container (or those of ``members``), in one sequential pass."""
        index = self._index(container)
        removed = self._removed(container)
        order = sorted((entry[0], member) for member, entry in index.items()
                       if member not in removed and (members is None or member in members))
        with self.tar_path(container).open("rb", buffering=CHUNK) as handle:
            for offset, member in order:
                handle.seek(offset)
                yield f"{container}/{member}", handle.read(index[member][1])

    def local_path(self, key: str) -> Path | None:
        return None

    # -- the rest -------------------------------------------------------------------------------
    def remove(self, key: str) -> None:
        container, member = self.split(key)
        with self._lock:
            try:
                index = self._index(container)
            except FileNotFoundError:
                return
            removed = self._removed(container) | {member}
            if set(index) <= removed:  # the last member: the whole container goes
                for path in (self.tar_path(container), self._index_path(container), self._removed_path(container)):
                    path.unlink(missing_ok=True)
                self._indexes.pop(container, None)
                return
            with self._removed_path(container).open("a") as handle:
                handle.write(member + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def exists(self, key: str) -> bool:
        try:
            self._entry(key)
        except (FileNotFoundError, KeyError):
            return False
        return self.tar_path(self.split(key)[0]).is_file()

    def checksum(self, key: str) -> str:
        return hashlib.sha256(self.read(key)).hexdigest()

    def containers(self) -> Iterator[str]:
        for path in self.root.glob("??/*.json"):
            yield path.stem

    def keys(self) -> Iterator[str]:
        for container in self.containers():
            removed = self._removed(container)
            for member in self._index(container):
                if member not in removed:
                    yield f"{container}/{member}"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def tidy(self) -> int:
        """Remove unfinished writes (staged files, a tar without its index)."""
        count = 0
        for leftover in self.incoming.iterdir():
            leftover.unlink(missing_ok=True)
            count += 1
        for tar in self.root.glob("??/*.tar"):
            if not tar.with_suffix(".json").exists():
                tar.unlink(missing_ok=True)
                count += 1
        return count


def _sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

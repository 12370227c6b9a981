"""Where pynetdicom spools a received C-STORE data set (PS3.4 B.2.2), hashed as it arrives.

With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom writes each incoming data set, PDV by PDV, to a
temporary file (File Meta Information first) in the storage area's incoming folder, and the
handler hands that file's path to store(), which renames it into place. The archive keeps a
SHA-256 of every object; computing it from the bytes as the DUL thread writes them, rather than
reading the file back after it is stored, saves a read of the whole object per instance and
moves the hashing off the thread that answers the C-STORE (hashlib releases the GIL on large
updates, so it runs beside the other thread's work).

:func:`install` makes pynetdicom's spool file a :class:`HashingSpool`; :func:`checksum_of` gives
store() the digest of a received object, or None when the object did not come through one.
"""

from __future__ import annotations

import hashlib
import tempfile
from typing import Any

from pynetdicom import dimse_messages


class HashingSpool:
    """A named temporary file that hashes and counts what is written to it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._file = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115 - closed by pynetdicom
        self.name = self._file.name
        self.file = self._file.file
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self.size += len(data)
        return self._file.write(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        self._file.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def install() -> None:
    """Spool received data sets through :class:`HashingSpool` (idempotent)."""
    dimse_messages.NamedTemporaryFile = HashingSpool  # type: ignore[attr-defined, assignment]


def checksum_of(request: Any) -> tuple[str, int] | None:
    """The SHA-256 and size of the data set a C-STORE request was spooled to, if hashed."""
    spool = getattr(request, "_dataset_file", None)
    if not isinstance(spool, HashingSpool):
        return None
    spool.file.flush()
    return spool.hexdigest(), spool.size

"""Where pynetdicom spools a received C-STORE data set (PS3.4 B.2.2), hashed as it arrives.

With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom writes each incoming data set, PDV by PDV, to a
temporary file (File Meta Information first) in the storage area's incoming folder, and the
handler hands that file's path to store(), which renames it into place. The archive keeps a
SHA-256 of every object. When a C-STORE is answered only once the object is indexed
(``[archive] acknowledge = "indexed"``) it is computed from the bytes as the DUL thread writes
them, which saves reading the file back on the way to the answer; when it is answered once
durable (the default), the index writer computes it later, off that way altogether.

The first 64 KB written (the File Meta Information and, as a rule, the whole header) are kept
in memory as well: store() parses the header from them (:func:`head_of`) instead of reading the
file back.

The file must be on disk before the C-STORE is answered. The DUL thread fsyncs it as soon as
the data set is whole, once it has woken the association thread (:func:`pacs.archive.dul.after_wake`):
the fsync then runs while the handler reads the header, instead of after it; store() waits for
it (:func:`synced`) before renaming the file into place.

:func:`install` makes pynetdicom's spool file a :class:`HashingSpool`; :func:`checksum_of` gives
store() the digest of a received object, or None when the object did not come through one. The
File Meta Information pynetdicom puts before the data set is written by :func:`file_meta_bytes`,
the bytes pydicom's writer would give, without a pydicom data set per object.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import secrets
import struct
import tempfile
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, dimse_messages

from pacs.archive import dul
from pacs.archive.store import HEAD_BYTES  # what read_header() takes from memory

log = logging.getLogger(__name__)


class HashingSpool:
    """A new file in the temporary folder that hashes and counts what is written to it.

    Named from the process and a counter (``tempfile.NamedTemporaryFile`` drew random names and
    wrapped the file, a tenth of a millisecond for every object received); created exclusively,
    so a name left by an earlier process is never reused."""

    def __init__(self, *args: Any, suffix: str = ".dcm", dir: str | None = None, **kwargs: Any) -> None:
        folder = dir or tempfile.gettempdir()
        while True:
            self.name = os.path.join(folder, f"{_prefix()}{next(_counter)}{suffix}")
            try:
                self.file = open(self.name, "xb")  # noqa: SIM115 - closed by pynetdicom through close()
                break
            except FileExistsError:
                _names.clear()  # another process's: this one takes a new prefix
        self._digest = hashlib.sha256() if _hashing[0] else None
        self.size = 0
        self.head = bytearray()  # the first HEAD_BYTES written: store() parses the header from them
        self.durable = False
        self._lock = threading.Lock()

    def sync(self) -> bool:
        """Flush and fsync the file (once, whichever thread comes first); True when what was
        written is on disk."""
        with self._lock:
            if not self.durable and not self.file.closed:
                try:
                    self.file.flush()
                    os.fsync(self.file.fileno())
                    self.durable = True
                except (OSError, ValueError) as exc:  # the one who stores the file syncs it again, and fails
                    log.warning("could not fsync the received data set %s: %s", self.name, exc)
            return self.durable

    def write(self, data: bytes | memoryview) -> int:
        if self._digest is not None:
            self._digest.update(data)
        if self.size < HEAD_BYTES:
            self.head += data[:HEAD_BYTES - self.size]
        self.size += len(data)
        return self.file.write(data)

    def hexdigest(self) -> str | None:
        return self._digest.hexdigest() if self._digest is not None else None

    def close(self) -> None:
        with self._lock:  # not while the DUL thread is syncing it
            self.file.close()

    def __getattr__(self, name: str) -> Any:
        if name == "file":  # not opened
            raise AttributeError(name)
        return getattr(self.file, name)


_hashing = [True]  # hash on arrival (install())
_counter = itertools.count()
_names: dict[int, str] = {}  # process id → the prefix of this process's spool files


def _prefix() -> str:
    pid = os.getpid()
    prefix = _names.get(pid)
    if prefix is None:
        prefix = _names[pid] = f"spool-{pid}-{secrets.token_hex(4)}-"
    return prefix


class FileMeta(NamedTuple):
    """What the File Meta Information of a received object says (PS3.10 7.1)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def _create_file_meta(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> FileMeta:
    return FileMeta(str(sop_class_uid), str(sop_instance_uid), str(transfer_syntax))


def _short(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", 0x0002, tag) + vr + struct.pack("<H", len(value)) + value


def _padded(value: str, pad: bytes) -> bytes:
    encoded = value.encode("latin-1", "replace")  # as pydicom writes text; a bad UID is refused later, not here
    return encoded + pad if len(encoded) % 2 else encoded


def file_meta_bytes(meta: FileMeta) -> bytes:
    """The File Meta Information group (PS3.10 7.1), Explicit VR Little Endian, as pynetdicom
    writes it for a received object through pydicom (the same elements, byte for byte), without
    building a pydicom data set for every object."""
    body = b"".join((
        struct.pack("<HH", 0x0002, 0x0001) + b"OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01",  # version
        _short(0x0002, b"UI", _padded(meta.sop_class_uid, b"\x00")),  # Media Storage SOP Class UID
        _short(0x0003, b"UI", _padded(meta.sop_instance_uid, b"\x00")),  # Media Storage SOP Instance UID
        _short(0x0010, b"UI", _padded(meta.transfer_syntax, b"\x00")),  # Transfer Syntax UID
        _short(0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),  # Implementation Class UID
        _short(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),  # Implementation Version Name
    ))
    return _short(0x0000, b"UL", struct.pack("<I", len(body))) + body  # File Meta Information Group Length


def _write_file_meta_info(fp: Any, file_meta: Any, *args: Any, **kwargs: Any) -> None:
    if isinstance(file_meta, FileMeta):
        fp.write(file_meta_bytes(file_meta))
    else:
        write_file_meta_info(fp, file_meta, *args, **kwargs)


def _decode_msg(self: Any, primitive: Any, assoc: Any = None) -> bool:
    done = bool(_pynetdicom_decode_msg(self, primitive, assoc))
    spool = getattr(self, "_data_set_file", None)
    if done and isinstance(spool, HashingSpool) and assoc is not None:
        dul.after_wake(assoc.dul, spool.sync)
    return done


_pynetdicom_decode_msg = dimse_messages.DIMSEMessage.decode_msg


def install(*, hash_on_arrival: bool = True) -> None:
    """Spool received data sets through :class:`HashingSpool`, their File Meta Information
    written by :func:`file_meta_bytes`, each synced to disk by the DUL thread as soon as it is
    whole (idempotent). Without ``hash_on_arrival`` nothing is hashed here: objects answered
    before they are indexed are hashed by the index writer, off the path of the answer."""
    _hashing[0] = hash_on_arrival
    dimse_messages.DIMSEMessage.decode_msg = _decode_msg  # type: ignore[method-assign]
    dimse_messages.NamedTemporaryFile = HashingSpool  # type: ignore[attr-defined, assignment]
    dimse_messages.create_file_meta = _create_file_meta  # type: ignore[attr-defined, assignment]
    dimse_messages.write_file_meta_info = _write_file_meta_info  # type: ignore[attr-defined, assignment]


def synced(request: Any) -> Callable[[], bool] | None:
    """For store(): makes sure the data set a C-STORE request was spooled to is on disk (waits
    for the DUL thread's fsync, or does it), True if it is; None when it was not spooled here."""
    spool = getattr(request, "_dataset_file", None)
    return spool.sync if isinstance(spool, HashingSpool) else None


def discard_unfinished(event: Any) -> None:
    """EVT_CONN_CLOSE: remove the spool file of a data set the peer stopped sending midway (an
    abort, a lost connection); it would otherwise stay in the incoming folder until a restart."""
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    spool = getattr(message, "_data_set_file", None)
    if spool is None:
        return
    spool.close()
    try:
        os.unlink(spool.name)
    except OSError:
        pass
    log.info("removed the unfinished data set of an association that ended midway (%s)", spool.name)


def head_of(request: Any) -> bytes | None:
    """The first bytes of the file a C-STORE request's data set was spooled to, as written (the
    File Meta Information and the start of the data set): read_header() parses them instead of
    reading the file back. None when it was not spooled here."""
    spool = getattr(request, "_dataset_file", None)
    if not isinstance(spool, HashingSpool) or len(spool.head) != min(spool.size, HEAD_BYTES):
        return None
    return bytes(spool.head)


def checksum_of(request: Any) -> tuple[str, int] | None:
    """The SHA-256 and size of the data set a C-STORE request was spooled to, if hashed."""
    spool = getattr(request, "_dataset_file", None)
    if not isinstance(spool, HashingSpool):
        return None
    digest = spool.hexdigest()
    if digest is None:
        return None
    spool.file.flush()
    return digest, spool.size

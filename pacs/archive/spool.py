"""Where pynetdicom spools a received C-STORE data set (PS3.4 B.2.2), hashed as it arrives.

With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom writes each incoming data set, PDV by PDV, to a
temporary file (File Meta Information first) in the storage area's incoming folder, and the
handler hands that file's path to store(), which renames it into place. The archive keeps a
SHA-256 of every object, computed here from the bytes as they are written, so that nobody reads
the file back to hash it.

The first 64 KB written (the File Meta Information and, as a rule, the whole header) are kept
in memory as well: store() parses the header from them (:attr:`HashingSpool.head`) instead of
reading the file back.

The spool file is written around the page cache (``O_DIRECT``, open(2)) where the file system
allows it: what arrives is gathered in a page-aligned buffer of :data:`CHUNK` bytes, hashed and
written to the disk from there a chunk at a time, the last part (padded to the block size, then
the file cut to its length) when the data set is whole. Written through the page cache, every
512 KB image was first copied by the kernel into newly allocated cache pages, then written back
by the fsync: about a fifth of a receiving process's CPU time went to that copy alone. The
bytes are hashed from the same buffer as they leave it (hashlib lets go of the GIL meanwhile),
so the index writer never reads the file back to hash it. On a file system without
``O_DIRECT`` (tmpfs) the file is written as an ordinary one.

The file must be on disk before the C-STORE is answered. The DUL thread fsyncs it as soon as
the data set is whole, once it has woken the association thread (:func:`pacs.archive.dul.after_wake`):
the fsync then runs while the handler reads the header, instead of after it; store() waits for
it (:meth:`HashingSpool.sync`) before it reads the file beyond the head or renames it into place.

:func:`install` makes pynetdicom's spool file a :class:`HashingSpool`, which store() takes as the
received object's :class:`pacs.archive.store.Spooled` (:func:`spooled`). The
File Meta Information pynetdicom puts before the data set is written by :func:`file_meta_bytes`,
the bytes pydicom's writer would give, without a pydicom data set per object.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import mmap
import os
import secrets
import struct
import tempfile
import threading
from typing import Any, NamedTuple

from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, dimse_messages

from pacs.archive import dul
from pacs.archive.store import HEAD_BYTES  # what read_header() takes from memory

log = logging.getLogger(__name__)


CHUNK = 1 << 20  # bytes gathered before they are hashed and written (a multiple of BLOCK)
BLOCK = 4096  # O_DIRECT writes start and end on a multiple of the device's block size; 4 KB covers them all
KEPT_BUFFERS = 8  # chunk buffers a process keeps for later spool files


class DirectFile:
    """A new file written around the page cache (``O_DIRECT``) from a page-aligned buffer,
    each :data:`CHUNK` hashed into ``digest`` as it is written; :meth:`finish` writes the rest.
    Until then the file holds only the chunks written so far."""

    def __init__(self, fd: int, digest: Any) -> None:
        self.fd = fd
        self.digest = digest
        with _buffers_lock:
            self._buffer = _buffers.pop() if _buffers else mmap.mmap(-1, CHUNK)  # page-aligned
        self._view = memoryview(self._buffer)
        self._filled = 0  # bytes in the buffer
        self._offset = 0  # bytes of the file written
        self.closed = False

    @classmethod
    def create(cls, name: str, digest: Any) -> DirectFile | None:
        """Create ``name`` exclusively; None when its file system has no O_DIRECT."""
        direct = getattr(os, "O_DIRECT", 0)  # Linux and a few others
        if not direct:
            return None
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | direct, 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EEXIST and the rest: the caller's to handle
                raise
            return None
        return cls(fd, digest)

    def write(self, data: bytes | memoryview) -> int:
        size, taken = len(data), 0
        while taken < size:
            count = min(size - taken, CHUNK - self._filled)
            self._view[self._filled:self._filled + count] = data[taken:taken + count]
            self._filled += count
            taken += count
            if self._filled == CHUNK:
                self._write(CHUNK)
        return size

    def _write(self, count: int) -> None:
        data = self._view[:self._filled]
        self.digest.update(data)
        if count > self._filled:
            self._view[self._filled:count] = bytes(count - self._filled)  # padding, cut off by finish()
        written = os.pwrite(self.fd, self._view[:count], self._offset)
        if written != count:
            raise OSError(errno.EIO, f"short write to a spool file: {written} of {count} bytes")
        self._offset += self._filled
        self._filled = 0

    def finish(self) -> None:
        """Write what the buffer holds, the file cut to the bytes written (not synced)."""
        if self._filled:
            self._write(-(-self._filled // BLOCK) * BLOCK)
            os.ftruncate(self.fd, self._offset)

    def flush(self) -> None:
        """Nothing: data reaches the file a chunk at a time and at :meth:`finish`."""

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        os.close(self.fd)
        self._view.release()
        with _buffers_lock:
            if len(_buffers) < KEPT_BUFFERS:
                _buffers.append(self._buffer)
                return
        self._buffer.close()


_buffers: list[mmap.mmap] = []
_buffers_lock = threading.Lock()


class HashingSpool:
    """A new file in the temporary folder that hashes and counts what is written to it: a
    :class:`DirectFile` where the file system allows it, else an ordinary file.

    Named from the process and a counter (``tempfile.NamedTemporaryFile`` drew random names and
    wrapped the file, a tenth of a millisecond for every object received); created exclusively,
    so a name left by an earlier process is never reused."""

    def __init__(self, *args: Any, suffix: str = ".dcm", dir: str | None = None, **kwargs: Any) -> None:
        folder = dir or tempfile.gettempdir()
        self._digest = hashlib.sha256()
        while True:
            self.name = os.path.join(folder, f"{_prefix()}{next(_counter)}{suffix}")
            try:
                self.direct = DirectFile.create(self.name, self._digest) if _direct[0] else None
                self.file: Any = self.direct or open(self.name, "xb")  # noqa: SIM115 - closed through close()
                break
            except FileExistsError:
                _names.clear()  # another process's: this one takes a new prefix
        self.size = 0
        self._head = bytearray()  # the first HEAD_BYTES written: store() parses the header from them
        self.durable = False
        self.failed = False
        self._lock = threading.Lock()

    @property
    def head(self) -> bytes | None:
        """The file's first bytes as written (the File Meta Information and, as a rule, the
        whole header); None if they were not all kept."""
        if len(self._head) != min(self.size, HEAD_BYTES):
            return None
        return bytes(self._head)

    def sync(self) -> bool:
        """Write out and fsync the file (once, whichever thread comes first); True when all
        that was written is on disk. A failure is final: the data set is not stored."""
        with self._lock:
            if not self.durable and not self.failed and not self.file.closed:
                try:
                    if self.direct is not None:
                        self.direct.finish()
                    else:
                        self.file.flush()
                    os.fsync(self.file.fileno())
                    self.durable = True
                except (OSError, ValueError) as exc:
                    self.failed = True  # an fsync is not tried again: what it could not write may be gone
                    log.error("could not write the received data set %s to disk: %s", self.name, exc)
            return self.durable

    def complete(self) -> None:
        """Write out what the buffer still holds (not synced), for a reader of the file."""
        with self._lock:
            if self.direct is not None and not self.file.closed:
                self.direct.finish()

    def checksum(self) -> str | None:
        """SHA-256 of what was written, once it is all on disk (:meth:`sync`)."""
        return self._digest.hexdigest() if self.durable else None

    def write(self, data: bytes | memoryview) -> int:
        if self.size < HEAD_BYTES:
            self._head += data[:HEAD_BYTES - self.size]
        self.size += len(data)
        if self.direct is not None:
            return self.direct.write(data)  # hashed as it leaves the buffer
        self._digest.update(data)
        return self.file.write(data)

    def close(self) -> None:
        with self._lock:  # not while the DUL thread is syncing it
            self.file.close()

    def __getattr__(self, name: str) -> Any:
        if name == "file":  # not opened
            raise AttributeError(name)
        return getattr(self.file, name)


_direct = [True]  # spool files written around the page cache where possible (install())
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
    if done and isinstance(spool, HashingSpool):
        if assoc is not None and getattr(assoc, "_pacs_wake", None) is not None:
            dul.after_wake(assoc.dul, spool.sync)  # our AE's association: store() waits for it
        else:  # another AE of the process (an SCU's C-GET): its handler reads the file as it is
            spool.complete()
    return done


_pynetdicom_decode_msg = dimse_messages.DIMSEMessage.decode_msg


def install(*, direct: bool = True) -> None:
    """Spool received data sets through :class:`HashingSpool`, their File Meta Information
    written by :func:`file_meta_bytes`, each synced to disk by the DUL thread as soon as it is
    whole (idempotent); ``direct`` False writes every spool file through the page cache."""
    _direct[0] = direct
    dimse_messages.DIMSEMessage.decode_msg = _decode_msg  # type: ignore[method-assign]
    dimse_messages.NamedTemporaryFile = HashingSpool  # type: ignore[attr-defined, assignment]
    dimse_messages.create_file_meta = _create_file_meta  # type: ignore[attr-defined, assignment]
    dimse_messages.write_file_meta_info = _write_file_meta_info  # type: ignore[attr-defined, assignment]


def spooled(request: Any) -> HashingSpool | None:
    """The spool file a C-STORE request's data set was written to, for store() (a
    :class:`pacs.archive.store.Spooled`); None when it was not spooled here."""
    spool = getattr(request, "_dataset_file", None)
    return spool if isinstance(spool, HashingSpool) else None


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

"""Where pynetdicom spools a received C-STORE data set (PS3.4 B.2.2), hashed as it arrives.

With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom writes each incoming data set, PDV by PDV, to a
temporary file (File Meta Information first) in the storage area's incoming folder, and the
handler hands that file's path to store(), which renames it into place. The archive keeps a
SHA-256 of every object; computing it from the bytes as the DUL thread writes them, rather than
reading the file back after it is stored, saves a read of the whole object per instance and
moves the hashing off the thread that answers the C-STORE (hashlib releases the GIL on large
updates, so it runs beside the other thread's work).

:func:`install` makes pynetdicom's spool file a :class:`HashingSpool`; :func:`checksum_of` gives
store() the digest of a received object, or None when the object did not come through one. The
File Meta Information pynetdicom puts before the data set is written by :func:`file_meta_bytes`,
the bytes pydicom's writer would give, without a pydicom data set per object.
"""

from __future__ import annotations

import hashlib
import struct
import tempfile
from typing import Any, NamedTuple

from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, dimse_messages


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


def install() -> None:
    """Spool received data sets through :class:`HashingSpool`, their File Meta Information
    written by :func:`file_meta_bytes` (idempotent)."""
    dimse_messages.NamedTemporaryFile = HashingSpool  # type: ignore[attr-defined, assignment]
    dimse_messages.create_file_meta = _create_file_meta  # type: ignore[attr-defined, assignment]
    dimse_messages.write_file_meta_info = _write_file_meta_info  # type: ignore[attr-defined, assignment]


def checksum_of(request: Any) -> tuple[str, int] | None:
    """The SHA-256 and size of the data set a C-STORE request was spooled to, if hashed."""
    spool = getattr(request, "_dataset_file", None)
    if not isinstance(spool, HashingSpool):
        return None
    spool.file.flush()
    return spool.hexdigest(), spool.size

"""The DICOM JSON of each stored instance, kept once it has been built (PS3.18 F.2).

Reading a header with pydicom and converting it element by element costs one to two
milliseconds an instance, which for the metadata of a large study (WADO-RS ``/metadata``, what
a viewer asks first) adds up to seconds. The JSON of an instance only changes when its stored
copy does, so it is built once and kept as a file under ``<data>/cache/metadata``, named by a
hash of the SOP Instance UID, the transfer syntax and the storage key of the copy it was read
from: a migration, a lossless re-encoding or a replaced object gives a new name, and the old file
is never read again.

What is kept is the object as stored, with each BulkDataURI relative to its instance
(``bulkdata/XXXXXXXX``): the instance's URL depends on how the request reached the server and
is put in front when the answer is written. Corrections of patient and order attributes (the
index's truth, see :mod:`pacs.archive.retrieve`) are applied to the JSON on the way out, as they
are to the files, so an ADT update never leaves a stale cache behind.

The cache is only a copy: it is written without fsync, a file that can't be read is rebuilt, and
the folder can be removed at any time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

RELATIVE_BULK = b'"BulkDataURI":"bulkdata/'


def folder(data_dir: Path) -> Path:
    """Where a process with data folder ``data_dir`` keeps the JSON."""
    return data_dir / "cache" / "metadata"


class MetadataCache:
    """JSON bytes of one instance each, as built by :meth:`pacs.archive.dicomweb.wado.Wado.metadata`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, sop_instance_uid: str, transfer_syntax: str, key: str) -> Path:
        name = hashlib.sha256(f"{sop_instance_uid}|{transfer_syntax}|{key}".encode()).hexdigest()
        return self.folder / name[:2] / f"{name}.json"

    def get(self, sop_instance_uid: str, transfer_syntax: str, key: str) -> bytes | None:
        """The kept JSON, or None when there is none or what is there is not a whole JSON object
        (a damaged file is rebuilt from the stored object, never sent)."""
        try:
            content = self._path(sop_instance_uid, transfer_syntax, key).read_bytes()
        except OSError:
            return None
        if not (content.startswith(b'{"') and content.endswith(b"}")):
            log.warning("metadata cache: %s is damaged; rebuilt", self._path(sop_instance_uid, transfer_syntax, key))
            return None
        return content

    def put(self, sop_instance_uid: str, transfer_syntax: str, key: str, content: bytes) -> None:
        path = self._path(sop_instance_uid, transfer_syntax, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            os.replace(temporary, path)  # a reader sees the whole file or none
        except OSError as exc:  # a full or read-only disk costs speed, never an answer
            log.warning("metadata cache: %s not written: %s", path, exc)


def absolute(content: bytes, instance_url: str) -> bytes:
    """Cached JSON with its bulk data URIs made absolute under ``instance_url``."""
    return content.replace(RELATIVE_BULK, b'"BulkDataURI":"' + instance_url.encode() + b"/bulkdata/")

"""store(): the one way an object enters the archive (C-STORE, import, STOW-RS, conversions).

1. read the header and refuse what can't be archived (no or invalid UIDs, a SOP class other than
   the one announced, a truncated object), answering with the DICOM status that says why;
2. apply the duplicate policy (``[archive] duplicates``: ignore, keep newer, reject);
3. write the object as received, byte for byte, into the storage area under an opaque key, and
   fsync it;
4. index it (patient, study, series, instance, file) in a group commit shared with every other
   object arriving at the same moment; reconcile a new study with its order;
5. answer success only after both; if indexing fails, the file is removed again.

A C-STORE is answered sooner (``[archive] acknowledge = "durable"``, the default): once the
object is on disk, in the storage area's staging folder (:meth:`FilesystemArea.stage`, one
rename and one folder sync, as filing it would cost), the duplicate policy having been applied
against the index and the objects still waiting for it. The index writer then files and indexes
it as in 3-4 and forgets the staged name once its transaction has committed; an object it cannot
index yet (the database unreachable) stays staged and is tried again. Whatever is still staged
when ``pacs serve`` starts, after a crash or a power cut, is indexed before the DICOM port
opens (:meth:`Archive.recover`): nothing acknowledged is lost. The index lags the answers by
about a commit: an association's own later requests (storage commitment, queries) and its
release wait until its objects are indexed (:func:`pacs.archive.handlers.settle`), so a modality
that releases and asks again, on any association, finds everything it sent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import VR
from sqlalchemy import ARRAY, Connection, String, any_, bindparam, insert, update
from sqlalchemy import select as sql_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from pacs import batching
from pacs.archive import part10, reconciliation
from pacs.archive.index import RECOUNT_KEY, Instance, InstanceFile, Series, Study, recount_studies
from pacs.archive.status import Status
from pacs.archive.storage import StorageArea, StorageFull, Stored, sha256_file, sync_folders
from pacs.db import Database, Prepared, nested, utcnow
from pacs.integration.mapping import MappingHolder
from pacs.integration.names import person_name
from pacs.metrics import CStoreCounts
from pacs.registry import lifecycle, service
from pacs.registry.device_rules import ImageKeys, Match, keys_from_dataset, match_order
from pacs.registry.models import ImagingOrder, OrderStatus, Patient, PatientIdentifier

log = logging.getLogger(__name__)

HEADER_DEFER = 1024  # values larger than this are not read when indexing
HEAD_BYTES = 64 * 1024  # bytes of a file read at once to parse its header from memory (PrefixedFile)
_KNOWN_VRS = frozenset(vr.value for vr in VR)  # PS3.5 Table 6.2-1


class Outcome(StrEnum):
    STORED = "stored"
    ALREADY_STORED = "already stored"
    REPLACED = "replaced"
    REFUSED = "refused"
    STORAGE_FULL = "storage full"
    FAILED = "failed"


WRITER_CHECK_SECONDS = 1.0  # how often a store() waiting for the index writer looks whether it still runs


class WriterStopped(Exception):
    """The index writer ended without taking a job (it was queued after the writer's STOP)."""


class DuplicatePolicy(StrEnum):
    IGNORE = "ignore"
    KEEP_NEWER = "keep_newer"
    REJECT = "reject"


class Acknowledge(StrEnum):
    """When a C-STORE is answered: once the object is durable (staged), or once it is indexed."""

    DURABLE = "durable"
    INDEXED = "indexed"


RETRY_MAX_SECONDS = 300.0  # longest wait before a staged object's indexing is tried again
GATHER_SECONDS = 0.05  # how long objects answered already may wait for others to share their commit
PLACED_SYNC_SECONDS = 0.5  # how long indexed objects may keep their staged names (see _forget_staged)
PLACED_SYNC_MAX = 512  # ... and how many of them


@dataclass
class StoreResult:
    outcome: Outcome
    status: int
    comment: str = ""
    instance: int | None = None  # None when answered before indexing (``pending``)
    study_instance_uid: str = ""
    pending: Future[StoreResult] | None = None  # the indexing still under way of an object answered durable

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.STORED, Outcome.ALREADY_STORED, Outcome.REPLACED)


# Storage Service Class statuses (PS3.4 B.2.3) this archive answers with
WARNING_DUPLICATE = 0xB006  # Element discarded: an instance already held, ignored
DUPLICATE_REFUSED = 0x0111  # Duplicate SOP Instance (PS3.7 C.5.4), under the reject policy
CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH_SOP_CLASS = Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS  # 0xA900
OUT_OF_RESOURCES = Status.OUT_OF_RESOURCES  # 0xA700


class Refused(Exception):
    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def _text(ds: Dataset, keyword: str) -> str:
    """The value of ``keyword`` as the index keeps it: text, values joined by backslashes, no
    NUL (which PostgreSQL's text cannot hold: U+FFFD stands in for it); "" when absent or not
    decodable (:func:`check_values` refuses such objects before they are answered)."""
    try:
        value = ds.get(keyword)
    except Exception:  # pydicom's converters raise many kinds of errors
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value).strip()
    return text.replace("\0", "\ufffd")


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except Exception:  # absent, not a number, or not decodable
        return None


class Spooled(Protocol):
    """A received object's file as the receiving side wrote it (:mod:`pacs.archive.spool`):
    its length, its first bytes kept in memory, and the writer's fsync, which may still be
    under way in another thread when store() starts."""

    size: int

    @property
    def head(self) -> bytes | None:
        """The file's first bytes (up to :data:`HEAD_BYTES`), exactly as written; None if not kept."""

    def sync(self) -> bool:
        """Wait until the file is whole and on disk (True), or failed to be (False)."""

    def checksum(self) -> str | None:
        """The SHA-256 of the file as written, once synced; None if not hashed."""


PIXEL_GROUP = 0x7FE0  # Pixel Data, Float and Double Float Pixel Data (PS3.6 Table 6-1)
UNDEFINED_LENGTH = 0xFFFFFFFF  # PS3.5 7.1.1


class PrefixedFile:
    """The file at ``path`` as pydicom reads it, its first bytes served from memory (``head``,
    which must be exactly the file's beginning; read from the file when not given).

    pydicom asks a file object for its position before every element it reads, and a Python
    file answers each time with a system call (``lseek``): about a hundred for a CT header,
    each one a chance for another thread of the process to take the GIL. Here the header is
    parsed from memory; the file is opened only for what lies beyond ``head`` (a header larger
    than it, elements after the pixel data)."""

    def __init__(self, path: Path, size: int, head: bytes | None = None,
                 ready: Callable[[], object] | None = None) -> None:
        self.path = path
        self.size = size
        self._ready = ready  # called before the file is first opened: it may still be being written
        self._file: Any = None
        if head is None:
            self._open()
            head = self._file.read(HEAD_BYTES)
        self.head = head
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        start = self.position
        if size is None or size < 0:
            size = max(self.size - start, 0)
        end = start + size
        if end <= len(self.head):
            data = self.head[start:end]
        elif start >= self.size:
            data = b""
        else:
            if self._file is None:
                self._open()
            self._file.seek(start)
            data = self._file.read(size)
        self.position = start + len(data)
        return data

    def _open(self) -> None:
        if self._ready is not None:
            self._ready()
        self._file = self.path.open("rb")

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self.position, self.size)[whence]
        self.position = max(base + offset, 0)
        return self.position

    def tell(self) -> int:
        return self.position

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_header(path: Path, head: bytes | None = None, *, spooled: Spooled | None = None) -> Dataset:
    """The object's attributes without its bulk data; refuses objects that are not whole.

    ``head``: the file's first bytes, when the caller has them in memory. ``spooled``: the
    file as it was received (:class:`Spooled`): its head and length are taken from it, and
    the file is read (beyond the head) only once it is whole."""
    ready = None
    if spooled is not None:  # PrefixedFile calls ready() before it opens the file
        head, size, ready = spooled.head, spooled.size, spooled.sync
    else:
        size = path.stat().st_size
    try:
        source = PrefixedFile(path, size, head, ready)
    except OSError as exc:
        raise Refused(CANNOT_UNDERSTAND, f"cannot read the data set: {exc.strerror}") from None
    try:
        return _parse_header(source, size)
    finally:
        source.close()  # a deferred value read later opens the file again


def _parse_header(source: PrefixedFile, size: int) -> Dataset:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(source, defer_size=HEADER_DEFER)
    except Exception as exc:  # pydicom raises many kinds of errors for broken input
        raise Refused(CANNOT_UNDERSTAND, f"cannot read the data set: {exc}") from None
    if any("End of file" in str(w.message) for w in caught):
        raise Refused(CANNOT_UNDERSTAND, "the data set is truncated (no sequence delimiter)")
    # Deferred values are read now, while the file is where dcmread found it (the index writer
    # reads the header after the file has moved into the storage area), except the pixel data
    # (group 7FE0): nothing indexes it, and reading it cost more than parsing the rest of the
    # header. Its declared length is checked instead of its bytes. A value is read as bytes and
    # left as it is: decoding it here would refuse, or fail to index, an object for a value
    # nothing reads (an FD of 2,068 bytes), which the values read check themselves
    # (check_values). A deflated data set is read whole (its offsets are in the inflated
    # stream, not the file).
    meta = getattr(ds, "file_meta", None)
    deflated = meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    for tag in list(ds._dict):
        element = ds._dict[tag]
        if not isinstance(element, RawDataElement):
            continue
        if deflated:  # offsets in the inflated stream: nothing to compare with the file's length
            if element.value is None:
                try:
                    ds.get_item(tag)
                except Exception as exc:  # pydicom's converters raise many kinds of errors
                    raise Refused(CANNOT_UNDERSTAND, f"element {element.tag} cannot be read: {exc}") from None
            continue
        if (element.length != UNDEFINED_LENGTH and element.value_tell is not None
                and element.value_tell + element.length > size):
            raise Refused(CANNOT_UNDERSTAND, f"the data set is truncated in element {element.tag}")
        if element.value is None and tag >> 16 != PIXEL_GROUP and element.value_tell is not None:
            source.seek(element.value_tell)
            ds._dict[tag] = element._replace(value=source.read(element.length))
    pixels = ds.get_item(0x7FE00010, keep_deferred=not deflated) if 0x7FE00010 in ds._dict else None
    held = None
    if isinstance(pixels, RawDataElement):
        if pixels.value is None and pixels.length != UNDEFINED_LENGTH:  # deferred: as declared
            held = pixels.length
    elif pixels is not None and isinstance(pixels.value, bytes):
        held = len(pixels.value)
    if held is not None:
        expected = _native_pixel_bytes(ds)
        if expected and held < expected:
            raise Refused(CANNOT_UNDERSTAND, f"Pixel Data holds {held} of {expected} bytes: truncated")
    return ds


def _native_pixel_bytes(ds: Dataset) -> int:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and UID(syntax).is_compressed:
        return 0
    try:
        return part10.native_pixel_bytes(int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated),
                                         samples=int(ds.get("SamplesPerPixel", 1) or 1),
                                         frames=int(ds.get("NumberOfFrames", 1) or 1))
    except (AttributeError, TypeError, ValueError):
        return 0


def check_identity(ds: Dataset, *, sop_class: str | None = None, sop_instance: str | None = None) -> None:
    """UIDs present and valid (PS3.5 9.1), and the ones the command announced."""
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        element = ds.get_item(keyword) if keyword in ds else None
        if element is not None and element.VR not in (None, "UI", "UN"):  # None: implicit VR
            raise Refused(CANNOT_UNDERSTAND, f"{keyword} has VR {element.VR}, not UI")
        value = _text(ds, keyword)
        if not value:
            raise Refused(CANNOT_UNDERSTAND if keyword != "SOPClassUID" else DOES_NOT_MATCH_SOP_CLASS,
                          f"{keyword} is missing")
        if not UID(value).is_valid:
            raise Refused(CANNOT_UNDERSTAND, f"{keyword} {value!r} is not a valid UID")
    if sop_class and _text(ds, "SOPClassUID") != sop_class:
        raise Refused(DOES_NOT_MATCH_SOP_CLASS,
                      f"SOP Class UID {_text(ds, 'SOPClassUID')} is not the context's {sop_class}")
    if sop_instance and _text(ds, "SOPInstanceUID") != sop_instance:
        raise Refused(DOES_NOT_MATCH_SOP_CLASS,
                      f"SOP Instance UID {_text(ds, 'SOPInstanceUID')} is not the announced {sop_instance}")


RECEIVED_KEYS = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex",
                 "AccessionNumber", "ReferringPhysicianName", "StudyDescription")


SUMMARY_KEYS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber",
                "ContentDate", "ContentTime", "Rows", "Columns", "NumberOfFrames")


# Every attribute whose value the archive reads from a header (the index writer, reconciliation
# and the device rules): PS3.5 6.2 gives each its VR in the data dictionary (PS3.6 6), and one
# encoded with another would be misread (a name of VR AT reads as tags) or not read at all.
INDEXED_KEYS = frozenset(SUMMARY_KEYS + RECEIVED_KEYS + (
    "SpecificCharacterSet", "StudyID", "StudyDate", "StudyTime", "Modality", "SeriesNumber",
    "SeriesDescription", "BodyPartExamined", "Laterality", "SeriesDate", "SeriesTime", "StationName",
    "InstitutionName", "PerformingPhysicianName", "OperatorsName", "ProtocolName", "AcquisitionDateTime",
    "AcquisitionDate", "AcquisitionTime", "SamplesPerPixel", "BitsAllocated"))
_INDEXED_TAGS = {tag: keyword for tag, (_vr, _vm, _name, _retired, keyword) in DicomDictionary.items()
                 if keyword in INDEXED_KEYS}


def check_values(ds: Dataset) -> None:
    """``ds`` readable as the archive reads it, or :class:`Refused` (0xC000) naming the first
    element that is not: what the index writer reads later must not fail, nor misread, an
    object already answered Success.

    - no element, at any depth, has a VR that PS3.5 Table 6.2-1 does not define (``XX``):
      even its length could not be read safely;
    - every attribute the archive indexes (:data:`INDEXED_KEYS`) carries the VR the data
      dictionary gives it (PS3.5 6.2; UN is read as the dictionary's VR, PS3.5 6.2.2), a
      value pydicom decodes with it, and no more values than its VM allows (PS3.6 6).

    Other elements keep whatever VR and value they came with: they are stored as sent, sent on
    as they are, and left out of a DICOM JSON answer they can't be written in."""
    _check_vrs(ds)
    for tag in _INDEXED_TAGS.keys() & ds._dict.keys():
        keyword = _INDEXED_TAGS[tag]
        expected, multiplicity = DicomDictionary[tag][0], DicomDictionary[tag][1]
        raw = ds.get_item(tag)
        if raw.VR is not None and raw.VR != "UN" and raw.VR not in expected.split(" or "):
            raise Refused(CANNOT_UNDERSTAND, f"{keyword} {BaseTag(tag)} has VR {raw.VR}, not {expected}")
        try:
            element = ds[tag]
        except Exception as exc:  # pydicom's converters raise many kinds of errors
            raise Refused(CANNOT_UNDERSTAND, f"{keyword} {BaseTag(tag)} cannot be read: {exc}") from None
        if multiplicity == "1" and element.VM > 1:  # PS3.6 6: VM 1, a single value
            raise Refused(CANNOT_UNDERSTAND, f"{keyword} {BaseTag(tag)} has {element.VM} values; it takes one")


def _check_vrs(ds: Dataset) -> None:
    """Every explicit VR of ``ds`` and its sequences' items one of PS3.5 Table 6.2-1's."""
    for tag in ds._dict:
        element = ds.get_item(tag, keep_deferred=True)
        if element.VR is not None and element.VR not in _KNOWN_VRS:
            raise Refused(CANNOT_UNDERSTAND, f"element {BaseTag(tag)} has VR {element.VR!r}, which PS3.5 "
                                             "does not define")
        if element.VR == "SQ" and tag >> 16 != PIXEL_GROUP:
            try:
                items = ds[tag].value
            except Exception as exc:  # a sequence pydicom cannot take apart
                raise Refused(CANNOT_UNDERSTAND, f"sequence {BaseTag(tag)} cannot be read: {exc}") from None
            for item in items:
                _check_vrs(item)


def summary_of(ds: Dataset) -> dict[str, str]:
    """The values of ``ds`` the index writer reads for every object (:data:`SUMMARY_KEYS`)."""
    return {keyword: _text(ds, keyword) for keyword in SUMMARY_KEYS}


class Summary:
    """A header as the index writer gets it from a receiver process or from :func:`part10.scan`:
    the values of :data:`SUMMARY_KEYS` as text, enough to index an instance of a study and
    series already filed; anything else (a new study or series to file, a rejection note's
    references) comes from the whole header, read from the staged file only then."""

    def __init__(self, values: dict[str, str], path: Path) -> None:
        self.values = values
        self.path = path
        self._full: Dataset | None = None

    def full(self) -> Dataset:
        if self._full is None:
            self._full = read_header(self.path)
        return self._full

    def get(self, keyword: str, default: object = None) -> object:
        if keyword in self.values:
            return self.values[keyword] or default
        return self.full().get(keyword, default)

    def __contains__(self, keyword: str) -> bool:
        if keyword in self.values:
            return bool(self.values[keyword])
        return keyword in self.full()

    def __getattr__(self, name: str) -> object:
        if name.startswith("_") or name in ("values", "path"):
            raise AttributeError(name)
        return getattr(self.full(), name)


def _whole(header: Dataset | Summary) -> Dataset:
    return header.full() if isinstance(header, Summary) else header


@dataclass
class IndexJob:
    """What the index writer needs of one object, read before it was filed."""

    header: Dataset | Summary
    stored: Stored
    area: str
    transfer_syntax: str
    calling_ae: str
    replace: int | None = None  # instance id whose file this one replaces (keep-newer policy)
    staged: bool = False  # acknowledged once staged: the writer files it, and retries until indexed
    attempts: int = 0
    future: Future[StoreResult] = field(default_factory=Future)



# The index writer's statements for every object, compiled once (run on the session's connection)
_INSTANCE, _FILE, _SERIES, _STUDY = (Instance.__table__, InstanceFile.__table__,  # type: ignore[attr-defined]
                                     Series.__table__, Study.__table__)  # type: ignore[attr-defined]
FIND_INSTANCE = Prepared(sql_select(_INSTANCE.c.id, _INSTANCE.c.checksum)
                         .where(_INSTANCE.c.sop_instance_uid == bindparam("uid")))
INSERT_INSTANCE = Prepared(insert(_INSTANCE).returning(_INSTANCE.c.id))
INSERT_FILE = Prepared(insert(_FILE))
COUNT_SERIES = Prepared(update(_SERIES).where(_SERIES.c.id == bindparam("row"))
                        .values(number_of_instances=_SERIES.c.number_of_instances + bindparam("instances"),
                                updated_at=bindparam("now"))
                        .returning(_SERIES.c.study, _SERIES.c.number_of_instances))
COUNT_STUDY = Prepared(update(_STUDY).where(_STUDY.c.id == bindparam("row"))
                       .values(number_of_instances=_STUDY.c.number_of_instances + bindparam("instances"),
                               number_of_series=_STUDY.c.number_of_series + bindparam("series"),
                               size_bytes=_STUDY.c.size_bytes + bindparam("size"), updated_at=bindparam("now")))


# Which of a batch's SOP Instance UIDs the index holds, in one statement (PostgreSQL's arrays)
FIND_INSTANCES = Prepared(sql_select(_INSTANCE.c.sop_instance_uid)
                          .where(_INSTANCE.c.sop_instance_uid == any_(bindparam("uids", type_=ARRAY(String)))))


def _indexed_already(connection: Connection, uids: list[str]) -> list[str]:
    """Those of ``uids`` the index holds: in one statement on PostgreSQL, where each is a round
    trip; one look-up each on SQLite, which runs in this process."""
    if connection.dialect.name == "postgresql":
        return [row["sop_instance_uid"] for row in FIND_INSTANCES.rows(connection, {"uids": uids})]
    return [uid for uid in uids if FIND_INSTANCE.first(connection, {"uid": uid}) is not None]


def _instance_row(job: IndexJob, series_id: int, now: datetime) -> dict[str, Any]:
    ds = job.header
    return {
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
        "series": series_id,
        "sop_class_uid": _text(ds, "SOPClassUID"),
        "instance_number": _int(ds, "InstanceNumber"),
        "transfer_syntax_uid": job.transfer_syntax,
        "content_date": _text(ds, "ContentDate")[:8],
        "content_time": _text(ds, "ContentTime"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "number_of_frames": _int(ds, "NumberOfFrames"),
        "size": job.stored.size,
        "checksum": job.stored.checksum,
        "received_at": now,
    }


def _file_row(job: IndexJob, instance_id: int, now: datetime) -> dict[str, Any]:
    return {"instance": instance_id, "area": job.area, "key": job.stored.key, "size": job.stored.size,
            "checksum": job.stored.checksum, "created_at": now}


def _count(counts: dict[int, list[int]], study_id: int, series_id: int, size: int, new_series: bool) -> None:
    """Add one instance to what :meth:`Archive._apply_counts` adds at the batch's end: by study
    id [instances, bytes, new series], by minus the series id [instances, -, whether new]."""
    entry = counts.setdefault(study_id, [0, 0, 0])
    entry[0] += 1
    entry[1] += size
    entry[2] += 1 if new_series else 0
    series_entry = counts.setdefault(-series_id, [0, 0, 0])
    series_entry[0] += 1
    series_entry[2] = series_entry[2] or int(new_series)


def _recent(cache: OrderedDict[str, int], uid: str) -> int:
    """A cached row id, marked as the most recently used."""
    cache.move_to_end(uid)
    return cache[uid]


class Archive:
    """The archive's context: an index (the database) and a storage area, and nothing else."""

    def __init__(self, db: Database, area: StorageArea, mappings: MappingHolder, *,
                 duplicates: DuplicatePolicy = DuplicatePolicy.IGNORE, notify: lifecycle.Notify | None = None,
                 batch_max: int = 64, min_free_bytes: int = 0,
                 acknowledge: Acknowledge = Acknowledge.DURABLE) -> None:
        self.db = db
        self.area = area
        self.mappings = mappings
        self.duplicates = duplicates
        self.acknowledge = acknowledge
        self._pending: dict[str, str] = {}  # SOP Instance UID → checksum, answered and not yet indexed
        self._pending_lock = threading.Lock()
        self._placed: list[tuple[str, str, list[Path]]] = []  # staged objects indexed: key, tag, folders to sync
        self._placed_since = 0.0
        # Set in a receiver process (pacs.archive.receivers): staged objects go to the main
        # process's index writer instead of this process's.
        self.remote: Callable[[IndexJob], None] | None = None
        # How many connections this process's DICOM server serves (set by pacs serve).
        self.receiving: Callable[[], int] | None = None
        self.notify = notify
        self.batch_max = batch_max
        self.min_free_bytes = min_free_bytes
        self._free_checked = 0.0
        self._free = 0
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._studies: OrderedDict[str, int] = OrderedDict()  # study UID → id, recently used
        self._series: OrderedDict[str, int] = OrderedDict()
        # Every area by name (copies replaced under keep_newer are removed from theirs), the
        # areas readers open copies from, and hooks run in the transaction that indexes an
        # instance (the storage manager queues replicas there).
        self.areas: dict[str, StorageArea] = {area.name: area}
        self.readable: dict[str, StorageArea] = self.areas
        self.index_hooks: list[Callable[[Session, int, bool], None]] = []  # (session, instance, replaced)
        self.object_hooks: list[Callable[[Session, int, IndexJob], None]] = []  # (session, instance, its header)
        self.c_stores = CStoreCounts(outcome.value for outcome in Outcome)  # counted by the C-STORE handler

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(batching.STOP)
            self._thread.join(60)
            self._thread = None

    # -- store() ------------------------------------------------------------------------------
    def store(self, path: Path, *, calling_ae: str = "", sop_class: str | None = None,
              sop_instance: str | None = None, move: bool = False,
              spooled: Spooled | None = None, early: bool = False) -> StoreResult:
        """Archive the Part 10 file at ``path`` (moved into the storage area when ``move``).

        ``early``: the caller may be answered once the object is durable, before it is indexed
        (a C-STORE, under ``[archive] acknowledge = "durable"``); the result's ``pending`` then
        resolves once it is indexed. Otherwise the result comes once the object is indexed.

        ``spooled``: the file as the receiving side wrote it (:class:`Spooled`). Its header is
        parsed from the bytes kept in memory while the writer's fsync may still be under way;
        the file is placed once that is done (the area need not fsync it again), under the
        SHA-256 computed as it was written (an area that renames the file into place need not
        read it back). If the writer could not get it to disk, the object is not stored.

        An object to be staged whose head is in memory is first read by :func:`part10.scan`,
        which knows the plain case (a native little-endian image, say) several times faster
        than pydicom: the index writer is then given its values as a :class:`Summary`. Any
        other object is read with pydicom."""
        stage = getattr(self.area, "stage", None)
        staging = early and move and self.acknowledge == Acknowledge.DURABLE and callable(stage)
        scanned = None
        if staging and spooled is not None and spooled.head is not None:
            scanned = part10.scan(spooled.head, spooled.size, sop_class=sop_class, sop_instance=sop_instance)
        header: Dataset | Summary
        if scanned is not None:
            header, syntax = Summary(scanned.values, path), scanned.transfer_syntax  # path: set once staged
        else:
            try:
                header = read_header(path, spooled=spooled)
                check_identity(header, sop_class=sop_class, sop_instance=sop_instance)
                check_values(header)
            except Refused as exc:
                log.warning("refused an object from %s: %s", calling_ae or "import", exc.comment)
                return StoreResult(Outcome.REFUSED, exc.status, exc.comment)
            except Exception as exc:  # values pydicom cannot decode when they are read
                log.warning("refused an object from %s: %s", calling_ae or "import", exc)
                return StoreResult(Outcome.REFUSED, CANNOT_UNDERSTAND, f"cannot read the data set: {exc}")
            syntax = str(header.file_meta.get("TransferSyntaxUID", "")) if hasattr(header, "file_meta") else ""
        uid = _text(header, "SOPInstanceUID")
        if not syntax or not UID(syntax).is_transfer_syntax:
            # Retrieval, transcoding and rendering go by the transfer syntax (PS3.10 7.1): an object
            # without a known one could be kept but not served.
            comment = (f"Transfer Syntax UID {syntax!r} is not a transfer syntax this archive knows" if syntax
                       else "the File Meta Information has no Transfer Syntax UID")
            log.warning("refused an object from %s: %s", calling_ae or "import", comment)
            return StoreResult(Outcome.REFUSED, CANNOT_UNDERSTAND, comment)
        if self._short_of_space(path, spooled.size if spooled is not None else None):
            log.error("storage area %s has less than %d bytes free; refusing %s", self.area.name,
                      self.min_free_bytes, uid)
            return StoreResult(Outcome.STORAGE_FULL, OUT_OF_RESOURCES, "storage is full")
        # The duplicate policy is applied now, as the answer goes now; its look-up (a round trip
        # on PostgreSQL) is made while the receiving side's fsync of the file runs.
        held = self._held(uid) if staging and self.duplicates != DuplicatePolicy.KEEP_NEWER else None
        on_disk, checksum = False, None
        if spooled is not None:
            on_disk, checksum = spooled.sync(), spooled.checksum()
            if not on_disk:
                return StoreResult(Outcome.FAILED, OUT_OF_RESOURCES, "could not write the object to disk")
        if held is not None:
            return self._duplicate_answer(header, held, checksum or sha256_file(path), calling_ae)
        try:
            # A staged object not hashed on arrival is hashed by the index writer, off the path
            # of the answer (Stored.checksum "" until then).
            stored = stage(path, calling_ae, checksum=checksum or "", synced=on_disk) if staging else None
            if stored is None:
                staging = False
                stored = self.area.put_file(path, move=move, checksum=checksum, synced=on_disk)
            if isinstance(header, Summary):  # the whole header is read from where the file is now
                header.path = (self.area.staged_path(stored.key, calling_ae) if staging  # type: ignore[attr-defined]
                               else self.area.local_path(stored.key) or path)
        except StorageFull as exc:
            log.error("storage area %s is full: %s", self.area.name, exc)
            return StoreResult(Outcome.STORAGE_FULL, OUT_OF_RESOURCES, "storage is full")
        except OSError as exc:
            log.error("writing %s failed: %s", uid, exc)
            return StoreResult(Outcome.FAILED, OUT_OF_RESOURCES, f"could not write the object: {exc.strerror}")
        # Otherwise the duplicate policy is applied by the index writer, in the transaction that
        # would file the object: one query there instead of one more per object here, and no race.
        job = IndexJob(header=header, stored=stored, area=self.area.name, transfer_syntax=syntax,
                       calling_ae=calling_ae, staged=staging)
        if staging:
            with self._pending_lock:
                self._pending[uid] = stored.checksum
            (self.remote or self._queue.put)(job)
            return StoreResult(Outcome.STORED, Status.SUCCESS, "", None, _text(header, "StudyInstanceUID"),
                               pending=job.future)
        self._queue.put(job)
        try:
            return self._indexed_result(job)
        except WriterStopped:
            self.area.remove(stored.key)
            log.warning("%s came as the archive stopped; not stored, the sender may send it again", uid)
            return StoreResult(Outcome.FAILED, OUT_OF_RESOURCES, "the archive is stopping")
        except Exception as exc:
            self.area.remove(stored.key)
            log.error("indexing %s failed; the file was removed: %s", uid, exc)
            return StoreResult(Outcome.FAILED, OUT_OF_RESOURCES, "could not index the object")

    def _indexed_result(self, job: IndexJob) -> StoreResult:
        """The index writer's result for ``job``. A job queued after the writer took its STOP is
        never taken (a report's delivery, say, that came as the server stopped): rather than wait
        for good, holding whatever its caller holds, the wait ends once the writer has ended."""
        while True:
            try:
                return job.future.result(timeout=WRITER_CHECK_SECONDS)
            except TimeoutError:
                writer = self._thread
                if (writer is None or not writer.is_alive()) and not job.future.done():
                    raise WriterStopped from None

    def index_staged(self, key: str, calling_ae: str, values: dict[str, str], transfer_syntax: str,
                     size: int, checksum: str = "") -> Future[StoreResult]:
        """Index an object a receiver process staged and answered (its index writer is this
        one), from the header values it read (:func:`summary_of`); the future resolves once it
        is indexed."""
        path = self.area.staged_path(key, calling_ae)  # type: ignore[attr-defined]
        job = IndexJob(header=Summary(values, path), stored=Stored(key, size, checksum), area=self.area.name,
                       transfer_syntax=transfer_syntax, calling_ae=calling_ae, staged=True)
        self._queue.put(job)
        return job.future

    def settle_pending(self, uid: str) -> None:
        """Forget that ``uid`` waits for the index (a receiver, told by the main process)."""
        with self._pending_lock:
            self._pending.pop(uid, None)

    def _held(self, uid: str) -> tuple[int | None, str] | None:
        """(instance id, checksum) of the copy held under ``uid``: indexed, or answered and
        waiting for the index writer (id None); None if there is none."""
        with self._pending_lock:
            checksum = self._pending.get(uid)
        if checksum is not None:
            return None, checksum
        row = FIND_INSTANCE.first_alone(self.db.engine, {"uid": uid})
        return (row["id"], row["checksum"]) if row is not None else None

    def _duplicate_answer(self, header: Dataset | Summary, held: tuple[int | None, str], checksum: str | None,
                          calling_ae: str) -> StoreResult:
        """The answer to a second copy of an instance already held (ignore or reject policy)."""
        uid = _text(header, "SOPInstanceUID")
        instance_id, held_checksum = held
        if self.duplicates == DuplicatePolicy.REJECT:
            return StoreResult(Outcome.REFUSED, DUPLICATE_REFUSED, f"{uid} is already stored", instance_id)
        if checksum is not None and held_checksum and checksum != held_checksum:
            log.warning("instance %s from %s differs from the copy already stored; the stored copy is kept "
                        "(duplicates = ignore)", uid, calling_ae)
        return StoreResult(Outcome.ALREADY_STORED, WARNING_DUPLICATE, "instance already stored; this copy was ignored",
                           instance_id, _text(header, "StudyInstanceUID"))

    def _short_of_space(self, path: Path, size: int | None = None) -> bool:
        """Below the free-space watermark once the file at ``path`` (``size`` bytes, when the
        caller knows) is in? (The free space is looked at at most once a second.)"""
        if not self.min_free_bytes:
            return False
        now = time.monotonic()
        if now - self._free_checked > 1.0:
            free = getattr(self.area, "free_bytes", None)
            self._free = free() if callable(free) else 1 << 62
            self._free_checked = now
        return self._free - (path.stat().st_size if size is None else size) < self.min_free_bytes

    # -- the index writer ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch, stop = batching.take(self._queue, self.batch_max,
                                        timeout=PLACED_SYNC_SECONDS if self._placed else None)
            if batch and not stop:
                stop = self._gather(batch)
            if batch:
                self._index_batch(batch)
            if self._placed and (stop or not batch or len(self._placed) >= PLACED_SYNC_MAX
                                 or time.monotonic() - self._placed_since >= PLACED_SYNC_SECONDS):
                self._forget_staged()
            if stop:
                return

    def _gather(self, batch: list[IndexJob]) -> bool:
        """While every job of ``batch`` was answered already (staged), let more join it for up
        to :data:`GATHER_SECONDS`: one commit (an fsync of the WAL, and each index page written
        once) then serves them all, which keeps the database's writes from queueing up with the
        fsyncs of objects being received. A job someone waits for ends the wait. Not while this
        process serves associations itself: a larger batch then holds the GIL long enough to
        slow their receiving more than the commits saved (see ``receiving``). Whether
        :data:`batching.STOP` came."""
        if not all(job.staged for job in batch) or (self.receiving is not None and self.receiving()):
            return False
        deadline = time.monotonic() + GATHER_SECONDS
        while len(batch) < self.batch_max:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                job = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if job is batching.STOP:
                return True
            batch.append(job)
            if not job.staged:
                break
        return False

    def _forget_staged(self) -> None:
        """Sync the folders staged objects were filed into since the last time, then forget
        their staged names: from then on the filed name alone is durable."""
        placed, self._placed = self._placed, []
        folders = {folder for _, _, filed in placed for folder in filed}
        try:
            sync_folders(folders)
        except OSError as exc:  # the staged names stay; the next start files those objects again
            log.error("syncing %d storage folder(s) failed: %s", len(folders), exc)
            return
        for key, calling_ae, _ in placed:
            self.area.unstage(key, calling_ae)  # type: ignore[attr-defined]

    def _index_batch(self, batch: list[IndexJob]) -> None:
        results: list[tuple[IndexJob, StoreResult | Exception]] = []
        unplaced = []
        filed: dict[int, list[Path]] = {}
        for job in batch:
            if job.staged:
                try:
                    if not job.stored.checksum:
                        staged = self.area.staged_path(job.stored.key, job.calling_ae)  # type: ignore[attr-defined]
                        job.stored = Stored(job.stored.key, job.stored.size, sha256_file(staged))
                    filed[id(job)] = self.area.place(job.stored.key, job.calling_ae, sync=False)  # type: ignore[attr-defined]
                except OSError as exc:
                    log.error("filing staged object %s failed: %s", job.stored.key, exc)
                    unplaced.append(job)
        if unplaced:
            self._retry_later(unplaced)
            batch = [job for job in batch if job not in unplaced]
        try:
            with Session(self.db.engine, expire_on_commit=False, autoflush=False) as session:
                counts: dict[int, list[int]] = {}
                together = self._index_known(session, batch, counts)
                for job in batch:
                    done = together.get(id(job))
                    results.append((job, done if done is not None else self._index_one(session, job, counts)))
                self._apply_counts(session, counts)
                session.commit()
        except Exception as exc:
            log.exception("index batch of %d failed", len(batch))
            self._studies.clear()
            self._series.clear()
            self._retry_later([job for job in batch if job.staged])
            for job in batch:
                if not job.staged:
                    job.future.set_exception(exc)
            return
        for job, result in results:
            if isinstance(result, Exception):
                if job.staged:
                    self._retry_later([job])
                else:
                    job.future.set_exception(result)
                continue
            if job.staged:
                # Its filed name's folders are synced, and its staged name forgotten, a little
                # later with those of the objects indexed meanwhile (_forget_staged); until
                # then the staged name keeps it durable.
                if not self._placed:
                    self._placed_since = time.monotonic()
                self._placed.append((job.stored.key, job.calling_ae, filed[id(job)]))
                with self._pending_lock:
                    self._pending.pop(_text(job.header, "SOPInstanceUID"), None)
            job.future.set_result(result)

    def _retry_later(self, jobs: list[IndexJob]) -> None:
        """Queue staged objects the writer could not index again after a while (they stay staged
        meanwhile, and are indexed at the next start if this process ends first)."""
        if not jobs:
            return
        for job in jobs:
            job.attempts += 1
        delay = min(RETRY_MAX_SECONDS, 2.0 ** min(max(job.attempts for job in jobs), 9))
        log.error("%d acknowledged object(s) not indexed yet; trying again in %.0f s (they stay staged)",
                  len(jobs), delay)
        timer = threading.Timer(delay, lambda: [self._queue.put(job) for job in jobs])
        timer.daemon = True
        timer.start()

    def recover(self) -> int:
        """Index every object still staged (answered, perhaps not indexed, when the last process
        ended): before the DICOM port opens, in the main process of ``pacs serve`` only. Returns
        how many were indexed now."""
        staged = getattr(self.area, "staged", None)
        if staged is None:
            return 0
        jobs: list[IndexJob] = []
        for key, calling_ae, path in staged():
            with Session(self.db.reader) as session:
                indexed = session.exec(select(InstanceFile.id).where(InstanceFile.key == key)
                                       .where(InstanceFile.area == self.area.name)).first()
            if indexed is not None:  # indexed; the process ended before forgetting the staged name
                self.area.place(key, calling_ae)  # type: ignore[attr-defined]
                self.area.unstage(key, calling_ae)  # type: ignore[attr-defined]
                continue
            try:
                header = read_header(path)
                check_identity(header)
                check_values(header)
            except Exception as exc:
                log.error("staged object %s cannot be indexed (%s); left in %s", key, exc, path.parent)
                continue
            syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
            jobs.append(IndexJob(header=header, stored=Stored(key, path.stat().st_size, sha256_file(path)),
                                 area=self.area.name, transfer_syntax=syntax, calling_ae=calling_ae, staged=True))
        if not jobs:
            return 0
        log.warning("indexing %d object(s) acknowledged before the last stop and not yet indexed", len(jobs))
        for job in jobs:
            self._queue.put(job)
        for job in jobs:
            job.future.result()
        return len(jobs)

    def _index_one(self, session: Session, job: IndexJob, counts: dict[int, list[int]]) -> StoreResult | Exception:
        """Index one object under its own savepoint. A unique-key clash means another writer (a
        second receiver process, an import) filed the same study, series or instance at the same
        moment: the object is indexed again, now seeing that writer's rows."""
        clash = (IntegrityError, self.db.engine.dialect.loaded_dbapi.IntegrityError)  # the ORM's, the driver's
        for attempt in range(3):
            # An object of a study and series already filed is written with prepared statements
            # under a plain savepoint. One that files a new study or series (or replaces a copy)
            # goes through the ORM, whose flush can clash with another writer: SQLAlchemy's own
            # nested transaction then keeps the session usable for the rest of the batch.
            known = (job.replace is None and _text(job.header, "StudyInstanceUID") in self._studies
                     and _text(job.header, "SeriesInstanceUID") in self._series)
            try:
                with nested(session, "instance") if known else session.begin_nested():
                    return self._index(session, job, counts)
            except clash:
                self._studies.clear()
                self._series.clear()
                log.info("index clash for %s (attempt %d); trying again", _text(job.header, "SOPInstanceUID"),
                         attempt + 1)
            except Exception as exc:
                log.exception("indexing %s failed", _text(job.header, "SOPInstanceUID"))
                return exc
        return RuntimeError("the index kept clashing with another writer")

    def _duplicate(self, session: Session, job: IndexJob) -> StoreResult | None:
        """Apply ``[archive] duplicates`` to an instance already indexed (None: file it)."""
        uid = _text(job.header, "SOPInstanceUID")
        existing = FIND_INSTANCE.first(session.connection(), {"uid": uid})
        if existing is None:
            return None
        if self.duplicates == DuplicatePolicy.KEEP_NEWER:
            job.replace = existing["id"]
            return None
        self.area.remove(job.stored.key)
        if job.staged:  # answered Success already (the copy held came from another process meanwhile)
            log.warning("instance %s from %s was stored twice at the same moment; the copy indexed first is kept",
                        uid, job.calling_ae)
        return self._duplicate_answer(job.header, (existing["id"], existing["checksum"]), job.stored.checksum,
                                      job.calling_ae)

    def _index(self, session: Session, job: IndexJob, counts: dict[int, list[int]]) -> StoreResult:
        ds = job.header
        duplicate = self._duplicate(session, job)
        if duplicate is not None:
            return duplicate
        study_id, new_study = self._study(session, ds, job)
        series_id, new_series = self._series_row(session, ds, study_id, job)
        if job.replace is not None:
            old = session.exec(select(InstanceFile).where(InstanceFile.instance == job.replace)).all()
            instance = session.get_one(Instance, job.replace)
            instance.series = series_id
            instance.size, instance.checksum = job.stored.size, job.stored.checksum
            instance.transfer_syntax_uid = job.transfer_syntax
            instance.received_at = utcnow()
            session.add(instance)
            for row in old:
                session.delete(row)
                if row.area in self.areas:
                    self.areas[row.area].remove(row.key)  # the older copy goes once the newer is indexed
            session.add(InstanceFile(instance=job.replace, area=job.area, key=job.stored.key,
                                     size=job.stored.size, checksum=job.stored.checksum))
            for hook in self.index_hooks:
                hook(session, job.replace, True)
            for object_hook in self.object_hooks:
                object_hook(session, job.replace, job)
            return StoreResult(Outcome.REPLACED, Status.SUCCESS, "", job.replace, _text(ds, "StudyInstanceUID"))
        # Core statements on the session's connection: the ORM's unit of work, and even its
        # ORM-enabled INSERT, cost more than the statements themselves.
        now = utcnow()
        connection = session.connection()
        instance_id = INSERT_INSTANCE.rows(connection, _instance_row(job, series_id, now))[0]["id"]
        INSERT_FILE.execute(connection, _file_row(job, instance_id, now))
        self._indexed(session, job, instance_id)
        _count(counts, study_id, series_id, job.stored.size, new_series)
        return StoreResult(Outcome.STORED, Status.SUCCESS, "", instance_id, _text(ds, "StudyInstanceUID"))

    def _indexed(self, session: Session, job: IndexJob, instance_id: int) -> None:
        """Run the hooks for a newly indexed instance."""
        for hook in self.index_hooks:
            hook(session, instance_id, False)
        for object_hook in self.object_hooks:  # e.g. an IOCM rejection note applied (pacs.archive.retention)
            object_hook(session, instance_id, job)

    def _index_known(self, session: Session, batch: list[IndexJob],
                     counts: dict[int, list[int]]) -> dict[int, StoreResult]:
        """Index together, under one savepoint, the batch's new instances of series already
        filed: one look-up of which are indexed already, the instance rows with their ids in
        two statements and the file rows in one (:meth:`Prepared.insert_each`), where each
        object alone costs a savepoint and three statements, a round trip each on PostgreSQL.
        The results by ``id(job)``; the objects left out (new studies or series, a copy to
        replace, one indexed already or twice in the batch) and, if any statement fails (a
        clash with another writer), all of them are indexed one by one after, each under its
        own savepoint as before."""
        known: dict[str, IndexJob] = {}
        for job in batch:
            uid = _text(job.header, "SOPInstanceUID")
            if (job.replace is None and uid not in known and _text(job.header, "StudyInstanceUID") in self._studies
                    and _text(job.header, "SeriesInstanceUID") in self._series):
                known[uid] = job
        if len(known) < 2:
            return {}
        placed: list[tuple[int, int, int]] = []  # study, series, bytes: counted once all are in
        done: dict[int, StoreResult] = {}
        try:
            with nested(session, "instances") as connection:
                for uid in _indexed_already(connection, list(known)):
                    del known[uid]
                jobs = list(known.values())
                if not jobs:
                    return {}
                now = utcnow()
                places = [(_recent(self._studies, _text(job.header, "StudyInstanceUID")),
                           _recent(self._series, _text(job.header, "SeriesInstanceUID"))) for job in jobs]
                ids = INSERT_INSTANCE.insert_each(connection, [_instance_row(job, series_id, now)
                                                               for job, (_, series_id) in zip(jobs, places, strict=True)])
                INSERT_FILE.execute_many(connection, [_file_row(job, instance_id, now)
                                                      for job, instance_id in zip(jobs, ids, strict=True)])
                for job, instance_id, (study_id, series_id) in zip(jobs, ids, places, strict=True):
                    self._indexed(session, job, instance_id)
                    placed.append((study_id, series_id, job.stored.size))
                    done[id(job)] = StoreResult(Outcome.STORED, Status.SUCCESS, "", instance_id,
                                                _text(job.header, "StudyInstanceUID"))
        except Exception as exc:  # undone; one by one, each alone, tells which object it was
            log.info("indexing %d instances together failed (%s); indexing them one by one", len(known), exc)
            self._studies.clear()
            self._series.clear()
            return {}
        for study_id, series_id, size in placed:
            _count(counts, study_id, series_id, size, False)
        return done

    def _apply_counts(self, session: Session, counts: dict[int, list[int]]) -> None:
        """Add the batch's objects to their series' and studies' counts, then recount the
        studies whose counts only a recount gets right (:func:`recount_studies`): those a
        rejection note took from, and those with a series that was emptied (rejected) and
        now holds an instance again, whose modality and series the increments can't restore."""
        now = utcnow()
        connection = session.connection()
        recount: set[int] = session.info.pop(RECOUNT_KEY, set())
        for key, (instances, size, series) in counts.items():
            if key < 0:
                [row] = COUNT_SERIES.rows(connection, {"row": -key, "instances": instances, "now": now})
                if row["number_of_instances"] == instances and not series:  # was empty, and not new
                    recount.add(row["study"])
            else:
                COUNT_STUDY.execute(connection, {"row": key, "instances": instances, "series": series,
                                                 "size": size, "now": now})
        recount_studies(session, recount)

    # -- study and series rows ----------------------------------------------------------------
    def _study(self, session: Session, ds: Dataset, job: IndexJob) -> tuple[int, bool]:
        uid = _text(ds, "StudyInstanceUID")
        if uid in self._studies:
            return _recent(self._studies, uid), False
        found = session.exec(select(Study.id).where(Study.study_instance_uid == uid)).first()
        if found is not None:
            self._remember(self._studies, uid, found)
            return found, False
        ds = _whole(ds)
        patient, order, how, unmatched = self.reconcile(session, ds, job.calling_ae)
        study = Study(
            study_instance_uid=uid,
            patient=patient.id,  # type: ignore[arg-type]
            order=order.id if order else None,
            accession_number=(order.accession_number if order else _text(ds, "AccessionNumber"))[:64],
            study_id=_text(ds, "StudyID"),
            study_date=_text(ds, "StudyDate")[:8],
            study_time=_text(ds, "StudyTime"),
            description=_text(ds, "StudyDescription") or (order.procedure_text if order else ""),
            referring_physician=(order.referring_physician if order and order.referring_physician
                                 else _text(ds, "ReferringPhysicianName")),
            modalities=_text(ds, "Modality"),
            received={k: _text(ds, k) for k in RECEIVED_KEYS if k in ds},
            charset=_text(ds, "SpecificCharacterSet"),
            reconciled_by=how,
        )
        session.add(study)
        session.flush()
        assert study.id is not None
        if unmatched is not None:  # the device rules found no order, or more than one: for a person
            match, keys, arrived = unmatched
            reconciliation.file_study(session, study, match, keys, arrived=arrived)
        if order is not None and order.status in (OrderStatus.SCHEDULED, OrderStatus.ARRIVED,
                                                  OrderStatus.IN_PROGRESS, OrderStatus.COMPLETED):
            lifecycle.transition(session, order, OrderStatus.IMAGES_RECEIVED, by=f"archive:{job.calling_ae}",
                                 steps=service.steps_of(session, order), note=f"first image of study {uid}",
                                 notify=self.notify)
        self._remember(self._studies, uid, study.id)
        return study.id, True

    def _series_row(self, session: Session, ds: Dataset, study_id: int, job: IndexJob) -> tuple[int, bool]:
        uid = _text(ds, "SeriesInstanceUID")
        if uid in self._series:
            return _recent(self._series, uid), False
        found = session.exec(select(Series.id).where(Series.series_instance_uid == uid)).first()
        if found is not None:
            self._remember(self._series, uid, found)
            return found, False
        ds = _whole(ds)
        modality = _text(ds, "Modality")
        series = Series(
            series_instance_uid=uid, study=study_id, modality=modality, series_number=_int(ds, "SeriesNumber"),
            description=_text(ds, "SeriesDescription"), body_part=_text(ds, "BodyPartExamined"),
            laterality=_text(ds, "Laterality"), series_date=_text(ds, "SeriesDate")[:8],
            series_time=_text(ds, "SeriesTime"), station_name=_text(ds, "StationName"),
            institution=_text(ds, "InstitutionName"), performing_physician=_text(ds, "PerformingPhysicianName"),
            operators=_text(ds, "OperatorsName"), protocol=_text(ds, "ProtocolName"),
            calling_ae_title=job.calling_ae,
        )
        session.add(series)
        session.flush()
        assert series.id is not None
        study = session.get_one(Study, study_id)
        modalities = [m for m in study.modalities.split("\\") if m]
        if modality and modality not in modalities:
            study.modalities = "\\".join(sorted(modalities + [modality]))
            session.add(study)
        self._remember(self._series, uid, series.id)
        return series.id, True

    @staticmethod
    def _remember(cache: OrderedDict[str, int], uid: str, row_id: int) -> None:
        cache[uid] = row_id
        if len(cache) > 10000:
            cache.popitem(last=False)

    # -- reconciliation (IHE PIR; "worklist coercion") ------------------------------------------
    def reconcile(self, session: Session, ds: Dataset, calling_ae: str) -> tuple[
            Patient, ImagingOrder | None, str, tuple[Match, ImageKeys, datetime] | None]:
        """The order and patient a new study belongs to: by Study Instance UID, by Accession
        Number, then by the device rules of mappings/devices.yaml; the patient by Patient ID
        (and issuer) when no order is found, created from the images when unknown. The last
        item is what the device rules said when they found no single order (the study goes on
        the reconciliation list, :mod:`pacs.archive.reconciliation`), else None."""
        order, how = None, ""
        uid = _text(ds, "StudyInstanceUID")
        order = session.exec(select(ImagingOrder).where(ImagingOrder.study_instance_uid == uid)).first()
        if order is not None:
            how = "study_uid"
        accession = _text(ds, "AccessionNumber")
        if order is None and accession:
            order = session.exec(select(ImagingOrder).where(ImagingOrder.accession_number == accession)
                                 .where(col(ImagingOrder.status).not_in([OrderStatus.CANCELLED]))).first()
            how = "accession" if order is not None else ""
        rules = self.mappings.current().devices
        unmatched = None
        if order is None and rules is not None:
            keys = keys_from_dataset(ds, calling_ae)
            arrived = datetime.now()  # the device rules' stand-in for a study time the images lack
            match = match_order(session, rules, keys, now=arrived)
            if match.order_id is not None:
                order = session.get(ImagingOrder, match.order_id)
                how = f"device rule {match.strategy} ({match.device})"
            else:
                unmatched = (match, keys, arrived)
        if order is not None:
            patient = service._root(session, session.get_one(Patient, order.patient))
            return patient, order, how, None
        patient = self._patient_from_images(session, ds)
        return patient, None, "patient_id" if _text(ds, "PatientID") else "none", unmatched

    def _patient_from_images(self, session: Session, ds: Dataset) -> Patient:
        patient_id = _text(ds, "PatientID") or f"UNKNOWN-{_text(ds, 'StudyInstanceUID')[-16:]}"
        issuer = _text(ds, "IssuerOfPatientID")
        found = service.patient_by_id(session, patient_id, issuer if issuer else None)
        if found is not None:
            return found
        pn = ds.get("PatientName")
        alphabetic = ideographic = ""
        if pn is not None:
            groups = [pn.alphabetic, pn.ideographic] if hasattr(pn, "alphabetic") else [str(pn), ""]
            alphabetic, ideographic = (str(group or "").replace("\0", "\ufffd") for group in groups)
        source = ideographic or alphabetic
        parts = source.split("^")
        name = person_name(parts[0], parts[1] if len(parts) > 1 else "",
                           pinyin=alphabetic if ideographic and alphabetic else None,
                           rules=self.mappings.current().names)
        birth = _text(ds, "PatientBirthDate")
        from datetime import date

        try:
            birth_date = date(int(birth[:4]), int(birth[4:6]), int(birth[6:8])) if len(birth) >= 8 else None
        except ValueError:
            birth_date = None
        patient = Patient(patient_id=patient_id, issuer=issuer, family_name=name.family, given_name=name.given,
                          name_alphabetic=name.alphabetic, name_ideographic=name.ideographic,
                          sex=_text(ds, "PatientSex")[:1], birth_date=birth_date)
        session.add(patient)
        session.flush()
        session.add(PatientIdentifier(patient=patient.id, value=patient_id, authority=issuer))  # type: ignore[arg-type]
        return patient


def move_studies_on_merge(session: Session, old: Patient, target: Patient, ctx: Any = None) -> None:
    """A merged patient's studies follow it (ADT A40): queries and retrieves answer with the
    surviving patient from now on; no file is rewritten."""
    session.execute(update(Study).where(col(Study.patient) == old.id).values(patient=target.id))


service.MERGE_HOOKS.append(move_studies_on_merge)


def incoming_dir(area: StorageArea) -> Path | None:
    """Where pynetdicom should write received objects so they can be moved, not copied."""
    path = getattr(area, "incoming", None)
    return path if isinstance(path, Path) else None


def tidy_incoming(area: StorageArea) -> int:
    """Remove leftovers of objects that never reached the index (the process stopped mid-way)."""
    folder = incoming_dir(area)
    removed = 0
    if folder is not None:
        for leftover in folder.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed

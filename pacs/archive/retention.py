"""Retention and deletion: IOCM rejection notes, retention periods per modality, the trash, and the
one way copies of instances are removed.

**Rejection** (IHE IOCM, PS3.3 A.35.4). A Key Object Selection document (SOP class
1.2.840.10008.5.1.4.1.1.88.59) whose Concept Name is one of the rejection titles of PS3.16 CID 7010
— DCM 113001 Rejected for Quality Reasons, 113037 Rejected for Patient Safety Reasons, 113038
Incorrect Modality Worklist Entry, 113039 Data Retention Policy Expired — arriving through
``store()`` rejects every instance its Current Requested Procedure Evidence Sequence references,
in the transaction that indexes it: the instances get ``rejected_at`` and ``rejection_code``,
leave C-FIND, C-MOVE/C-GET, DICOMweb and FHIR answers (the study and series counts no longer count
them) and wait in the trash. The note itself stays visible, so viewers learn of the rejection,
except a 113039 note, which goes to the trash with what it names.

**Retention periods.** ``[retention] per_modality = { MG = 7300, CT = 3650 }``: a study whose
study date is older than the period of its modality expires as a whole, as if a 113039 note had
named every instance (a study with several listed modalities keeps the longest period; modalities
not listed do not count; a study without a study date never expires).

**The trash.** Rejected and expired instances are removed ``[retention] trash_days`` after they
were rejected: their index rows and every copy's row in one transaction (audited there: "DICOM
Study Deleted", 110105, when nothing of the study is left, else "DICOM Instances Accessed",
110103, D), then their objects, area by area. An index row is never left without its copy (a
crash after the commit leaves objects the storage scrubber counts as orphans), and
:func:`remove_copy` — the one function that removes a single copy — refuses the last intact copy
of an instance that is not in the trash (:class:`LastCopy`).
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import Table, delete, func, update
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, SQLModel, col, select

from pacs.archive.index import Instance, InstanceFile, Series, Study, recount_later, recount_studies
from pacs.archive.storage import StorageArea
from pacs.audit import Event, codes, record
from pacs.audit.service import lock_for_writing
from pacs.audit.codes import Action, Code
from pacs.db import Database, utcnow
from pacs.registry.models import Patient

log = logging.getLogger(__name__)

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage
BATCH = 500


class LastCopy(Exception):
    """Removing this copy would leave an instance that is not in the trash without any copy."""


# -- rejection notes (IOCM) -------------------------------------------------------------------

def rejection_title(ds: Dataset) -> Code | None:
    """The IOCM rejection title of a Key Object Selection document (its Concept Name), if any."""
    if str(ds.get("SOPClassUID", "")) != KEY_OBJECT_SELECTION:
        return None
    try:
        item = ds.ConceptNameCodeSequence[0]
        value, scheme = str(item.CodeValue).strip(), str(item.CodingSchemeDesignator).strip()
    except (AttributeError, IndexError, TypeError):
        return None
    code = codes.REJECTION_CODES.get(value)
    return code if code is not None and scheme == "DCM" else None


def referenced_instances(ds: Dataset) -> list[tuple[str, str, str]]:
    """(study, series, SOP instance) UIDs a note names in its Current Requested Procedure
    Evidence Sequence (0040,A375) (PS3.3 C.17.2)."""
    out = []
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []) or []:
        study_uid = str(study.get("StudyInstanceUID", "") or "")
        for series in study.get("ReferencedSeriesSequence", []) or []:
            series_uid = str(series.get("SeriesInstanceUID", "") or "")
            for sop in series.get("ReferencedSOPSequence", []) or []:
                uid = str(sop.get("ReferencedSOPInstanceUID", "") or "").strip()
                if uid:
                    out.append((study_uid, series_uid, uid))
    return out


def reject(session: Session, instance_ids: list[int], code: Code, *, now: datetime | None = None) -> dict[int, int]:
    """Put instances in the trash: mark them, then recount their studies and series from what
    is left (:func:`~pacs.archive.index.recount_studies`), now and again once the archive's
    index writer has added the counts of the objects of its transaction (the note's own among
    them). Returns study id → instances rejected (already rejected ones are skipped)."""
    now = now or utcnow()
    rejected: dict[int, int] = {}
    for start in range(0, len(instance_ids), BATCH):
        chunk = instance_ids[start:start + BATCH]
        rows = session.exec(select(Instance.id, Series.study)
                            .join(Series, col(Series.id) == Instance.series)
                            .where(col(Instance.id).in_(chunk), col(Instance.rejected_at).is_(None))).all()
        if not rows:
            continue
        session.execute(update(Instance).where(col(Instance.id).in_([r[0] for r in rows]),
                                               col(Instance.rejected_at).is_(None))
                        .values(rejected_at=now, rejection_code=code.value))
        for _id, study in rows:
            rejected[study] = rejected.get(study, 0) + 1
    recount_studies(session, rejected)
    recount_later(session, rejected)
    return rejected


def _study_keys(session: Session, study_ids: list[int]) -> dict[int, tuple[str, str]]:
    """study id → (Study Instance UID, Patient ID)."""
    if not study_ids:
        return {}
    rows = session.exec(select(Study.id, Study.study_instance_uid, Patient.patient_id)
                        .join(Patient, col(Patient.id) == Study.patient).where(col(Study.id).in_(study_ids))).all()
    return {r[0]: (r[1], r[2]) for r in rows}


def _audit_rejection(session: Session, rejected: dict[int, int], code: Code, *, user: str, user_kind: str,
                     address: str = "", note: str = "", missing: int = 0) -> None:
    keys = _study_keys(session, list(rejected))
    total = sum(rejected.values())
    details: dict[str, Any] = {"rejection_code": code.value, "reason": code.meaning, "instances": total,
                               "per_study": {keys[s][0]: n for s, n in rejected.items() if s in keys}}
    if note:
        details["rejection_note"] = note
    if missing:
        details["not_held"] = missing
    record(session, Event(codes.INSTANCES_ACCESSED, Action.UPDATE, user=user, user_kind=user_kind, address=address,
                          patients=sorted({k[1] for k in keys.values()}), studies=[k[0] for k in keys.values()],
                          description=f"{total} instance(s) rejected: {code.meaning}"
                                      + (f" ({missing} named instance(s) not held)" if missing else ""),
                          details=details))


class Rejections:
    """The archive's object hook (``archive.object_hooks``): applies a rejection note in the
    transaction that indexes it. Other objects cost one comparison of their SOP Class UID."""

    def __init__(self, archive: Any) -> None:
        self.archive = archive

    def on_indexed(self, session: Session, instance_id: int, job: Any) -> None:
        if str(job.header.get("SOPClassUID", "")).strip() != KEY_OBJECT_SELECTION:
            return
        ds = self._read(job)
        code = rejection_title(ds) if ds is not None else None
        if code is None:
            return
        named = {uid for _study, _series, uid in referenced_instances(ds)}  # type: ignore[arg-type]
        named.discard(str(job.header.get("SOPInstanceUID", "")))
        ids = list(session.exec(select(Instance.id).where(col(Instance.sop_instance_uid).in_(named)))) if named else []
        missing = len(named) - len(ids)
        if code == codes.RETENTION_EXPIRED:
            ids.append(instance_id)  # the note goes with what it names
        calling = job.calling_ae or "import"
        rejected = reject(session, ids, code)
        log.info("rejection note %s (%s) from %s: %d instance(s) rejected, %d named but not held",
                 job.header.get("SOPInstanceUID", ""), code.meaning, calling, sum(rejected.values()), missing)
        _audit_rejection(session, rejected, code, user=calling, user_kind="dicom",
                         note=str(job.header.get("SOPInstanceUID", "")), missing=missing)

    def _read(self, job: Any) -> Dataset | None:
        area = self.archive.areas.get(job.area)
        if area is None:
            return None
        try:
            path = area.local_path(job.stored.key)
            return pydicom.dcmread(path if path is not None else BytesIO(area.read(job.stored.key)))
        except Exception as exc:
            log.warning("cannot read key object selection %s/%s: %s", job.area, job.stored.key, exc)
            return None


# -- retention periods ------------------------------------------------------------------------

def expired_studies(session: Session, per_modality: dict[str, float], today: date) -> list[int]:
    """Studies past the retention period of their modalities (the longest of those listed)."""
    periods = {m.upper(): float(d) for m, d in per_modality.items() if d and d > 0}
    if not periods:
        return []
    newest_cutoff = (today - timedelta(days=min(periods.values()))).strftime("%Y%m%d")
    rows = session.exec(select(Study.id, Study.study_date, Series.modality)
                        .join(Series, col(Series.study) == Study.id)
                        .where(Study.study_date != "", Study.study_date < newest_cutoff,
                               Study.number_of_instances > 0, Series.number_of_instances > 0,
                               func.upper(Series.modality).in_(list(periods)))).all()
    longest: dict[int, tuple[str, float]] = {}
    for study, study_date, modality in rows:
        days = periods[modality.upper()]
        if study not in longest or days > longest[study][1]:
            longest[study] = (study_date, days)
    return sorted(study for study, (study_date, days) in longest.items()
                  if study_date < (today - timedelta(days=days)).strftime("%Y%m%d"))


# -- removal ----------------------------------------------------------------------------------

def _dependents(table: str) -> list[tuple[Table, Any]]:
    """(table, column) pairs that reference ``table``.id, from every model (other parts' too)."""
    out = []
    for other in SQLModel.metadata.sorted_tables:
        for fk in other.foreign_keys:
            if fk.column.table.name == table and fk.column.name == "id" and other.name != "instance_file":
                out.append((other, fk.parent))
    return out


def _intact(area: StorageArea | None, copy: InstanceFile) -> bool:
    if area is None:
        return False
    try:
        return area.exists(copy.key)
    except Exception:
        return False


def remove_copy(session: Session, copy: InstanceFile, areas: dict[str, StorageArea]) -> None:
    """Forget one copy of an instance in the index (the caller commits, then removes the object).

    Refuses with :class:`LastCopy` unless the instance is in the trash or another copy of it is
    intact in its area."""
    instance = session.get(Instance, copy.instance)
    if instance is not None and instance.rejected_at is None:
        others = session.exec(select(InstanceFile).where(InstanceFile.instance == copy.instance,
                                                         col(InstanceFile.id) != copy.id)).all()
        if not any(_intact(areas.get(o.area), o) for o in others):
            raise LastCopy(f"{copy.area}/{copy.key} is the last intact copy of {instance.sop_instance_uid}, "
                           "which is not rejected or expired; it is not removed")
    session.execute(delete(InstanceFile).where(col(InstanceFile.id) == copy.id))


@dataclass
class PurgeResult:
    instances: int = 0
    studies_deleted: list[str] = field(default_factory=list)
    objects_removed: int = 0
    objects_left: int = 0  # could not be removed: orphans for the scrubber


@dataclass
class RunResult:
    expired_studies: list[str] = field(default_factory=list)
    expired_instances: int = 0
    purge: PurgeResult = field(default_factory=PurgeResult)


class Retention:
    """Applies retention periods and empties the trash (scheduled by the server, or ``pacs retention run``)."""

    def __init__(self, db: Database, areas: dict[str, StorageArea], settings: Any, *,
                 lock_dir: Path | None = None) -> None:
        self.db = db
        self.areas = areas
        self.settings = settings
        self.lock_dir = lock_dir or settings.data_dir
        self._running = threading.Lock()

    def run(self, *, now: datetime | None = None, dry_run: bool = False, user: str = "retention",
            user_kind: str = "system") -> RunResult:
        """Expire what the periods say, then remove what has been in the trash long enough."""
        with self._running:
            result = RunResult()
            now = now or utcnow()
            today = now.astimezone(self.settings.zone).date()
            expired = self.expire(today=today, now=now, dry_run=dry_run, user=user, user_kind=user_kind)
            result.expired_studies, result.expired_instances = expired
            if not dry_run:
                result.purge = self.purge(now=now, user=user, user_kind=user_kind)
            return result

    def expire(self, *, today: date, now: datetime | None = None, dry_run: bool = False, user: str = "retention",
               user_kind: str = "system") -> tuple[list[str], int]:
        with Session(getattr(self.db, "reader", self.db.engine)) as session:
            studies = expired_studies(session, self.settings.retention.per_modality, today)
            uids = [k[0] for k in _study_keys(session, studies).values()]
        if dry_run or not studies:
            return uids, 0
        total = 0
        for study in studies:  # a transaction each: ingest waits for one study at most
            with Session(self.db.engine) as session:
                lock_for_writing(session.connection())
                ids = list(session.exec(select(Instance.id).join(Series, col(Series.id) == Instance.series)
                                        .where(Series.study == study, col(Instance.rejected_at).is_(None))).all())
                rejected = reject(session, ids, codes.RETENTION_EXPIRED, now=now)
                if rejected:
                    _audit_rejection(session, rejected, codes.RETENTION_EXPIRED, user=user, user_kind=user_kind)
                session.commit()
            total += sum(rejected.values())
        log.info("retention: %d stud(ies) expired (%d instance(s) to the trash)", len(studies), total)
        return uids, total

    def purge(self, *, now: datetime | None = None, user: str = "retention", user_kind: str = "system") -> PurgeResult:
        """Remove instances that have been in the trash for ``[retention] trash_days``."""
        result = PurgeResult()
        cutoff = (now or utcnow()) - timedelta(days=self.settings.retention.trash_days)
        with backup_lock(self.lock_dir, wait=False) as held:
            if not held:
                log.info("retention: a backup is running; the trash is emptied next time")
                return result
            while True:
                with Session(self.db.engine) as session:
                    lock_for_writing(session.connection())
                    ids = list(session.exec(select(Instance.id).where(col(Instance.rejected_at).is_not(None),
                                                                     col(Instance.rejected_at) <= cutoff)
                                            .order_by(col(Instance.id)).limit(BATCH)).all())
                    if not ids:
                        return result
                    objects, deleted = delete_instances(session, ids, user=user, user_kind=user_kind)
                    session.commit()
                result.instances += len(ids)
                result.studies_deleted += deleted
                removed, left = remove_objects(self.areas, objects)
                result.objects_removed += removed
                result.objects_left += left


def delete_instances(session: OrmSession, ids: list[int], *, user: str = "retention",
                     user_kind: str = "system") -> tuple[list[tuple[str, str]], list[str]]:
    """Forget instances in the trash and every copy of them, in the caller's transaction, audited.
    Returns the (area, key) objects to remove once committed, and the studies of which nothing
    is left. Refuses (:class:`LastCopy`) an instance that is not in the trash."""
    rows = session.execute(select(Instance.id, Instance.rejected_at, Instance.rejection_code, Instance.sop_instance_uid,
                                  Series.study).join(Series, col(Series.id) == Instance.series)
                           .where(col(Instance.id).in_(ids))).all()
    live = [r[3] for r in rows if r[1] is None]
    if live:
        raise LastCopy(f"{len(live)} instance(s) are not in the trash (e.g. {live[0]}); nothing was removed")
    objects = [(a, k) for a, k in session.execute(select(InstanceFile.area, InstanceFile.key)
                                                  .where(col(InstanceFile.instance).in_(ids))).all()]
    for table, column in _dependents("instance"):
        session.execute(delete(table).where(column.in_(ids)))
    session.execute(delete(InstanceFile).where(col(InstanceFile.instance).in_(ids)))
    session.execute(delete(Instance).where(col(Instance.id).in_(ids)))
    per_study: dict[int, list[Any]] = {}
    for _id, _at, code, uid, study in rows:
        per_study.setdefault(study, []).append((uid, code))
    keys = _study_keys(session, list(per_study))  # type: ignore[arg-type]
    gone: list[str] = []
    for study, instances in per_study.items():
        left = session.execute(select(func.count()).select_from(Instance).join(Series, col(Series.id) == Instance.series)
                               .where(Series.study == study)).scalar_one()
        study_uid, patient_id = keys.get(study, ("", ""))
        reasons = sorted({code for _uid, code in instances if code})
        details = {"instances": len(instances), "rejection_codes": reasons, "objects": len(objects)}
        if not left:
            gone.append(study_uid)
            record(session, Event(codes.STUDY_DELETED, Action.DELETE, user=user, user_kind=user_kind,
                                  patients=[patient_id], studies=[study_uid],
                                  description=f"study deleted from the trash: {len(instances)} instance(s)",
                                  details=details))
        else:
            record(session, Event(codes.INSTANCES_ACCESSED, Action.DELETE, user=user, user_kind=user_kind,
                                  patients=[patient_id], studies=[study_uid],
                                  description=f"{len(instances)} instance(s) deleted from the trash",
                                  details={**details, "sop_instances": [u for u, _c in instances][:1000]}))
    return objects, gone


def remove_objects(areas: dict[str, StorageArea], objects: list[tuple[str, str]]) -> tuple[int, int]:
    """Remove objects whose index rows are gone, area by area. Returns (removed, left behind)."""
    by_area: dict[str, list[str]] = {}
    for area, key in objects:
        by_area.setdefault(area, []).append(key)
    removed = left = 0
    for name, keys in by_area.items():
        area = areas.get(name)
        if area is None:
            log.warning("storage area %s is not configured: %d object(s) left for its scrubber", name, len(keys))
            left += len(keys)
            continue
        for key in keys:
            try:
                area.remove(key)
                removed += 1
            except Exception as exc:
                log.warning("could not remove %s/%s: %s (left as an orphan)", name, key, exc)
                left += 1
    return removed, left


@contextmanager
def backup_lock(folder: Path, *, wait: bool = True) -> Iterator[bool]:
    """An advisory lock a backup holds while it copies, and the trash is not emptied meanwhile
    (a file lock, so it holds across processes: ``pacs backup`` beside ``pacs serve``)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".backup.lock").open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

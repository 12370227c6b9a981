"""The capture service: a non-DICOM file, an order, and the archive's one way in.

:meth:`Capture.capture` takes a file from a device (the HTTP API, the hot folders, the /capture
page), finds the order it is for, makes DICOM of it (:mod:`pacs.capture.convert`) and hands the
Part 10 file to :meth:`pacs.archive.store.Archive.store`, like any C-STORE: it is indexed under
the order's study, found by C-FIND and QIDO, retrieved by C-MOVE and WADO, and the order moves
to images received. The order is found, in turn:

- by the order the caller names (its id, or its accession number): an id or accession number
  that names no order is an error for the caller (:class:`UnknownOrder`), not a guess;
- otherwise by ``mappings/devices.yaml``'s rules for the device (its name is the calling AE
  title), with the accession number the file's name starts with (``A0017_2.jpg``), the Patient
  ID the caller gave and the time it arrived.

What matches no order, or more than one, is not guessed at: the file is kept as received in the
storage area and waits on the reconciliation list as a ``file`` item
(:mod:`pacs.archive.reconciliation`) with the reason and the candidate orders. Attaching it
there (:meth:`Capture.attach_file`, registered in ``ATTACHERS``) converts it for the order chosen
and stores it once the attach has committed (the index writer needs the database the attach's
transaction holds).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import event
from sqlmodel import Session, col, select

from pacs.archive import reconciliation
from pacs.archive.reconciliation import Kind as ItemKind
from pacs.archive.reconciliation import ReconciliationItem
from pacs.archive.store import Archive, incoming_dir
from pacs.capture.barcode import read_barcodes
from pacs.capture.convert import Equipment, Source, Target, Unconvertible, inspect, to_dataset
from pacs.capture.devices import DEFAULT_DEVICE, CaptureDevice, CaptureDevices, load_capture_devices
from pacs.capture.reasons import Coded
from pacs.db import Database
from pacs.integration.mapping import MappingHolder
from pacs.registry import service
from pacs.registry.device_rules import ENDED_ORDERS, ImageKeys, match_order
from pacs.registry.models import ImagingOrder, Patient
from pacs.settings import Settings

log = logging.getLogger(__name__)

STORE_WORKERS = 4  # objects of one capture handed to store() at once

__all__ = ["Capture", "Captured", "OrderEnded", "Queued", "StoreFailed", "Unconvertible", "UnknownOrder"]


class UnknownOrder(Coded, LookupError):
    """The caller named an order (id or accession number) that does not exist."""

    default_code = "unknown_order"


class OrderEnded(Coded, ValueError):
    """The caller named an order that was cancelled or discontinued."""

    default_code = "order_ended"


class StoreFailed(Coded, RuntimeError):
    """The archive did not take the object (storage full, a write failed); nothing was kept."""

    default_code = "store_failed"


@dataclass
class Captured:
    """A file stored as a DICOM object under an order."""

    file_name: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    accession_number: str
    order: int | None
    outcome: str = "stored"

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Queued:
    """A file that found no single order: on the reconciliation list as item ``item``."""

    file_name: str
    item: int
    reason: str  # in English; code and values for the pages (pacs.capture.reasons)
    candidates: list[int] = field(default_factory=list)
    outcome: str = "queued"
    code: str = "no_order"
    values: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Wait:
    """Why a file waits on the reconciliation list: the English text kept on the item, and the
    reason code and values the pages translate (:mod:`pacs.capture.reasons`)."""

    text: str
    code: str = "no_order"
    values: dict[str, str] = field(default_factory=dict)

    def __init__(self, text: str, code: str = "no_order", **values: Any) -> None:
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "values", {k: str(v) for k, v in values.items()})


NO_WAIT = Wait("no order found")


def accession_in_name(file_name: str) -> str:
    """The accession number a device or a person put at the start of a file's name, up to the
    first ``_``, space or dot: ``A0017_2.jpg`` → ``A0017``."""
    stem = Path(file_name).name
    for separator in ("_", " ", "."):
        stem = stem.split(separator, 1)[0]
    return stem[:16]  # (0008,0050) SH


class Capture:
    """The capture service of a process: bound to its database, archive, settings and mappings."""

    def __init__(self, settings: Settings, db: Database, archive: Archive, mappings: MappingHolder) -> None:
        self.settings = settings
        self.db = db
        self.archive = archive
        self.mappings = mappings
        self._devices: tuple[float, CaptureDevices] | None = None
        self._lock = threading.Lock()
        self.folders: Any = None  # the hot folders (pacs.capture.hotfolder), once started

    def start(self) -> None:
        """Start watching the hot folders of capture.yaml."""
        from pacs.capture.hotfolder import HotFolders

        self.folders = HotFolders(self)
        self.folders.start()

    def stop(self) -> None:
        if self.folders is not None:
            self.folders.stop()

    # -- configuration ------------------------------------------------------------------------
    def devices(self) -> CaptureDevices:
        """capture.yaml as last read without problems (read again when it changes)."""
        path = self.settings.mappings_dir / "capture.yaml"
        try:
            stamp = path.stat().st_mtime
        except OSError:
            stamp = 0.0
        with self._lock:
            if self._devices is None or self._devices[0] != stamp:
                devices, problems = load_capture_devices(self.settings.mappings_dir)
                for problem in problems:
                    log.error("capture devices: %s", problem)
                if problems and self._devices is not None:
                    return self._devices[1]  # keep what worked until the file is fixed
                self._devices = (stamp, devices)
            return self._devices[1]

    def device(self, name: str | None) -> CaptureDevice:
        found = self.devices().get(name)
        if found is None:
            known = ", ".join(self.devices().names)
            raise Unconvertible(f"device {name!r} is not in capture.yaml; known: {known}", "unknown_device",
                                device=name, known=known)
        return found

    def now(self) -> datetime:
        """The hospital's wall-clock time (DICOM dates and times carry no offset)."""
        return datetime.now(self.settings.zone).replace(tzinfo=None)

    # -- taking files -------------------------------------------------------------------------
    def capture(self, files: Sequence[tuple[str, bytes]], *, device: CaptureDevice = DEFAULT_DEVICE,
                order: int | None = None, accession_number: str | None = None, patient_id: str | None = None,
                by: str = "") -> list[Captured | Queued]:
        """Store ``files`` ((name, bytes) pairs) for one exam, as one series.

        Every file is looked at first: one that cannot be converted raises
        :class:`Unconvertible` and nothing is stored. An order named but unknown raises
        :class:`UnknownOrder`, one ended :class:`OrderEnded`. Files that find no single order
        are put on the reconciliation list (:class:`Queued`)."""
        sources = []
        for name, data in files:
            try:
                sources.append(inspect(data, name))
            except Unconvertible as exc:
                raise Unconvertible(f"{name or 'the file'}: {exc}", "in_file", file=name or "?",
                                    reason_code=exc.code, **exc.values) from None
        return self.capture_sources(sources, device=device, order=order, accession_number=accession_number,
                                    patient_id=patient_id, by=by)

    def capture_sources(self, sources: Sequence[Source], *, device: CaptureDevice = DEFAULT_DEVICE,
                        order: int | None = None, accession_number: str | None = None,
                        patient_id: str | None = None, by: str = "") -> list[Captured | Queued]:
        """:meth:`capture` of files already looked at (:func:`pacs.capture.convert.inspect`)."""
        if not sources:
            raise Unconvertible("no file was sent", "no_file")
        now = self.now()
        with self.db.session(read_only=True) as session:
            found, (reason, rule), candidates, keys, patient = self._find(
                session, device=device, order=order, accession_number=accession_number, patient_id=patient_id,
                source=sources[0], now=now)
            target = self._target(session, found, None) if found is not None else None
        if found is None or target is None:
            return [self._queue(source, device=device, reason=reason, candidates=candidates, keys=keys,
                                patient=patient, now=now, by=by, rule=rule) for source in sources]
        series = str(generate_uid())
        made = [to_dataset(source, target=target, device=device.equipment, now=now, series_instance_uid=series,
                           series_number=_series_number(now), instance_number=number)
                for number, source in enumerate(sources, 1)]
        # Stored side by side: the index writer then files them in shared commits (one fsync of
        # the database for several objects instead of one each).
        workers = min(STORE_WORKERS, len(made))
        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="capture-store") as pool:
                list(pool.map(lambda ds: self._store(ds, device.equipment), made))
        else:
            self._store(made[0], device.equipment)
        results: list[Captured | Queued] = []
        for source, ds in zip(sources, made, strict=True):
            results.append(Captured(source.file_name, str(ds.SOPClassUID), str(ds.SOPInstanceUID), series,
                                    target.study_instance_uid, target.accession_number, found.id))
            log.info("captured %s from %s as %s for order %s (accession %s)", source.file_name, device.name,
                     ds.SOPClassUID.name, found.id, target.accession_number)
        return results

    def _find(self, session: Session, *, device: CaptureDevice, order: int | None, accession_number: str | None,
              patient_id: str | None, source: Source, now: datetime) -> tuple[
                  ImagingOrder | None, tuple[Wait, str], list[int], ImageKeys, Patient | None]:
        """The order, or (why there is none, the devices.yaml entry that said so), the
        candidates, the keys matched on, and the patient a queued file is filed under meanwhile."""
        patient = service.patient_by_id(session, patient_id) if patient_id else None
        keys = ImageKeys(calling_ae=device.name, accession_number=accession_number or accession_in_name(source.file_name),
                         patient_id=patient_id or "", modality=device.equipment.image_modality, acquired_at=now)
        if order is not None:
            found = session.get(ImagingOrder, order)
            if found is None:
                raise UnknownOrder(f"order {order} does not exist", "unknown_order", order=order)
            self._check_open(found)
            return found, (NO_WAIT, ""), [], keys, patient
        if accession_number:
            orders = list(session.exec(select(ImagingOrder).where(ImagingOrder.accession_number == accession_number)
                                       .order_by(col(ImagingOrder.id))).all())
            if not orders:
                raise UnknownOrder(f"no order has accession number {accession_number}", "unknown_accession",
                                   accession=accession_number)
            live = [o for o in orders if o.status not in ENDED_ORDERS]
            if not live:
                self._check_open(orders[-1])
            if len(live) > 1:
                why = Wait(f"accession number {accession_number} belongs to {len(live)} orders; a person picks one",
                           "ambiguous_accession", accession=accession_number, count=len(live))
                return None, (why, ""), [o.id for o in live if o.id is not None], keys, patient
            return live[0], (NO_WAIT, ""), [], keys, patient
        rules = self.mappings.current().devices
        if rules is None:
            return None, (Wait("no order was named and devices.yaml has no rules", "no_rules"), ""), [], keys, patient
        match = match_order(session, rules, keys, now=now)
        if match.order_id is None:
            found, said = self._by_barcode(session, source)
            if found is not None:
                return found, (NO_WAIT, ""), [], keys, patient
            why = Wait(f"{match.reason}; {said}", "no_match", detail=match.reason, barcode=said)
            return None, (why, match.device), list(match.candidates), keys, patient
        return session.get_one(ImagingOrder, match.order_id), (NO_WAIT, ""), [], keys, patient

    @staticmethod
    def _by_barcode(session: Session, source: Source) -> tuple[ImagingOrder | None, str]:
        """The one live order whose accession number a barcode on the file carries (a scanned
        requisition, a photographed label), and what the barcodes said."""
        values = read_barcodes(source.data, source.media_type) if source.video is None else []
        if not values:
            return None, "barcode: none found on the file"
        for value in values:
            orders = session.exec(select(ImagingOrder).where(ImagingOrder.accession_number == value[:16])
                                  .where(col(ImagingOrder.status).not_in(ENDED_ORDERS))).all()
            if len(orders) == 1:
                return orders[0], f"barcode {value}"
        return None, f"barcode: {', '.join(values)} names no single order"

    @staticmethod
    def _check_open(order: ImagingOrder) -> None:
        if order.status in ENDED_ORDERS:
            raise OrderEnded(f"order {order.id} (accession {order.accession_number}) is {order.status}; "
                             "images are not added to it", "order_ended", order=order.id,
                             accession=order.accession_number, status=order.status)

    @staticmethod
    def _target(session: Session, order: ImagingOrder | None, patient: Patient | None) -> Target:
        """The DICOM identity of ``order`` (its patient, merges followed), or of ``patient``
        alone in a new study."""
        owner = service._root(session, session.get_one(Patient, order.patient if order is not None
                                                       else patient.id))  # type: ignore[union-attr]
        common: dict[str, Any] = {"patient_id": owner.patient_id, "issuer": owner.issuer,
                                  "name_alphabetic": owner.name_override or owner.name_alphabetic,
                                  "name_ideographic": owner.name_ideographic, "sex": owner.sex,
                                  "birth_date": owner.birth_date}
        if order is None:
            return Target(**common)
        steps = service.steps_of(session, order)
        return Target(**common, study_instance_uid=order.study_instance_uid,
                      accession_number=order.accession_number, requested_procedure_id=order.requested_procedure_id,
                      procedure_text=order.procedure_text, referring_physician=order.referring_physician,
                      sps_id=next((s.sps_id for s in steps if s.sps_id), ""), body_part=order.body_part)

    # -- into the archive ---------------------------------------------------------------------
    def _scratch(self) -> Path:
        """Where a file is written before the storage area takes it (moved, not copied)."""
        folder = incoming_dir(self.archive.area) or self.settings.data_dir / "capture" / "tmp"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _write(self, ds: Dataset) -> Path:
        handle, name = tempfile.mkstemp(prefix="capture-", suffix=".dcm", dir=self._scratch())
        os.close(handle)
        path = Path(name)
        try:
            ds.save_as(path, enforce_file_format=True)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def _store(self, ds: Dataset, equipment: Equipment, path: Path | None = None) -> None:
        path = path or self._write(ds)
        try:
            result = self.archive.store(path, calling_ae=equipment.name[:16], move=True)
        finally:
            path.unlink(missing_ok=True)  # moved into the area, or left behind by a failure
        if not result.ok:
            detail = result.comment or result.outcome
            raise StoreFailed(f"the archive did not store {ds.SOPInstanceUID}: {detail}", "store_failed",
                              uid=ds.SOPInstanceUID, detail=detail)

    # -- the reconciliation list --------------------------------------------------------------
    def _queue(self, source: Source, *, device: CaptureDevice, reason: Wait, candidates: list[int], keys: ImageKeys,
               patient: Patient | None, now: datetime, by: str, rule: str = "") -> Queued:
        handle, name = tempfile.mkstemp(prefix="capture-", dir=self._scratch())
        with os.fdopen(handle, "wb") as out:
            out.write(source.data)
        area = self.archive.area
        try:
            stored = area.put_file(Path(name), move=True)
        finally:
            Path(name).unlink(missing_ok=True)
        try:
            with self.db.session() as session:
                item = ReconciliationItem(
                    kind=ItemKind.FILE, area=area.name, key=stored.key, file_name=source.file_name[:255],
                    media_type=source.media_type, patient=patient.id if patient is not None else None,
                    accession_number=keys.accession_number[:64], keys=reconciliation.keys_json(keys, arrived=now),
                    reason=reason.text, device=rule or device.label, candidates=candidates)
                session.add(item)
                session.flush()
                assert item.id is not None
                item_id = item.id
        except BaseException:
            area.remove(stored.key)
            raise
        log.info("%s from %s is on the reconciliation list as item %s: %s", source.file_name, device.name,
                 item_id, reason.text)
        return Queued(source.file_name, item_id, reason.text, candidates, code=reason.code, values=reason.values)

    def attach_file(self, session: Session, item: ReconciliationItem, order: ImagingOrder | None, patient: Patient,
                    by: str, notify: Any = None) -> tuple[str, str]:
        """Attach a waiting file (``ATTACHERS["file"]``): convert it for ``order`` (or for
        ``patient`` alone, in a new study) now, so a file that cannot be read fails the attach,
        and store it once the attach has committed. Returns the Patient ID it was filed under
        before and the Study Instance UID it goes to."""
        area = self.archive.readable.get(item.area) or self.archive.areas.get(item.area)
        if area is None:
            raise reconciliation.ReconcileError(f"item {item.id}'s file is in storage area {item.area}, "
                                                "which this server does not have")
        try:
            source = inspect(area.read(item.key), item.file_name)
        except (OSError, Unconvertible) as exc:
            raise reconciliation.ReconcileError(f"item {item.id}'s file cannot be read: {exc}") from None
        keys, _ = reconciliation.keys_of(item)
        device = self.devices().get(keys.calling_ae) or DEFAULT_DEVICE
        target = self._target(session, order, None if order is not None else patient)
        now = self.now()
        ds = to_dataset(source, target=target, device=device.equipment, now=now, series_number=_series_number(now))
        path = self._write(ds)
        before = session.get(Patient, item.patient) if item.patient is not None else None
        item_id, key, area_name = item.id, item.key, item.area

        def store_after_commit(_session: Session) -> None:
            try:
                self._store(ds, device.equipment, path)
            except Exception as exc:  # noqa: BLE001 - the attach stands; say so and reopen the item
                log.error("reconciliation item %s was attached but its file was not stored: %s", item_id, exc)
                self._reopen(item_id, f"attached, but storing failed: {exc}")
                return
            self.archive.areas.get(area_name, area).remove(key)  # the DICOM object holds it now

        def forget(_session: Session) -> None:
            path.unlink(missing_ok=True)
            if event.contains(session, "after_commit", store_after_commit):
                event.remove(session, "after_commit", store_after_commit)

        event.listen(session, "after_commit", store_after_commit, once=True)
        event.listen(session, "after_soft_rollback", forget, once=True)
        return (before.patient_id if before is not None else ""), target.study_instance_uid

    def _reopen(self, item_id: int | None, why: str) -> None:
        with self.db.session() as session:
            item = session.get(ReconciliationItem, item_id)
            if item is not None:
                item.status, item.resolution, item.resolved_at = reconciliation.Status.OPEN, "", None
                item.order = None
                item.reason = f"{why}; {item.reason}"[:2000]
                session.add(item)


def _series_number(now: datetime) -> int:
    """A series number that orders captures of one study by time (IS, at most 2**31 - 1)."""
    return int(now.strftime("%H%M%S")) or 1


def wire(settings: Settings, db: Database, archive: Archive, mappings: MappingHolder) -> Capture:
    """The process's capture service, registered as the attacher of the list's ``file`` items."""
    capture = Capture(settings, db, archive, mappings)
    reconciliation.ATTACHERS[ItemKind.FILE] = capture.attach_file
    return capture

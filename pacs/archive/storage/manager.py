"""Hierarchical storage management: areas in tiers, migration, recall, replicas, scrubbing.

The :class:`StorageManager` owns every storage area and knows its tier:

- **online** areas are read directly by C-MOVE/C-GET, WADO and the viewer;
- **nearline** (a folder on slower disks, an object store) and **offline** (tape-like
  containers) are read only to bring a study back: a request for a study some of whose
  instances have no online copy recalls the whole study into the cache area first (one
  sequential read per container, parallel GETs from an object store), records the cache copies
  in the index and then answers as if nothing had happened. :class:`ReadableAreas` is the one
  call every reader makes.

Every move between areas follows one order, so that a crash anywhere leaves at least one good
copy: write the new copies → read them back and compare their SHA-256 → record them in the
index and forget the old ones in one transaction → only then delete the old objects. Objects
written but never indexed (a crash between the first two steps) are counted by the scrubber as
orphans; nothing indexed is deleted before its replacement is committed.

With several nodes on one PostgreSQL database, the scheduled jobs (rules and eviction, the
scrub, replica repair, queueing the prefetch of priors) run on the node that leads ``storage``
(:class:`pacs.cluster.Leadership`); another node takes them over when that node dies. Recalls
asked for by a reader run on the node that was asked.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, event, func, or_, update
from sqlmodel import Session, col, select

from pacs.archive.index import Instance, InstanceFile, Series, Study
from pacs.archive.storage import FilesystemArea, StorageArea, Stored
from pacs.archive.storage.compression import NotLossless, compress
from pacs.archive.storage.container import ContainerArea
from pacs.archive.storage.tables import PendingReplica, ScrubRun
from pacs.cluster import Leadership
from pacs.db import Database, utcnow
from pacs.settings import Settings, StorageAreaSettings, StorageRule, StorageSettings

log = logging.getLogger(__name__)

TIERS = ("online", "nearline", "offline")
TOUCH_EVERY = timedelta(minutes=1)  # last_accessed_at is written at most this often per study
REPLICA_RETRY_MAX = timedelta(hours=1)
# How long a replica being written is held by whoever claimed it: a replicator (a thread, a node)
# that dies meanwhile leaves it to be taken again once this has passed.
REPLICA_LEASE = timedelta(minutes=15)
Progress = Callable[[int], None]


def build_area(spec: StorageAreaSettings, settings: Settings) -> StorageArea:
    """A storage area from its ``[[storage.areas]]`` entry."""
    if spec.kind == "s3":
        from pacs.archive.storage.s3 import S3Area

        if not spec.bucket:
            raise ValueError(f"storage area {spec.name}: kind = \"s3\" needs bucket = \"...\"")
        return S3Area(spec.name, spec.bucket, prefix=spec.prefix, endpoint_url=spec.endpoint_url,
                      access_key=spec.access_key, secret_key=spec.secret_key, region=spec.region,
                      max_connections=max(32, settings.storage.recall_workers * 2), tls_ca=spec.tls_ca)
    root = spec.path or (settings.storage_dir if spec.name == "online" else settings.data_dir / f"storage-{spec.name}")
    if spec.kind == "container":
        return ContainerArea(spec.name, root)
    return FilesystemArea(spec.name, root)


@dataclass
class RecallResult:
    study_id: int
    recalled: int = 0
    failed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    sources: dict[str, int] = field(default_factory=dict)


@dataclass
class MigrateResult:
    study_id: int
    source: list[str]
    target: str
    copied: int = 0
    compressed: int = 0
    already_there: int = 0
    removed: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    failed: int = 0
    seconds: float = 0.0
    dry_run: bool = False


class ReadableAreas(dict[str, StorageArea]):
    """The online areas, by name — what readers open copies from — and :meth:`ensure`, which
    readers call with the copies a request found before they read any."""

    def __init__(self, manager: StorageManager) -> None:
        super().__init__({name: manager.areas[name] for name in manager.online})
        self.manager = manager

    def ensure(self, copies: Iterable[tuple[str, int, str]]) -> bool:
        """``copies``: (SOP instance UID, study id, area) of every copy a request found. Records
        the access and recalls every study with an instance lacking an online copy; True when
        something was recalled (then read the index again)."""
        have: set[str] = set()
        lacking: dict[str, int] = {}
        studies: set[int] = set()
        for uid, study, area in copies:
            studies.add(study)
            if area in self:
                have.add(uid)
            else:
                lacking[uid] = study
        self.manager.touch(studies)
        missing = {study for uid, study in lacking.items() if uid not in have}
        for study in sorted(missing):
            try:
                self.manager.recall(study)
            except Exception:
                log.exception("recall of study %d failed", study)
        return bool(missing)


class StorageManager:
    def __init__(self, db: Database, config: StorageSettings, areas: dict[str, StorageArea],
                 tiers: dict[str, str]) -> None:
        self.db = db
        self.config = config
        self.areas = areas
        self.tiers = tiers
        self.online = [name for name in areas if tiers[name] == "online"]
        for name in config.write + [config.cache] + [n for r in config.rules for n in (r.from_, r.to)]:
            if name not in areas:
                raise ValueError(f"[storage] names area {name!r}, which no [[storage.areas]] entry defines "
                                 f"(areas: {', '.join(areas)})")
        if not config.write or tiers[config.write[0]] != "online":
            raise ValueError("[storage] write must start with an online area (objects are read from there until "
                             f"a rule moves them); it is {config.write!r}")
        if tiers[config.cache] != "online":
            raise ValueError(f"[storage] cache = {config.cache!r} is a {tiers[config.cache]} area; "
                             "recalls must land in an online area")
        self.cache = areas[config.cache]
        self.write = list(config.write)
        self.readable = ReadableAreas(self)
        self._locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._touched: dict[int, datetime] = {}
        self._touch_written: dict[int, datetime] = {}
        self._touch_guard = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, config.recall_workers), thread_name_prefix="storage-io")
        # scrubbing and replication get their own threads, so they never hold up a recall
        self._background = ThreadPoolExecutor(4, thread_name_prefix="storage-background")
        self._stop = threading.Event()
        self._wake_replicator = threading.Event()
        self._threads: list[threading.Thread] = []
        self._prefetch_queue: queue.Queue[int | None] = queue.Queue()
        self._prefetch_queued: set[int] = set()
        self._order_watermark: int | None = None
        self.prefetched: list[int] = []  # study ids recalled by prefetch (most recent last)
        self.leadership = Leadership(db, "storage")
        self._another_node_seen = False
        self._lead_asked = False

    @classmethod
    def from_settings(cls, settings: Settings, db: Database) -> StorageManager:
        """Areas from ``[[storage.areas]]``; an area "online" at ``[archive] storage_dir`` is
        there whether named or not, so an unconfigured system behaves as it always has."""
        specs = list(settings.storage.areas)
        if not any(spec.name == "online" for spec in specs):
            specs.insert(0, StorageAreaSettings(name="online", kind="filesystem", tier="online"))
        areas: dict[str, StorageArea] = {}
        tiers: dict[str, str] = {}
        for spec in specs:
            if spec.name in areas:
                raise ValueError(f"storage area {spec.name!r} is defined twice")
            areas[spec.name] = build_area(spec, settings)
            tiers[spec.name] = spec.tier
        return cls(db, settings.storage, areas, tiers)

    # -- wiring -------------------------------------------------------------------------------
    def attach(self, archive: Any) -> None:
        """Let the archive read through the tiers and queue replicas of what it indexes."""
        archive.areas = self.areas
        archive.readable = self.readable
        if len(self.write) > 1:
            archive.index_hooks.append(self.on_indexed)
        with Session(self.db.reader) as session:
            from pacs.registry.models import ImagingOrder

            self._order_watermark = session.exec(select(func.max(ImagingOrder.id))).one() or 0

    def prepare_areas(self) -> None:
        """Create missing buckets, tidy unfinished container writes."""
        for area in self.areas.values():
            if hasattr(area, "ensure_bucket"):
                try:
                    area.ensure_bucket()
                except Exception as exc:  # unreachable now: replicas wait, recalls try other copies
                    log.error("storage area %s cannot be reached: %s", area.name, exc)
            if isinstance(area, ContainerArea):
                area.tidy()

    def start(self) -> None:
        self._stop.clear()
        loops: list[tuple[str, Callable[[], object], float, threading.Event | None]] = [
            ("storage-housekeeping", self._housekeeping, min(1.0, self.config.prefetch_poll_seconds), None),
        ]
        if len(self.write) > 1:
            loops.append(("storage-replicator", self.replicate_pending, self.config.replicate_interval_seconds,
                          self._wake_replicator))
        if self.config.rules_interval_seconds > 0 and (self.config.rules or self._evicting):
            loops.append(("storage-rules", self.run_scheduled, self.config.rules_interval_seconds, None))
        if self.config.scrub_interval_seconds > 0:
            loops.append(("storage-scrubber", self.scrub, self.config.scrub_interval_seconds, None))
        for name, work, interval, wake in loops:
            thread = threading.Thread(target=self._loop, args=(name, work, interval, wake), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self._prefetching:
            thread = threading.Thread(target=self._prefetch_worker, name="storage-prefetch", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake_replicator.set()
        self._prefetch_queue.put(None)
        for thread in self._threads:
            thread.join(30)
        self._threads.clear()
        self.leadership.resign()
        self._flush_touches()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._background.shutdown(wait=True, cancel_futures=True)

    def _loop(self, name: str, work: Callable[[], object], interval: float, wake: threading.Event | None) -> None:
        first = name in ("storage-housekeeping", "storage-replicator")
        while not self._stop.is_set():
            if not first:
                if wake is not None:
                    wake.wait(interval)
                    wake.clear()
                elif self._stop.wait(interval):
                    return
            first = False
            if self._stop.is_set():
                return
            if name != "storage-housekeeping" and not self.leads():
                continue  # another node of several runs the storage jobs
            try:
                work()
            except Exception:
                log.exception("%s failed; trying again in %.0f s", name, interval)

    def leads(self) -> bool:
        """Whether this node runs the storage jobs (:class:`Leadership`). When another node does,
        several share the database, and a first write area on this node's own disk is warned
        of, once: the others cannot read what it stores ("Several nodes" in README.md)."""
        if self.leadership.leads():
            return True
        if not self._another_node_seen:
            self._another_node_seen = True
            first = self.areas[self.write[0]] if self.write else None
            if isinstance(first, (FilesystemArea, ContainerArea)):
                log.warning("another node shares this database, and new objects go to storage area %s on "
                            "this node's own disk: the other nodes cannot read them. Make an S3 area that "
                            "every node uses the first of [storage] write, with [archive] acknowledge = "
                            '"indexed"', first.name)
        return False

    @property
    def _prefetching(self) -> bool:
        """Prefetch is on and there is a tier to prefetch from."""
        return self.config.prefetch and len(self.online) < len(self.areas)

    def _housekeeping(self) -> None:
        if not self._lead_asked:  # at once, so that a node finds whether another shares its database
            self._lead_asked = True
            self.leads()
        self._flush_touches()
        if self._prefetching and self.leads():
            self.queue_prefetch()

    # -- locks and access -----------------------------------------------------------------------
    def _lock(self, study_id: int) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(study_id, threading.Lock())

    def touch(self, studies: Iterable[int]) -> None:
        """Note that these studies were read (written to the index within a second or so)."""
        now = utcnow()
        with self._touch_guard:
            for study in studies:
                written = self._touch_written.get(study)
                if written is None or now - written >= TOUCH_EVERY:
                    self._touched[study] = now

    def _flush_touches(self) -> None:
        with self._touch_guard:
            pending, self._touched = self._touched, {}
            self._touch_written.update(pending)
        if not pending:
            return
        with Session(self.db.engine) as session:
            for study, when in pending.items():
                session.execute(update(Study).where(col(Study.id) == study).values(last_accessed_at=when))
            session.commit()

    # -- the index --------------------------------------------------------------------------------
    def _copies(self, session: Session, study_id: int) -> dict[int, list[InstanceFile]]:
        rows = session.exec(select(InstanceFile).join(Instance, col(Instance.id) == InstanceFile.instance)
                            .join(Series, col(Series.id) == Instance.series)
                            .where(Series.study == study_id).order_by(col(InstanceFile.id))).all()
        out: dict[int, list[InstanceFile]] = defaultdict(list)
        for row in rows:
            out[row.instance].append(row)
        session.expunge_all()
        return out

    def study_id(self, study_uid: str) -> int | None:
        with Session(self.db.reader) as session:
            return session.exec(select(Study.id).where(Study.study_instance_uid == study_uid)).first()

    def _rank(self, copy: InstanceFile) -> tuple[int, int]:
        area = self.areas[copy.area]
        return TIERS.index(self.tiers[copy.area]), 2 if isinstance(area, ContainerArea) else 0

    def needs_recall(self, study_id: int) -> bool:
        with Session(self.db.reader) as session:
            copies = self._copies(session, study_id)
        return any(not any(c.area in self.readable for c in group) for group in copies.values())

    # -- recall -----------------------------------------------------------------------------------
    def recall(self, study_id: int) -> RecallResult:
        """Bring every instance of the study that has no online copy into the cache area."""
        with self._lock(study_id):
            result = self._recall(study_id)
        if result.recalled:
            self.touch([study_id])
            self._flush_touches()
            try:
                self.evict(keep={study_id})
            except Exception:
                log.exception("cache eviction failed")
        return result

    def _recall(self, study_id: int) -> RecallResult:
        started = time.perf_counter()
        result = RecallResult(study_id)
        with Session(self.db.reader) as session:
            copies = self._copies(session, study_id)
        wanted: dict[int, list[InstanceFile]] = {}
        for instance, group in copies.items():
            if any(c.area in self.readable for c in group):
                continue
            candidates = sorted((c for c in group if c.area in self.areas), key=self._rank)
            if not candidates:
                log.error("instance %d of study %d has no copy in any configured area", instance, study_id)
                result.failed += 1
                continue
            wanted[instance] = candidates
        if not wanted:
            return result
        # The area holding the most of the study's instances serves them (ties: the faster tier).
        by_area: dict[str, list[InstanceFile]] = defaultdict(list)
        for candidates in wanted.values():
            by_area[candidates[0].area].append(candidates[0])
        landed: list[tuple[InstanceFile, Stored]] = []
        retry: list[int] = []
        for area_name, chosen in by_area.items():
            area = self.areas[area_name]
            ok, bad = (self._recall_container(area, chosen) if isinstance(area, ContainerArea)
                       else self._recall_objects(area, chosen))
            landed += ok
            retry += bad
            result.sources[area_name] = len(ok)
        for instance in retry:  # a bad or missing copy: the next one in line
            for copy in wanted[instance][1:]:
                try:
                    landed.append((copy, self._fetch_one(self.areas[copy.area], copy)))
                    break
                except Exception as exc:
                    log.warning("recall of %s/%s failed: %s", copy.area, copy.key, exc)
            else:
                result.failed += 1
                log.error("instance %d of study %d could not be recalled from any copy", instance, study_id)
        now = utcnow()
        with Session(self.db.engine) as session:
            for copy, stored in landed:
                session.add(InstanceFile(instance=copy.instance, area=self.cache.name, key=stored.key, size=stored.size,
                                         checksum=stored.checksum, transfer_syntax_uid=copy.transfer_syntax_uid,
                                         cached=True, verified_at=now))
            session.execute(update(Study).where(col(Study.id) == study_id).values(last_accessed_at=now))
            session.commit()
        result.recalled = len(landed)
        result.bytes = sum(stored.size for _, stored in landed)
        result.seconds = time.perf_counter() - started
        log.info("recalled study %d: %d instance(s), %d bytes from %s in %.2f s%s", study_id, result.recalled,
                 result.bytes, ", ".join(f"{k} ({v})" for k, v in result.sources.items()), result.seconds,
                 f"; {result.failed} failed" if result.failed else "")
        return result

    def _fetch_one(self, area: StorageArea, copy: InstanceFile) -> Stored:
        """One copy into the cache, its checksum checked against the index."""
        path = area.local_path(copy.key)
        if path is not None and isinstance(self.cache, FilesystemArea):
            stored = self.cache.put_file(path)  # copied and read back
        else:
            data = area.read(copy.key) if path is None else path.read_bytes()
            if hashlib.sha256(data).hexdigest() != copy.checksum:
                raise ValueError(f"{area.name}/{copy.key} does not match its recorded SHA-256")
            return self.cache.put_bytes(data)
        if stored.checksum != copy.checksum:
            self.cache.remove(stored.key)
            raise ValueError(f"{area.name}/{copy.key} does not match its recorded SHA-256")
        return stored

    def _recall_objects(self, area: StorageArea,
                        chosen: list[InstanceFile]) -> tuple[list[tuple[InstanceFile, Stored]], list[int]]:
        """Parallel reads (GETs from an object store, copies from a folder)."""
        futures = [(copy, self._pool.submit(self._fetch_one, area, copy)) for copy in chosen]
        ok, bad = [], []
        for copy, future in futures:
            try:
                ok.append((copy, future.result()))
            except Exception as exc:
                log.warning("recall of %s/%s failed: %s", area.name, copy.key, exc)
                bad.append(copy.instance)
        return ok, bad

    def _recall_container(self, area: ContainerArea,
                          chosen: list[InstanceFile]) -> tuple[list[tuple[InstanceFile, Stored]], list[int]]:
        """One sequential read per container; the cache writes overlap the reading."""
        by_container: dict[str, dict[str, InstanceFile]] = defaultdict(dict)
        for copy in chosen:
            container, member = area.split(copy.key)
            by_container[container][member] = copy
        ok, bad = [], []
        futures = []
        for container, members in by_container.items():
            seen: set[str] = set()
            try:
                for key, data in area.read_container(container, set(members)):
                    copy = members[area.split(key)[1]]
                    seen.add(copy.key)
                    if hashlib.sha256(data).hexdigest() != copy.checksum:
                        log.warning("recall: %s/%s does not match its recorded SHA-256", area.name, key)
                        bad.append(copy.instance)
                        continue
                    futures.append((copy, self._pool.submit(self.cache.put_bytes, data)))
            except OSError as exc:
                log.warning("recall: container %s of %s cannot be read: %s", container, area.name, exc)
            bad += [copy.instance for copy in members.values() if copy.key not in seen]
        for copy, future in futures:
            try:
                ok.append((copy, future.result()))
            except Exception as exc:
                log.warning("recall of %s/%s into the cache failed: %s", area.name, copy.key, exc)
                bad.append(copy.instance)
        return ok, bad

    # -- eviction -------------------------------------------------------------------------------
    @property
    def _evicting(self) -> bool:
        return self.config.cache_max_bytes is not None or self.config.cache_min_free_bytes is not None

    def evict(self, keep: set[int] | None = None) -> int:
        """Drop recalled copies from the cache, least recently used study first, while the cache
        is over ``cache_max_bytes`` or under ``cache_min_free_bytes`` free; never a last copy.
        Returns the number of bytes freed."""
        if not self._evicting:
            return 0
        keep = keep or set()
        with Session(self.db.reader) as session:
            held = session.exec(select(func.coalesce(func.sum(InstanceFile.size), 0))
                                .where(InstanceFile.area == self.cache.name, col(InstanceFile.cached))).one()
            studies = session.exec(
                select(Series.study).join(Instance, col(Instance.series) == Series.id)
                .join(InstanceFile, col(InstanceFile.instance) == Instance.id)
                .join(Study, col(Study.id) == Series.study)
                .where(InstanceFile.area == self.cache.name, col(InstanceFile.cached))
                .group_by(Series.study, Study.last_accessed_at, Study.created_at)
                .order_by(func.coalesce(Study.last_accessed_at, Study.created_at))).all()

        def over() -> bool:
            if self.config.cache_max_bytes is not None and held > self.config.cache_max_bytes:
                return True
            min_free = self.config.cache_min_free_bytes
            return min_free is not None and self.cache.free_bytes() < min_free

        freed = 0
        for study in studies:
            if not over():
                break
            if study in keep:
                continue
            with self._lock(study):
                with Session(self.db.engine) as session:
                    copies = self._copies(session, study)
                    drop = [c for group in copies.values() for c in group
                            if c.cached and c.area == self.cache.name
                            and any(o.id != c.id and o.area != self.cache.name for o in group)]
                    if not drop:
                        continue
                    session.execute(delete(InstanceFile).where(col(InstanceFile.id).in_([c.id for c in drop])))
                    session.commit()
                for copy in drop:
                    self._remove_object(copy.area, copy.key)
                size = sum(c.size for c in drop)
                held -= size
                freed += size
                log.info("evicted study %d from the cache: %d copies, %d bytes", study, len(drop), size)
        return freed

    def _remove_object(self, area_name: str, key: str) -> None:
        area = self.areas.get(area_name)
        if area is None:
            return
        try:
            area.remove(key)
        except Exception as exc:  # left behind: the scrubber counts it as an orphan
            log.warning("could not remove %s/%s: %s", area_name, key, exc)

    # -- migration ------------------------------------------------------------------------------
    def default_sources(self, study_id: int, target: str) -> list[str]:
        """Where ``migrate --study --to`` takes copies from when ``--from`` is not given: moving
        down, the study's online areas; moving up, its nearline and offline areas. Replica areas
        (the second and later ``write`` areas) are never a default source."""
        with Session(self.db.reader) as session:
            copies = self._copies(session, study_id)
        held = {c.area for group in copies.values() for c in group if c.area in self.areas}
        replicas = set(self.write[1:])
        up = self.tiers[target] == "online"
        return sorted(a for a in held if a != target and a not in replicas
                      and (self.tiers[a] != "online") == up)

    def migrate_study(self, study_id: int, sources: list[str] | str, target: str, *, compress_with: str = "none",
                      dry_run: bool = False) -> MigrateResult:
        """Move the study's copies in ``sources`` to ``target`` (see the module docstring for
        the order of steps that keeps a good copy through any crash)."""
        sources = [sources] if isinstance(sources, str) else list(sources)
        for name in sources + [target]:
            if name not in self.areas:
                raise ValueError(f"no storage area named {name!r}")
        if target in sources:
            raise ValueError(f"cannot migrate from {target} to itself")
        with self._lock(study_id):
            return self._migrate(study_id, sources, target, compress_with, dry_run)

    def _migrate(self, study_id: int, sources: list[str], target_name: str, method: str,
                 dry_run: bool) -> MigrateResult:
        started = time.perf_counter()
        result = MigrateResult(study_id, sources, target_name, dry_run=dry_run)
        target = self.areas[target_name]
        with Session(self.db.reader) as session:
            copies = self._copies(session, study_id)
        moving: list[InstanceFile] = []  # copies to remove once the target holds the instance
        to_copy: list[InstanceFile] = []  # one source copy per instance the target lacks
        for group in copies.values():
            leaving = [c for c in group if c.area in sources]
            if not leaving:
                continue
            moving += leaving
            if any(c.area == target_name for c in group):
                result.already_there += 1
            else:
                to_copy.append(sorted(leaving, key=lambda c: c.cached)[0])
        if dry_run or not moving:
            result.copied = len(to_copy)
            result.bytes_read = sum(c.size for c in to_copy)
            return result
        payloads = list(self._pool.map(lambda c: self._migration_payload(c, method), to_copy))
        written: list[tuple[InstanceFile, Stored, str]] = []
        try:
            failures = [(c, p) for c, p in zip(to_copy, payloads, strict=True) if isinstance(p, Exception)]
            for copy, exc in failures:
                log.error("migration of study %d: %s/%s cannot be read: %s", study_id, copy.area, copy.key, exc)
            good = [(c, p) for c, p in zip(to_copy, payloads, strict=True) if not isinstance(p, Exception)]
            result.failed = len(failures)
            if isinstance(target, ContainerArea):
                stored_all = target.put_many([p[0] for _, p in good]) if good else []
                written = [(c, s, p[1]) for (c, p), s in zip(good, stored_all, strict=True)]
            else:
                stored_all = list(self._pool.map(lambda item: self._put(target, item[1][0]), good))
                written = [(c, s, p[1]) for (c, p), s in zip(good, stored_all, strict=True)]
            for (copy, payload), (_, stored, _) in zip(good, written, strict=True):
                if stored.checksum != payload[2]:
                    raise ValueError(f"{copy.area}/{copy.key} does not match its recorded SHA-256; "
                                     "the scrubber repairs it from another copy")
            checks = list(self._pool.map(lambda w: target.checksum(w[1].key), written))
            for (copy, stored, _), actual in zip(written, checks, strict=True):
                if actual != stored.checksum:
                    raise ValueError(f"the copy written to {target_name} as {stored.key} reads back with another "
                                     "SHA-256")
            self._record_migration(study_id, target_name, written, moving, failed={c.instance for c, _ in failures})
        except BaseException:
            for _, stored, _ in written:  # the index never saw them: the sources stay as they were
                self._remove_object(target_name, stored.key)
            raise
        failed_instances = {c.instance for c, _ in failures}
        removed = [c for c in moving if c.instance not in failed_instances]
        for copy in removed:
            self._remove_object(copy.area, copy.key)
        result.copied = len(written)
        result.compressed = sum(1 for _, _, syntax in written if syntax)
        result.removed = len(removed)
        result.bytes_read = sum(c.size for c, _ in good)
        result.bytes_written = sum(s.size for _, s, _ in written)
        result.seconds = time.perf_counter() - started
        log.info("migrated study %d from %s to %s: %d copied (%d compressed), %d already there, %d removed, "
                 "%d failed, %.2f s", study_id, "+".join(sources), target_name, result.copied, result.compressed,
                 result.already_there, result.removed, result.failed, result.seconds)
        return result

    def _migration_payload(self, copy: InstanceFile, method: str) -> tuple[Path | bytes, str, str] | Exception:
        """(what to write, its new transfer syntax or "", its SHA-256) for one source copy."""
        try:
            area = self.areas[copy.area]
            path = area.local_path(copy.key)
            if method == "none" and path is not None:
                return path, "", copy.checksum  # streamed; the target's read-back proves source and copy
            data = path.read_bytes() if path is not None else area.read(copy.key)
            if hashlib.sha256(data).hexdigest() != copy.checksum:
                raise ValueError("does not match its recorded SHA-256")
            if method != "none":
                try:
                    packed = compress(data, method)
                except NotLossless as exc:
                    log.error("%s; the copy stays uncompressed", exc)
                    packed = None
                if packed is not None:
                    return packed.data, packed.transfer_syntax, hashlib.sha256(packed.data).hexdigest()
            return data, "", copy.checksum
        except Exception as exc:
            return exc

    @staticmethod
    def _put(area: StorageArea, payload: Path | bytes) -> Stored:
        return area.put_bytes(payload) if isinstance(payload, bytes) else area.put_file(payload)

    def _record_migration(self, study_id: int, target: str, written: list[tuple[InstanceFile, Stored, str]],
                          moving: list[InstanceFile], failed: set[int]) -> None:
        """The new copies in, the old ones out, in one transaction."""
        now = utcnow()
        with Session(self.db.engine) as session:
            for copy, stored, syntax in written:
                session.add(InstanceFile(instance=copy.instance, area=target, key=stored.key, size=stored.size,
                                         checksum=stored.checksum, transfer_syntax_uid=syntax or copy.transfer_syntax_uid,
                                         cached=copy.cached and self.tiers[target] == "online", verified_at=now))
            gone = [c.id for c in moving if c.instance not in failed]
            if gone:
                session.execute(delete(InstanceFile).where(col(InstanceFile.id).in_(gone)))
            session.commit()

    # -- rules ----------------------------------------------------------------------------------
    def candidates(self, rule: StorageRule, *, now: datetime | None = None) -> list[int]:
        """Studies with copies in the rule's ``from`` area that meet its conditions, least
        recently accessed first."""
        now = now or utcnow()
        held = (select(InstanceFile.id).join(Instance, col(Instance.id) == InstanceFile.instance)
                .join(Series, col(Series.id) == Instance.series)
                .where(Series.study == Study.id, InstanceFile.area == rule.from_).exists())
        query = select(Study.id).where(held)
        if rule.older_than_days is not None:
            cutoff = now - timedelta(days=rule.older_than_days)
            query = query.where(or_(
                (Study.study_date != "") & (Study.study_date <= cutoff.strftime("%Y%m%d")),
                (Study.study_date == "") & (col(Study.created_at) <= cutoff)))
        if rule.not_accessed_days is not None:
            cutoff = now - timedelta(days=rule.not_accessed_days)
            query = query.where(func.coalesce(Study.last_accessed_at, Study.created_at) <= cutoff)
        if rule.modality:
            query = query.where(or_(*[col(Study.modalities).contains(m) for m in rule.modality]))
        if rule.min_study_bytes is not None:
            query = query.where(Study.size_bytes >= rule.min_study_bytes)
        query = query.order_by(func.coalesce(Study.last_accessed_at, Study.created_at), col(Study.id))
        with Session(self.db.reader) as session:
            return list(session.exec(query).all())

    def apply_rule(self, rule: StorageRule, *, dry_run: bool = False, progress: Progress | None = None,
                   on_start: Callable[[int], None] | None = None) -> list[MigrateResult]:
        source = self.areas[rule.from_]
        if rule.when_free_below_bytes is not None and source.free_bytes() >= rule.when_free_below_bytes:
            return []
        studies = self.candidates(rule)
        if on_start is not None:
            on_start(len(studies))
        results = []
        for study in studies:
            if self._stop.is_set():
                break
            if (rule.when_free_below_bytes is not None and not dry_run
                    and source.free_bytes() >= rule.when_free_below_bytes):
                break
            try:
                results.append(self.migrate_study(study, rule.from_, rule.to, compress_with=rule.compress,
                                                  dry_run=dry_run))
            except Exception:
                log.exception("rule %s: migration of study %d failed", rule.label, study)
            if progress is not None:
                progress(1)
        return results

    def run_scheduled(self) -> None:
        for rule in self.config.rules:
            if self._stop.is_set():
                return
            results = self.apply_rule(rule)
            if results:
                log.info("rule %s: %d studies, %d bytes moved", rule.label, len(results),
                         sum(r.bytes_read for r in results))
        self.evict()

    # -- replicas -------------------------------------------------------------------------------
    def on_indexed(self, session: Session, instance_id: int, replaced: bool = False) -> None:
        """Archive index hook: the instance is to be copied to the other ``write`` areas."""
        if replaced:  # keep_newer: the replicas owed are now of the newer copy
            session.execute(delete(PendingReplica).where(col(PendingReplica.instance) == instance_id))
        for area in self.write[1:]:
            session.add(PendingReplica(instance=instance_id, area=area))
        if not session.info.get("replica_wake"):
            session.info["replica_wake"] = True
            event.listen(session, "after_transaction_end", self._after_transaction)

    def _after_transaction(self, session: Session, transaction: Any) -> None:
        """Wake the replicator when the outermost transaction ends (a savepoint's end, which
        SQLAlchemy also reports as a commit, is not yet visible to other connections)."""
        if transaction.parent is None and session.info.pop("replica_wake", None):
            self._wake_replicator.set()

    def replicate_pending(self, limit: int = 256) -> int:
        """Write the replicas still owed (returns how many were written); a failure is retried
        later with a growing delay."""
        total = 0
        while not self._stop.is_set():
            with Session(self.db.reader) as session:
                pending = session.exec(select(PendingReplica).where(col(PendingReplica.next_attempt_at) <= utcnow())
                                       .order_by(col(PendingReplica.id)).limit(limit)).all()
                session.expunge_all()
            if not pending:
                return total
            done = list(self._background.map(self._replicate_one, pending))
            total += sum(1 for d in done if d)
            if len(pending) < limit:
                return total
        return total

    def _claim(self, pending: PendingReplica) -> bool:
        """Take ``pending`` for this replicator, if it is still due: its next attempt moves past
        the lease, so that another replicator (the background one and a ``replicate_pending``
        call, or another node) that read the same row skips it instead of writing a second copy."""
        now = utcnow()
        with Session(self.db.engine) as session:
            claimed = session.execute(update(PendingReplica).where(
                col(PendingReplica.id) == pending.id, col(PendingReplica.next_attempt_at) <= now,
            ).values(next_attempt_at=now + REPLICA_LEASE)).rowcount  # type: ignore[attr-defined]
            session.commit()
        return bool(claimed)

    def _replicate_one(self, pending: PendingReplica) -> bool:
        target = self.areas.get(pending.area)
        stored = None
        if not self._claim(pending):
            return False
        try:
            if target is None:
                raise ValueError(f"area {pending.area} is no longer configured")
            with Session(self.db.reader) as session:
                copies = session.exec(select(InstanceFile).where(InstanceFile.instance == pending.instance)
                                      .order_by(col(InstanceFile.id))).all()
                session.expunge_all()
            if any(c.area == pending.area for c in copies):
                stored = None
                source = None
            else:
                source, data = self._good_copy(copies)
                stored = target.put_bytes(data)
                if target.checksum(stored.key) != source.checksum:
                    raise ValueError(f"the replica written to {pending.area} reads back with another SHA-256")
            with Session(self.db.engine) as session:
                if stored is not None and source is not None:
                    session.add(InstanceFile(instance=pending.instance, area=pending.area, key=stored.key,
                                             size=stored.size, checksum=stored.checksum,
                                             transfer_syntax_uid=source.transfer_syntax_uid, verified_at=utcnow()))
                session.execute(delete(PendingReplica).where(col(PendingReplica.id) == pending.id))
                session.commit()
            return stored is not None
        except Exception as exc:
            if stored is not None and target is not None:
                self._remove_object(pending.area, stored.key)
            delay = min(REPLICA_RETRY_MAX, timedelta(seconds=5 * 2 ** min(pending.attempts, 10)))
            log.warning("replica of instance %d to %s failed (attempt %d): %s", pending.instance, pending.area,
                        pending.attempts + 1, exc)
            with Session(self.db.engine) as session:
                session.execute(update(PendingReplica).where(col(PendingReplica.id) == pending.id).values(
                    attempts=PendingReplica.attempts + 1, last_error=str(exc)[:500],
                    next_attempt_at=utcnow() + delay))
                session.commit()
            return False

    def _good_copy(self, copies: list[InstanceFile], exclude: int | None = None) -> tuple[InstanceFile, bytes]:
        """The bytes of the first copy (fastest tier first) that still matches its SHA-256."""
        for copy in sorted((c for c in copies if c.id != exclude and c.area in self.areas), key=self._rank):
            try:
                data = self.areas[copy.area].read(copy.key)
            except Exception:
                continue
            if hashlib.sha256(data).hexdigest() == copy.checksum:
                return copy, data
        raise LookupError("no intact copy left")

    # -- scrubbing ------------------------------------------------------------------------------
    def scrub(self, *, progress: Progress | None = None, batch: int = 500) -> ScrubRun:
        """Verify every copy's SHA-256 (its bytes as the area returns them now); rewrite a
        corrupt or missing copy from a good one; count objects the index does not know."""
        run = ScrubRun()
        with Session(self.db.engine) as session:
            session.add(run)
            session.commit()
            session.refresh(run)
            session.expunge(run)
        last = 0
        while not self._stop.is_set():
            with Session(self.db.reader) as session:
                rows = session.exec(select(InstanceFile).where(col(InstanceFile.id) > last)
                                    .order_by(col(InstanceFile.id)).limit(batch)).all()
                session.expunge_all()
            if not rows:
                break
            last = rows[-1].id or last
            checks = list(self._background.map(self._check, rows))
            verified = []
            for copy, state in zip(rows, checks, strict=True):
                if state is None:
                    continue
                run.checked += 1
                if state == "ok":
                    verified.append(copy.id)
                    continue
                setattr(run, state, getattr(run, state) + 1)
                log.error("scrub: %s copy of instance %d in %s (%s)", state, copy.instance, copy.area, copy.key)
                if self._repair(copy):
                    run.repaired += 1
                else:
                    run.unrepairable += 1
            if verified:
                with Session(self.db.engine) as session:
                    session.execute(update(InstanceFile).where(col(InstanceFile.id).in_(verified))
                                    .values(verified_at=utcnow()))
                    session.commit()
            if progress is not None:
                progress(len(rows))
        run.orphans = self._count_orphans()
        run.finished_at = utcnow()
        with Session(self.db.engine) as session:
            session.add(run)
            session.commit()
            session.refresh(run)
            session.expunge(run)
        log.info("scrub: %d copies checked, %d corrupt, %d missing, %d repaired, %d unrepairable, %d orphans",
                 run.checked, run.corrupt, run.missing, run.repaired, run.unrepairable, run.orphans)
        return run

    def _check(self, copy: InstanceFile) -> str | None:
        area = self.areas.get(copy.area)
        if area is None:
            return None
        try:
            actual = area.checksum(copy.key)
        except (FileNotFoundError, KeyError):
            return "missing"
        except Exception as exc:  # the area is unreachable (network, permissions): not this copy's fault
            log.warning("scrub: %s/%s cannot be read now, skipped: %s", copy.area, copy.key, exc)
            return None
        return "ok" if actual == copy.checksum else "corrupt"

    def _repair(self, bad: InstanceFile) -> bool:
        """Replace a bad copy with the bytes of a good one, in the same area."""
        target = self.areas[bad.area]
        with self._lock(-bad.instance):
            with Session(self.db.reader) as session:
                copies = session.exec(select(InstanceFile).where(InstanceFile.instance == bad.instance)).all()
                session.expunge_all()
            if not any(c.id == bad.id for c in copies):
                return True  # migrated or evicted meanwhile
            try:
                source, data = self._good_copy(copies, exclude=bad.id)
            except LookupError:
                log.error("scrub: instance %d has no intact copy left; %s/%s cannot be repaired", bad.instance,
                          bad.area, bad.key)
                return False
            stored = None
            try:
                stored = target.put_bytes(data)
                if target.checksum(stored.key) != source.checksum:
                    raise ValueError("the repaired copy reads back with another SHA-256")
                with Session(self.db.engine) as session:
                    session.execute(update(InstanceFile).where(col(InstanceFile.id) == bad.id).values(
                        key=stored.key, size=stored.size, checksum=stored.checksum,
                        transfer_syntax_uid=source.transfer_syntax_uid, verified_at=utcnow()))
                    session.commit()
            except Exception as exc:
                log.error("scrub: repairing %s/%s failed: %s", bad.area, bad.key, exc)
                if stored is not None:
                    self._remove_object(bad.area, stored.key)
                return False
            self._remove_object(bad.area, bad.key)
            log.warning("scrub: repaired the copy of instance %d in %s from %s", bad.instance, bad.area, source.area)
            return True

    def _count_orphans(self) -> int:
        orphans = 0
        for name, area in self.areas.items():
            with Session(self.db.reader) as session:
                known = set(session.exec(select(InstanceFile.key).where(InstanceFile.area == name)).all())
            try:
                orphans += sum(1 for key in area.keys() if key not in known)
            except Exception as exc:
                log.warning("scrub: cannot list %s: %s", name, exc)
        return orphans

    # -- prefetch of priors ---------------------------------------------------------------------
    def queue_prefetch(self) -> int:
        """Queue the recall of prior studies for every order created since the last look."""
        from pacs.registry.models import ImagingOrder

        with Session(self.db.reader) as session:
            if self._order_watermark is None:
                self._order_watermark = session.exec(select(func.max(ImagingOrder.id))).one() or 0
                return 0
            orders = session.exec(select(ImagingOrder).where(col(ImagingOrder.id) > self._order_watermark)
                                  .order_by(col(ImagingOrder.id))).all()
            queued = 0
            for order in orders:
                self._order_watermark = order.id
                for study in self.priors(session, order):
                    if study not in self._prefetch_queued:
                        self._prefetch_queued.add(study)
                        self._prefetch_queue.put(study)
                        queued += 1
        return queued

    def priors(self, session: Session, order: Any) -> list[int]:
        """The patient's earlier studies with the order's modality or body part that are not
        online, most recent first (at most ``prefetch_max_studies``)."""
        from pacs.registry.models import Patient, ProcedureStep

        patient = session.get(Patient, order.patient)
        if patient is None:
            return []
        same = select(Patient.id).where(or_(Patient.id == patient.id, Patient.merged_into == patient.id,
                                            Patient.patient_id == patient.patient_id))
        modalities = {m for m in session.exec(select(ProcedureStep.modality)
                                              .where(ProcedureStep.order == order.id)).all() if m}
        matches = []
        if modalities:
            matches.append(col(Series.modality).in_(modalities))
        if order.body_part:
            matches.append(func.upper(Series.body_part) == order.body_part.upper())
        if not matches:
            return []
        studies = session.exec(
            select(Study.id).join(Series, col(Series.study) == Study.id)
            .where(col(Study.patient).in_(same), Study.study_instance_uid != order.study_instance_uid, or_(*matches))
            .group_by(Study.id, Study.study_date).order_by(col(Study.study_date).desc())
            .limit(self.config.prefetch_max_studies)).all()
        return [study for study in studies if self.needs_recall(study)]

    def _prefetch_worker(self) -> None:
        while True:
            study = self._prefetch_queue.get()
            if study is None or self._stop.is_set():
                return
            try:
                result = self.recall(study)
                self.prefetched.append(study)
                log.info("prefetched prior study %d: %d instance(s)", study, result.recalled)
            except Exception:
                log.exception("prefetch of study %d failed", study)
            finally:
                self._prefetch_queued.discard(study)

    @property
    def recalls_queued(self) -> int:
        """Prior studies waiting for their recall (pacs.metrics)."""
        return self._prefetch_queue.qsize()

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with Session(self.db.reader) as session:
            per_area = session.exec(select(InstanceFile.area, col(InstanceFile.cached), func.count(),
                                           func.coalesce(func.sum(InstanceFile.size), 0))
                                    .group_by(InstanceFile.area, InstanceFile.cached)).all()
            study_areas = session.exec(select(Series.study, InstanceFile.area)
                                       .join(Instance, col(Instance.series) == Series.id)
                                       .join(InstanceFile, col(InstanceFile.instance) == Instance.id)
                                       .group_by(Series.study, InstanceFile.area)).all()
            pending = session.exec(select(PendingReplica.area, func.count(), func.min(PendingReplica.created_at),
                                          func.max(PendingReplica.attempts))
                                   .group_by(PendingReplica.area)).all()
            errors = session.exec(select(PendingReplica.last_error).where(PendingReplica.last_error != "")
                                  .order_by(col(PendingReplica.id).desc()).limit(1)).first()
            last_scrub = session.exec(select(ScrubRun).order_by(col(ScrubRun.id).desc()).limit(1)).first()
        areas: dict[str, dict[str, Any]] = {}
        for name, area in self.areas.items():
            try:
                free = area.free_bytes()
            except Exception:
                free = None
            areas[name] = {"kind": type(area).__name__.removesuffix("Area").lower(), "tier": self.tiers[name],
                           "copies": 0, "bytes": 0, "cached_copies": 0, "cached_bytes": 0, "free_bytes": free,
                           "write": name in self.write, "cache": name == self.cache.name}
        for name, cached, count, size in per_area:
            entry = areas.setdefault(name, {"kind": "unconfigured", "tier": "?", "copies": 0, "bytes": 0,
                                            "cached_copies": 0, "cached_bytes": 0, "free_bytes": None})
            entry["copies"] += count
            entry["bytes"] += int(size)
            if cached:
                entry["cached_copies"] += count
                entry["cached_bytes"] += int(size)
        best: dict[int, int] = {}
        for study, area in study_areas:
            rank = TIERS.index(self.tiers[area]) if area in self.tiers else len(TIERS)
            best[study] = min(best.get(study, rank), rank)
        studies = {tier: 0 for tier in TIERS}
        for rank in best.values():
            if rank < len(TIERS):
                studies[TIERS[rank]] += 1
        return {
            "areas": areas,
            "studies_by_fastest_tier": studies,
            "pending_replicas": {area: {"count": count, "oldest": oldest.isoformat() if oldest else None,
                                        "max_attempts": attempts} for area, count, oldest, attempts in pending},
            "last_replica_error": errors,
            "last_scrub": last_scrub.model_dump(mode="json") if last_scrub else None,
        }

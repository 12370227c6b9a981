"""The audit log, retention and backups, wired into a process's services, and the jobs the server
runs on a schedule:

- the audit purge, daily, when ``[audit] retention_days`` is set;
- retention (expire by ``[retention] per_modality``, empty the trash after ``trash_days``) every
  ``[retention] interval_hours``;
- a backup to ``[backup] dest`` every ``[backup] interval_hours`` (counted from the newest snapshot
  there, so restarts do not postpone it);
- the WADO-RS metadata of studies that became stable, every ``[archive] metadata_warm_seconds``
  (:mod:`pacs.archive.dicomweb.warm`).

Jobs run one at a time in their own thread; a job that fails is logged and tried again at its next
turn. With several nodes on one PostgreSQL database, the audit purge, retention and the backup run
on one node only, the leader elected by :class:`pacs.cluster.Leadership`; a follower whose leader
dies takes the jobs over at its next tick and runs those that are due. Metadata warming fills
each node's own cache, so every node runs it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacs.archive.retention import Rejections, Retention
from pacs.audit import Auditor
from pacs.audit import service as audit_service
from pacs.audit.messages import audit_message
from pacs.cluster import Leadership

log = logging.getLogger(__name__)

DAY = 24 * 3600.0
FIRST_RUN_DELAY = 60.0  # after start, so that start-up work comes first


@dataclass
class Job:
    name: str
    run: Callable[[], object]
    interval: Callable[[], float]  # seconds; 0 = not scheduled
    due: Callable[[float], bool] | None = None  # overrides the interval when given
    last: float = 0.0
    singleton: bool = True  # on one node of several only (the leader)


class Housekeeping:
    def __init__(self, services: Any, *, first_run_delay: float = FIRST_RUN_DELAY, tick: float = 5.0) -> None:
        self.services = services
        self.tick = tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        settings = services.settings
        self.jobs = [
            Job("audit purge", self.purge_audit, lambda: DAY if settings.audit.retention_days > 0 else 0.0),
            Job("retention", self.retention, lambda: settings.retention.interval_hours * 3600.0),
            Job("backup", self.backup, lambda: settings.backup.interval_hours * 3600.0,
                due=lambda _now: _backup_due(settings)),
            Job("metadata", self.warm_metadata, lambda: settings.archive.metadata_warm_seconds,
                singleton=False),
        ]
        self.leadership = Leadership(services.db, "housekeeping")
        self.warmer: Any = None
        now = time.monotonic()
        for job in self.jobs:  # each job's first turn comes first_run_delay after start
            job.last = now + first_run_delay - job.interval()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None
        self.leadership.resign()

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            self.run_due()

    def run_due(self) -> list[str]:
        """Run every job whose turn it is; returns their names."""
        ran = []
        for job in self.jobs:
            if self._stop.is_set():
                break
            now = time.monotonic()
            interval = job.interval()
            if interval <= 0:
                continue
            due = job.due(now) if job.due is not None else now - job.last >= interval
            if not due:
                continue
            if job.singleton and not self.leadership.leads():
                continue  # another node runs it; due here still, should that node die
            job.last = now
            try:
                job.run()
                ran.append(job.name)
            except Exception:
                log.exception("%s failed; it runs again at its next turn", job.name)
        return ran

    # -- the jobs -----------------------------------------------------------------------------
    def purge_audit(self) -> int:
        settings = self.services.settings
        removed = audit_service.purge(self.services.db, settings.audit.retention_days)
        if removed:
            self.services.audit.used(user="retention", user_kind="system", action="D",
                                     description=f"{removed} audit entries older than "
                                                 f"{settings.audit.retention_days:g} days purged")
        return removed

    def retention(self) -> Any:
        return self.services.retention.run()

    def warm_metadata(self) -> int:
        if self.warmer is None:
            from pacs.archive.dicomweb.cache import MetadataCache, folder
            from pacs.archive.dicomweb.warm import MetadataWarmer

            services = self.services
            self.warmer = MetadataWarmer(services.db, services.archive.readable,
                                         MetadataCache(folder(services.settings.data_dir)),
                                         services.settings.publish.stable_after_seconds)
        return int(self.warmer.run())

    def backup(self) -> Any:
        from pacs.backup import backup

        settings = self.services.settings
        return backup(settings, Path(settings.backup.dest), areas=self.services.archive.areas,
                      audit=self.services.audit)


def _backup_due(settings: Any) -> bool:
    from pacs.backup import scheduled_due

    try:
        return scheduled_due(settings)
    except Exception:
        log.exception("cannot read the backup folder %s", settings.backup.dest)
        return False


def wire(services: Any) -> None:
    """Give a process's services their audit log, rejection handling, retention and jobs."""
    settings = services.settings
    services.audit = audit = Auditor(services.db, settings)
    services.archive.object_hooks.append(Rejections(services.archive).on_indexed)
    services.retention = Retention(services.db, services.archive.areas, settings)
    services.channel.audit = audit_message
    mappings = services.mappings
    mappings.on_change = lambda _mappings: audit.mappings_reloaded(settings.mappings_dir)
    mappings.on_refused = lambda problems: audit.mappings_refused(settings.mappings_dir, problems)
    services.housekeeping = Housekeeping(services)


def start(services: Any) -> None:
    """At server start: the audit writer (and syslog forwarder), the application-start entry with
    any configuration or mapping change since the last run, then the scheduled jobs."""
    audit = getattr(services, "audit", None)
    if audit is None:
        return
    audit.start()
    audit.application_started(services.settings, services.settings.mappings_dir)
    if services.housekeeping is not None:
        services.housekeeping.start()


def stop(services: Any) -> None:
    """At close: the scheduled jobs stop; a running server records its stop; the audit writer
    writes what is queued and stops."""
    if getattr(services, "housekeeping", None) is not None:
        services.housekeeping.stop()
    audit = getattr(services, "audit", None)
    if audit is None:
        return
    if audit.running:
        audit.application_stopped()
    audit.stop()

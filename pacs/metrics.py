"""Prometheus metrics: what the system did, and what waits, in the text exposition format.

Two kinds of numbers, two costs:

- **Counts on the hot paths** (HL7 and FHIR messages, C-STOREs) are plain Python numbers owned
  by the component that does the work (:class:`MessageCounts` in the intake workers,
  :class:`CStoreCounts` in the archive): one dictionary or list item incremented, one float
  added, no object made per message or object. The C-STORE counts take no lock: under
  CPython's GIL one ``+=`` on a list item, a pre-made dictionary key or an attribute is not
  interleaved with another thread's. The message counts, read and written by two intake workers
  on PostgreSQL, take one uncontended lock a message. Counts are exact.
- **Gauges** (open associations, outbox depth and age per destination, free space per storage
  area, replicas waiting, recalls queued, the audit backlog) are worked out when Prometheus
  scrapes, from the database and the components' state; nothing is kept for them in between.

Processes: ``pacs serve`` may run DICOM receiver processes (``[dicom] processes``) and an MLLP
front process. Every HL7 message is counted by the main process's intake worker, whatever
process read it. Each receiver sends its C-STORE counts to the main process over its index link
(:mod:`pacs.archive.receivers`) about once a second when they have changed; the main process
adds them to its own, so a scrape of the main process is the whole server, up to a second late
for what receivers took. (prometheus-client's multiprocess mode would have every increment write
to a memory-mapped file under a lock instead.)

Where: ``[metrics] port`` serves ``/metrics`` on 127.0.0.1 alone (a port of its own, off by
default); ``[metrics] http = true`` adds ``/metrics`` to the main HTTP app, for clients with
the ``metrics.read`` permission (a token made with ``--scope metrics.read``, an administrator).

Metric names follow the Prometheus naming guide: a ``pacs_`` prefix, base units (seconds, bytes),
``_total`` for counters.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from fastapi import APIRouter

    from pacs.server import Services

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the latency buckets: from a lone ADT's ACK (a few milliseconds) to a
# C-STORE waiting on a slow disk.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOOPBACK = "127.0.0.1"  # the metrics port is never bound elsewhere
PENDING_STATUSES = ("PENDING", "RETRYING")  # outbox items still to be delivered (pacs.integration.outbox)


class Latencies:
    """A latency histogram kept as bucket counts: ``observe`` is a bisect and two additions."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum}


def _histogram(name: str, documentation: str, snapshots: Iterable[dict[str, Any]]) -> HistogramMetricFamily:
    """One histogram from the snapshots of several :class:`Latencies` (several processes)."""
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    total = 0.0
    for snapshot in snapshots:
        for index, count in enumerate(snapshot["counts"]):
            counts[index] += count
        total += snapshot["sum"]
    cumulative, buckets = 0, []
    for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


class MessageCounts:
    """HL7 v2 messages and FHIR orders run through the channel, by type, status and ACK code,
    and how long each waited for its answer (recorded by the intake workers: on PostgreSQL two
    threads, hence the lock, taken once a message)."""

    def __init__(self) -> None:
        self.by_kind: dict[tuple[str, str, str], int] = {}
        self.latency = Latencies()
        self._lock = threading.Lock()

    def record(self, message_type: str, status: str, ack_code: str, seconds: float) -> None:
        key = (message_type, status, ack_code)
        with self._lock:
            self.by_kind[key] = self.by_kind.get(key, 0) + 1
            self.latency.observe(seconds)


class CStoreCounts:
    """C-STORE requests answered by this process: objects by outcome, bytes, handling time."""

    def __init__(self, outcomes: Iterable[str]) -> None:
        self.objects = dict.fromkeys(outcomes, 0)  # every key made here: an increment adds none
        self.bytes = 0
        self.latency = Latencies()

    def record(self, outcome: str, size: int, seconds: float) -> None:
        self.objects[outcome] += 1
        self.bytes += size
        self.latency.observe(seconds)

    def snapshot(self) -> dict[str, Any]:
        return {"objects": dict(self.objects), "bytes": self.bytes, "latency": self.latency.snapshot()}


class Metrics:
    """The scrape of one ``pacs serve``: a registry whose collector reads the counts and works out
    the gauges (:meth:`collect`), and the loopback port that serves it."""

    def __init__(self, services: Services, *, associations: Callable[[], int] = lambda: 0,
                 reported: Callable[[], Iterable[dict[str, Any]]] = list) -> None:
        self.services = services
        self.associations = associations  # connections served now, by every process
        self.reported = reported  # the C-STORE snapshots the receiver processes sent last
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)  # CPU, memory, open files of the main process
        self._http: Any = None

    # -- exposition ----------------------------------------------------------------------------
    def latest(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int) -> int:
        """Serve the scrape at http://127.0.0.1:PORT/metrics in a thread; the port taken."""
        self._http, _thread = start_http_server(port, addr=LOOPBACK, registry=self.registry)
        return int(self._http.server_port)

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # -- the collector ---------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        yield from self._messages()
        yield from self._c_stores()
        yield GaugeMetricFamily("pacs_dicom_associations", "DICOM connections being served now, every process",
                                value=self.associations())
        for name, collect in (("outbox", self._outbox), ("storage", self._storage), ("audit", self._audit)):
            try:
                yield from collect()
            except Exception as exc:  # a scrape reports what it can: the database may be down
                log.warning("metrics: %s gauges not collected: %s", name, exc)
        yield GaugeMetricFamily("pacs_scrape_duration_seconds", "time taken to collect these metrics",
                                value=time.perf_counter() - started)

    def _messages(self) -> Iterator[Metric]:
        counts = self.services.intake.counts
        messages = CounterMetricFamily("pacs_messages", "HL7 v2 messages and FHIR orders run through the channel",
                                       labels=["type", "status", "ack"])
        for (message_type, status, ack), count in list(counts.by_kind.items()):
            messages.add_metric([message_type or "unknown", status, ack or "none"], count)
        yield messages
        yield _histogram("pacs_message_ack_latency_seconds",
                         "from a message's arrival at the intake worker to its ACK, after the commit",
                         [counts.latency.snapshot()])

    def _c_stores(self) -> Iterator[Metric]:
        snapshots = [self.services.archive.c_stores.snapshot(), *self.reported()]
        objects = CounterMetricFamily("pacs_cstore_objects", "C-STORE requests answered, by outcome",
                                      labels=["outcome"])
        by_outcome: dict[str, int] = {}
        for snapshot in snapshots:
            for outcome, count in snapshot["objects"].items():
                by_outcome[outcome] = by_outcome.get(outcome, 0) + count
        for outcome, count in sorted(by_outcome.items()):
            objects.add_metric([outcome], count)
        yield objects
        yield CounterMetricFamily("pacs_cstore_bytes", "bytes of the objects C-STORE requests carried",
                                  value=sum(snapshot["bytes"] for snapshot in snapshots))
        yield _histogram("pacs_cstore_latency_seconds", "from a C-STORE's data set received whole to its answer",
                         [snapshot["latency"] for snapshot in snapshots])

    def _outbox(self) -> Iterator[Metric]:
        from sqlalchemy import func, select

        from pacs.integration.outbox import OutboxItem, OutboxStatus

        table = OutboxItem.__table__  # type: ignore[attr-defined]
        now = datetime.now(UTC)
        with self.services.db.reader.connect() as connection:
            waiting = connection.execute(
                select(table.c.destination, func.count(), func.min(table.c.created_at))
                .where(table.c.status.in_(PENDING_STATUSES)).group_by(table.c.destination)).all()
            dead = connection.execute(select(table.c.destination, func.count())
                                      .where(table.c.status == OutboxStatus.DEAD).group_by(table.c.destination)).all()
        depth = GaugeMetricFamily("pacs_outbox_depth", "outbox items waiting for delivery", labels=["destination"])
        oldest = GaugeMetricFamily("pacs_outbox_oldest_age_seconds", "age of the oldest item waiting",
                                   labels=["destination"])
        for destination, count, created in waiting:
            depth.add_metric([destination], count)
            oldest.add_metric([destination], _age(now, created))
        refused = GaugeMetricFamily("pacs_outbox_dead", "outbox items given up on, waiting for a person",
                                    labels=["destination"])
        for destination, count in dead:
            refused.add_metric([destination], count)
        yield from (depth, oldest, refused)

    def _storage(self) -> Iterator[Metric]:
        from sqlalchemy import func, select

        from pacs.archive.storage.tables import PendingReplica

        storage = self.services.storage
        if storage is None:
            return
        free = GaugeMetricFamily("pacs_storage_free_bytes", "space left in each storage area",
                                 labels=["area", "tier"])
        for name, area in storage.areas.items():
            try:
                free.add_metric([name, storage.tiers[name]], area.free_bytes())
            except Exception as exc:  # an object store out of reach: no value rather than a wrong one
                log.warning("metrics: free space of storage area %s unknown: %s", name, exc)
        yield free
        table = PendingReplica.__table__  # type: ignore[attr-defined]
        now = datetime.now(UTC)
        with self.services.db.reader.connect() as connection:
            pending = connection.execute(select(table.c.area, func.count(), func.min(table.c.created_at))
                                         .group_by(table.c.area)).all()
        replicas = GaugeMetricFamily("pacs_storage_pending_replicas",
                                     "copies still to be written to an area ([storage] write)", labels=["area"])
        oldest = GaugeMetricFamily("pacs_storage_pending_replica_oldest_age_seconds",
                                   "age of the oldest copy still to be written", labels=["area"])
        for area, count, created in pending:
            replicas.add_metric([area], count)
            oldest.add_metric([area], _age(now, created))
        yield from (replicas, oldest)
        yield GaugeMetricFamily("pacs_storage_recalls_queued", "prior studies queued to be recalled (prefetch)",
                                value=storage.recalls_queued)

    def _audit(self) -> Iterator[Metric]:
        auditor = self.services.audit
        if auditor is None:
            return
        yield GaugeMetricFamily("pacs_audit_backlog", "audit events waiting for the audit writer",
                                value=auditor.backlog)
        if auditor.forwarder is None:
            return
        from sqlalchemy import func, select

        from pacs.audit.tables import AuditCursor, AuditEvent

        events, cursor = AuditEvent.__table__, AuditCursor.__table__  # type: ignore[attr-defined]
        with self.services.db.reader.connect() as connection:
            newest = connection.execute(select(func.max(events.c.id))).scalar() or 0
            sent = connection.execute(select(cursor.c.last_id)
                                      .where(cursor.c.name == auditor.forwarder.NAME)).scalar() or 0
        yield GaugeMetricFamily("pacs_audit_syslog_backlog", "audit events not yet forwarded to syslog",
                                value=max(0, newest - sent))


def _age(now: datetime, then: datetime | None) -> float:
    if then is None:
        return 0.0
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return max(0.0, (now - then).total_seconds())


def router(metrics: Metrics) -> APIRouter:
    """``GET /metrics`` for the main HTTP app, to clients with the ``metrics.read`` permission
    (a token made with ``--scope metrics.read``, or an administrator)."""
    from fastapi import APIRouter, Depends
    from fastapi.responses import Response

    from pacs.auth.access import require
    from pacs.auth.roles import Permission

    access = require(Permission.METRICS_READ)

    api = APIRouter(tags=["operations"])

    @api.get("/metrics", dependencies=[Depends(access)], response_class=Response)
    def scrape() -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(metrics.latest(), media_type=CONTENT_TYPE_LATEST)

    return api

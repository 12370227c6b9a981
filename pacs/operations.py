"""``pacs backup``, ``pacs restore``, ``pacs audit`` and ``pacs retention``: the operator's commands.

They run in their own process beside (or without) ``pacs serve``, on the same database and
storage areas.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pacs.settings import Settings

COMMANDS = ("backup", "restore", "audit", "retention")


@contextmanager
def audit_import(services: Any, path: Path) -> Iterator[Counter[str]]:
    """``pacs import``: one "Import" entry (110107) naming the studies and patients it brought."""
    from sqlmodel import Session, col, select

    from pacs.archive.index import Instance, Series, Study
    from pacs.audit import Event, codes
    from pacs.db import utcnow

    counts: Counter[str] = Counter()
    started = utcnow()
    try:
        yield counts
    finally:
        try:
            with Session(services.db.engine) as session:
                studies = session.exec(select(Study.study_instance_uid).distinct()
                                       .join(Series, col(Series.study) == Study.id)
                                       .join(Instance, col(Instance.series) == Series.id)
                                       .where(Series.calling_ae_title == "IMPORT", Instance.received_at >= started)
                                       ).all()
            failed = counts.get("failed", 0) + counts.get("storage full", 0)
            stored = counts.get("stored", 0)
            services.audit.record(Event(
                codes.IMPORT, "C", 0 if not failed else 4 if stored else 8, user=_operator(), user_kind="user",
                address="localhost", studies=list(studies), resolve_patients=True,
                description=f"pacs import {path}: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                                                      or "nothing found"),
                details={"object": str(path.resolve()), "counts": dict(counts)}))
        except Exception:
            import logging

            logging.getLogger(__name__).exception("import not audited")


def _moment(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.astimezone() if value.tzinfo is None else value


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    backup = sub.add_parser("backup", help="back up the database and images to a folder (incremental), or "
                                           "--verify a backup")
    common(backup)
    backup.add_argument("dest", type=Path, help="backup folder (created when missing)")
    backup.add_argument("--verify", action="store_true", help="check the backup instead of making one")
    backup.add_argument("--snapshot", help="with --verify: the snapshot to check (default: the newest)")
    backup.add_argument("--all", action="store_true", help="with --verify: check every snapshot")
    backup.add_argument("--quick", action="store_true", help="with --verify: sizes only, no re-hashing")
    backup.add_argument("--keep", type=int, help="database snapshots to keep ([backup] keep, default 7)")
    backup.add_argument("--quiet", action="store_true", help="no progress bar")
    backup.add_argument("--json", action="store_true", help="print the result as JSON")

    restore = sub.add_parser("restore", help="restore a backup into an empty data folder and database")
    common(restore)
    restore.add_argument("src", type=Path, help="backup folder")
    restore.add_argument("--snapshot", help="snapshot to restore (default: the newest)")
    restore.add_argument("--quiet", action="store_true", help="no progress bar")

    audit = sub.add_parser("audit", help="search, export or purge the audit log")
    asub = audit.add_subparsers(dest="action", required=True)
    search = asub.add_parser("search", help="audit entries, newest first")
    export = asub.add_parser("export", help="audit entries, oldest first, as JSON lines or DICOM audit XML")
    for parser in (search, export):
        common(parser)
        parser.add_argument("--since", type=_moment, help="recorded at or after (ISO 8601; local time without a zone)")
        parser.add_argument("--until", type=_moment, help="recorded before")
        parser.add_argument("--event", help="event ID (DCM code, e.g. 110112) or name (Query)")
        parser.add_argument("--event-action", dest="event_action", choices=list("CRUDE"),
                            help="EventActionCode: Create, Read, Update, Delete, Execute")
        parser.add_argument("--patient-id")
        parser.add_argument("--study-uid")
        parser.add_argument("--user", help="AE title, HL7 sender, client address or user")
        parser.add_argument("--outcome", type=int, choices=[0, 4, 8, 12])
    search.add_argument("--limit", type=int, default=50)
    search.add_argument("--offset", type=int, default=0)
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    export.add_argument("--format", choices=["jsonl", "xml"], default="jsonl")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")
    purge = asub.add_parser("purge", help="remove entries older than [audit] retention_days now")
    common(purge)
    purge.add_argument("--days", type=float, help="instead of [audit] retention_days")

    retention = sub.add_parser("retention", help="retention periods and the trash")
    rsub = retention.add_subparsers(dest="action", required=True)
    run = rsub.add_parser("run", help="expire studies past their period and empty the trash now")
    common(run)
    run.add_argument("--dry-run", action="store_true", help="say which studies would expire; change nothing")
    trash = rsub.add_parser("trash", help="what is in the trash, and when it will be removed")
    common(trash)
    trash.add_argument("--json", action="store_true")


def run(args: argparse.Namespace, settings: Settings) -> int:
    return {"backup": _backup, "restore": _restore, "audit": _audit, "retention": _retention}[args.command](
        args, settings)


def _progress(quiet: bool):  # type: ignore[no-untyped-def]
    if quiet or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit=" files", file=sys.stderr)
        bar.update(done - bar.n)

    return progress, lambda: [bar.close() for bar in bars.values()]


def _operator() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "operator"


# -- backup and restore -----------------------------------------------------------------------

def _backup(args: argparse.Namespace, settings: Settings) -> int:
    from pacs import backup

    progress, close = _progress(args.quiet)
    if args.verify:
        try:
            result = backup.verify(args.dest, snapshot=args.snapshot, every=args.all, quick=args.quick,
                                   progress=progress)
        finally:
            close()
        if args.json:
            print(json.dumps(result.__dict__, indent=2))
        else:
            for problem in result.problems:
                print(f"problem: {problem}")
            print(f"{args.dest}: snapshot(s) {', '.join(result.snapshots) or 'none'}; {result.files} object(s), "
                  f"{result.bytes} bytes checked{' (sizes only)' if args.quick else ''}: "
                  f"{'OK' if result.ok else f'{len(result.problems)} problem(s)'}")
        return 0 if result.ok else 1
    from pacs.audit import Auditor
    from pacs.db import Database

    db = Database(settings.effective_database_url)
    db.migrate()
    try:
        result = backup.backup(settings, args.dest, progress=progress, keep=args.keep,
                               audit=Auditor(db, settings))
    except backup.BackupError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    finally:
        close()
        db.dispose()
    if args.json:
        print(json.dumps(result.__dict__, indent=2))
    else:
        for warning in result.warnings:
            print(f"warning: {warning}")
        for problem in result.problems:
            print(f"problem: {problem}")
        print(f"backup {result.snapshot} in {args.dest}: {result.database} database, {result.files} copies, "
              f"{result.copied} new object(s) ({result.bytes_copied} bytes)"
              + (f", {result.mirrored} container file(s)" if result.mirrored else "")
              + (f"; removed snapshot(s) {', '.join(result.pruned_snapshots)} and {result.pruned_objects} "
                 "object(s) no snapshot needs" if result.pruned_snapshots else ""))
    return 0 if result.ok else 1


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    from pacs import backup

    progress, close = _progress(args.quiet)
    try:
        result = backup.restore(settings, args.src, snapshot=args.snapshot, progress=progress)
    except backup.BackupError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    finally:
        close()
    print(f"restored snapshot {result.snapshot} from {args.src} into {settings.data_dir}: {result.database} "
          f"database, {result.files} object(s) ({result.bytes} bytes)"
          + (f", {result.mirrored} container file(s)" if result.mirrored else ""))
    return 0


# -- audit ------------------------------------------------------------------------------------

def _audit(args: argparse.Namespace, settings: Settings) -> int:
    from pacs.audit import Auditor
    from pacs.audit import service as audit_service
    from pacs.db import Database

    db = Database(settings.effective_database_url)
    db.migrate()
    auditor = Auditor(db, settings)
    user = _operator()
    try:
        if args.action == "purge":
            days = args.days if args.days is not None else settings.audit.retention_days
            if days <= 0:
                print("pacs: no retention period: set [audit] retention_days or give --days", file=sys.stderr)
                return 1
            removed = audit_service.purge(db, days)
            auditor.used(user=user, user_kind="user", address="localhost", action="D",
                         description=f"{removed} audit entries older than {days:g} days purged")
            print(f"{removed} audit entries older than {days:g} days removed")
            return 0
        filters = audit_service.Filters(since=args.since, until=args.until, event_id=args.event,
                                        action=args.event_action, patient_id=args.patient_id,
                                        study_uid=args.study_uid, user=args.user, outcome=args.outcome)
        described = _describe(args)
        if args.action == "search":
            with audit_service.reader(db).connect() as connection:
                total, rows = audit_service.search(connection, filters, limit=args.limit, offset=args.offset)
            auditor.used(user=user, user_kind="user", address="localhost",
                         description=f"pacs audit search {described}".strip())
            if args.json:
                print(json.dumps({"total": total, "items": [audit_service.as_json(r) for r in rows]},
                                 ensure_ascii=False, indent=2, default=str))
                return 0
            print(f"{'ID':>7}  {'TIME (UTC)':19}  {'EVENT':28}  A  OUT  {'WHO':20}  {'PATIENT':12}  WHAT")
            for row in rows:
                item = audit_service.as_json(row)
                print(f"{item['id']:>7}  {row['recorded_at']:%Y-%m-%d %H:%M:%S}  "
                      f"{(item['event_id'] + ' ' + item['event'])[:28]:28}  {item['action']}  {item['outcome']:>3}  "
                      f"{item['user'][:20]:20}  {','.join(item['patients'])[:12]:12}  {item['description'][:80]}")
            print(f"{len(rows)} of {total} entries")
            return 0
        source = auditor.source
        out = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
        count = 0
        try:
            with audit_service.reader(db).connect() as connection:
                for line in audit_service.export_lines(connection, filters, args.format, source):
                    out.write(line)
                    count += 1
        finally:
            if args.output:
                out.close()
        auditor.used(user=user, user_kind="user", address="localhost",
                     description=f"pacs audit export --format {args.format} {described}".strip(),
                     object_=str(args.output or "standard output"))
        if args.output:
            print(f"audit entries written to {args.output} ({args.format})", file=sys.stderr)
        return 0
    finally:
        db.dispose()


def _describe(args: argparse.Namespace) -> str:
    parts = []
    for name in ("since", "until", "event", "patient_id", "study_uid", "user", "outcome"):
        value = getattr(args, name, None)
        if value not in (None, ""):
            parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts)


# -- retention --------------------------------------------------------------------------------

def _retention(args: argparse.Namespace, settings: Settings) -> int:
    from pacs.archive.retention import Retention
    from pacs.backup import storage_areas
    from pacs.db import Database

    db = Database(settings.effective_database_url)
    db.migrate()
    try:
        if args.action == "trash":
            return _trash(args, settings, db)
        retention = Retention(db, storage_areas(settings, db), settings)
        result = retention.run(dry_run=args.dry_run, user=_operator(), user_kind="user")
        if args.dry_run:
            print(f"{len(result.expired_studies)} stud(ies) past their retention period would go to the trash:")
            for uid in result.expired_studies:
                print(f"  {uid}")
            return 0
        purge = result.purge
        print(f"{len(result.expired_studies)} stud(ies) expired ({result.expired_instances} instance(s) to the "
              f"trash); {purge.instances} instance(s) removed from the trash, {len(purge.studies_deleted)} "
              f"stud(ies) deleted, {purge.objects_removed} object(s) removed"
              + (f", {purge.objects_left} left for the scrubber" if purge.objects_left else ""))
        return 0
    finally:
        db.dispose()


def _trash(args: argparse.Namespace, settings: Settings, db: Any) -> int:
    from sqlalchemy import func
    from sqlmodel import Session, col, select

    from pacs.archive.index import Instance, Series, Study
    from pacs.registry.models import Patient

    days = settings.retention.trash_days
    with Session(db.engine) as session:
        rows = session.exec(
            select(Study.study_instance_uid, Patient.patient_id, Instance.rejection_code, func.count(),
                   func.min(Instance.rejected_at))
            .join(Series, col(Series.id) == Instance.series).join(Study, col(Study.id) == Series.study)
            .join(Patient, col(Patient.id) == Study.patient).where(col(Instance.rejected_at).is_not(None))
            .group_by(Study.study_instance_uid, Patient.patient_id, Instance.rejection_code)
            .order_by(func.min(Instance.rejected_at))).all()
    items = [{"study_instance_uid": uid, "patient_id": patient, "rejection_code": code, "instances": count,
              "rejected_at": at.isoformat() if at else None,
              "removed_after": (at + timedelta(days=days)).isoformat() if at else None}
             for uid, patient, code, count, at in rows]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    from pacs.audit import codes

    print(f"{'REMOVED AFTER (UTC)':19}  {'PATIENT':12}  {'INSTANCES':>9}  {'REASON':36}  STUDY")
    for item in items:
        reason = codes.REJECTION_CODES.get(item["rejection_code"])
        print(f"{(item['removed_after'] or '')[:19]:19}  {item['patient_id'][:12]:12}  {item['instances']:>9}  "
              f"{(reason.meaning if reason else item['rejection_code'])[:36]:36}  {item['study_instance_uid']}")
    print(f"{sum(i['instances'] for i in items)} instance(s) in the trash ([retention] trash_days = {days:g})")
    return 0

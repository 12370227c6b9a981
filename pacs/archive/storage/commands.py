"""``pacs storage status|migrate|recall|scrub``: the storage manager from the command line.

These run in their own process beside (or without) ``pacs serve``, on the same database and
areas; progress bars go to the terminal (``--quiet`` turns them off).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from pacs.settings import Settings


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    storage = sub.add_parser("storage", help="storage areas and tiers: status, migrate, recall, scrub")
    ssub = storage.add_subparsers(dest="action", required=True)
    status = ssub.add_parser("status", help="copies per area and tier, pending replicas, the last scrub")
    common(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    migrate = ssub.add_parser("migrate", help="apply the [[storage.rules]] now, or move one study")
    common(migrate)
    migrate.add_argument("--rule", help="only the rule with this name (default: every rule, in order)")
    migrate.add_argument("--study", help="Study Instance UID to move (with --to)")
    migrate.add_argument("--to", help="target area for --study")
    migrate.add_argument("--from", dest="source", action="append",
                         help="source area for --study (default: its online areas, or moving to an online area, "
                              "its nearline and offline ones)")
    migrate.add_argument("--compress", choices=["none", "jpeg-ls", "jpeg2000"], default="none",
                         help="lossless compression for --study")
    migrate.add_argument("--dry-run", action="store_true", help="say what would move; move nothing")
    migrate.add_argument("--quiet", action="store_true", help="no progress bar")
    recall = ssub.add_parser("recall", help="bring a study back to the online cache")
    common(recall)
    recall.add_argument("study", nargs="+", help="Study Instance UID(s)")
    recall.add_argument("--quiet", action="store_true", help="no progress bar")
    scrub = ssub.add_parser("scrub", help="verify every copy's checksum now; repair from a good copy")
    common(scrub)
    scrub.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pacs.archive.storage.manager import StorageManager
    from pacs.db import Database

    db = Database(settings.effective_database_url)
    db.migrate()
    try:
        manager = StorageManager.from_settings(settings, db)
        manager.prepare_areas()
        try:
            return {"status": _status, "migrate": _migrate, "recall": _recall, "scrub": _scrub}[args.action](
                args, manager)
        finally:
            manager.stop()
    except ValueError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    finally:
        db.dispose()


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(value) < 1024 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)


def _status(args: argparse.Namespace, manager: Any) -> int:
    status = manager.status()
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    print(f"{'AREA':12} {'KIND':10} {'TIER':9} {'COPIES':>8} {'SIZE':>10} {'CACHED':>8} {'FREE':>10}  ROLE")
    for name, area in status["areas"].items():
        role = ", ".join(r for r, on in (("write", area.get("write")), ("cache", area.get("cache"))) if on)
        print(f"{name:12} {area['kind']:10} {area['tier']:9} {area['copies']:>8} {_size(area['bytes']):>10} "
              f"{area['cached_copies']:>8} {_size(area['free_bytes'] if area['free_bytes'] is None or area['free_bytes'] < 1 << 60 else None):>10}  {role}")
    tiers = status["studies_by_fastest_tier"]
    print("studies by fastest copy: " + ", ".join(f"{tier} {count}" for tier, count in tiers.items()))
    pending = status["pending_replicas"]
    if pending:
        for area, info in pending.items():
            print(f"pending replicas to {area}: {info['count']} (oldest {info['oldest']}, up to "
                  f"{info['max_attempts']} attempts)")
        if status["last_replica_error"]:
            print(f"  last error: {status['last_replica_error']}")
    else:
        print("pending replicas: none")
    scrub = status["last_scrub"]
    if scrub:
        print(f"last scrub: started {scrub['started_at']}, "
              f"{'finished ' + str(scrub['finished_at']) if scrub['finished_at'] else 'not finished'}; "
              f"{scrub['checked']} checked, {scrub['corrupt']} corrupt, {scrub['missing']} missing, "
              f"{scrub['repaired']} repaired, {scrub['unrepairable']} unrepairable, {scrub['orphans']} orphans")
    else:
        print("last scrub: never")
    return 0


def _migrate(args: argparse.Namespace, manager: Any) -> int:
    verb = "would move" if args.dry_run else "moved"
    if args.study:
        if not args.to:
            print("pacs: --study needs --to AREA", file=sys.stderr)
            return 2
        study = manager.study_id(args.study)
        if study is None:
            print(f"pacs: study {args.study} is not in the archive", file=sys.stderr)
            return 1
        sources = args.source or manager.default_sources(study, args.to)
        if not sources:
            print(f"study {args.study}: nothing to move to {args.to}")
            return 0
        result = manager.migrate_study(study, sources, args.to, compress_with=args.compress, dry_run=args.dry_run)
        print(f"study {args.study}: {verb} {result.copied} instance(s) ({_size(result.bytes_read)}) from "
              f"{'+'.join(sources)} to {args.to}"
              + (f", {result.compressed} compressed to {_size(result.bytes_written)}" if result.compressed else "")
              + (f"; {result.failed} failed" if result.failed else ""))
        return 1 if result.failed else 0
    rules = [r for r in manager.config.rules if args.rule is None or r.name == args.rule]
    if not rules:
        print("pacs: " + (f"no rule named {args.rule!r}" if args.rule else "no [[storage.rules]] configured"),
              file=sys.stderr)
        return 1
    failed = 0
    for rule in rules:
        bar = tqdm(desc=rule.label, unit="study", disable=args.quiet, file=sys.stderr)
        results = manager.apply_rule(rule, dry_run=args.dry_run, progress=bar.update,
                                     on_start=lambda total, bar=bar: setattr(bar, "total", total) or bar.refresh())
        bar.close()
        moved = sum(r.bytes_read for r in results)
        seconds = sum(r.seconds for r in results)
        failed += sum(r.failed for r in results)
        rate = f", {moved / seconds / 1e6:.1f} MB/s" if seconds > 0 and not args.dry_run else ""
        print(f"rule {rule.label}: {verb} {len(results)} studies, {sum(r.copied for r in results)} instance(s), "
              f"{_size(moved)} from {rule.from_} to {rule.to}{rate}")
    return 1 if failed else 0


def _recall(args: argparse.Namespace, manager: Any) -> int:
    status = 0
    for uid in tqdm(args.study, desc="recall", unit="study", disable=args.quiet or len(args.study) == 1,
                    file=sys.stderr):
        study = manager.study_id(uid)
        if study is None:
            print(f"pacs: study {uid} is not in the archive", file=sys.stderr)
            status = 1
            continue
        result = manager.recall(study)
        if result.recalled == 0 and result.failed == 0:
            print(f"study {uid}: already online")
            continue
        print(f"study {uid}: recalled {result.recalled} instance(s), {_size(result.bytes)} from "
              f"{', '.join(result.sources) or '-'} in {result.seconds:.2f} s"
              + (f"; {result.failed} failed" if result.failed else ""))
        status = status or (1 if result.failed else 0)
    return status


def _scrub(args: argparse.Namespace, manager: Any) -> int:
    from sqlmodel import Session, func, select

    from pacs.archive.index import InstanceFile

    with Session(manager.db.engine) as session:
        total = session.exec(select(func.count()).select_from(InstanceFile)).one()
    bar = tqdm(total=total, desc="scrub", unit="copy", disable=args.quiet, file=sys.stderr)
    run = manager.scrub(progress=bar.update)
    bar.close()
    print(f"scrub: {run.checked} copies checked, {run.corrupt} corrupt, {run.missing} missing, "
          f"{run.repaired} repaired, {run.unrepairable} unrepairable, {run.orphans} orphans")
    return 1 if run.unrepairable else 0

"""The ``pacs`` command."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from pacs.settings import Settings, load_settings


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file (PACS_CONFIG)")
    parser.add_argument("--data-dir", type=Path, help="data folder (PACS_DATA_DIR, default ./pacs-data)")


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return load_settings(config=args.config, data_dir=args.data_dir, **extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pacs", description="PACS, RIS front desk and HL7/FHIR interface engine")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run every front end (DICOM, MLLP, HTTP) in one process")
    _common(serve)
    serve.add_argument("--host", help="address to listen on (default all)")
    serve.add_argument("--dicom-port", type=int, help="DICOM port (PACS_DICOM_PORT, default 11112)")
    serve.add_argument("--mllp-port", type=int, help="HL7 MLLP port (PACS_MLLP_PORT, default 2575)")
    serve.add_argument("--http-port", type=int, help="HTTP port (PACS_HTTP_PORT, default 8080)")
    serve.add_argument("--ae-title", help="DICOM AE title (PACS_AE_TITLE, default PACS)")

    messages = sub.add_parser("messages", help="browse and replay the message store")
    msub = messages.add_subparsers(dest="action", required=True)
    listing = msub.add_parser("list", help="messages, newest first")
    _common(listing)
    listing.add_argument("--type", help="message type, e.g. ADT or ORM^O01")
    listing.add_argument("--status", help="RECEIVED, FILTERED, TRANSFORMED, PROCESSED or ERROR")
    listing.add_argument("--since", type=datetime.fromisoformat, help="received at or after (ISO 8601)")
    listing.add_argument("--until", type=datetime.fromisoformat, help="received before (ISO 8601)")
    listing.add_argument("--patient-id")
    listing.add_argument("--control-id", help="MSH-10")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--offset", type=int, default=0)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = msub.add_parser("show", help="one message with its content at every stage")
    _common(show)
    show.add_argument("id", type=int)
    again = msub.add_parser("reprocess", help="run a stored message through the channel again")
    _common(again)
    again.add_argument("id", type=int)

    imp = sub.add_parser("import", help="import a folder or a DICOMDIR into the archive")
    _common(imp)
    imp.add_argument("path", type=Path)
    imp.add_argument("--quiet", action="store_true", help="no progress bar")

    box = sub.add_parser("outbox", help="outbound deliveries: list them, send one again")
    osub = box.add_subparsers(dest="action", required=True)
    olist = osub.add_parser("list", help="deliveries, newest first")
    _common(olist)
    olist.add_argument("--status", help="PENDING, RETRYING, SENT or DEAD")
    olist.add_argument("--destination")
    olist.add_argument("--limit", type=int, default=50)
    oretry = osub.add_parser("retry", help="send a delivery again now")
    _common(oretry)
    oretry.add_argument("id", type=int)

    mappings = sub.add_parser("mappings", help="check and try the analyst-editable mappings")
    psub = mappings.add_subparsers(dest="action", required=True)
    check = psub.add_parser("check", help="validate every mapping file; problems as file:line: what")
    _common(check)
    check.add_argument("--dir", type=Path, help="mappings folder (PACS_MAPPINGS_DIR)")
    trial = psub.add_parser("test", help="show what one HL7 message or FHIR resource would do; writes nothing")
    _common(trial)
    trial.add_argument("file", type=Path)
    trial.add_argument("--dir", type=Path, help="mappings folder (PACS_MAPPINGS_DIR)")
    fields = psub.add_parser("fields", help="list every target a mapping row can feed")
    _common(fields)
    export = psub.add_parser("export", help="copy the mappings in force (the shipped ones by default) into a "
                                            "folder to edit; name it with PACS_MAPPINGS_DIR")
    _common(export)
    export.add_argument("dest", type=Path, help="a folder that does not exist yet, or is empty")

    from pacs.archive.storage import commands as storage_commands

    storage_commands.add_parser(sub, _common)
    from pacs.archive import reconciliation_commands

    reconciliation_commands.add_parser(sub, _common)  # reconcile list|attach
    from pacs import operations

    operations.add_parsers(sub, _common)  # backup, restore, audit, retention
    from pacs import doctor

    doctor.add_parser(sub, _common)
    from pacs.auth import commands as auth_commands

    auth_commands.add_parsers(sub, _common)  # users, tokens
    from pacs import assets

    assets.add_parser(sub, _common)  # pinned third-party files: the labels' CJK font
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "messages":
        return _messages(args)
    if args.command == "mappings":
        return _mappings(args)
    if args.command == "outbox":
        return _outbox(args)
    if args.command == "import":
        return _import(args)
    if args.command == "doctor":
        from pacs import doctor

        return doctor.run(args, lambda: _settings(args))
    if args.command == "assets":
        from pacs import assets

        return assets.run(args, _settings(args))
    if args.command == "storage":
        from pacs.archive.storage import commands as storage_commands

        return storage_commands.run(args, _settings(args))
    if args.command == "reconcile":
        from pacs.archive import reconciliation_commands

        return reconciliation_commands.run(args, _settings(args))
    from pacs.auth import commands as auth_commands

    if args.command in auth_commands.COMMANDS:
        return auth_commands.run(args, _settings(args))
    from pacs import operations

    if args.command in operations.COMMANDS:
        return operations.run(args, _settings(args))
    return 2


def _import(args: argparse.Namespace) -> int:
    from pacs.archive.importer import import_path
    from pacs.server import Services

    if not args.path.exists():
        print(f"pacs: {args.path} does not exist", file=sys.stderr)
        return 1
    services = Services.build(_settings(args))
    services.archive.start()
    from pacs.operations import audit_import

    try:
        with audit_import(services, args.path) as counts:  # an "Import" audit entry (110107)
            counts.update(import_path(services.archive, args.path, progress=not args.quiet))
    finally:
        services.archive.stop()
        services.db.dispose()
    summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items())) or "nothing found"
    print(f"import of {args.path}: {summary}")
    return 0 if not counts.get("failed") and not counts.get("storage full") else 1


def _outbox(args: argparse.Namespace) -> int:
    from pacs.db import Database
    from pacs.integration import outbox

    settings = _settings(args)
    db = Database(settings.effective_database_url)
    db.migrate()
    try:
        with db.session() as session:
            if args.action == "list":
                total, rows = outbox.search(session, status=args.status and args.status.upper(),
                                            destination=args.destination, limit=args.limit)
                print(f"{'ID':>6}  {'CREATED (UTC)':19}  {'TO':8}  {'STATUS':8}  {'TRIES':>5}  "
                      "DESCRIPTION / LAST ERROR")
                for r in rows:
                    print(f"{r.id:>6}  {r.created_at:%Y-%m-%d %H:%M:%S}  {r.destination[:8]:8}  {r.status:8}  "
                          f"{r.attempts:>5}  {r.description}{'  — ' + r.last_error if r.last_error else ''}")
                print(f"{len(rows)} of {total} deliveries")
                return 0
            try:
                item = outbox.retry(session, args.id)
            except (LookupError, ValueError) as exc:
                print(f"pacs: {exc}", file=sys.stderr)
                return 1
            print(f"outbox item {item.id} will be sent again ({item.description})")
            return 0
    finally:
        db.dispose()


def _serve(args: argparse.Namespace) -> int:
    from pacs.integration.mapping import MappingsInvalid
    from pacs.runtime import run
    from pacs.server import configure_logging, serve

    settings = _settings(args, host=args.host, dicom_port=args.dicom_port, mllp_port=args.mllp_port,
                         http_port=args.http_port, ae_title=args.ae_title)
    configure_logging(settings)
    try:
        run(serve(settings))
    except MappingsInvalid as exc:
        print(f"pacs: refusing to start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    return 0


def _messages(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "reprocess":
        return _reprocess(settings, args.id)
    from pacs.db import Database  # reading needs the database only, not every service built

    db = Database(settings.effective_database_url)
    db.migrate()
    try:
        if args.action == "list":
            from pacs.integration import message_store

            with db.session() as session:
                since = args.since.astimezone() if args.since and args.since.tzinfo is None else args.since
                until = args.until.astimezone() if args.until and args.until.tzinfo is None else args.until
                total, rows = message_store.search(
                    session, message_type=args.type, status=args.status, since=since, until=until,
                    patient_id=args.patient_id, control_id=args.control_id, limit=args.limit, offset=args.offset,
                )
                if args.json:
                    print(message_store.as_json({"total": total, "items": [
                        r.model_dump(exclude={"raw", "mapped", "applied", "response"}) for r in rows]}))
                    return 0
                print(f"{'ID':>7}  {'RECEIVED (UTC)':19}  {'TYPE':9}  {'STATUS':11}  {'ACK':4}  "
                      f"{'CONTROL ID':20}  {'PATIENT':12}  ERROR")
                for r in rows:
                    print(f"{r.id:>7}  {r.received_at:%Y-%m-%d %H:%M:%S}  {r.message_type:9}  {r.status:11}  "
                          f"{r.ack_code:4}  {r.control_id[:20]:20}  {r.patient_id[:12]:12}  {r.error or ''}")
                print(f"{len(rows)} of {total} message(s)")
            return 0
        if args.action == "show":
            from pacs.integration.message_store import StoredMessage, as_json, decoded

            with db.session() as session:
                row = session.get(StoredMessage, args.id)
                if row is None:
                    print(f"pacs: message {args.id} does not exist", file=sys.stderr)
                    return 1
                data = row.model_dump(exclude={"raw"})
                data["raw"] = decoded(row).replace("\r", "\n")
                print(as_json(data))
            return 0
    finally:
        db.dispose()
    return 2


def _reprocess(settings: Settings, message_id: int) -> int:
    """Run a stored message through the mappings in force, as the intake worker would."""
    from pacs.integration.intake import reprocess
    from pacs.server import Services

    services = Services.build(settings)
    try:
        outcome = reprocess(services.intake, services.db, message_id)
    except LookupError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    finally:
        services.db.dispose()
    print(f"message {message_id} reprocessed as message {outcome.message_id}: {outcome.status} "
          f"({outcome.ack_code}){' ' + str(outcome.error) if outcome.error else ''}")
    return 0 if outcome.error is None else 1


def _mappings(args: argparse.Namespace) -> int:
    from pacs.integration import mapping

    if args.action == "fields":
        for target in mapping.TARGETS.values():
            print(f"{target.name:32} {target.kind:12} {target.help}")
        return 0
    settings = _settings(args)
    if args.action == "export":
        return _export_mappings(settings.mappings_dir, args.dest)
    root = args.dir or settings.mappings_dir
    loaded, problems = mapping.load(root)
    if args.action == "check":
        from pacs.capture.devices import load_capture_devices
        from pacs.reporting.phrases import load_report_phrases
        from pacs.reporting.templates import load_report_templates
        from pacs.web.scanners import load_scanners
        from pacs.web.window_presets import load_window_presets

        problems = [*problems, *load_scanners(root)[1]]  # the desk's card readers and scanners
        problems = [*problems, *load_window_presets(root)[1]]  # the viewer's window presets
        problems = [*problems, *load_capture_devices(root)[1]]  # devices without DICOM, hot folders
        problems = [*problems, *load_report_templates(root)[1], *load_report_phrases(root)[1]]  # reports
        for problem in problems:
            print(problem)
        if problems:
            print(f"{len(problems)} problem(s) in {root}", file=sys.stderr)
            return 1
        print(f"mappings in {root} are valid: {len(loaded.profiles)} field maps, "  # type: ignore[union-attr]
              f"{len(loaded.codes)} code tables, {len(loaded.procedures)} procedures")  # type: ignore[union-attr]
        return 0
    if loaded is None:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    from pacs.integration.trial import try_file

    result, ok = try_file(args.file, loaded, settings)
    print(json.dumps(result, ensure_ascii=False, indent=2, default=str))
    return 0 if ok else 1


def _export_mappings(source: Path, dest: Path) -> int:
    """Copy the mappings folder ``source`` to ``dest`` (which must not hold anything yet)."""
    import shutil

    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        print(f"pacs: {dest} exists and is not an empty folder; name a new one", file=sys.stderr)
        return 1
    shutil.copytree(source, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    print(f"mappings copied from {source} to {dest}; to use them, set PACS_MAPPINGS_DIR={dest.resolve()} "
          f"or mappings_dir = \"{dest.resolve()}\" in the configuration file")
    return 0


if __name__ == "__main__":
    sys.exit(main())

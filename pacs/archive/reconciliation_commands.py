"""``pacs reconcile list|attach``: the reconciliation list from the command line.

``list`` shows what waits (``--all`` every item, ``--json`` for scripts); ``attach ITEM`` attaches
one to an order (``--order ID`` or ``--accession NUMBER``) or to a patient without an order
(``--patient-id ID [--issuer AUTHORITY]``), audited in the name of the operating-system user who
runs it, as the other commands that change the archive are (:mod:`pacs.archive.reconciliation`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from pacs.settings import Settings


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    reconcile = sub.add_parser("reconcile", help="studies that found no order: list them, attach one")
    rsub = reconcile.add_subparsers(dest="action", required=True)
    listing = rsub.add_parser("list", help="what waits for a person, oldest first, with the reason")
    common(listing)
    listing.add_argument("--all", action="store_true", help="attached and resolved items too")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    attach = rsub.add_parser("attach", help="attach an item to an order, or to a patient without an order")
    common(attach)
    attach.add_argument("item", type=int, help="the item's number, as `pacs reconcile list` shows it")
    where = attach.add_mutually_exclusive_group(required=True)
    where.add_argument("--order", type=int, help="the order's id")
    where.add_argument("--accession", help="the order's accession number")
    where.add_argument("--patient-id", help="a patient's ID: the study goes to the patient, without an order")
    attach.add_argument("--issuer", help="the Patient ID's assigning authority (e.g. HOSP)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pacs.db import Database

    db = Database(settings.effective_database_url)
    db.migrate()
    try:
        with db.session() as session:
            return _list(session, args) if args.action == "list" else _attach(session, args, settings)
    finally:
        db.dispose()


def _list(session: Any, args: argparse.Namespace) -> int:
    from pacs.archive import reconciliation

    _total, rows = reconciliation.items(session, status=None if args.all else reconciliation.Status.OPEN,
                                        limit=args.limit)
    shown = [reconciliation.describe(session, item) for item in rows]
    if args.json:
        print(json.dumps(shown, ensure_ascii=False, indent=2))
        return 0
    print(f"{'ITEM':>5}  {'STATUS':8}  {'FROM':16}  {'PATIENT ID':12}  {'ACCESSION':10}  {'DATE':8}  "
          "WHY / CANDIDATES")
    for item in shown:
        study = item["study"] or {}
        candidates = ", ".join(f"order {c['order']} ({c['accession_number']}, {c['patient_id']})"
                               for c in item["candidates"])
        why = item["resolution"] or item["reason"]
        print(f"{item['id']:>5}  {item['status']:8}  {item['calling_ae'][:16]:16}  "
              f"{item['received']['patient_id'][:12]:12}  {item['received']['accession_number'][:10]:10}  "
              f"{study.get('study_date', ''):8}  {why}" + (f"\n{'':>7}candidates: {candidates}" if candidates else ""))
    print(f"{len(shown)} item(s)")
    return 0


def _attach(session: Any, args: argparse.Namespace, settings: Settings) -> int:
    from pacs.archive import reconciliation
    from pacs.integration.his import HISNotifier
    from pacs.operations import _operator

    try:
        item = reconciliation.find_item(session, args.item)
        if item.kind == reconciliation.Kind.FILE:
            # Made DICOM and stored by the running server's capture service, through store().
            raise reconciliation.ReconcileError(
                f"item {item.id} is a file ({item.file_name}) that becomes DICOM when attached, which the "
                f"running server does: POST /api/reconciliation/{item.id}/attach, or the /technologist page")
        order, patient = reconciliation.find_target(session, order=args.order, accession_number=args.accession,
                                                    patient_id=args.patient_id, issuer=args.issuer)
        # The HIS hears of the order's move as it does from the server (the outbox, which the
        # running server delivers), when it is configured.
        notify = HISNotifier(settings) if settings.his.host and settings.his.port else None
        reconciliation.attach(session, item, order=order, patient=patient, by=_operator(), user_kind="user",
                              address="localhost", notify=notify)
    except (LookupError, reconciliation.ReconcileError) as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    session.commit()
    print(f"item {item.id}: {item.resolution}")
    return 0

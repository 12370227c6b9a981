"""Reading and writing reports: the claim, the draft, signing, verification and amendment.

One radiologist reads a study at a time: :func:`claim` takes the order's report for a user (a
second user is refused, naming who holds it; an administrator may take it over), and only the
holder saves the draft (:func:`save_draft`) and signs it. Each save names the draft revision it
was made from, so that a save from a stale copy (another tab, another workstation) is refused
instead of overwriting newer text.

A signature writes a :class:`~pacs.reporting.models.ReportVersion`, never changed afterwards,
with the HL7 v2.5.1 OBR-25 result status it is sent with (table 0123): a resident's signature
makes a preliminary (P), an attending's a final (F); an attending's verification of a
preliminary is a new F naming the verifier; an amendment of a signed final is a correction (C)
with its reason. In the same unit of work the order moves on (reported, then verified; IHE RAD
TF-1 scheduled workflow), the deliveries of the version are enqueued
(:func:`pacs.reporting.sending.enqueue`: the outbox) and the audit log records the action in the
user's name (DICOM PS3.15 A.5.3.9, Procedure Record); the caller commits, then wakes the outbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import IntEnum
from typing import Any

from sqlmodel import Session, col, select

from pacs.audit import codes
from pacs.audit.codes import Action
from pacs.audit.service import Event, record
from pacs.auth import accounts
from pacs.db import utcnow
from pacs.registry import lifecycle
from pacs.registry.models import ImagingOrder, OrderStatus, Patient
from pacs.reporting import sending
from pacs.reporting.models import Report, ReportStatus, ReportVersion, VersionStatus

# Orders whose images can be read: the modality has finished, or its images are in.
READABLE = (OrderStatus.COMPLETED, OrderStatus.IMAGES_RECEIVED, OrderStatus.REPORTED, OrderStatus.VERIFIED)
SIGNED = (ReportStatus.PRELIMINARY, ReportStatus.FINAL, ReportStatus.CORRECTED)
MAX_TEXT = 20_000  # characters of findings or impression (a long report runs to 3,000)
MAX_KEY_IMAGES = 200


class Refusal(IntEnum):
    """How a refused request is answered over HTTP (RFC 9110 15.5)."""

    NOT_FOUND = 404
    CONFLICT = 409  # the report's state (a claim, a revision, a status) does not allow it now
    INVALID = 422  # what was sent is incomplete or wrong


class ReportError(Exception):
    """A request the service refuses, with the reason said plainly and the HTTP status to give."""

    def __init__(self, status: Refusal, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Reader:
    """Who is reading: a user name, the name shown and printed, and what their role allows."""

    name: str
    display_name: str = ""
    attending: bool = False  # signs final reports and verifies preliminaries (reports.verify)
    admin: bool = False  # may take over another user's claim
    kind: str = "user"
    address: str = ""

    @property
    def shown(self) -> str:
        return self.display_name or self.name


@dataclass
class Draft:
    """What the editor sends as the radiologist types."""

    revision: int  # the draft revision the text was made from
    findings: str = ""
    impression: str = ""
    key_images: list[dict[str, str]] | None = None  # None: leave them as they are
    critical: bool = False
    critical_told: str = ""
    critical_told_at: datetime | None = None
    template: str | None = None


# -- reading ----------------------------------------------------------------------------------

def find_order(session: Session, order_id: int) -> ImagingOrder:
    order = session.get(ImagingOrder, order_id)
    if order is None:
        raise ReportError(Refusal.NOT_FOUND, f"order {order_id} does not exist")
    return order


def report_of(session: Session, order_id: int) -> Report | None:
    return session.exec(select(Report).where(Report.order == order_id)).first()


def versions(session: Session, report: Report) -> list[ReportVersion]:
    return list(session.exec(select(ReportVersion).where(ReportVersion.report == report.id)
                             .order_by(col(ReportVersion.number))))


def version(session: Session, report: Report, number: int) -> ReportVersion:
    found = session.exec(select(ReportVersion).where(ReportVersion.report == report.id,
                                                     ReportVersion.number == number)).first()
    if found is None:
        raise ReportError(Refusal.NOT_FOUND, f"the report of order {report.order} has no version {number}"
                                             f" (it has {report.current_version})")
    return found


def shown_name(session: Session, username: str) -> str:
    """A user's display name (张医生), or the user name when none is set."""
    if not username:
        return ""
    user = accounts.user_by_name(session, username)
    return (user.display_name if user is not None else "") or username


def age(birth: date | None, on: date) -> str:
    """An age as a Chinese report gives it: years, or months under two, or days under a month
    (DICOM PS3.5 6.2 AS: nnnY, nnnM, nnnD)."""
    if birth is None or birth > on:
        return ""
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    if years >= 2:
        return f"{years}Y"
    months = (on.year - birth.year) * 12 + on.month - birth.month - (on.day < birth.day)
    if months >= 1:
        return f"{months}M"
    return f"{(on - birth).days}D"


# -- the claim --------------------------------------------------------------------------------

def _held_elsewhere(session: Session, report: Report, reader: Reader) -> str:
    since = f" since {report.claimed_at:%Y-%m-%d %H:%M} UTC" if report.claimed_at else ""
    return f"{shown_name(session, report.claimed_by)} ({report.claimed_by}) is reading it{since}"


def claim(session: Session, order_id: int, *, reader: Reader, take_over: bool = False) -> Report:
    """Take the order's report for ``reader``, making it if there is none yet. A report another
    user holds is refused (409, naming them) unless ``take_over`` by an administrator."""
    order = find_order(session, order_id)
    if order.status not in READABLE:
        raise ReportError(Refusal.CONFLICT, f"order {order.accession_number} is {order.status}: "
                                            "there is nothing to read until the modality has finished")
    lifecycle.hold(session, order)  # one claim decided at a time
    report = report_of(session, order_id)
    if report is None:
        report = Report(order=order_id, study_instance_uid=order.study_instance_uid)
    elif report.claimed_by and report.claimed_by != reader.name:
        if not take_over:
            raise ReportError(Refusal.CONFLICT, f"claimed by someone else: {_held_elsewhere(session, report, reader)}")
        if not reader.admin:
            raise ReportError(Refusal.CONFLICT, "only an administrator may take over another user's claim: "
                                                f"{_held_elsewhere(session, report, reader)}")
    before = report.claimed_by
    if before == reader.name:
        return report
    now = utcnow()
    report.claimed_by = reader.name
    report.claimed_at = now
    report.updated_at = now
    session.add(report)
    session.flush()
    taken = f", taken over from {before}" if before else ""
    _audit(session, order, reader, Action.UPDATE, f"report claimed by {reader.shown}{taken}",
           {"what": "claim", "from": before})
    return report


def release(session: Session, order_id: int, *, reader: Reader) -> Report:
    """Give the claim back (the draft stays). Only its holder, or an administrator, may."""
    order = find_order(session, order_id)
    report = _existing(session, order_id)
    if not report.claimed_by:
        return report
    if report.claimed_by != reader.name and not reader.admin:
        raise ReportError(Refusal.CONFLICT, f"not yours to release: {_held_elsewhere(session, report, reader)}")
    before = report.claimed_by
    report.claimed_by = ""
    report.claimed_at = None
    report.updated_at = utcnow()
    session.add(report)
    _audit(session, order, reader, Action.UPDATE, f"report released by {reader.shown}",
           {"what": "release", "from": before})
    return report


def _existing(session: Session, order_id: int) -> Report:
    report = report_of(session, order_id)
    if report is None:
        raise ReportError(Refusal.NOT_FOUND, f"order {order_id} has no report yet: claim it first")
    return report


def _holding(session: Session, order_id: int, reader: Reader) -> tuple[ImagingOrder, Report]:
    order = find_order(session, order_id)
    lifecycle.hold(session, order)
    report = _existing(session, order_id)
    session.refresh(report)
    if report.claimed_by != reader.name:
        who = _held_elsewhere(session, report, reader) if report.claimed_by else "no one holds it"
        raise ReportError(Refusal.CONFLICT, f"claim the report first: {who}")
    return order, report


# -- the draft --------------------------------------------------------------------------------

def save_draft(session: Session, order_id: int, draft: Draft, *, reader: Reader) -> Report:
    """Save what the radiologist typed. Refused (409) unless ``reader`` holds the claim and
    ``draft.revision`` is the report's current revision; the revision goes up by one."""
    _order, report = _holding(session, order_id, reader)
    if draft.revision != report.draft_revision:
        raise ReportError(Refusal.CONFLICT, f"the draft changed since this copy was loaded (revision "
                                            f"{draft.revision}; it is now {report.draft_revision}, saved "
                                            f"{report.draft_saved_at:%H:%M:%S} UTC): reload it"
                          if report.draft_saved_at else
                          f"stale draft: revision {draft.revision}, the report is at {report.draft_revision}")
    check_text(draft.findings, "findings")
    check_text(draft.impression, "impression")
    if draft.key_images is not None:
        report.key_images = check_key_images(draft.key_images)
    report.findings = draft.findings
    report.impression = draft.impression
    report.critical = draft.critical
    report.critical_told = draft.critical_told.strip()
    report.critical_told_at = draft.critical_told_at
    if draft.template is not None:
        report.template = draft.template
    now = utcnow()
    report.draft_revision += 1
    report.draft_saved_at = now
    report.updated_at = now
    session.add(report)
    return report


def check_text(text: str, what: str) -> None:
    if len(text) > MAX_TEXT:
        raise ReportError(Refusal.INVALID, f"the {what} run to {len(text)} characters; at most {MAX_TEXT}")


KEY_IMAGE_KEYS = {"series", "sop", "sop_class", "frame"}


def check_key_images(items: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Key images as ``{"series", "sop", "sop_class"}`` (and ``frame``), each a DICOM UID
    (PS3.5 9.1: digits and dots, at most 64 characters); each image once."""
    if len(items) > MAX_KEY_IMAGES:
        raise ReportError(Refusal.INVALID, f"{len(items)} key images; at most {MAX_KEY_IMAGES}")
    kept: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for number, item in enumerate(items, 1):
        unknown = set(item) - KEY_IMAGE_KEYS
        if unknown:
            raise ReportError(Refusal.INVALID, f"key image {number}: unknown key(s) {', '.join(sorted(unknown))}")
        image = {key: str(item.get(key) or "") for key in ("series", "sop", "sop_class")}
        for key, value in image.items():
            if not is_uid(value):
                raise ReportError(Refusal.INVALID, f"key image {number}: {key} is a DICOM UID "
                                                   f"(digits and dots, at most 64), not {value!r}")
        if item.get("frame") not in (None, ""):
            frame = str(item["frame"])
            if not frame.isdigit() or int(frame) < 1:
                raise ReportError(Refusal.INVALID, f"key image {number}: frame is a number from 1, not {frame!r}")
            image["frame"] = frame
        if (image["sop"], image.get("frame", "")) not in seen:
            seen.add((image["sop"], image.get("frame", "")))
            kept.append(image)
    return kept


def is_uid(value: str) -> bool:
    """PS3.5 9.1: components of digits separated by dots, no leading zero, at most 64 characters."""
    if not value or len(value) > 64:
        return False
    return all(part.isdigit() and part.isascii() and (part == "0" or not part.startswith("0"))
               for part in value.split("."))


# -- signing ----------------------------------------------------------------------------------

def _check_signable(report: Report) -> None:
    missing = [what for what, text in (("findings (检查所见)", report.findings),
                                       ("impression (诊断意见)", report.impression)) if not text.strip()]
    if missing:
        raise ReportError(Refusal.INVALID, f"nothing to sign: the {' and the '.join(missing)} "
                                           f"{'are' if len(missing) > 1 else 'is'} empty")
    if report.critical and not (report.critical_told.strip() and report.critical_told_at):
        raise ReportError(Refusal.INVALID, "a critical result (危急值) is flagged: say whom you told "
                                           "and when before signing")


def _new_version(session: Session, order: ImagingOrder, report: Report, status: VersionStatus, *,
                 author: str, author_name: str, verifier: Reader | None = None, reason: str = "") -> ReportVersion:
    now = utcnow()
    made = ReportVersion(report=report.id or 0, number=report.current_version + 1, status=status,
                         findings=report.findings, impression=report.impression,
                         key_images=list(report.key_images), critical=report.critical,
                         critical_told=report.critical_told, critical_told_at=report.critical_told_at,
                         author=author, author_name=author_name, signed_at=now, reason=reason,
                         verifier=verifier.name if verifier else "",
                         verifier_name=verifier.shown if verifier else "",
                         verified_at=now if verifier else None)
    session.add(made)
    report.current_version = made.number
    report.status = {VersionStatus.PRELIMINARY: ReportStatus.PRELIMINARY, VersionStatus.FINAL: ReportStatus.FINAL,
                     VersionStatus.CORRECTED: ReportStatus.CORRECTED}[status]
    report.claimed_by = ""  # a signed report is free for the next reader (the attending, an amendment)
    report.claimed_at = None
    report.updated_at = now
    session.add(report)
    session.flush()
    sending.enqueue(session, order, report, made)
    return made


def _move(session: Session, order: ImagingOrder, to: OrderStatus, reader: Reader,
          notify: lifecycle.Notify | None, note: str) -> None:
    if lifecycle.can_transition(order, to):
        lifecycle.transition(session, order, to, by=f"user:{reader.name}", note=note, notify=notify)


def sign(session: Session, order_id: int, *, reader: Reader, notify: lifecycle.Notify | None = None) -> ReportVersion:
    """Sign the draft: a preliminary (P) by a resident, a final (F) by an attending. Refused
    (422) with the findings or impression empty, or a critical result without whom was told
    and when; (409) once signed (verify or amend it instead)."""
    order, report = _holding(session, order_id, reader)
    if report.status in SIGNED:
        raise ReportError(Refusal.CONFLICT, f"the report is already signed ({report.status}, version "
                                            f"{report.current_version}): "
                                            + ("verify it" if report.status == ReportStatus.PRELIMINARY
                                               else "amend it, with a reason"))
    _check_signable(report)
    status = VersionStatus.FINAL if reader.attending else VersionStatus.PRELIMINARY
    made = _new_version(session, order, report, status, author=reader.name, author_name=reader.shown)
    _move(session, order, OrderStatus.REPORTED, reader, notify, f"report signed ({status})")
    if status == VersionStatus.FINAL:
        _move(session, order, OrderStatus.VERIFIED, reader, notify, "report final")
    _audit(session, order, reader, Action.CREATE, f"report signed {status} by {reader.shown}",
           {"what": "sign", "version": made.number, "status": str(status)})
    return made


def verify(session: Session, order_id: int, *, reader: Reader, notify: lifecycle.Notify | None = None) -> ReportVersion:
    """An attending verifies a preliminary: a new final (F) version, with the preliminary's
    author and the attending as verifier, from the draft as it stands (the attending may have
    edited it while holding the claim). Refused unless the report is preliminary."""
    if not reader.attending:
        raise ReportError(Refusal.CONFLICT, "only an attending (主治医师) verifies a preliminary report")
    order = find_order(session, order_id)
    lifecycle.hold(session, order)
    report = _existing(session, order_id)
    session.refresh(report)
    if report.claimed_by and report.claimed_by != reader.name:
        raise ReportError(Refusal.CONFLICT, f"claimed by someone else: {_held_elsewhere(session, report, reader)}")
    if report.status != ReportStatus.PRELIMINARY:
        raise ReportError(Refusal.CONFLICT, f"only a preliminary report is verified; this one is {report.status}")
    _check_signable(report)
    preliminary = version(session, report, report.current_version)
    made = _new_version(session, order, report, VersionStatus.FINAL, author=preliminary.author,
                        author_name=preliminary.author_name, verifier=reader)
    _move(session, order, OrderStatus.VERIFIED, reader, notify, "report verified")
    _audit(session, order, reader, Action.UPDATE, f"report verified by {reader.shown} (version {made.number})",
           {"what": "verify", "version": made.number, "status": "F", "author": preliminary.author})
    return made


def amend(session: Session, order_id: int, *, reason: str, reader: Reader,
          notify: lifecycle.Notify | None = None) -> ReportVersion:
    """Amend a final report: a correction (C) from the draft as it stands, with ``reason``
    (required, 422 without). The versions before it stay as they were."""
    if not reason.strip():
        raise ReportError(Refusal.INVALID, "an amendment needs a reason: say why the signed report changes")
    if len(reason) > 2000:
        raise ReportError(Refusal.INVALID, "the reason runs past 2,000 characters")
    order, report = _holding(session, order_id, reader)
    if report.status not in (ReportStatus.FINAL, ReportStatus.CORRECTED):
        raise ReportError(Refusal.CONFLICT, f"only a final report is amended; this one is {report.status}"
                          + (": verify it instead" if report.status == ReportStatus.PRELIMINARY else ""))
    _check_signable(report)
    made = _new_version(session, order, report, VersionStatus.CORRECTED, author=reader.name,
                        author_name=reader.shown, reason=reason.strip())
    _audit(session, order, reader, Action.UPDATE, f"report amended by {reader.shown}: {reason.strip()}",
           {"what": "amend", "version": made.number, "status": "C", "reason": reason.strip()})
    return made


def _audit(session: Session, order: ImagingOrder, reader: Reader, action: Action, description: str,
           details: dict[str, Any]) -> None:
    patient = session.get(Patient, order.patient)
    record(session, Event(codes.PROCEDURE_RECORD, action, user=reader.name, user_kind=reader.kind,
                          address=reader.address, target=order.accession_number, description=description,
                          patients=[patient.patient_id] if patient else [],
                          studies=[order.study_instance_uid],
                          details={"order": order.id, "accession_number": order.accession_number, **details}))


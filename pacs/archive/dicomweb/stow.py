"""STOW-RS (PS3.18 10.5): instances posted as ``multipart/related; type="application/dicom"``.

Each part is written to a file of its own in the storage area's incoming folder as it arrives
(:class:`~pacs.archive.dicomweb.media.MultipartReader`; the request is never held in memory)
and handed to the archive's one ``store()``, like an object received by C-STORE: refused for the
same reasons with the same statuses, filed byte for byte, reconciled with its order. The answer
(PS3.18 10.5.3) lists what was stored (ReferencedSOPSequence, with each RetrieveURL and a
WarningReason when the archive kept an earlier copy) and what failed (FailedSOPSequence with
FailureReason: 0xC000 cannot understand, 0xA900 does not match — e.g. another study than the
one in the path —, 0xA700 out of resources, 0x0111 duplicate under the reject policy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from pacs.archive.dicomweb.dicomjson import dataset_json
from pacs.archive.dicomweb.media import (
    DICOM,
    MULTIPART,
    DicomwebError,
    ReceivedPart,
    bad_request,
    parse_media_type,
    unsupported_media_type,
)
from pacs.archive.store import CANNOT_UNDERSTAND, DOES_NOT_MATCH_SOP_CLASS, Archive, StoreResult

log = logging.getLogger(__name__)

CALLING_AE = "STOW-RS"  # what the index records as the sender of objects stored over HTTP
OK = 200  # every instance stored
ACCEPTED = 202  # some stored, others failed or stored with a warning
CONFLICT = 409  # none stored
MAX_BOUNDARY = 70  # characters of a multipart boundary (RFC 2046 5.1.1)


def boundary_of(content_type: str | None) -> str:
    """The boundary of a STOW-RS request; 415 unless it is multipart/related of application/dicom
    (PS3.18 10.5.1.2: JSON or XML metadata with bulk data is not supported here)."""
    media = parse_media_type(content_type or "")
    if media.type != MULTIPART:
        raise unsupported_media_type(f'send {MULTIPART}; type="{DICOM}" (got {content_type or "no Content-Type"})')
    if media.part_type not in ("", DICOM):
        raise unsupported_media_type(f'only {DICOM} parts can be stored; type="{media.part_type}" (metadata with '
                                     "bulk data) is not supported")
    boundary = media.params.get("boundary", "")
    if not boundary:
        raise bad_request(f"the {MULTIPART} Content-Type has no boundary parameter")
    if len(boundary) > MAX_BOUNDARY:
        raise bad_request(f"the boundary is {len(boundary)} characters long; RFC 2046 5.1.1 allows {MAX_BOUNDARY}")
    return boundary


@dataclass
class Outcome:
    """What happened to one part."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    status: int
    stored: bool
    warning: bool = False
    comment: str = ""
    logged: bool = False  # store() has logged the refusal itself: one line per refusal


def _header(path: Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
    except Exception:  # not DICOM: store() says so with the status to answer
        return None


def _uid(ds: Dataset | None, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "").strip() if ds is not None else ""
    except Exception:
        return ""


class Stow:
    """Stores the parts of one request."""

    def __init__(self, archive: Archive, base_url: str, study: str | None = None) -> None:
        self.archive = archive
        self.base_url = base_url
        self.study = study
        self.outcomes: list[Outcome] = []

    def store_part(self, part: ReceivedPart) -> Outcome:
        """Store one received part (blocking: run it in a worker thread); its file is gone after."""
        try:
            outcome = self._store(part)
        finally:
            part.path.unlink(missing_ok=True)
        if (not outcome.stored or outcome.warning) and not outcome.logged:
            log.warning("STOW-RS %s: %s (0x%04X)", outcome.sop_instance_uid or "part", outcome.comment,
                        outcome.status)
        self.outcomes.append(outcome)
        return outcome

    def _store(self, part: ReceivedPart) -> Outcome:
        header = _header(part.path)
        uids = (_uid(header, "SOPClassUID"), _uid(header, "SOPInstanceUID"), _uid(header, "StudyInstanceUID"),
                _uid(header, "SeriesInstanceUID"))
        try:
            kind = parse_media_type(part.content_type).type if part.content_type else DICOM
        except DicomwebError as exc:  # a Content-Type that can't be read names no DICOM part
            return Outcome(*uids, CANNOT_UNDERSTAND, False, comment=f"the part's Content-Type: {exc.message}")
        if kind != DICOM:
            return Outcome(*uids, CANNOT_UNDERSTAND, False, comment=f"the part is {kind}, not {DICOM}")
        if self.study is not None and header is not None and uids[2] != self.study:
            return Outcome(*uids, DOES_NOT_MATCH_SOP_CLASS, False,
                           comment=f"the instance belongs to study {uids[2] or '(none)'}, not {self.study}")
        result: StoreResult = self.archive.store(part.path, calling_ae=CALLING_AE, move=True)
        if not result.ok:
            return Outcome(*uids, result.status, False, comment=result.comment, logged=True)
        return Outcome(*uids, result.status, True, warning=result.status != 0, comment=result.comment)

    def failed_body(self, comment: str) -> None:
        """Record that the request ended inside a part (nothing of that part was stored)."""
        self.outcomes.append(Outcome("", "", "", "", CANNOT_UNDERSTAND, False, comment=comment))

    def response(self) -> tuple[int, dict[str, Any], list[str]]:
        """The HTTP status, the DICOM JSON body and Warning header values (PS3.18 10.5.3)."""
        stored = [o for o in self.outcomes if o.stored]
        failed = [o for o in self.outcomes if not o.stored]
        body = Dataset()
        studies = {o.study_uid for o in stored}
        study = self.study or (studies.pop() if len(studies) == 1 else None)
        if study:
            body.RetrieveURL = f"{self.base_url}/studies/{study}"
        if stored:
            body.ReferencedSOPSequence = [self._referenced(o) for o in stored]
        if failed:
            body.FailedSOPSequence = [self._failed(o) for o in failed]
        if not failed and not any(o.warning for o in stored):
            status = OK
        elif stored:
            status = ACCEPTED
        else:
            status = CONFLICT
        warnings = [f"{o.sop_instance_uid or 'part'}: {o.comment}" for o in self.outcomes
                    if o.comment and (o.warning or not o.stored)]
        return status, dataset_json(body), warnings

    def _referenced(self, outcome: Outcome) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = outcome.sop_class_uid
        item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
        item.RetrieveURL = (f"{self.base_url}/studies/{outcome.study_uid}/series/{outcome.series_uid}"
                            f"/instances/{outcome.sop_instance_uid}")
        if outcome.warning:
            item.WarningReason = outcome.status  # e.g. 0xB006: an earlier copy is kept
        return item

    @staticmethod
    def _failed(outcome: Outcome) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = outcome.sop_class_uid or None
        item.ReferencedSOPInstanceUID = outcome.sop_instance_uid or None
        item.FailureReason = outcome.status
        return item

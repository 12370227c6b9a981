"""C-MOVE and C-GET (PS3.4 C.4.2, C.4.3; IHE RAD-16): which instances, in what form.

Each instance goes out in its stored transfer syntax, its elements as stored, when the receiver
accepted that syntax and the index's truth (the registry's patient, the order's accession number)
is what the file already says. Otherwise its patient and order attributes are corrected from the
index on the way out (the modality's values stay in the file and in ``Study.received``) and,
when the receiver takes only uncompressed data, its pixel data is decoded through pydicom's
plugins (pylibjpeg for JPEG, JPEG-LS and JPEG 2000; RLE natively).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.presentation import PresentationContext, build_context
from sqlmodel import Session, col, select

from pacs.archive import qr
from pacs.archive.charset import FULL_REPERTOIRES
from pacs.archive.index import COPY_SYNTAX, NOT_REJECTED, Instance, InstanceFile, Series, Study
from pacs.archive.query import QueryError
from pacs.archive.status import Status
from pacs.archive.storage import StorageArea
from pacs.db import Database
from pacs.registry.models import Patient

log = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 120  # PS3.8: at most 128 presentation contexts per association


@dataclass
class Item:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    study: int
    area: str
    key: str


_sub_association = threading.local()


class ArchiveAE(AE):
    """An AE that remembers, per thread, the association it last opened, so a C-MOVE handler
    can see which transfer syntaxes the move destination accepted before choosing what to send."""

    def associate(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        assoc = super().associate(*args, **kwargs)
        _sub_association.value = assoc
        return assoc


def last_sub_association():  # type: ignore[no-untyped-def]
    return getattr(_sub_association, "value", None)


class Retriever:
    def __init__(self, db: Database, areas: dict[str, StorageArea]) -> None:
        self.db = db
        self.areas = areas

    def select(self, identifier: Dataset, model: str) -> list[Item]:
        """The instances a C-MOVE/C-GET identifier names (PS3.4 C.4.2.1.4: unique keys of its level)."""
        qr.validate(identifier)
        level = qr.level_of(identifier, model)
        unique = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
                  "IMAGE": "SOPInstanceUID"}[level]
        if not str(identifier.get(unique, "") or "").strip():
            raise QueryError(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                             f"a {level} level retrieve needs {unique}", None)
        with Session(self.db.reader) as session:
            query = (select(Instance.sop_instance_uid, Instance.sop_class_uid, COPY_SYNTAX,
                            Study.id, InstanceFile.area, InstanceFile.key)
                     .join(Series, Series.id == Instance.series).join(Study, Study.id == Series.study)
                     .join(Patient, Patient.id == Study.patient)
                     .join(InstanceFile, InstanceFile.instance == Instance.id))
            for condition in qr.conditions(identifier, level):
                query = query.where(condition.expression())
            query = query.where(NOT_REJECTED)  # nothing from the trash
            query = query.order_by(col(Series.id), col(Instance.instance_number), col(Instance.id))
            rows = session.exec(query).all()
            # Studies on a nearline or offline tier come back to the online cache first.
            ensure = getattr(self.areas, "ensure", None)
            if ensure is not None and ensure((row[0], row[3], row[4]) for row in rows):
                session.rollback()  # a new snapshot, which sees the recalled copies
                rows = session.exec(query).all()
        seen: set[str] = set()
        items = []
        for uid, sop_class, syntax, study, area, key in rows:
            if uid in seen or area not in self.areas:
                continue  # one copy is enough
            seen.add(uid)
            items.append(Item(uid, sop_class, syntax or syntax_of(self.areas[area], key), study, area, key))
        return items

    @staticmethod
    def contexts(items: list[Item]) -> list[PresentationContext]:
        """What to propose to a move destination: per SOP class, the stored transfer syntaxes
        first, then uncompressed ones the archive can decode to."""
        wanted: dict[str, list[str]] = {}
        for item in items:
            syntaxes = wanted.setdefault(item.sop_class_uid, [])
            if item.transfer_syntax and item.transfer_syntax not in syntaxes:
                syntaxes.append(item.transfer_syntax)
        contexts = []
        for sop_class, syntaxes in list(wanted.items())[:MAX_CONTEXTS]:
            contexts.append(build_context(sop_class, syntaxes + [s for s in UNCOMPRESSED if s not in syntaxes]))
        return contexts

    def truth(self, study_id: int) -> tuple[dict[str, str], bool]:
        """The patient and order attributes the index holds for a study, and whether the stored
        files carry other values (then they are corrected on the way out)."""
        with Session(self.db.reader) as session:
            study = session.get_one(Study, study_id)
            patient = session.get_one(Patient, study.patient)
            groups = [patient.name_alphabetic, patient.name_ideographic, patient.name_phonetic]
            while len(groups) > 1 and not groups[-1]:
                groups.pop()
            values = {
                "PatientName": "=".join(groups),
                "PatientID": patient.patient_id,
                "IssuerOfPatientID": patient.issuer,
                "PatientBirthDate": patient.birth_date.strftime("%Y%m%d") if patient.birth_date else "",
                "PatientSex": patient.sex,
                "AccessionNumber": study.accession_number,
            }
            received = study.received or {}
        differs = any(_norm(received.get(k, "")) != _norm(v) for k, v in values.items()
                      if v or received.get(k))
        return values, differs

    def prepare(self, item: Item, accepted: dict[str, set[str]], truth: dict[str, str],
                corrected: bool) -> Dataset | None:
        """The dataset to send (pynetdicom's C-MOVE/C-GET service takes datasets, not files),
        or None when the receiver accepted no transfer syntax the archive can produce."""
        area = self.areas[item.area]
        path = area.local_path(item.key)
        syntaxes = accepted.get(item.sop_class_uid, set())
        raw_ok = item.transfer_syntax in syntaxes
        source = path if path is not None else _bytes_io(area.read(item.key))
        ds = pydicom.dcmread(source)
        if corrected:
            correct(ds, truth)
        if not raw_ok:
            target = next((s for s in UNCOMPRESSED if s in syntaxes), None)
            if target is None:
                log.warning("the receiver accepted no transfer syntax for %s (stored %s)", item.sop_instance_uid,
                            item.transfer_syntax)
                return None
            if UID(item.transfer_syntax).is_compressed:
                # The same image in another encoding keeps its identity (no new SOP Instance UID).
                ds.decompress(generate_instance_uid=False)
        return ds


def syntax_of(area: StorageArea, key: str) -> str:
    """The transfer syntax of a stored copy as its file says: its File Meta Information, else
    how its data set is encoded (PS3.10 7.1). For index rows that hold none (written before the
    archive kept it), so that retrieving them does not fail."""
    path = area.local_path(key)
    source = path if path is not None else _bytes_io(area.read(key))
    ds = pydicom.dcmread(source, stop_before_pixels=True, force=True)
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax:
        return str(syntax)
    implicit, little = ds.original_encoding
    return ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _norm(value: str) -> str:
    return str(value or "").strip().rstrip("^=").upper()


def _bytes_io(data: bytes):  # type: ignore[no-untyped-def]
    from io import BytesIO

    return BytesIO(data)


def correct(ds: Dataset, truth: dict[str, str]) -> None:
    """Put the index's patient and order attributes into an outgoing object."""
    needs_unicode = any(not v.isascii() for v in truth.values())
    charset = str(ds.get("SpecificCharacterSet", "") or "")
    if needs_unicode and charset.upper() not in FULL_REPERTOIRES:
        ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword, value in truth.items():
        if value or keyword in ds:
            # a new element with the dictionary's VR (PS3.5 6.2), whatever VR the modality gave it
            tag = tag_for_keyword(keyword)
            ds[tag] = DataElement(tag, dictionary_VR(tag), value)


def accepted_syntaxes(contexts: list[PresentationContext]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for context in contexts:
        if context.transfer_syntax:
            out.setdefault(context.abstract_syntax, set()).update(context.transfer_syntax)
    return out

"""The archive index: studies, series, instances and the files that hold them.

The index holds the truth a query or a retrieve answers with: the patient a study belongs to is
the registry's patient (so an ADT update or merge changes what queries return without touching
a file), and the values the modality sent are kept in ``Study.received``. Columns cite their tag;
dates and times are DICOM strings so range matching is text comparison on every database.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, and_, func, update
from sqlmodel import Field, SQLModel, col, select

from pacs.db import UTCDateTime, utcnow


class Study(SQLModel, table=True):
    __tablename__ = "study"
    __table_args__ = (Index("ix_study_date_time", "study_date", "study_time"),)

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(unique=True)  # (0020,000D) UI
    patient: int = Field(foreign_key="patient.id", index=True)  # the registry's patient
    order: int | None = Field(default=None, foreign_key="imaging_order.id", index=True)
    accession_number: str = Field(default="", index=True)  # (0008,0050) SH
    study_id: str = ""  # (0020,0010) SH
    study_date: str = ""  # (0008,0020) DA
    study_time: str = ""  # (0008,0030) TM
    description: str = ""  # (0008,1030) LO
    referring_physician: str = ""  # (0008,0090) PN, all component groups
    modalities: str = ""  # (0008,0061) CS, backslash-separated
    number_of_series: int = 0  # (0020,1206) IS
    number_of_instances: int = 0  # (0020,1208) IS
    size_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    received: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # patient/order values as sent
    charset: str = ""  # (0008,0005) of the first instance
    reconciled_by: str = ""  # how the study found its order: study_uid, accession, a device rule ...
    published_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # last ImagingStudy sent
    publish_hash: str = ""  # SHA-256 of the ImagingStudy last sent, so an unchanged one isn't resent
    last_accessed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # last retrieve (storage rules)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class Series(SQLModel, table=True):
    __tablename__ = "series"

    id: int | None = Field(default=None, primary_key=True)
    series_instance_uid: str = Field(unique=True)  # (0020,000E) UI
    study: int = Field(foreign_key="study.id", index=True)
    modality: str = Field(default="", index=True)  # (0008,0060) CS
    series_number: int | None = None  # (0020,0011) IS
    description: str = ""  # (0008,103E) LO
    body_part: str = ""  # (0018,0015) CS
    laterality: str = ""  # (0020,0060) CS
    series_date: str = ""  # (0008,0021) DA
    series_time: str = ""  # (0008,0031) TM
    station_name: str = ""  # (0008,1010) SH
    institution: str = ""  # (0008,0080) LO
    performing_physician: str = ""  # (0008,1050) PN
    operators: str = ""  # (0008,1070) PN
    protocol: str = ""  # (0018,1030) LO
    calling_ae_title: str = ""  # who sent it
    number_of_instances: int = 0  # (0020,1209) IS
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Instance(SQLModel, table=True):
    __tablename__ = "instance"

    id: int | None = Field(default=None, primary_key=True)
    sop_instance_uid: str = Field(unique=True)  # (0008,0018) UI
    series: int = Field(foreign_key="series.id", index=True)
    sop_class_uid: str = ""  # (0008,0016) UI
    instance_number: int | None = None  # (0020,0013) IS
    transfer_syntax_uid: str = ""  # (0002,0010) UI as stored
    content_date: str = ""  # (0008,0023) DA
    content_time: str = ""  # (0008,0033) TM
    rows: int | None = None  # (0028,0010) US
    columns: int | None = None  # (0028,0011) US
    number_of_frames: int | None = None  # (0028,0008) IS
    size: int = 0
    checksum: str = ""  # SHA-256 of the file as stored
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    rejected_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)  # in the trash since (IOCM)
    rejection_code: str = ""  # (0040,A043) of the rejection note: DCM 113001, 113037, 113038, 113039


class InstanceFile(SQLModel, table=True):
    """One copy of an instance in one storage area."""

    __tablename__ = "instance_file"
    __table_args__ = (Index("ix_instance_file_area", "area", "instance"),)

    id: int | None = Field(default=None, primary_key=True)
    instance: int = Field(foreign_key="instance.id", index=True)
    area: str
    key: str
    size: int = 0
    checksum: str = ""
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    transfer_syntax_uid: str = ""  # (0002,0010) of this copy when it differs (lossless compression)
    cached: bool = False  # a recalled copy the cache may evict while another copy exists
    verified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # last checksum verified


# Instances queries and retrieves answer with: not rejected (IOCM) nor expired, i.e. not in the trash.
NOT_REJECTED = Instance.rejected_at.is_(None)  # type: ignore[union-attr]

# The transfer syntax a copy is in: its own when lossless migration re-encoded it, else the instance's.
COPY_SYNTAX = func.coalesce(func.nullif(InstanceFile.transfer_syntax_uid, ""), Instance.transfer_syntax_uid)


RECOUNT_KEY = "pacs.recount_studies"  # Session.info: studies to recount before the transaction commits


def recount_studies(session: Any, study_ids: Iterable[int]) -> None:
    """Set what a study answers at the study level from the series and instances it answers
    with below, in the caller's transaction: (0008,0061) Modalities in Study, (0020,1206)
    Number of Study Related Series, (0020,1208) Number of Study Related Instances (PS3.4 C.3.4)
    and its size, and each series' (0020,1209) Number of Series Related Instances. Instances in
    the trash (IHE IOCM rejection, expiry) do not count; a series is counted, and its modality
    listed, while it holds one instance that does.

    Ingest keeps these by increments, which only ever add; whatever takes away (a rejection
    note, and so the first instance of an emptied series too) recounts here, so the order in
    which objects arrive does not matter.
    """
    ids = sorted(set(study_ids))
    if not ids:
        return
    session.flush()  # the ORM's pending rows first, so they are counted and not written over after
    now = utcnow()
    counted = (select(Series.id, Series.study, Series.modality, Series.number_of_instances,
                      func.count(Instance.id), func.coalesce(func.sum(Instance.size), 0))
               .select_from(Series)
               .outerjoin(Instance, and_(col(Instance.series) == col(Series.id), NOT_REJECTED))
               .where(col(Series.study).in_(ids))
               .group_by(col(Series.id), col(Series.study), col(Series.modality), col(Series.number_of_instances)))
    studies: dict[int, list[Any]] = {study: [0, 0, 0, set()] for study in ids}
    for series, study, modality, held, instances, size in session.exec(counted).all():
        if held != instances:
            session.execute(update(Series).where(col(Series.id) == series)
                            .values(number_of_instances=instances, updated_at=now))
        if instances:
            entry = studies[study]
            entry[0] += 1
            entry[1] += instances
            entry[2] += int(size)
            if modality:
                entry[3].add(modality)
    for study, (series_count, instances, size, modalities) in studies.items():
        session.execute(update(Study).where(col(Study.id) == study).values(
            number_of_series=series_count, number_of_instances=instances, size_bytes=size,
            modalities="\\".join(sorted(modalities)), updated_at=now))
    for held in list(session.identity_map.values()):  # the ORM's copies would be stale
        if isinstance(held, (Study, Series)) and (held.id in ids if isinstance(held, Study) else held.study in ids):
            session.expire(held)


def recount_later(session: Any, study_ids: Iterable[int]) -> None:
    """Ask the archive's index writer to recount ``study_ids`` (:func:`recount_studies`) once
    the counts of the objects in its transaction are in, just before it commits."""
    session.info.setdefault(RECOUNT_KEY, set()).update(study_ids)

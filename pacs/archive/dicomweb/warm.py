"""Building the kept WADO-RS metadata of new studies ahead of the first viewer.

A viewer opening a study asks for its metadata first (PS3.18 10.4.1.1.2). Built from the files,
that takes one to two milliseconds an instance; kept (:mod:`pacs.archive.dicomweb.cache`), a
fraction of a millisecond. A study that has become stable (no new instance for ``[publish]
stable_after_seconds``) is the one somebody opens next, so a scheduled pass builds what is
missing for those studies, reading only copies on online areas: nothing is recalled for this.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from pacs.archive.dicomweb.cache import MetadataCache
from pacs.archive.dicomweb.dicomjson import dumps
from pacs.archive.dicomweb.media import DicomwebError
from pacs.archive.dicomweb.wado import Wado, locate
from pacs.archive.index import Study
from pacs.archive.storage import StorageArea
from pacs.db import Database, utcnow

log = logging.getLogger(__name__)

FIRST_LOOK_BACK = timedelta(days=1)  # how far back the first pass after a start looks


class MetadataWarmer:
    """One pass at a time (the housekeeping thread's job)."""

    def __init__(self, db: Database, areas: dict[str, StorageArea], cache: MetadataCache,
                 stable_after_seconds: float) -> None:
        self.db = db
        self.areas = areas
        self.cache = cache
        self.stable_after = timedelta(seconds=stable_after_seconds)
        self.mark: datetime = utcnow() - FIRST_LOOK_BACK  # studies last changed before this are done

    def run(self, now: datetime | None = None) -> int:
        """Build the missing JSON of every study that became stable since the last pass; returns
        how many instances were built."""
        until = (now or utcnow()) - self.stable_after
        with Session(self.db.reader) as session:
            uids = session.exec(select(Study.study_instance_uid)
                                .where(col(Study.updated_at) > self.mark, col(Study.updated_at) <= until,
                                       col(Study.number_of_instances) > 0)
                                .order_by(col(Study.updated_at))).all()
        built = 0
        for uid in uids:
            built += self.study(uid)
        self.mark = until
        if built:
            log.info("metadata of %d instance(s) in %d stable stud(ies) built", built, len(uids))
        return built

    def study(self, study_instance_uid: str) -> int:
        """Build what is missing for one study; returns how many instances were built."""
        areas = dict(self.areas)  # a plain mapping: a copy that is not online is skipped, not recalled
        with Session(self.db.reader) as session:
            try:
                items = locate(session, areas, study=study_instance_uid)
            except DicomwebError:
                return 0  # removed meanwhile, or no copy online
        wado = Wado(self.db, areas, "", self.cache)
        built = 0
        for item in items:
            if self.cache.get(item.sop_instance_uid, item.transfer_syntax, item.key) is not None:
                continue
            try:
                content = dumps(wado.stored_metadata(item))
            except Exception:  # an unreadable file is the scrubber's to report; the request rebuilds
                log.warning("metadata of %s not built", item.sop_instance_uid, exc_info=True)
                continue
            self.cache.put(item.sop_instance_uid, item.transfer_syntax, item.key, content)
            built += 1
        return built

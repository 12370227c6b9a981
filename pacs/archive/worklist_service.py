"""The worklist as a service the DICOM front end calls: a session per query, the name rules of
the mappings in force, and each peer's character-set setting."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pydicom.dataset import Dataset

from pacs.archive import worklist
from pacs.db import Database
from pacs.integration.mapping import MappingHolder
from pacs.settings import Settings


class WorklistService:
    def __init__(self, db: Database, mappings: MappingHolder, settings: Settings) -> None:
        self.db = db
        self.mappings = mappings
        self.settings = settings

    def find(self, identifier: Dataset, calling_ae: str,
             cancelled: Callable[[], bool] = lambda: False) -> Iterator[Dataset]:
        peer = self.settings.peer(calling_ae)
        with self.db.session() as session:
            yield from worklist.find(session, identifier, names=self.mappings.current().names,
                                     peer_charset=peer.charset if peer else None, cancelled=cancelled)

"""A node that finds another on its database (another node leads the storage jobs) warns, once,
when the objects it stores go to its own disk, where the other nodes cannot read them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pacs.archive.storage.manager import StorageManager
from pacs.db import Database
from pacs.settings import Settings, StorageSettings

WARNING = "the other nodes cannot read them"


def node(database_url: str, folder: Path, storage: StorageSettings | None = None) -> tuple[Database, StorageManager]:
    settings = Settings(data_dir=folder, database_url=database_url, storage=storage or StorageSettings())
    db = Database(database_url)
    return db, StorageManager.from_settings(settings, db)


@pytest.mark.parametrize("shared", [False, True], ids=["filesystem", "s3"])
def test_a_second_node_storing_on_its_own_disk_is_warned_of(database_url: str, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture, shared: bool) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite: one process owns the database, so there is no other node")
    # An S3 area is not reached until an object is written or read: the endpoint need not answer.
    s3 = StorageSettings(areas=[{"name": "online", "kind": "s3", "bucket": "pacs", "tier": "online",
                                 "endpoint_url": "http://127.0.0.1:9"}])
    first_db, first = node(database_url, tmp_path / "one", s3 if shared else None)
    second_db, second = node(database_url, tmp_path / "two", s3 if shared else None)
    try:
        caplog.set_level(logging.WARNING, logger="pacs.archive.storage.manager")
        first._housekeeping()  # each node asks for the lead at its first turn
        second._housekeeping()
        assert first.leads()  # alone when it asked: nothing to say
        assert not second.leads()
        warned = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
        assert warned == ([] if shared else [warned[0]]), warned  # once, and only for a local area
        if not shared:
            assert "storage area online" in warned[0] and '[archive] acknowledge = "indexed"' in warned[0]
    finally:
        first.leadership.resign()
        second.leadership.resign()
        first_db.dispose()
        second_db.dispose()

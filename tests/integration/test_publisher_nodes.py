"""Two nodes publishing from one PostgreSQL database: each stable study is queued for the platform
once, whichever node's pass reaches it first (FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from sqlmodel import select

from pacs.archive.index import Study
from pacs.db import Database, utcnow
from pacs.integration.outbox import OutboxItem
from pacs.integration.publisher import DESTINATION, Publisher
from pacs.registry.models import Patient
from pacs.settings import PublishSettings, Settings

STUDIES = 80


def test_two_nodes_queue_each_study_once(database_url: str, settings: Settings) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite: one process owns the database, so there is no second publisher")
    settings = settings.model_copy(update={"publish": PublishSettings(fhir_base_url="http://127.0.0.1:9/fhir",
                                                                      stable_after_seconds=1)})
    db = Database(database_url)
    quiet = utcnow() - timedelta(minutes=5)
    with db.session() as session:
        for n in range(STUDIES):
            patient = Patient(patient_id=f"P{n}", family_name="张", given_name="三", name_alphabetic="ZHANG^SAN",
                              updated_at=quiet)
            session.add(patient)
            session.flush()
            session.add(Study(study_instance_uid=f"1.2.826.0.1.3680043.10.999.{n}", patient=patient.id or 0,
                              accession_number=f"A{n}", modalities="CT", updated_at=quiet, created_at=quiet))
        session.commit()
    nodes = [Database(database_url) for _ in range(2)]
    queued = [0, 0]
    start = threading.Barrier(2)

    def node(number: int) -> None:
        publisher = Publisher(nodes[number], settings)
        start.wait()
        for _ in range(STUDIES):  # a pass per turn, as the publisher's thread runs them
            queued[number] += publisher.run_once()

    threads = [threading.Thread(target=node, args=(n,)) for n in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for own in nodes:
            own.dispose()
    with db.session(read_only=True) as session:
        descriptions = session.exec(select(OutboxItem.description).where(OutboxItem.destination == DESTINATION)).all()
        published = session.exec(select(Study.published_at)).all()
    db.dispose()
    per_study = Counter(description.split()[1] for description in descriptions)
    assert len(per_study) == STUDIES and set(per_study.values()) == {1}, per_study.most_common(3)
    assert sum(queued) == STUDIES
    assert all(when is not None for when in published)

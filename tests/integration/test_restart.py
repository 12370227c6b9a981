"""A restart under load: HL7 over MLLP and DCMTK's storescu streaming into ``pacs serve`` on its
default configuration, SIGTERM in the middle of both, a clean exit, a start on the same data:
every message acknowledged AA has its patient once, every object answered Success is indexed
with the bytes sent, and nothing is left half done."""

from __future__ import annotations

import threading
import time

from sqlmodel import Session, func, select

from pacs.db import Database
from pacs.integration.message_store import Status, StoredMessage
from pacs.registry.models import PatientIdentifier
from tests.archive.test_durability import (
    COUNT,
    assert_kept,
    make_instances,
    successes,
    verbose_storescu,
)
from tests.dicom import needs_dcmtk
from tests.helpers import MLLPClient, ack_fields
from tests.integration.test_process import numbered
from tests.process import ServeProcess

HL7_BEFORE_STOP = 100  # messages acknowledged before SIGTERM, at least
STREAM_SECONDS = 120
STOP_SECONDS = 20  # a stop took 30 s and more while storescu was sending, before associations were aborted


@needs_dcmtk
def test_a_restart_under_load_loses_nothing_acknowledged(tmp_path, database_url):
    files = make_instances(tmp_path / "in")
    by_path = {str(p): uid for uid, p in files.items()}
    server = ServeProcess(tmp_path / "data", database_url, PACS_ARCHIVE__MIN_FREE_BYTES="0").start()
    messages: list[int] = []
    stored: list[str] = []
    stop = threading.Event()

    def stream_hl7() -> None:
        n = 0
        try:
            with MLLPClient(server.mllp_port, timeout=10) as client:
                while not stop.is_set():
                    if ack_fields(client.send(numbered(n)))["code"] == "AA":
                        messages.append(n)
                    n += 1
        except (ConnectionError, OSError):
            pass  # the server went away: what has no ACK would be sent again

    def stream_dicom() -> None:
        for path in successes(sender):
            stored.append(by_path[path])

    # The modality starts once the HIS is well under way, and the stop comes as soon as a third
    # of its objects are answered: it must not have sent them all (no association left to abort)
    # while the HIS was still getting to HL7_BEFORE_STOP.
    threads = [threading.Thread(target=stream_hl7)]
    threads[0].start()
    deadline = time.monotonic() + STREAM_SECONDS
    while len(messages) < HL7_BEFORE_STOP and time.monotonic() < deadline:
        time.sleep(0.01)
    sender = verbose_storescu(server.dicom_port, sorted(by_path))
    threads.append(threading.Thread(target=stream_dicom))
    threads[1].start()
    while len(stored) < COUNT // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(messages) >= HL7_BEFORE_STOP and COUNT // 3 <= len(stored) < COUNT, "the streams did not get going"
    # SIGTERM with both streams running: a clean stop that does not wait for the modality to
    # finish (its association is aborted; it sends again what had no answer)
    asked = time.monotonic()
    assert server.terminate() == 0
    assert time.monotonic() - asked < STOP_SECONDS, "the stop waited for the association in flight"
    stop.set()
    for thread in threads:
        thread.join(60)
    sender.wait(60)
    log = server.log.read_text()
    assert "stopped" in log and "association(s) still open aborted" in log

    restarted = ServeProcess(tmp_path / "data", database_url, PACS_ARCHIVE__MIN_FREE_BYTES="0").start()
    try:
        assert_kept(database_url, tmp_path / "data" / "storage", stored, files)
        db = Database(database_url)
        try:
            with Session(db.engine) as session:
                for n in messages:
                    rows = session.exec(select(PatientIdentifier).where(PatientIdentifier.value == f"K{n:05d}")).all()
                    assert len(rows) == 1, f"message {n} was acknowledged but its patient is missing or doubled"
                waiting = select(func.count()).select_from(StoredMessage).where(StoredMessage.status == Status.RECEIVED)
                assert session.exec(waiting).one() == 0  # finished at the start if not before the stop
        finally:
            db.dispose()
    finally:
        assert restarted.terminate() == 0

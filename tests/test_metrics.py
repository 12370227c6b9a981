"""Prometheus metrics after real traffic: an HL7 message over MLLP, C-STOREs, an outbox item;
scraped on the loopback metrics port and on the main HTTP app."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pydicom
from prometheus_client.parser import text_string_to_metric_families
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlmodel import Session

from pacs.integration import outbox
from tests.conftest import one_database
from tests.helpers import MLLPClient, ack_fields, load
from tests.process import ServeProcess, free_port

REPORT_WAIT = 10.0  # seconds: a receiver process reports its counts about once a second
LOOPBACK_HEX = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape: (name, labels) → value."""
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def c_store(port: int, count: int) -> int:
    """C-STORE ``count`` copies of a CT image (new UIDs each) over one association; their bytes."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, str(template.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    sent = 0
    try:
        for _ in range(count):
            ds = template.copy()
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            assert int(assoc.send_c_store(ds).Status) == 0
            sent += 1
    finally:
        assoc.release()
    return sent


def test_the_numbers_move_with_the_traffic(start_server, tmp_path):
    port = free_port()
    server = start_server(metrics={"port": port, "http": True})
    url = f"http://127.0.0.1:{port}/metrics"
    before = scrape(url)
    assert value(before, "pacs_cstore_objects_total", outcome="stored") == 0
    assert value(before, "pacs_storage_free_bytes", area="online", tier="online") > 0
    assert ("pacs_audit_backlog", frozenset()) in before

    with MLLPClient(server.mllp_port) as client:
        assert ack_fields(client.send(load("adt_a01_ihe.hl7")))["code"] == "AA"
    after = scrape(url)
    assert value(after, "pacs_messages_total", type="ADT^A01", status="PROCESSED", ack="AA") == 1
    assert value(after, "pacs_message_ack_latency_seconds_count") == 1
    assert 0 < value(after, "pacs_message_ack_latency_seconds_sum") < 30

    size = Path(get_testdata_file("CT_small.dcm")).stat().st_size
    assert c_store(server.dicom_port, 2) == 2
    stored = scrape(url)
    assert value(stored, "pacs_cstore_objects_total", outcome="stored") == 2
    assert value(stored, "pacs_cstore_latency_seconds_count") == 2
    assert value(stored, "pacs_cstore_latency_seconds_bucket", le="+Inf") == 2
    assert 2 * size * 0.9 < value(stored, "pacs_cstore_bytes_total") < 2 * size * 1.1

    ae = AE(ae_title="ECHO")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert assoc.is_established
    try:
        assert value(scrape(url), "pacs_dicom_associations") == 1
    finally:
        assoc.release()

    with Session(server.db.engine) as session:  # nobody delivers to "his" here: it waits
        outbox.enqueue(session, destination="his", kind="hl7v2", payload="MSH|...", description="waits")
        session.commit()
    waiting = scrape(url)
    assert value(waiting, "pacs_outbox_depth", destination="his") == 1
    assert value(waiting, "pacs_outbox_oldest_age_seconds", destination="his") >= 0

    main = scrape(f"{server.http_url}/metrics")  # [metrics] http = true: on the main app too
    assert value(main, "pacs_cstore_objects_total", outcome="stored") == 2


def test_no_metrics_on_the_main_app_unless_asked(server):
    assert httpx.get(f"{server.http_url}/metrics", timeout=10).status_code in (401, 404)


def listening_addresses(port: int) -> set[str]:
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == LISTEN:
            found.add(address)
    return found


@one_database
def test_receiver_processes_and_the_front_are_counted_by_the_main_process(tmp_path, database_url):
    port = free_port()
    server = ServeProcess(tmp_path / "data", database_url, PACS_DICOM__PROCESSES="2",
                          PACS_METRICS__PORT=str(port), PACS_ARCHIVE__MIN_FREE_BYTES="0").start().wait_for_receivers()
    try:
        assert listening_addresses(port) == {LOOPBACK_HEX}
        url = f"http://127.0.0.1:{port}/metrics"
        with MLLPClient(server.mllp_port) as client:  # through the MLLP front process
            assert ack_fields(client.send(load("adt_a01_ihe.hl7")))["code"] == "AA"
        assert c_store(server.dicom_port, 3) == 3  # a lone association goes to the receiver
        deadline = time.monotonic() + REPORT_WAIT
        while True:
            samples = scrape(url)
            if value(samples, "pacs_cstore_objects_total", outcome="stored") == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert value(samples, "pacs_cstore_objects_total", outcome="stored") == 3
        assert value(samples, "pacs_cstore_latency_seconds_count") == 3
        assert value(samples, "pacs_messages_total", type="ADT^A01", status="PROCESSED", ack="AA") == 1
        assert value(samples, "process_resident_memory_bytes") > 0
    finally:
        server.stop()

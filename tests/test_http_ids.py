"""Ids and numbers a client puts in a URL: a number past the database's largest key, or a
character Python counts as a digit ("³", "８") that int() does not read, gets a 4xx with a
reason, never a 500, and the request is still audited."""

from __future__ import annotations

import httpx
import pytest

from tests.test_audit import wait_for_entries

HUGE = "9" * 25  # past 2**63 - 1: SQLite cannot bind it, PostgreSQL's BIGINT cannot hold it


@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"/api/orders/{HUGE}"),
    ("POST", f"/api/orders/{HUGE}/arrive"),
    ("GET", f"/api/messages/{HUGE}"),
    ("POST", f"/api/messages/{HUGE}/reprocess"),
    ("POST", f"/api/outbox/{HUGE}/retry"),
    ("GET", f"/api/orders?offset={HUGE}"),
    ("GET", f"/api/messages?offset={HUGE}"),
    ("GET", f"/api/outbox?offset={HUGE}"),
    ("GET", f"/api/audit?offset={HUGE}"),
])
def test_an_id_past_the_largest_key_is_refused_with_422(server, method, path):
    response = httpx.request(method, server.http_url + path, json={"by": "test"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] in ("order_id", "message_id", "item_id", "offset")


@pytest.mark.parametrize("path", [
    "/fhir/Patient/³", "/fhir/ImagingStudy/³", "/fhir/ServiceRequest/8¹", "/fhir/Patient/８",
    f"/fhir/Patient/{HUGE}", f"/fhir/ImagingStudy/{HUGE}", f"/fhir/ServiceRequest/{HUGE}",
])
def test_a_fhir_read_of_an_id_that_names_no_row_is_404_and_audited(server, path):
    response = httpx.get(server.http_url + path)
    assert response.status_code == 404 and response.json()["resourceType"] == "OperationOutcome"
    logical = path.rsplit("/", 1)[-1]
    found = wait_for_entries(server, where=lambda e: f"/{logical} → 404" in (e.get("description") or ""))
    assert found, f"no audit entry for GET {path}"


@pytest.mark.parametrize(("path", "params"), [
    ("/fhir/Patient", {"_id": "³"}),
    ("/fhir/ServiceRequest", {"_id": HUGE}),
    ("/fhir/ImagingStudy", {"_id": "8¹"}),
    ("/fhir/ImagingStudy", {"patient": "Patient/³"}),
    ("/fhir/Patient", {"_offset": HUGE}),
])
def test_a_fhir_search_for_an_id_that_names_no_row_finds_nothing(server, path, params):
    response = httpx.get(server.http_url + path, params=params)
    assert response.status_code == 200
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and not [e for e in bundle.get("entry", [])
                                                       if e["search"]["mode"] == "match"]


def test_a_fhir_count_in_other_digits_is_400(server):
    response = httpx.get(server.http_url + "/fhir/Patient", params={"_count": "³"})
    assert response.status_code == 400 and "whole number" in response.json()["issue"][0]["diagnostics"]


def test_a_service_request_for_a_patient_id_that_names_no_row_is_422(server):
    body = {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "subject": {"reference": "Patient/³"}, "code": {"text": "CT head"}}
    response = httpx.post(server.http_url + "/fhir/ServiceRequest", json=body,
                          headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["ServiceRequest.subject"]


@pytest.mark.parametrize(("params", "status"), [
    ({"offset": HUGE}, 200),
    ({"limit": HUGE}, 200),
    ({"offset": "³"}, 400),
    ({"limit": "٣"}, 400),
])
def test_qido_paging_numbers(server, params, status):
    response = httpx.get(server.http_url + "/dicomweb/studies", params=params)
    assert response.status_code == status
    if status == 400:
        assert "whole number" in response.text

"""FHIR ServiceRequest and transaction Bundle intake over real HTTP, the same order as an ORM."""

from __future__ import annotations

import copy
import json

import httpx
import pytest
from sqlmodel import Session, func, select

from pacs.integration.message_store import Status, StoredMessage
from pacs.registry.models import ImagingOrder, Patient
from tests.helpers import DATA, golden, send_all, snapshot

FHIR = "application/fhir+json"


def resource(name: str) -> dict:
    return json.loads((DATA / "fhir" / name).read_text(encoding="utf-8"))


def post(server, path: str, body: object, **headers: str) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body, ensure_ascii=False)
    return httpx.post(server.http_url + path, content=content, headers={"Content-Type": FHIR, **headers}, timeout=30)


def count(server, model) -> int:
    with Session(server.db.engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def order_fields(server) -> list[dict]:
    data = snapshot(server.db)
    keep = ("patient", "placer_number", "placer_authority", "accession_number", "procedure_code",
            "procedure_text", "body_part", "reason", "priority", "requesting_physician", "study_instance_uid",
            "status")
    out = []
    for order in data["orders"]:
        step = order["steps"][0]
        out.append({**{k: order[k] for k in keep},
                    "step": {k: step[k] for k in ("modality", "station_ae_title", "start", "duration_minutes",
                                                  "description", "status")},
                    "patient_name": [p["name"] for p in data["patients"] if p["patient_id"] == order["patient"]]})
    return out


def wipe(db) -> None:
    """Every table but the audit log's, which the server's audit writer keeps appending to
    meanwhile (an event deleted under its newly written objects would break their key)."""
    from sqlmodel import SQLModel

    with db.engine.begin() as connection:
        for table in reversed(SQLModel.metadata.sorted_tables):
            if not table.name.startswith("audit"):
                connection.execute(table.delete())


def test_service_request_with_contained_patient_gives_the_same_order_as_the_orm(server):
    created = post(server, "/fhir/ServiceRequest", resource("servicerequest_contained.json"))
    assert created.status_code == 201, created.text
    assert created.headers["content-type"].startswith(FHIR)
    body = created.json()
    assert body["resourceType"] == "ServiceRequest" and body["status"] == "active"
    assert created.headers["location"].startswith(f"/fhir/ServiceRequest/{body['id']}/_history/")
    assert {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "value": "ACC0001"} in body["identifier"]
    assert body["occurrenceDateTime"] == "2026-11-25T10:00:00+08:00"

    read = httpx.get(f"{server.http_url}/fhir/ServiceRequest/{body['id']}")
    assert read.status_code == 200 and read.json()["id"] == body["id"] and read.headers["etag"]

    via_fhir = order_fields(server)
    wipe(server.db)
    assert count(server, ImagingOrder) == 0
    assert [a["code"] for a in send_all(server.mllp_port, ["orm_o01_nw_ihe.hl7"])] == ["AA"]
    via_hl7 = order_fields(server)
    assert via_fhir == via_hl7 and len(via_fhir) == 1


def test_transaction_bundle(server):
    response = post(server, "/fhir", resource("bundle_transaction.json"))
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "transaction-response"
    # one response per request entry, in order: the Patient, then the ServiceRequest
    assert [e["response"]["status"] for e in bundle["entry"]] == ["201 Created", "201 Created"]
    assert bundle["entry"][0]["response"]["location"].startswith("Patient/")
    assert bundle["entry"][1]["response"]["location"].startswith("ServiceRequest/")
    golden("fhir_transaction", snapshot(server.db))


def test_if_none_exist_and_retries_do_not_duplicate(server):
    body = resource("servicerequest_contained.json")
    first = post(server, "/fhir/ServiceRequest", body)
    assert first.status_code == 201
    again = post(server, "/fhir/ServiceRequest", body, **{"If-None-Exist": "identifier=ACC0001"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    retried = post(server, "/fhir/ServiceRequest", body)  # a client retrying after a timeout
    assert retried.status_code == 200 and retried.json()["id"] == first.json()["id"]
    assert count(server, ImagingOrder) == 1 and count(server, Patient) == 1


def test_subject_by_reference_and_by_identifier(server):
    first = post(server, "/fhir/ServiceRequest", resource("servicerequest_contained.json")).json()
    patient_ref = first["subject"]["reference"]
    assert httpx.get(f"{server.http_url}/fhir/{patient_ref}").json()["identifier"][0]["value"] == "P10001"
    second = copy.deepcopy(resource("servicerequest_contained.json"))
    second.pop("contained")
    second["subject"] = {"reference": patient_ref}
    second["identifier"] = [{"type": {"coding": [{"code": "PLAC"}]}, "value": "PL0100"}]
    response = post(server, "/fhir/ServiceRequest", second)
    assert response.status_code == 201, response.text
    third = copy.deepcopy(second)
    third["subject"] = {"identifier": {"value": "P10001"}}
    third["identifier"] = [{"type": {"coding": [{"code": "PLAC"}]}, "value": "PL0101"}]
    assert post(server, "/fhir/ServiceRequest", third).status_code == 201
    assert count(server, Patient) == 1 and count(server, ImagingOrder) == 3


def test_put_revoked_cancels_the_order(server):
    created = post(server, "/fhir/ServiceRequest", resource("servicerequest_contained.json")).json()
    changed = resource("servicerequest_contained.json")
    changed["id"] = created["id"]
    changed["status"] = "revoked"
    stale = httpx.put(f"{server.http_url}/fhir/ServiceRequest/{created['id']}", json=changed,
                      headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"
    response = httpx.put(f"{server.http_url}/fhir/ServiceRequest/{created['id']}", json=changed,
                         headers={"Content-Type": FHIR})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "revoked"
    [order] = snapshot(server.db)["orders"]
    assert order["status"] == "cancelled" and order["steps"][0]["status"] == "CANCELLED"


def _without(body: dict, key: str) -> dict:
    body = copy.deepcopy(body)
    body.pop(key)
    return body


def _contained_type(value: object) -> dict:
    body = resource("servicerequest_contained.json")
    body["contained"][0]["resourceType"] = value
    return body


def _two_study_uids() -> dict:
    body = resource("servicerequest_contained.json")
    body["identifier"] = [i for i in body["identifier"] if i.get("system") != "urn:dicom:uid"] + [
        {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"}, {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.5"}]
    return body


@pytest.mark.parametrize(
    ("body", "status", "issue"),
    [
        ("{not json", 400, "structure"),
        (_contained_type({"not": "a name"}), 400, "structure"),  # fhir.resources raises TypeError on it
        (_contained_type(1.5), 400, "structure"),
        (_two_study_uids(), 422, "value"),  # the field map's FHIRPath takes one
        ({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}, 400, "not-supported"),
        (_without(resource("servicerequest_contained.json"), "subject"), 400, "structure"),
        ({**resource("servicerequest_contained.json"), "subject": {"reference": "Patient/99999"}}, 422, "not-found"),
        ({**resource("servicerequest_contained.json"), "subject": {"reference": "#nobody"}}, 422, "not-found"),
        ({**resource("servicerequest_contained.json"), "occurrenceDateTime": "2026-13-45"}, 400, "structure"),
        ({**resource("servicerequest_contained.json"), "identifier": []}, 422, "required"),
        ({**resource("servicerequest_contained.json"), "orderDetail": [],
          "code": {"coding": [{"code": "NOPE"}]}}, 422, "code-invalid"),
        ({**resource("servicerequest_contained.json"), "status": "unknown"}, 422, "code-invalid"),
    ],
)
def test_bad_requests_get_an_operation_outcome_and_store_nothing(server, body, status, issue):
    response = post(server, "/fhir/ServiceRequest", body)
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == issue and outcome["issue"][0]["diagnostics"]
    assert count(server, ImagingOrder) == 0 and count(server, Patient) == 0
    with Session(server.db.engine) as session:
        [message] = session.exec(select(StoredMessage)).all()
        assert message.status == Status.ERROR and message.source == "fhir"
    # and the server still takes good ones
    assert post(server, "/fhir/ServiceRequest", resource("servicerequest_contained.json")).status_code == 201


def test_a_bundle_whose_entry_is_not_an_array_is_400_and_the_server_goes_on(server):
    response = post(server, "/fhir", {**resource("bundle_transaction.json"), "entry": 10**30})
    assert response.status_code == 400 and response.json()["resourceType"] == "OperationOutcome"
    assert post(server, "/fhir", resource("bundle_transaction.json")).status_code == 200


def test_wrong_content_type_and_unknown_ids(server):
    response = httpx.post(server.http_url + "/fhir/ServiceRequest", content="x", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415 and response.json()["resourceType"] == "OperationOutcome"
    assert httpx.get(server.http_url + "/fhir/ServiceRequest/12345").status_code == 404
    assert httpx.get(server.http_url + "/fhir/Patient/abc").status_code == 404
    assert httpx.get(server.http_url + "/fhir/metadata").json()["fhirVersion"] == "4.0.1"


@pytest.mark.parametrize(
    ("body", "patient_id", "accession"),
    [
        ({**resource("servicerequest_contained.json"), "status": "unknown"}, "P10001", "ACC0001"),
        ({**resource("servicerequest_contained.json"), "subject": {"reference": "Patient/99999"}}, "", "ACC0001"),
        ({**resource("servicerequest_contained.json"),
          "subject": {"reference": "Patient?identifier=http://hospital.example.cn/fhir/sid/patient-id|P777"}},
         "P777", "ACC0001"),
        (_two_study_uids(), "P10001", "ACC0001"),
        ("{not json", "", ""),
    ],
)
def test_a_refused_request_keeps_the_keys_it_holds_for_the_message_browser(server, body, patient_id, accession):
    """A refused ServiceRequest is stored with the patient ID and accession number read where
    the field map reads them, as a refused HL7 message is, so that a search by either finds it."""
    assert post(server, "/fhir/ServiceRequest", body).status_code in (400, 422)
    with Session(server.db.engine) as session:
        [message] = session.exec(select(StoredMessage)).all()
    assert message.status == Status.ERROR
    assert (message.patient_id or "", message.accession_number or "") == (patient_id, accession)

"""FHIR search over real HTTP with fhirpy as the client: Patient, ServiceRequest, ImagingStudy,
Endpoint; Bundles, paging, _sort, _include/_revinclude, strict and lenient handling."""

from __future__ import annotations

import json

import httpx
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhirpy import SyncFHIRClient

from tests.archive.test_store import send_file
from tests.helpers import golden, send_all

STUDY_UID = "1.2.840.113619.2.55.3.1234567.20261125.1"


def ct(tmp_path, name, **values):
    from tests.archive.corpus import build

    ds = pydicom.dcmread(build(tmp_path / f"c-{name}", [("CT_small.dcm", "")])[0].path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def world(server, tmp_path):
    """Two patients; three orders; one study for the CT order, one unscheduled MR study."""
    codes = [a["code"] for a in send_all(server.mllp_port, ["adt_a01_ihe.hl7", "orm_o01_nw_ihe.hl7",
                                                            "orm_o01_nw2_ihe.hl7", "omi_o23_nw_ihe.hl7"])]
    assert codes == ["AA"] * 4
    assert send_file(server.dicom_port, ct(tmp_path, "ct.dcm", StudyInstanceUID=STUDY_UID, StudyDate="20261125",
                                           StudyTime="101500", SeriesDescription="Chest 1.25mm",
                                           BodyPartExamined="CHEST", Laterality="")).Status == 0
    assert send_file(server.dicom_port, ct(tmp_path, "mr.dcm", PatientID="P30001", StudyDate="20261120",
                                           StudyTime="080000", Modality="MR", AccessionNumber="")).Status == 0
    server.fhir = SyncFHIRClient(server.http_url + "/fhir")
    return server


def ids(resources) -> list[str]:
    return sorted(r["id"] for r in resources)


def test_patient_search(world):
    client = world.fhir
    [zhang] = client.resources("Patient").search(identifier="P10001").fetch()
    assert zhang["identifier"][0]["value"] in ("P10001", "110101199001011234")
    by_system = client.resources("Patient").search(identifier="HOSP|P10001").fetch()
    mapped = client.resources("Patient").search(
        identifier="http://hospital.example.cn/fhir/sid/patient-id|P10001").fetch()
    assert ids(by_system) == ids(mapped) == [zhang["id"]]
    for name in ("zhang", "ZHANG SAN"[:5], "张", "张三"):
        assert zhang["id"] in ids(client.resources("Patient").search(name=name).fetch()), name
    assert client.resources("Patient").search(name="李").fetch() == []
    assert ids(client.resources("Patient").search(birthdate="1990").fetch()) == [zhang["id"]]
    assert ids(client.resources("Patient").search(birthdate="ge1989-12-31").search(gender="male").fetch()) == [zhang["id"]]
    assert client.resources("Patient").search(birthdate="lt1990-01-01").search(gender="male").fetch() == []
    assert {n.get("text") for n in zhang["name"]} >= {"张三"}


def test_service_request_search(world):
    client = world.fhir
    [ct_order] = client.resources("ServiceRequest").search(identifier="ACC0001").fetch()
    assert ct_order["status"] == "completed"  # images received
    patient_ref = ct_order["subject"]["reference"]
    mine = client.resources("ServiceRequest").search(patient=patient_ref).fetch()
    assert len(mine) == 3  # the CT and the two from the second ORM
    assert len(client.resources("ServiceRequest").search(status="active").fetch()) == 3
    assert len(client.resources("ServiceRequest").search(code="MR0001").fetch()) == 1
    assert len(client.resources("ServiceRequest").search(authored="ge2000-01-01").fetch()) == 4
    assert client.resources("ServiceRequest").search(authored="lt2000-01-01").fetch() == []


def test_imaging_study_search_and_content(world):
    client = world.fhir
    [study] = client.resources("ImagingStudy").search(identifier=f"urn:dicom:uid|urn:oid:{STUDY_UID}").fetch()
    assert study["status"] == "available" and study["numberOfInstances"] == 1
    assert study["basedOn"][0]["reference"].startswith("ServiceRequest/")
    assert study["started"].startswith("2026-11-25T10:15:00")
    assert study["subject"]["display"] == "张三 (ZHANG SAN)"
    assert study["series"][0]["bodySite"]["display"] == "CHEST"
    ImagingStudy.model_validate(study.serialize())  # valid FHIR R4
    assert ids(client.resources("ImagingStudy").search(identifier="ACC0001").fetch()) == [study["id"]]
    assert len(client.resources("ImagingStudy").search(modality="CT").fetch()) == 1
    assert len(client.resources("ImagingStudy").search(
        modality="http://dicom.nema.org/resources/ontology/DCM|MR").fetch()) == 1
    assert len(client.resources("ImagingStudy").search(started="2026-11-25").fetch()) == 1
    assert len(client.resources("ImagingStudy").search(started="ge2026-11-01").fetch()) == 2
    assert len(client.resources("ImagingStudy").search(status="available").fetch()) == 2
    assert ids(client.resources("ImagingStudy").search(basedon=study["basedOn"][0]["reference"]).fetch()) == [study["id"]]
    assert ids(client.resources("ImagingStudy").search(subject=study["subject"]["reference"]).fetch()) == [study["id"]]
    assert len(client.resources("ImagingStudy").search(referrer="赵").fetch()) == 1
    endpoint = client.reference("Endpoint", "dicomweb").to_resource()
    assert endpoint["address"].endswith("/dicomweb")


def test_imaging_study_golden(world):
    resource = httpx.get(world.http_url + "/fhir/ImagingStudy", params={"identifier": "ACC0001"}).json()["entry"][0]["resource"]
    ImagingStudy.model_validate(resource)
    normalised = json.loads(json.dumps(resource))
    normalised["id"] = "<id>"
    normalised["meta"] = "<meta>"
    normalised["subject"]["reference"] = "<patient>"
    normalised["basedOn"][0]["reference"] = "<order>"
    for series in normalised["series"]:
        series["uid"] = "<series uid>"
        for instance in series["instance"]:
            instance["uid"] = "<instance uid>"
    golden("fhir_imaging_study", normalised)


def test_bundle_paging_sort_and_includes(world):
    base = world.http_url + "/fhir"
    first = httpx.get(base + "/ServiceRequest", params={"_count": 2, "_sort": "-authored"}).json()
    Bundle.model_validate(first)
    assert first["total"] == 4 and len([e for e in first["entry"] if e["search"]["mode"] == "match"]) == 2
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = httpx.get(next_url).json()
    seen = {e["resource"]["id"] for e in first["entry"] + second["entry"]}
    assert len(seen) == 4 and not any(link["relation"] == "next" for link in second["link"])
    included = httpx.get(base + "/ImagingStudy", params={"_include": "ImagingStudy:patient",
                                                          "identifier": "ACC0001"}).json()
    modes = sorted((e["resource"]["resourceType"], e["search"]["mode"]) for e in included["entry"])
    assert modes == [("ImagingStudy", "match"), ("Patient", "include")]
    rev = httpx.get(base + "/Patient", params={"identifier": "P10001", "_revinclude": "ImagingStudy:patient"}).json()
    assert sorted(e["resource"]["resourceType"] for e in rev["entry"]) == ["ImagingStudy", "Patient"]
    basedon = httpx.get(base + "/ImagingStudy", params={"_include": "ImagingStudy:basedon", "status": "available",
                                                         "_sort": "started"}).json()
    assert [e["resource"]["resourceType"] for e in basedon["entry"]] == ["ImagingStudy", "ImagingStudy", "ServiceRequest"]
    assert [e["resource"]["started"][:10] for e in basedon["entry"][:2]] == ["2026-11-20", "2026-11-25"]


def test_unknown_parameters_lenient_and_strict(world):
    base = world.http_url + "/fhir"
    lenient = httpx.get(base + "/Patient", params={"identifier": "P10001", "shoe-size": "42"}).json()
    outcome = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert lenient["total"] == 1 and "shoe-size" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    strict = httpx.get(base + "/Patient", params={"shoe-size": "42"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and strict.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(("path", "params"), [
    ("/Patient", {"birthdate": "1990-13-01"}),
    ("/Patient", {"birthdate": "yesterday"}),
    ("/ImagingStudy", {"started": "ge2026-02-30"}),
    ("/ServiceRequest", {"status": "finished"}),
    ("/Patient", {"_count": "-1"}),
    ("/Patient", {"gender": "robot"}),
])
def test_bad_search_values_are_400(world, path, params):
    response = httpx.get(world.http_url + "/fhir" + path, params=params)
    assert response.status_code == 400 and response.json()["issue"][0]["diagnostics"]


def test_capability_statement_lists_the_declared_parameters(world):
    statement = httpx.get(world.http_url + "/fhir/metadata").json()
    study = next(r for r in statement["rest"][0]["resource"] if r["type"] == "ImagingStudy")
    assert {p["name"] for p in study["searchParam"]} >= {"patient", "identifier", "started", "modality", "status",
                                                          "basedon", "referrer"}
    assert "ImagingStudy:patient" in study["searchInclude"]
    assert statement["fhirVersion"] == "4.0.1"
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    CapabilityStatement.model_validate(statement)
    assert httpx.get(world.http_url + "/fhir/Observation").status_code == 404

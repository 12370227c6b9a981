"""/fhir/DiagnosticReport: read and search (patient, subject, based-on, study, status, date,
identifier), bad parameters answered with an OperationOutcome, and a clinician shown final and
corrected reports alone."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from sqlmodel import select

from pacs.archive.index import Study
from pacs.reporting.models import Report, ReportStatus, ReportVersion
from tests.reporting.studies import PASSWORD, add_user, ct_study, today

ZHANG = ("张", "三", "Zhang San")
LI = ("李", "四", "Li Si")


def report(server, order_id: int, statuses: list[str]) -> int:
    """A report of ``order_id`` with a signed version per status (none: a draft)."""
    with server.db.session() as session:
        order_uid = session.exec(select(Study.study_instance_uid).where(Study.order == order_id)).one()
        row = Report(order=order_id, study_instance_uid=order_uid, status=ReportStatus.DRAFT,
                     findings="双肺纹理清晰。", impression="未见异常。")
        session.add(row)
        session.flush()
        for number, status in enumerate(statuses, 1):
            session.add(ReportVersion(report=row.id, number=number, status=status, findings="双肺纹理清晰。",
                                      impression=f"第{number}版：未见异常。", author="li", author_name="李住院",
                                      signed_at=datetime.now(UTC), reason="更正" if status == "C" else "",
                                      verifier="wang" if status != "P" else "", verifier_name="王主任" if status != "P" else "",
                                      verified_at=datetime.now(UTC) if status != "P" else None))
        row.current_version = len(statuses)
        session.add(row)
        return row.id


def ids(bundle: dict) -> list[str]:
    Bundle.model_validate(bundle)
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match")


def test_search_by_patient_study_status_date(server):
    zhang = ct_study(server, 901, "P901", ZHANG)
    li = ct_study(server, 902, "P902", LI)
    third = ct_study(server, 903, "P901", ZHANG)
    preliminary = str(report(server, zhang["id"], ["P"]))
    corrected = str(report(server, li["id"], ["P", "F", "C"]))
    draft = str(report(server, third["id"], []))
    fhir = server.http_url + "/fhir/DiagnosticReport"
    with server.db.session(read_only=True) as session:
        study_of_li = session.exec(select(Study.id).where(Study.order == li["id"])).one()
        patient_of_zhang = session.exec(select(Study.patient).where(Study.order == zhang["id"])).one()

    read = httpx.get(f"{fhir}/{corrected}")
    assert read.status_code == 200 and read.headers["etag"] == 'W/"3"'
    resource = read.json()
    DiagnosticReport.model_validate(resource)
    assert resource["status"] == "corrected" and resource["conclusion"] == "第3版：未见异常。"
    assert resource["basedOn"] == [{"reference": f"ServiceRequest/{li['id']}"}]
    assert resource["imagingStudy"] == [{"reference": f"ImagingStudy/{study_of_li}"}]
    assert resource["subject"]["display"].startswith("李四")
    assert resource["effectiveDateTime"].startswith(f"{today()[:4]}-{today()[4:6]}-{today()[6:]}")
    assert httpx.get(f"{fhir}/{draft}").status_code == 404  # a draft is no DiagnosticReport yet

    def search(**params) -> list[str]:
        answer = httpx.get(fhir, params=params)
        assert answer.status_code == 200, answer.text
        return ids(answer.json())

    assert search() == sorted([preliminary, corrected])
    assert search(patient=f"Patient/{patient_of_zhang}") == [preliminary]
    assert search(subject=str(patient_of_zhang)) == [preliminary]
    assert search(**{"based-on": f"ServiceRequest/{li['id']}"}) == [corrected]
    assert search(study=f"ImagingStudy/{study_of_li}") == [corrected]
    assert search(**{"imaging-study": str(study_of_li)}) == [corrected]
    assert search(status="preliminary") == [preliminary]
    assert search(status="final") == []  # the final version was corrected since
    assert search(status="corrected,final") == [corrected]
    day = f"{today()[:4]}-{today()[4:6]}-{today()[6:]}"
    assert search(date=day) == sorted([preliminary, corrected])
    assert search(date=f"lt{day}") == []
    assert search(identifier="ACC902") == [corrected]
    with_orders = httpx.get(fhir, params={"_id": corrected, "_include": "DiagnosticReport:based-on"}).json()
    assert {e["resource"]["resourceType"] for e in with_orders["entry"]} == {"DiagnosticReport", "ServiceRequest"}

    for params in ({"status": "amended-ish"}, {"date": "yesterday"}, {"patient": ",,"},
                   {"study": "Patient/1"}):
        bad = httpx.get(fhir, params=params)
        assert bad.status_code == 400, params
        assert bad.json()["resourceType"] == "OperationOutcome" and bad.json()["issue"][0]["diagnostics"]
    strict = httpx.get(fhir, params={"colour": "red"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and "colour" in strict.json()["issue"][0]["diagnostics"]
    capability = httpx.get(server.http_url + "/fhir/metadata").json()
    [declared] = [r for r in capability["rest"][0]["resource"] if r["type"] == "DiagnosticReport"]
    assert {"patient", "subject", "based-on", "study", "status", "date"} <= {p["name"] for p in declared["searchParam"]}


def test_a_clinician_sees_final_and_corrected_reports_alone(guarded_server):
    server = guarded_server
    final = str(report(server, ct_study(server, 911, "P911", ZHANG)["id"], ["F"]))
    preliminary = str(report(server, ct_study(server, 912, "P912", LI)["id"], ["P"]))
    add_user(server, "dr-zhou", ["clinician"], "周医生")
    add_user(server, "desk", ["registrar"], "登记员")
    add_user(server, "li", ["radiologist"], "李住院")
    fhir = server.http_url + "/fhir/DiagnosticReport"
    clinician = ("dr-zhou", PASSWORD)
    assert ids(httpx.get(fhir, auth=clinician).json()) == [final]
    assert httpx.get(f"{fhir}/{final}", auth=clinician).status_code == 200
    assert httpx.get(f"{fhir}/{preliminary}", auth=clinician).status_code == 404
    assert ids(httpx.get(fhir, params={"status": "preliminary"}, auth=clinician).json()) == []
    assert ids(httpx.get(fhir, auth=("li", PASSWORD)).json()) == sorted([final, preliminary])
    refused = httpx.get(fhir, auth=("desk", PASSWORD))
    assert refused.status_code == 403 and "reports.read" in refused.text
    assert httpx.get(fhir).status_code == 401

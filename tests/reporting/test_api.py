"""/api/reading and /api/reports over real HTTP, as a resident, an attending and an
administrator: the claim, the draft, the signature (P), the verification (F), the amendment (C),
every version readable; and each bad request refused plainly with nothing signed or sent."""

from __future__ import annotations

from typing import Any

import requests
from sqlmodel import Session, select

from pacs.reporting.models import Report, ReportVersion
from tests.archive.test_reconciliation import audit_entries
from tests.reporting.studies import PASSWORD, add_user, ct_study, order_of

ZHANG = ("张", "三", "ZHANG SAN")


class As:
    """Requests in one user's name (HTTP Basic)."""

    def __init__(self, server: Any, username: str, password: str = PASSWORD) -> None:
        self.base = f"{server.http_url}/api"
        self.auth = (username, password)

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(self.base + path, params=params, auth=self.auth, timeout=30)

    def post(self, path: str, body: Any = None) -> requests.Response:
        return requests.post(self.base + path, json=body if body is not None else {}, auth=self.auth, timeout=30)

    def put(self, path: str, body: Any) -> requests.Response:
        return requests.put(self.base + path, json=body, auth=self.auth, timeout=30)

    def delete(self, path: str) -> requests.Response:
        return requests.delete(self.base + path, auth=self.auth, timeout=30)


def people(server: Any) -> tuple[As, As, As]:
    add_user(server, "liyi", ["radiologist"], "李医生")
    add_user(server, "wangzr", ["attending"], "王主任")
    add_user(server, "zhaoyi", ["radiologist"], "赵医生")
    return As(server, "liyi"), As(server, "wangzr"), As(server, "zhaoyi")


def outbox_count(server: Any) -> int:
    from pacs.integration.outbox import OutboxItem

    with Session(server.db.engine) as session:
        return len(session.exec(select(OutboxItem)).all())


def test_a_report_from_claim_to_correction(guarded_server):
    server = guarded_server
    resident, attending, other = people(server)
    order = ct_study(server, 7101, "P71001", ZHANG)
    oid = order["id"]

    waiting = resident.get("/reading").json()
    assert [row["accession_number"] for row in waiting["items"]] == ["ACC7101"]
    row = waiting["items"][0]
    assert row["modality"] == "CT" and row["body_part"] == "CHEST" and row["patient_name"] == "张三 (ZHANG SAN)"
    assert row["report_status"] == "" and row["claimed_by"] == ""

    claimed = resident.post(f"/reports/{oid}/claim")
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["claimed_by"] == "liyi" and claimed.json()["status"] == "draft"
    assert claimed.json()["order"]["age"].endswith("Y") and claimed.json()["order"]["modality"] == "CT"
    second = other.post(f"/reports/{oid}/claim")
    assert second.status_code == 409 and "李医生" in second.json()["detail"], second.text
    not_admin = other.post(f"/reports/{oid}/claim", {"take_over": True})
    assert not_admin.status_code == 409 and "administrator" in not_admin.json()["detail"]
    assert resident.get("/reading").json()["items"][0]["claimed_by_name"] == "李医生"

    # signing an empty report: refused, nothing signed, the order where it was
    before = outbox_count(server)
    empty = resident.post(f"/reports/{oid}/sign")
    assert empty.status_code == 422 and "empty" in empty.json()["detail"], empty.text
    assert resident.get(f"/reports/{oid}/versions").json() == []
    assert order_of(server, "ACC7101")["status"] == "images_received"
    assert outbox_count(server) == before

    # drafts: each save names the revision it was made from; a stale copy is refused
    images = resident.get(f"/reports/{oid}/images").json()
    [series] = images
    keys = [{"series": series["series_instance_uid"], "sop": i["sop"], "sop_class": i["sop_class"]}
            for i in series["instances"][:2]]
    draft = {"revision": 0, "findings": "双肺纹理清晰，未见实质性病变。", "impression": "胸部CT平扫未见明显异常。",
             "key_images": keys}
    saved = resident.put(f"/reports/{oid}/draft", draft)
    assert saved.status_code == 200 and saved.json()["draft_revision"] == 1, saved.text
    stale = resident.put(f"/reports/{oid}/draft", {**draft, "findings": "另一个标签页的旧内容"})
    assert stale.status_code == 409 and "revision 0" in stale.json()["detail"], stale.text
    assert other.put(f"/reports/{oid}/draft", {**draft, "revision": 1}).status_code == 409  # not their claim
    assert resident.get(f"/reports/{oid}").json()["findings"] == draft["findings"]
    bad_key = resident.put(f"/reports/{oid}/draft", {**draft, "revision": 1,
                                                       "key_images": [{"series": "x", "sop": "1.2", "sop_class": "1.2"}]})
    assert bad_key.status_code == 422 and "DICOM UID" in bad_key.json()["detail"]

    # a critical result needs whom and when before signing
    flagged = resident.put(f"/reports/{oid}/draft", {**draft, "revision": 1, "critical": True})
    assert flagged.status_code == 200
    refused = resident.post(f"/reports/{oid}/sign")
    assert refused.status_code == 422 and "危急值" in refused.json()["detail"]
    told = resident.put(f"/reports/{oid}/draft", {**draft, "revision": 2, "critical": True,
                                                   "critical_told": "临床医生 王五", "critical_told_at": "2026-12-06T10:05:00+08:00"})
    assert told.status_code == 200

    preliminary = resident.post(f"/reports/{oid}/sign")
    assert preliminary.status_code == 200, preliminary.text
    p = preliminary.json()
    assert p["number"] == 1 and p["status"] == "P" and p["author"] == "liyi" and p["author_name"] == "李医生"
    assert p["key_images"] == keys and p["critical_told"] == "临床医生 王五"
    assert order_of(server, "ACC7101")["status"] == "reported"
    assert resident.post(f"/reports/{oid}/sign").status_code == 409  # signed once
    assert resident.post(f"/reports/{oid}/verify").status_code == 403  # a resident does not verify
    waiting = attending.get("/reading").json()["items"]
    assert waiting[0]["report_status"] == "preliminary" and waiting[0]["claimed_by"] == ""

    final = attending.post(f"/reports/{oid}/verify")
    assert final.status_code == 200, final.text
    f = final.json()
    assert (f["number"], f["status"], f["author"], f["verifier"], f["verifier_name"]) == (2, "F", "liyi", "wangzr", "王主任")
    assert order_of(server, "ACC7101")["status"] == "verified"
    assert attending.get("/reading").json()["items"] == []  # nothing left to read

    # an amendment needs a reason, and the claim
    assert attending.post(f"/reports/{oid}/claim").status_code == 200
    assert attending.put(f"/reports/{oid}/draft", {**draft, "revision": 3, "critical": True,
                                                    "critical_told": "临床医生 王五",
                                                    "critical_told_at": "2026-12-06T10:05:00+08:00",
                                                    "impression": "右肺下叶小结节，建议随访。"}).status_code == 200
    no_reason = attending.post(f"/reports/{oid}/amend", {"reason": "  "})
    assert no_reason.status_code == 422 and "reason" in no_reason.json()["detail"]
    corrected = attending.post(f"/reports/{oid}/amend", {"reason": "复阅发现右肺下叶小结节"})
    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["status"] == "C" and corrected.json()["reason"] == "复阅发现右肺下叶小结节"

    versions = resident.get(f"/reports/{oid}/versions").json()
    assert [(v["number"], v["status"]) for v in versions] == [(1, "P"), (2, "F"), (3, "C")]
    assert resident.get(f"/reports/{oid}/versions/1").json()["impression"] == "胸部CT平扫未见明显异常。"
    assert resident.get(f"/reports/{oid}/versions/3").json()["impression"] == "右肺下叶小结节，建议随访。"
    assert resident.get(f"/reports/{oid}/versions/4").status_code == 404
    shown = resident.get(f"/reports/{oid}").json()
    assert shown["status"] == "corrected" and shown["current_version"] == 3
    assert order_of(server, "ACC7101")["status"] == "verified"
    events = [e["to_status"] for e in order_of(server, "ACC7101")["events"]]
    assert events[-2:] == ["reported", "verified"]

    said = [(e["user"], e["details"].get("what")) for e in audit_entries(server, event_id="110111")]
    for expected in [("liyi", "claim"), ("liyi", "sign"), ("wangzr", "verify"), ("wangzr", "claim"),
                     ("wangzr", "amend")]:
        assert expected in said, said


def test_an_attending_signs_final_and_an_administrator_takes_over(guarded_server):
    server = guarded_server
    resident, attending, _other = people(server)
    order = ct_study(server, 7102, "P71002", ("李", "四", "LI SI"))
    oid = order["id"]
    assert resident.post(f"/reports/{oid}/claim").status_code == 200
    admin = As(server, "admin", "test-admin-password")
    taken = admin.post(f"/reports/{oid}/claim", {"take_over": True})
    assert taken.status_code == 200 and taken.json()["claimed_by"] == "admin"
    assert resident.put(f"/reports/{oid}/draft", {"revision": 0, "findings": "x"}).status_code == 409
    assert admin.post(f"/reports/{oid}/release").status_code == 200
    assert attending.post(f"/reports/{oid}/claim").status_code == 200
    assert attending.put(f"/reports/{oid}/draft", {"revision": 0, "findings": "颅内未见异常。",
                                                    "impression": "未见异常。"}).status_code == 200
    signed = attending.post(f"/reports/{oid}/sign").json()
    assert signed["status"] == "F" and signed["verifier"] == ""
    assert order_of(server, "ACC7102")["status"] == "verified"
    assert [e["to_status"] for e in order_of(server, "ACC7102")["events"]][-2:] == ["reported", "verified"]
    assert attending.post(f"/reports/{oid}/verify").status_code == 409  # nothing preliminary to verify
    with Session(server.db.engine) as session:
        report = session.exec(select(Report)).one()
        assert report.claimed_by == "" and report.status == "final"
        assert len(session.exec(select(ReportVersion)).all()) == 1


def test_what_cannot_be_read_is_refused(guarded_server):
    server = guarded_server
    resident, _attending, _other = people(server)
    assert resident.post("/reports/999/claim").status_code == 404
    assert resident.get("/reports/999").status_code == 404
    assert resident.get("/reports/999/versions").status_code == 404
    assert resident.post("/reports/1/sign").status_code == 404
    assert resident.put("/reports/1/draft", {"revision": 0, "findings": "a\x00b"}).status_code == 422
    assert resident.get("/reading", sort="nonsense").status_code == 422
    add_user(server, "doc", ["clinician"], "临床医生")
    clinician = As(server, "doc")
    assert clinician.get("/reading").status_code == 403  # reports.read: drafts included
    assert clinician.post("/reports/1/claim").status_code == 403
    page = requests.get(f"{server.http_url}/reading", auth=("doc", PASSWORD), timeout=30)
    assert page.status_code == 403
    assert requests.get(f"{server.http_url}/reading", auth=("liyi", PASSWORD), timeout=30).status_code == 200


def test_the_worklist_puts_emergencies_first_and_filters(guarded_server):
    server = guarded_server
    resident, _attending, other = people(server)
    routine = ct_study(server, 7111, "P71111", ZHANG)
    stat = ct_study(server, 7112, "P71112", ("王", "五", "WANG WU"), priority="S", code="CT0101^头颅CT平扫")
    emergency = ct_study(server, 7113, "P71113", ("赵", "丽", "ZHAO LI"), patient_class="E", sex="F")

    def accessions(**params: Any) -> list[str]:
        answer = resident.get("/reading", **params)
        assert answer.status_code == 200, answer.text
        return [row["accession_number"] for row in answer.json()["items"]]

    first = accessions()
    assert set(first[:2]) == {"ACC7112", "ACC7113"} and first[2] == "ACC7111"  # STAT and emergency, then routine
    assert accessions(sort="waiting") == ["ACC7111", "ACC7112", "ACC7113"]  # the first images in, first
    assert accessions(priority="urgent") == first[:2]
    assert accessions(priority="STAT") == ["ACC7112"]
    assert accessions(body_part="HEAD") == ["ACC7112"]  # from the procedure table
    assert accessions(modality="MR") == []
    assert accessions(q="zhao") == ["ACC7113"] and accessions(q="赵") == ["ACC7113"]
    assert accessions(q="ACC7111") == ["ACC7111"]
    rows = {row["accession_number"]: row for row in resident.get("/reading").json()["items"]}
    assert rows["ACC7113"]["emergency"] and rows["ACC7113"]["sex"] == "F"
    assert rows["ACC7112"]["priority"] == "STAT" and not rows["ACC7111"]["urgent"]

    assert other.post(f"/reports/{stat['id']}/claim").status_code == 200
    assert resident.post(f"/reports/{routine['id']}/claim").status_code == 200
    assert accessions(claimed="mine") == ["ACC7111"]
    assert accessions(claimed="free") == ["ACC7113"]
    assert [p["accession_number"] for p in resident.get(f"/reading/{emergency['id']}/priors").json()] == []

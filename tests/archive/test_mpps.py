"""MPPS SCP with pynetdicom as the modality; the procedure lifecycle it drives."""

from __future__ import annotations

import httpx
import pytest
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from tests.dicom import client, completion, mpps_attributes, mwl_find
from tests.helpers import send_all

STUDY = "1.2.840.113619.2.55.3.1234567.20261125.1"
PPS_UID = "1.2.826.0.1.3680043.8.498.1001"


@pytest.fixture
def scheduled(server):
    assert [a["code"] for a in send_all(server.mllp_port, ["orm_o01_nw_ihe.hl7", "omi_o23_nw_ihe.hl7"])] == ["AA"] * 2
    return server


@pytest.fixture
def assoc(scheduled):
    association = client("CT1").associate("127.0.0.1", scheduled.dicom_port, ae_title="PACS")
    assert association.is_established
    yield association
    association.release()


def create(assoc, attributes, uid=PPS_UID):
    status, reply = assoc.send_n_create(attributes, ModalityPerformedProcedureStep, uid)
    return status, reply


def update(assoc, modifications, uid=PPS_UID):
    status, _ = assoc.send_n_set(modifications, ModalityPerformedProcedureStep, uid)
    return status


def order(server, accession: str) -> dict:
    [found] = httpx.get(server.http_url + "/api/orders", params={"accession_number": accession}).json()["items"]
    return found


def worklist_accessions(server) -> list[str]:
    from tests.archive.test_worklist import accessions, query

    return accessions(mwl_find(server.dicom_port, query())[1])


def test_in_progress_then_completed(scheduled, assoc):
    status, _ = create(assoc, mpps_attributes(study_uid=STUDY, accession="ACC0001", sps_id="SPS0001"))
    assert status.Status == 0x0000
    started = order(scheduled, "ACC0001")
    assert started["status"] == "in_progress" and started["steps"][0]["status"] == "STARTED"
    assert started["events"][-1]["by"] == "mpps:CT1" and started["events"][-1]["to_status"] == "in_progress"
    assert "ACC0001" in worklist_accessions(scheduled)  # a started step stays on the worklist

    assert update(assoc, completion()).Status == 0x0000
    done = order(scheduled, "ACC0001")
    assert done["status"] == "completed" and done["steps"][0]["status"] == "COMPLETED"
    assert [e["to_status"] for e in done["events"]] == ["scheduled", "in_progress", "completed"]
    assert "ACC0001" not in worklist_accessions(scheduled)  # it leaves the worklist

    from sqlmodel import Session, select

    from pacs.registry.models import PerformedProcedureStep

    with Session(scheduled.db.engine) as session:
        [pps] = session.exec(select(PerformedProcedureStep)).all()
    assert pps.status == "COMPLETED" and pps.calling_ae_title == "CT1"
    assert pps.performed_series[0]["series_instance_uid"] == "1.2.3.4.5.6"
    assert len(pps.performed_series[0]["instances"]) == 3
    assert pps.started.isoformat() == "2026-11-25T10:05:00" and pps.ended.isoformat() == "2026-11-25T10:15:00"


def test_order_completes_only_when_every_step_ended(scheduled, assoc):
    study = "1.2.156.112604.1.2.3001.1"
    assert create(assoc, mpps_attributes(study_uid=study, accession="ACC3001", sps_id="SPS3001A"),
                  uid="1.2.3.100")[0].Status == 0
    assert update(assoc, completion(), uid="1.2.3.100").Status == 0
    halfway = order(scheduled, "ACC3001")
    assert halfway["status"] == "in_progress"
    assert sorted(s["status"] for s in halfway["steps"]) == ["COMPLETED", "SCHEDULED"]
    assert create(assoc, mpps_attributes(study_uid=study, accession="ACC3001", sps_id="SPS3001B"),
                  uid="1.2.3.101")[0].Status == 0
    assert update(assoc, completion("DISCONTINUED", instances=0), uid="1.2.3.101").Status == 0
    assert order(scheduled, "ACC3001")["status"] == "completed"  # one step done, one discontinued


def test_discontinued(scheduled, assoc):
    assert create(assoc, mpps_attributes(study_uid=STUDY, accession="ACC0001"))[0].Status == 0
    assert update(assoc, completion("DISCONTINUED", instances=0)).Status == 0
    stopped = order(scheduled, "ACC0001")
    assert stopped["status"] == "discontinued" and stopped["steps"][0]["status"] == "DISCONTINUED"
    assert "ACC0001" not in worklist_accessions(scheduled)


def test_scp_assigns_the_instance_uid_when_the_modality_does_not(scheduled, assoc):
    status, _ = assoc.send_n_create(mpps_attributes(study_uid=STUDY, accession="ACC0001"),
                                    ModalityPerformedProcedureStep, None)
    assert status.Status == 0
    from sqlmodel import Session, select

    from pacs.registry.models import PerformedProcedureStep

    with Session(scheduled.db.engine) as session:
        [pps] = session.exec(select(PerformedProcedureStep)).all()
    assert pps.sop_instance_uid.startswith("2.25.") or pps.sop_instance_uid.count(".") > 4


def test_unscheduled_step_is_kept(scheduled, assoc):
    status, _ = create(assoc, mpps_attributes(study_uid="1.2.3.999", accession="NOPE"))
    assert status.Status == 0
    assert update(assoc, completion()).Status == 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"PerformedProcedureStepStatus": "COMPLETED"}, 0x0106),  # N-CREATE must be IN PROGRESS
        ({"PerformedProcedureStepStatus": "DONE"}, 0x0106),
        ({"ScheduledStepAttributesSequence": None}, 0x0120),  # Type 1 attribute missing
        ({"Modality": None}, 0x0120),
    ],
)
def test_create_errors(scheduled, assoc, change, expected):
    attributes = mpps_attributes(study_uid=STUDY, accession="ACC0001")
    for keyword, value in change.items():
        if value is None:
            delattr(attributes, keyword)
        else:
            setattr(attributes, keyword, value)
    status, _ = create(assoc, attributes)
    assert status.Status == expected and status.ErrorComment
    assert order(scheduled, "ACC0001")["status"] == "scheduled"  # nothing happened


def test_duplicate_create(scheduled, assoc):
    assert create(assoc, mpps_attributes(study_uid=STUDY, accession="ACC0001"))[0].Status == 0
    assert create(assoc, mpps_attributes(study_uid=STUDY, accession="ACC0001"))[0].Status == 0x0111


def test_set_errors(scheduled, assoc):
    assert update(assoc, completion(), uid="1.2.3.404").Status == 0x0112  # no such instance
    assert create(assoc, mpps_attributes(study_uid=STUDY, accession="ACC0001"))[0].Status == 0
    bad = completion()
    bad.PerformedProcedureStepStatus = "FINISHED"
    assert update(assoc, bad).Status == 0x0106
    change_patient = completion()
    change_patient.PatientID = "OTHER"
    assert update(assoc, change_patient).Status == 0x0110
    assert update(assoc, completion()).Status == 0
    again = update(assoc, completion())
    assert again.Status == 0x0110 and again.ErrorID == 0xA710  # may no longer be updated
    # and the AE keeps serving
    assert assoc.send_c_echo().Status == 0

"""MPPS SCP with pynetdicom as the modality; the procedure lifecycle it drives."""

from __future__ import annotations

import time

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
    assert update(assoc, change_patient).Status == 0x0105  # "Not allowed" at N-SET
    assert update(assoc, completion()).Status == 0
    again = update(assoc, completion())
    assert again.Status == 0x0110 and again.ErrorID == 0xA710  # may no longer be updated
    # and the AE keeps serving
    assert assoc.send_c_echo().Status == 0


# -- PS3.4 Table F.7.2-1, nested requirements included ---------------------------------------------


def _item(attributes, keyword):
    return attributes[keyword].value[0]


@pytest.mark.parametrize(
    ("mutate", "expected", "named"),
    [
        # Type 1 inside the Scheduled Step Attributes Sequence: absent, then present and empty
        (lambda a: delattr(_item(a, "ScheduledStepAttributesSequence"), "StudyInstanceUID"), 0x0120,
         "StudyInstanceUID"),
        (lambda a: setattr(_item(a, "ScheduledStepAttributesSequence"), "StudyInstanceUID", ""), 0x0121,
         "StudyInstanceUID"),
        # Type 1 two levels down, in a Referenced Study Sequence item
        (lambda a: setattr(_item(a, "ScheduledStepAttributesSequence"), "ReferencedStudySequence",
                           [_ref_without_class()]), 0x0120, "ReferencedSOPClassUID"),
        # an empty sequence where the standard asks for an item (Type 1)
        (lambda a: setattr(a, "ScheduledStepAttributesSequence", []), 0x0121, "ScheduledStepAttributesSequence"),
        # present but empty top-level Type 1
        (lambda a: setattr(a, "PerformedProcedureStepStartDate", ""), 0x0121, "PerformedProcedureStepStartDate"),
        (lambda a: setattr(a, "PerformedStationAETitle", ""), 0x0121, "PerformedStationAETitle"),
        # a Type 1 value that is no value of its VR
        (lambda a: setattr(_item(a, "ScheduledStepAttributesSequence"), "StudyInstanceUID", "not-a-uid"), 0x0106,
         "StudyInstanceUID"),
    ],
    ids=["item-study-uid-missing", "item-study-uid-empty", "ref-study-class-missing",
         "scheduled-steps-empty", "start-date-empty", "station-empty", "item-study-uid-invalid"],
)
def test_create_checks_required_attributes_at_every_level(scheduled, assoc, mutate, expected, named):
    """PS3.4 5.4.2.1 and Table F.7.2-1: a missing required attribute is 0x0120, an empty Type 1
    one 0x0121, wherever it sits; nothing is started."""
    attributes = mpps_attributes(study_uid=STUDY, accession="ACC0001", sps_id="SPS0001")
    mutate(attributes)
    status, _ = create(assoc, attributes)
    assert status.Status == expected, status
    assert named in status.ErrorComment or _tag_of(named) in status.ErrorComment
    found = order(scheduled, "ACC0001")
    assert found["status"] == "scheduled" and found["steps"][0]["status"] == "SCHEDULED"
    assert assoc.send_c_echo().Status == 0


def test_a_type_2_attribute_left_out_is_taken_as_sent_empty(scheduled, assoc):
    """Modalities omit type 2 attributes; the step still starts (mpps._demands)."""
    attributes = mpps_attributes(study_uid=STUDY, accession="ACC0001", sps_id="SPS0001")
    del _item(attributes, "ScheduledStepAttributesSequence").AccessionNumber
    del attributes.PerformedProcedureStepDescription
    status, _ = create(assoc, attributes)
    assert status.Status == 0x0000, status
    assert order(scheduled, "ACC0001")["status"] == "in_progress"


def _ref_without_class():
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPInstanceUID = "1.2.3.4"
    return ref


def _tag_of(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@pytest.mark.parametrize(
    ("mutate", "expected", "named"),
    [
        # Type 1 in a Performed Series Sequence item at N-SET; the identifier list names its tag
        (lambda m: delattr(_item(m, "PerformedSeriesSequence"), "SeriesInstanceUID"), 0x0120, "SeriesInstanceUID"),
        (lambda m: setattr(_item(m, "PerformedSeriesSequence"), "ProtocolName", ""), 0x0121, "ProtocolName"),
        # Type 1 in a Referenced Image Sequence item
        (lambda m: delattr(_item(m, "PerformedSeriesSequence").ReferencedImageSequence[1], "ReferencedSOPInstanceUID"),
         0x0120, "ReferencedSOPInstanceUID"),
        # final state (F.7.2.2.2): COMPLETED with no end date (created empty, never set)
        (lambda m: delattr(m, "PerformedProcedureStepEndDate"), 0x0121, "PerformedProcedureStepEndDate"),
        # 3/1 at N-SET: optional, but not empty; and a series must exist at the end (Note 2)
        (lambda m: setattr(m, "PerformedSeriesSequence", []), 0x0121, "PerformedSeriesSequence"),
        (lambda m: setattr(m, "PerformedProcedureStepStatus", ""), 0x0121, "PerformedProcedureStepStatus"),
        # "Not allowed" at N-SET: an attribute the SCU may not set (no processing failure)
        (lambda m: setattr(m, "PatientID", "OTHER"), 0x0105, "PatientID"),
        (lambda m: setattr(m, "PerformedStationName", "CT9"), 0x0105, "PerformedStationName"),
    ],
    ids=["series-uid-missing", "protocol-empty", "image-ref-missing", "end-date-never-set", "series-empty",
         "status-empty", "patient-id-not-allowed", "station-name-not-allowed"],
)
def test_set_checks_required_attributes_at_every_level(scheduled, assoc, mutate, expected, named):
    assert create(assoc, mpps_attributes(study_uid=STUDY, accession="ACC0001", sps_id="SPS0001"))[0].Status == 0
    modifications = completion()
    mutate(modifications)
    status = update(assoc, modifications)
    assert status.Status == expected, status
    assert named in status.ErrorComment or _tag_of(named) in status.ErrorComment
    from pydicom.datadict import tag_for_keyword

    if expected in (0x0105, 0x0120):
        assert tag_for_keyword(named) in [int(t) for t in _as_list(status.AttributeIdentifierList)]
    assert order(scheduled, "ACC0001")["status"] == "in_progress"  # not ended
    assert update(assoc, completion()).Status == 0  # the step can still be ended properly
    assert order(scheduled, "ACC0001")["status"] == "completed"


def _as_list(value) -> list:
    return [value] if isinstance(value, int) else list(value)  # one tag comes back as a bare BaseTag


# -- the lifecycle only moves forward --------------------------------------------------------------


def _image_of_the_order(tmp_path):
    from tests.archive.test_reconcile import ct_for

    return ct_for(tmp_path, StudyInstanceUID=STUDY, AccessionNumber="ACC0001", PatientID="P10001")


@pytest.mark.parametrize("images", ["while_in_progress", "after_completion"])
def test_order_moves_forward_whatever_comes_first(start_server, tmp_path, images):
    """Images received while the step is still being performed, or after it: the order goes
    scheduled → in progress → completed → images received either way, and the HIS hears IP, CM
    and A in that order."""
    from pacs.integration.hl7v2 import parse
    from pacs.settings import HISDestination, OutboxSettings
    from tests.archive.test_store import send_file
    from tests.integration.test_his_outbox import FakeHIS, wait_for

    his = FakeHIS()
    try:
        server = start_server(his=HISDestination(host="127.0.0.1", port=his.port, notify_images_available=True),
                              outbox=OutboxSettings(base_delay_seconds=0.1, max_delay_seconds=0.5))
        assert [a["code"] for a in send_all(server.mllp_port, ["orm_o01_nw_ihe.hl7"])] == ["AA"]
        association = client("CT1").associate("127.0.0.1", server.dicom_port, ae_title="PACS")
        assert create(association, mpps_attributes(study_uid=STUDY, accession="ACC0001",
                                                    sps_id="SPS0001"))[0].Status == 0
        if images == "while_in_progress":
            assert send_file(server.dicom_port, _image_of_the_order(tmp_path)).Status == 0
            assert order(server, "ACC0001")["status"] == "in_progress"  # the step is still being performed
        assert update(association, completion()).Status == 0
        if images == "after_completion":
            assert send_file(server.dicom_port, _image_of_the_order(tmp_path)).Status == 0
        association.release()

        done = order(server, "ACC0001")
        assert done["status"] == "images_received"
        assert [e["to_status"] for e in done["events"]] == ["scheduled", "in_progress", "completed",
                                                           "images_received"]
        wait_for(lambda: len(his.received) >= 3)
        time.sleep(0.3)
        assert [parse(text).get("ORC-5") for text in his.received] == ["IP", "CM", "A"]
    finally:
        his.close()

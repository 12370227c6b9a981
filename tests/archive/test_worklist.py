"""Modality Worklist SCP over loopback, with DCMTK findscu -W and pynetdicom as modalities."""

from __future__ import annotations

import threading

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from tests.dicom import client, findscu, mwl_find, needs_dcmtk
from tests.helpers import MLLPClient, ack_fields, load, send_all

SCHEDULE = ["adt_a01_ihe.hl7", "orm_o01_nw_ihe.hl7", "orm_o01_nw2_ihe.hl7", "omi_o23_nw_ihe.hl7",
            "adt_a04_china_gb18030.hl7", "orm_o01_multi_china.hl7"]


@pytest.fixture
def scheduled(server):
    assert [a["code"] for a in send_all(server.mllp_port, SCHEDULE)] == ["AA"] * len(SCHEDULE)
    return server


def query(charset: str | None = None, **keys: str) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    sps = Dataset()
    for name in ("ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
                 "Modality", "ScheduledProcedureStepID", "ScheduledProcedureStepDescription",
                 "ScheduledProcedureStepStatus"):
        setattr(sps, name, keys.pop(name, ""))
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    for name in ("PatientName", "PatientID", "AccessionNumber", "RequestedProcedureID", "StudyInstanceUID",
                 "PatientBirthDate", "PatientSex", "RequestedProcedureDescription", "AdmissionID",
                 "ReferringPhysicianName", "RequestedProcedurePriority"):
        setattr(ds, name, keys.pop(name, ""))
    assert not keys, keys
    return ds


def accessions(matches: list[Dataset]) -> list[str]:
    return sorted(str(m.AccessionNumber) for m in matches)


@needs_dcmtk
def test_findscu_by_station_and_date(scheduled, tmp_path):
    answers = findscu(scheduled.dicom_port, [
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT1",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261125",
        "ScheduledProcedureStepSequence[0].Modality", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
        "PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", "PatientBirthDate", "PatientSex",
        "RequestedProcedureID", "ReferringPhysicianName",
    ], tmp_path / "out")
    by_accession = {str(a.AccessionNumber): a for a in answers}
    assert set(by_accession) >= {"ACC0001"} and len(answers) == 2  # ACC0001 and the Chinese HIS's CT
    zhang = by_accession["ACC0001"]
    assert str(zhang.PatientName) == "ZHANG^SAN"  # no character set asked: pinyin alone, ASCII
    assert zhang.PatientID == "P10001" and zhang.PatientSex == "M" and zhang.PatientBirthDate == "19900101"
    assert zhang.StudyInstanceUID == "1.2.840.113619.2.55.3.1234567.20261125.1"  # fixed at scheduling
    assert zhang.ScheduledProcedureStepSequence[0].Modality == "CT"
    assert zhang.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == "SPS0001"
    assert str(zhang.ReferringPhysicianName) == "ZHAO^LIU"
    assert "SpecificCharacterSet" not in zhang


@needs_dcmtk
def test_findscu_in_unicode_gets_every_name_group(scheduled, tmp_path):
    answers = findscu(scheduled.dicom_port, [
        "SpecificCharacterSet=ISO_IR 192", "PatientName=欧阳*", "PatientID",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
    ], tmp_path / "out")
    assert len(answers) == 2
    assert all(a.SpecificCharacterSet == "ISO_IR 192" for a in answers)
    assert {str(a.PatientName) for a in answers} == {"OUYANG^NANA=欧阳^娜娜"}
    assert {a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription for a in answers} == {
        "胸部CT平扫", "膝关节正侧位"}


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({}, ["A00000005", "A00000006", "ACC0001", "ACC0002", "ACC0003", "ACC3001", "ACC3001"]),  # universal
        ({"Modality": "MR"}, ["ACC0002"]),
        ({"Modality": "dx"}, ["A00000006"]),
        ({"ScheduledStationAETitle": "CT2"}, ["ACC3001", "ACC3001"]),
        ({"ScheduledProcedureStepStartDate": "20261125-20261125"}, None),
        ({"ScheduledProcedureStepStartDate": "20261126-"}, []),
        ({"ScheduledProcedureStepStartDate": "-20261124"}, []),
        ({"ScheduledProcedureStepStartTime": "100000-105959"}, ["A00000005", "ACC0001", "ACC3001", "ACC3001"]),
        ({"ScheduledProcedureStepStartTime": "15"}, ["ACC0002"]),
        ({"ScheduledProcedureStepStartDate": "20261125", "ScheduledProcedureStepStartTime": "-1059"},
         ["A00000005", "ACC0001", "ACC3001", "ACC3001"]),
        ({"PatientID": "P30001"}, ["ACC3001", "ACC3001"]),
        ({"PatientName": "ZHANG*"}, ["ACC0001", "ACC0002", "ACC0003"]),
        ({"PatientName": "zhang^san"}, ["ACC0001", "ACC0002", "ACC0003"]),
        ({"PatientName": "张*", "charset": "ISO_IR 192"}, ["ACC0001", "ACC0002", "ACC0003"]),
        ({"PatientName": "*NA*"}, ["A00000005", "A00000006"]),
        ({"PatientName": "LYU^XIAO?YU"}, ["ACC3001", "ACC3001"]),
        ({"PatientName": "=欧阳^娜娜", "charset": "GB18030"}, ["A00000005", "A00000006"]),
        ({"PatientName": "WANG*"}, []),
        ({"AccessionNumber": "ACC0002"}, ["ACC0002"]),
        ({"AccessionNumber": "ACC000?"}, ["ACC0001", "ACC0002", "ACC0003"]),
        ({"RequestedProcedureID": "RP3001"}, ["ACC3001", "ACC3001"]),
        ({"ScheduledProcedureStepID": "SPS3001B"}, ["ACC3001"]),
        ({"StudyInstanceUID": "1.2.156.112604.1.2.3001.1\\1.2.840.113619.2.55.3.1234567.20261125.1"},
         ["ACC0001", "ACC3001", "ACC3001"]),
        ({"PatientSex": "F", "Modality": "CT"}, ["A00000005", "ACC3001", "ACC3001"]),
        ({"PatientBirthDate": "19500101-19601231"}, ["ACC3001", "ACC3001"]),
    ],
)
def test_matching(scheduled, keys, expected):
    keys = dict(keys)
    statuses, matches, final = mwl_find(scheduled.dicom_port, query(keys.pop("charset", None), **keys))
    assert final is not None and final.Status == 0x0000
    if expected is None:  # same as universal
        expected = accessions(mwl_find(scheduled.dicom_port, query())[1])
    assert accessions(matches) == expected


def test_return_keys_and_sequences(scheduled):
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.AccessionNumber = "ACC3001"
    ds.ScheduledProcedureStepSequence = Sequence([])  # empty sequence: return it whole
    ds.RequestedProcedureCodeSequence = Sequence([])
    ds.PatientName = ""
    ds.AdmissionID = ""
    ds.RequestedProcedurePriority = ""
    _, matches, _ = mwl_find(scheduled.dicom_port, ds)
    assert len(matches) == 2
    first = sorted(matches, key=lambda m: m.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID)[0]
    assert set(first.dir()) == {"SpecificCharacterSet", "AccessionNumber", "ScheduledProcedureStepSequence",
                                "RequestedProcedureCodeSequence", "PatientName", "AdmissionID",
                                "RequestedProcedurePriority"}
    sps = first.ScheduledProcedureStepSequence[0]
    assert sps.ScheduledProcedureStepID == "SPS3001A" and sps.ScheduledStationAETitle == "CT2"
    assert sps.ScheduledProcedureStepStartDate == "20261125" and sps.ScheduledProcedureStepStartTime == "100000"
    assert sps.ScheduledProtocolCodeSequence[0].CodeValue == "ABD_ARTERIAL"
    assert sps.ScheduledProcedureStepStatus == "SCHEDULED"
    assert first.RequestedProcedureCodeSequence[0].CodeValue == "CT0201"
    assert first.RequestedProcedureCodeSequence[0].CodeMeaning == "上腹部CT增强"
    assert first.AdmissionID == "V3001" and first.RequestedProcedurePriority == "STAT"
    assert str(first.PatientName) == "LYU^XIAONYU=吕^小女"


def test_every_return_key_the_worklist_fills(scheduled):
    """Each key of VALUES and SPS_VALUES asked at once: every one comes back, filled from the
    registry where it has a value (the answer reads only the columns worklist.READ selects)."""
    from pacs.archive.worklist import SPS_VALUES, VALUES

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in VALUES:
        setattr(ds, keyword, Sequence([]) if keyword.endswith("Sequence") else "")
    ds.AccessionNumber = "ACC3001"
    sps = Dataset()
    for keyword in SPS_VALUES:
        setattr(sps, keyword, Sequence([]) if keyword.endswith("Sequence") else "")
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    _, matches, final = mwl_find(scheduled.dicom_port, ds)
    assert final is not None and final.Status == 0x0000 and len(matches) == 2
    first = sorted(matches, key=lambda m: m.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID)[0]
    assert set(first.dir()) == set(VALUES) | {"SpecificCharacterSet", "ScheduledProcedureStepSequence"}
    assert set(first.ScheduledProcedureStepSequence[0].dir()) == set(SPS_VALUES)
    assert first.AdmissionID == "V3001" and first.PatientID and first.StudyInstanceUID
    assert first.RequestedProcedureCodeSequence[0].CodeValue == "CT0201"
    assert first.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence[0].CodeValue == "ABD_ARTERIAL"
    assert first.PlacerOrderNumberImagingServiceRequest and first.PatientBirthDate


def test_gb18030_query_gets_a_gb18030_answer(scheduled):
    _, matches, _ = mwl_find(scheduled.dicom_port, query(charset="GB18030", PatientID="1000234"))
    assert len(matches) == 2
    assert matches[0].SpecificCharacterSet == "GB18030"
    assert str(matches[0].PatientName) == "OUYANG^NANA=欧阳^娜娜"


def test_latin1_query_gets_ascii_pinyin_and_transliterated_text(scheduled):
    _, matches, _ = mwl_find(scheduled.dicom_port, query(charset="ISO_IR 100", AccessionNumber="ACC0001",
                                                         RequestedProcedureDescription=""))
    [match] = matches
    assert "SpecificCharacterSet" not in match
    assert str(match.PatientName) == "ZHANG^SAN"
    assert match.RequestedProcedureDescription == "XIONG BU CT PING SAO"
    assert match.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription == "XIONG BU CT PING SAO"


def test_charset_fixed_per_peer(start_server):
    from pacs.settings import Peer

    server = start_server(peers=[Peer(ae_title="CT1", host="127.0.0.1", port=104, charset="ISO_IR 192")])
    send_all(server.mllp_port, ["orm_o01_nw_ihe.hl7"])
    _, as_ct1, _ = mwl_find(server.dicom_port, query(), calling="CT1")
    _, as_other, _ = mwl_find(server.dicom_port, query(), calling="MR1")
    assert str(as_ct1[0].PatientName) == "ZHANG^SAN=张^三" and as_ct1[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(as_other[0].PatientName) == "ZHANG^SAN"


def test_items_leave_the_worklist_when_cancelled_or_discontinued(scheduled):
    before = accessions(mwl_find(scheduled.dicom_port, query())[1])
    with MLLPClient(scheduled.mllp_port) as mllp:
        assert ack_fields(mllp.send(load("orm_o01_ca_ihe.hl7")))["code"] == "AA"
        assert ack_fields(mllp.send(load("orm_o01_dc_ihe.hl7")))["code"] == "AA"
    after = accessions(mwl_find(scheduled.dicom_port, query())[1])
    assert sorted(set(before) - set(after)) == ["ACC0002", "ACC0003"]


def failing(port: int, ds: Dataset, transfer_syntax: str | None = None) -> Dataset:
    statuses, matches, final = mwl_find(port, ds, transfer_syntax=transfer_syntax)
    assert not matches and final is not None
    return final


def test_unknown_key_is_refused_with_offending_element(scheduled):
    ds = query()
    ds.StudyDescription = ""
    final = failing(scheduled.dicom_port, ds)
    assert final.Status == 0xA900
    assert "StudyDescription" in final.ErrorComment and final.OffendingElement == 0x00081030


def test_wrong_vr_is_refused(scheduled):
    ds = query()
    del ds.PatientBirthDate
    ds.add_new(0x00100030, "LO", "yesterday")  # Patient's Birth Date is DA
    final = failing(scheduled.dicom_port, ds, ExplicitVRLittleEndian)  # explicit VR: the wrong VR is on the wire
    assert final.Status == 0xA900 and "VR DA" in final.ErrorComment and final.OffendingElement == 0x00100030
    # implicit VR: the value itself is checked against DA
    final = failing(scheduled.dicom_port, ds)
    assert final.Status == 0xC000 and "not a DICOM date" in final.ErrorComment


@pytest.mark.parametrize("value", ["20261130-20261101", "20261301", "2026-11-25", "2026112"])
def test_impossible_or_invalid_dates_are_refused(scheduled, value):
    final = failing(scheduled.dicom_port, query(ScheduledProcedureStepStartDate=value))
    assert final.Status == 0xC000 and final.ErrorComment


def test_impossible_time_is_refused(scheduled):
    final = failing(scheduled.dicom_port, query(ScheduledProcedureStepStartTime="2500"))
    assert final.Status == 0xC000 and "time" in final.ErrorComment
    # and the AE still serves
    assert mwl_find(scheduled.dicom_port, query())[2].Status == 0


@needs_dcmtk
def test_c_cancel_stops_the_answers(server, tmp_path):
    # Enough steps that answering all of them takes far longer than a C-CANCEL takes to arrive,
    # even on a loaded machine: 100 orders of 20 requested procedures each.
    header, order = load("orm_o01_nw_ihe.hl7").split(b"\rORC|", 1)
    order = b"ORC|" + order.split(b"\rZDS|")[0]
    with MLLPClient(server.mllp_port) as mllp:
        for n in range(100):
            groups = [order.replace(b"PL0001", f"PL{n:03d}{k:02d}".encode())
                      .replace(b"ACC0001", f"ACC{n:03d}{k:02d}".encode())
                      .replace(b"RP0001", f"RP{n:03d}{k:02d}".encode())
                      .replace(b"SPS0001", f"SPS{n:03d}{k:02d}".encode()) for k in range(20)]
            message = b"\r".join([header.replace(b"ORM0001", f"C{n:03d}".encode()), *groups])
            assert ack_fields(mllp.send(message))["code"] == "AA"
    # findscu, in its own process, sends C-CANCEL once the first answer is in
    answers = findscu(server.dicom_port, ["AccessionNumber", "PatientID"], tmp_path / "out", options=("--cancel", "1"))
    assert 1 <= len(answers) < 2000
    # the association ended with the cancel status, and the AE serves the next query in full
    assert len(mwl_find(server.dicom_port, query())[1]) == 2000


def test_unknown_calling_ae_refused_when_configured(start_server):
    from pacs.settings import Peer

    server = start_server(dicom={"accept_unknown_peers": False},
                          peers=[Peer(ae_title="CT1", host="127.0.0.1", port=104)])
    assert client("CT1").associate("127.0.0.1", server.dicom_port, ae_title="PACS").is_established
    stranger = client("NOBODY").associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert stranger.is_rejected


def test_concurrent_queries(scheduled):
    errors: list[str] = []

    def ask() -> None:
        for _ in range(5):
            statuses, matches, final = mwl_find(scheduled.dicom_port, query(Modality="CT"))
            if final is None or final.Status != 0 or len(matches) != 4:
                errors.append(f"{statuses} {len(matches)}")

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors


def test_shaped_worklist_queries_read_what_their_statements_read(scheduled):
    """A worklist query is built and compiled once per shape of its keys and run with the values
    as parameters (pacs.db.Shaped). Random mixes of the matching keys' forms, met in a random
    order and twice, read exactly the rows of the same query built with the values and run by
    SQLAlchemy: two shapes sharing a key would read another's rows."""
    import random

    from pacs.archive import worklist
    from pacs.archive.query import every
    from pacs.db import Database

    forms = {
        "Modality": ["MR", "dx", "C*", "*T"], "ScheduledStationAETitle": ["CT2", "CT*"],
        "ScheduledProcedureStepStartDate": ["20261125", "20261125-20261125", "20261126-", "-20261124", "-20261125"],
        "ScheduledProcedureStepStartTime": ["100000-105959", "15", "-1059", "10-"],
        "ScheduledProcedureStepStatus": ["SCHEDULED", "SCHEDULED\\STARTED", "COMPLETED"],
        "PatientID": ["P30001", "P3*", "*0001"], "PatientName": ["ZHANG*", "zhang^san", "*NA*", "LYU^XIAO?YU", "WANG"],
        "AccessionNumber": ["ACC0002", "ACC000?"], "RequestedProcedureID": ["RP3001"],
        "ScheduledProcedureStepID": ["SPS3001B"],
        "StudyInstanceUID": ["1.2.156.112604.1.2.3001.1\\1.2.840.113619.2.55.3.1234567.20261125.1",
                             "1.2.156.112604.1.2.3001.1"],
        "PatientSex": ["F", "m"], "PatientBirthDate": ["19500101-19601231", "-19601231"],
    }
    rng = random.Random(25)
    queries = [query(**{key: rng.choice(forms[key]) for key in rng.sample(sorted(forms), rng.randint(1, 3))})
               for _ in range(120)]
    order_at = len(worklist.READ[worklist.ProcedureStep])  # where each table's id is in a row
    patient_at = order_at + len(worklist.READ[worklist.ImagingOrder])
    db = Database(scheduled.settings.database_url)
    try:
        with db.reading() as conn:
            matched = 0
            for identifier in queries + rng.sample(queries, len(queries)):
                shaped = [(r.step.id, r.order.id, r.patient.id) for r in worklist.find_rows(conn, identifier)]
                where = every("and", worklist.conditions(identifier)).expression()
                built = conn.execute(worklist._open_items().where(where))
                assert shaped == [(row[0], row[order_at], row[patient_at]) for row in built], identifier
                matched += bool(shaped)
            assert matched > 40  # many mixes match something: the comparison is not of empty lists
    finally:
        db.dispose()

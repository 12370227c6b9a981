"""Prefetch: when an order arrives over HL7, the patient's prior studies of the same modality or
body part come back from the nearline and offline tiers ahead of time; others stay where they are."""

from __future__ import annotations

import time

from tests.archive.storage_helpers import areas_of, make_study, send, storage, storage_config, study_id
from tests.helpers import send_all


def test_priors_are_recalled_when_an_order_arrives(start_server, tmp_path):
    server = start_server(storage=storage_config(tmp_path, prefetch_poll_seconds=0.1))
    # P10001's priors: a chest CT (same modality and body part), a chest X-ray (same body part),
    # a head MR (neither), and another patient's chest CT.
    chest_ct = make_study(tmp_path / "a", 3, size=64, modality="CT", body_part="CHEST", study_date="20230105")
    chest_dx = make_study(tmp_path / "b", 1, size=64, modality="DX", body_part="CHEST", study_date="20220301")
    head_mr = make_study(tmp_path / "c", 2, size=64, modality="MR", body_part="HEAD", study_date="20240210")
    other = make_study(tmp_path / "d", 1, size=64, modality="CT", body_part="CHEST", patient_id="P99999")
    manager = storage(server)
    for study, area in ((chest_ct, "tape"), (chest_dx, "nearline"), (head_mr, "tape"), (other, "tape")):
        send(server.dicom_port, study.paths)
        manager.migrate_study(study_id(server, study.study_uid), "online", area)

    acks = send_all(server.mllp_port, ["adt_a01_ihe.hl7", "orm_o01_nw_ihe.hl7"])  # P10001: chest CT
    assert [a["code"] for a in acks] == ["AA", "AA"]
    deadline = time.monotonic() + 30
    while not ("online" in areas_of(server, chest_ct.study_uid) and "online" in areas_of(server, chest_dx.study_uid)):
        assert time.monotonic() < deadline, "priors were not recalled"
        time.sleep(0.1)
    assert areas_of(server, chest_ct.study_uid) == {"tape", "online"}
    assert areas_of(server, chest_dx.study_uid) == {"nearline", "online"}
    time.sleep(0.5)
    assert areas_of(server, head_mr.study_uid) == {"tape"}
    assert areas_of(server, other.study_uid) == {"tape"}

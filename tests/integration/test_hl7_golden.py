"""Every message type and order control, sent over a real MLLP connection, against golden files."""

from __future__ import annotations

import pytest

from tests.conftest import front_process_settings
from tests.helpers import golden, send_all, snapshot

SCENARIOS = {
    # ADT A01 admit, A08 update, A03 discharge, A13 cancel discharge, A11 cancel admit
    "adt_visit_lifecycle": ["adt_a01_ihe.hl7", "adt_a08_ihe.hl7", "adt_a03_ihe.hl7", "adt_a13_ihe.hl7",
                            "adt_a11_ihe.hl7"],
    # A40: the prior patient's order moves to the surviving patient; the old ID still resolves
    "adt_merge": ["adt_a01_ihe.hl7", "adt_a04_prior_ihe.hl7", "orm_o01_nw_prior_ihe.hl7", "adt_a40_ihe.hl7"],
    # A47: the identifier changes, the patient and its orders stay
    "adt_change_identifier": ["adt_a01_ihe.hl7", "orm_o01_nw_ihe.hl7", "adt_a47_ihe.hl7"],
    # ORM^O01 v2.3.1: NW, XO, SC, a two-order NW, CA, DC
    "orm_controls": ["orm_o01_nw_ihe.hl7", "orm_o01_xo_ihe.hl7", "orm_o01_sc_ihe.hl7", "orm_o01_nw2_ihe.hl7",
                     "orm_o01_ca_ihe.hl7", "orm_o01_dc_ihe.hl7"],
    # OMI^O23 v2.5.1 with TQ1 and two IPC steps, the study UID from IPC-3
    "omi_two_steps": ["omi_o23_nw_ihe.hl7"],
    # A Chinese HIS: GB 18030 without MSH-18, the whole name in PID-5.1, two orders in one message
    "china_his": ["adt_a04_china_gb18030.hl7", "orm_o01_multi_china.hl7"],
}


@pytest.fixture(params=["in process", "front process"])
def settings(request, settings):
    """Both ways of serving MLLP give the same result: parsed and mapped by the intake worker,
    or ahead of it by the front process."""
    return front_process_settings(settings) if request.param == "front process" else settings


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario(server, scenario):
    acks = send_all(server.mllp_port, SCENARIOS[scenario])
    assert [a["code"] for a in acks] == ["AA"] * len(acks), [a["text"] for a in acks]
    golden(f"hl7_{scenario}", snapshot(server.db))


def test_ack_swaps_sender_and_receiver_and_echoes_control_id(server):
    [ack] = send_all(server.mllp_port, ["adt_a01_ihe.hl7"])
    msh = ack["msh"]
    assert msh[2:6] == ["PACS", "RADIOLOGY", "HIS", "IHE_OP"]
    assert msh[8] == "ACK^A01^ACK"
    assert ack["control_id"] == "ADT0001"
    assert msh[9] and msh[9] != "ADT0001"  # the ACK has a control ID of its own
    assert msh[17] == "UNICODE UTF-8"  # answered in the sender's character set


def test_gb18030_ack_is_encoded_in_gb18030(server):
    [ack] = send_all(server.mllp_port, ["adt_a04_china_gb18030.hl7"])
    assert ack["code"] == "AA" and ack["control_id"] == "CN0001"

"""The tolerant ER7 reader."""

from __future__ import annotations

import pytest

from pacs.integration import hl7v2
from pacs.integration.hl7v2 import Address, HL7ParseError, escape, parse, unescape
from tests.helpers import load


def test_reads_fields_components_repetitions_and_subcomponents():
    m = parse(load("adt_a01_ihe.hl7").decode())
    assert m.message_type == "ADT^A01" and m.control_id == "ADT0001" and m.version == "2.5"
    assert m.charset == "UNICODE UTF-8"
    assert m.get("PID-3.1") == "P10001"
    assert m.get("PID-3[2].1") == "110101199001011234"
    assert m.get("PID-3[2].5") == "NI"
    assert m.get("PID-5[2].1") == "ZHANG"
    assert m.get("PV1-7.2") == "李"
    assert m.get("MSH-1") == "|" and m.get("MSH-2") == "^~\\&"
    assert m.get("ZZZ-1") == "" and m.get("PID-99") == "" and m.get("PID-3[9].1") == ""


def test_tolerates_newlines_blank_lines_and_z_segments():
    text = "MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.4\r\n\nPID|1||X^^^H||Li^Lei\nZPI|custom|data\n"
    m = parse(text)
    assert [s.name for s in m.segments] == ["MSH", "PID", "ZPI"]
    assert m.get("ZPI-2") == "data"


def test_custom_delimiters():
    m = parse("MSH#$*@%#APP#FAC#R#RF#2026##ADT$A01#9#P#2.5\rPID#1##ID1$$$AUTH*ID2$$$AUTH2##Wu$Gang")
    assert m.message_type == "ADT^A01"
    assert m.get("PID-3[2].4") == "AUTH2" and m.get("PID-5.2") == "Gang"


@pytest.mark.parametrize("text", ["PID|1", "MSH", "MSHA^~\\&A", "MSH|^~|X", "MSH|^^^^|", "MSH|^~\\&|\r1AB|x"])
def test_rejects_what_is_not_hl7(text):
    with pytest.raises(HL7ParseError):
        parse(text)


def test_escape_sequences_round_trip():
    raw = "a|b^c&d~e\\f\nline"
    assert unescape(escape(raw)) == raw
    assert unescape("\\X4142\\ and \\.br\\ and \\H\\bold\\N\\") == "AB and \n and bold"


def test_groups_split_at_each_orc():
    m = parse(load("orm_o01_nw2_ihe.hl7").decode())
    head, groups = m.groups("ORC")
    assert [s.name for s in head.segments] == ["MSH", "PID"]
    assert [g.get("ORC-2.1") for g in groups] == ["PL0002", "PL0003"]
    assert [g.get("OBR-4.1") for g in groups] == ["MR0001", "US0001"]


def test_address_parsing_and_errors():
    assert str(Address.parse("PID-3[2].4.1")) == "PID-3[2].4.1"
    assert Address.parse("OBR[2]-4").occurrence == 2
    for bad in ("PID3", "PID-0", "pid-3", "PID-3.x"):
        with pytest.raises(ValueError):
            Address.parse(bad)


def test_parse_ts_drops_zone_and_fraction():
    assert hl7v2.parse_ts("20261125083000.1234+0800") == "20261125083000"
    assert hl7v2.parse_ts("202611250830-0500") == "202611250830"

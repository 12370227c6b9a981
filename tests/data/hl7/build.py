"""Writes the HL7 v2 test messages in this folder (run: python tests/data/hl7/build.py).

Segments are given as {field number: value} so that field positions are explicit; the files
are what goes on the wire (segments end with carriage returns, encoded in each message's
character set).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def seg(name: str, fields: dict[int, str]) -> str:
    if name == "MSH":
        values = [""] * (max(fields) - 1)
        for number, value in fields.items():
            values[number - 2] = value
        return "MSH|" + "|".join(values)
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return name + "|" + "|".join(values)


def msh(message_type: str, control: str, *, version: str = "2.5", facility: str = "IHE_OP",
        application: str = "HIS", charset: str | None = "UNICODE UTF-8", when: str = "20261125090000") -> str:
    fields = {2: "^~\\&", 3: application, 4: facility, 5: "PACS", 6: "RADIOLOGY", 7: when, 9: message_type,
              10: control, 11: "P", 12: version}
    if charset:
        fields.update({15: "AL", 16: "NE", 17: "CHN", 18: charset})
    return seg("MSH", fields)


def write(name: str, segments: list[str], codec: str = "utf-8") -> None:
    (HERE / name).write_bytes(("\r".join(segments) + "\r").encode(codec))


ZHANG = {1: "1", 3: "P10001^^^HOSP^PI", 5: "张^三^^^^^L^I", 7: "19900101", 8: "M"}


def main() -> None:
    write("adt_a01_ihe.hl7", [
        msh("ADT^A01^ADT_A01", "ADT0001", when="20261125083000"),
        seg("EVN", {1: "A01", 2: "20261125083000"}),
        seg("PID", {1: "1", 3: "P10001^^^HOSP^PI~110101199001011234^^^CHN^NI", 5: "张^三^^^^^L^I~ZHANG^SAN^^^^^L^A",
                    7: "19900101", 8: "M", 11: "东城区东华门大街1号^^北京^^100006^CHN",
                    13: "^PRN^PH^^^^^^^^^13800000001"}),
        seg("PV1", {1: "1", 2: "I", 3: "W3^301^2^HOSP", 7: "D001^李^四", 8: "D002^王^五", 19: "V2001",
                    44: "20261125080000"}),
    ])
    write("adt_a08_ihe.hl7", [
        msh("ADT^A08^ADT_A01", "ADT0002"),
        seg("EVN", {1: "A08", 2: "20261125090000"}),
        seg("PID", {**ZHANG, 5: "张^三^^^^^L^I~ZHANG^SAN^^^^^L^A", 11: "东城区王府井大街2号^^北京^^100006^CHN",
                    13: "^PRN^PH^^^^^^^^^13800000002"}),
        seg("PV1", {1: "1", 2: "I", 3: "W5^502^1^HOSP", 7: "D001^李^四", 19: "V2001"}),
    ])
    write("adt_a03_ihe.hl7", [
        msh("ADT^A03^ADT_A03", "ADT0003"),
        seg("EVN", {1: "A03", 2: "20261126100000"}),
        seg("PID", ZHANG),
        seg("PV1", {1: "1", 2: "I", 3: "W5^502^1^HOSP", 7: "D001^李^四", 19: "V2001", 44: "20261125080000",
                    45: "20261126100000"}),
    ])
    write("adt_a13_ihe.hl7", [
        msh("ADT^A13^ADT_A01", "ADT0004"),
        seg("EVN", {1: "A13", 2: "20261126110000"}),
        seg("PID", ZHANG),
        seg("PV1", {1: "1", 2: "I", 3: "W5^502^1^HOSP", 7: "D001^李^四", 19: "V2001"}),
    ])
    write("adt_a11_ihe.hl7", [
        msh("ADT^A11^ADT_A09", "ADT0005"),
        seg("EVN", {1: "A11", 2: "20261126120000"}),
        seg("PID", ZHANG),
        seg("PV1", {1: "1", 2: "I", 3: "W5^502^1^HOSP", 19: "V2001"}),
    ])
    write("adt_a04_prior_ihe.hl7", [
        msh("ADT^A04^ADT_A01", "ADT0010"),
        seg("EVN", {1: "A04", 2: "20261125091000"}),
        seg("PID", {**ZHANG, 3: "P10009^^^HOSP^PI", 5: "张^叁^^^^^L^I"}),
        seg("PV1", {1: "1", 2: "O", 3: "OPD^^^HOSP", 19: "V2009"}),
    ])
    write("orm_o01_nw_prior_ihe.hl7", [
        msh("ORM^O01", "ORM0010", version="2.3.1"),
        seg("PID", {**ZHANG, 3: "P10009^^^HOSP^PI", 5: "张^叁^^^^^L^I"}),
        seg("PV1", {1: "1", 2: "O", 3: "OPD^^^HOSP", 19: "V2009"}),
        seg("ORC", {1: "NW", 2: "PL0009^HIS", 5: "SC", 7: "^^^20261125140000^^R", 9: "20261125091500",
                    12: "D002^王^五"}),
        seg("OBR", {1: "1", 2: "PL0009^HIS", 4: "DR0001^胸部正位片^HOSP", 18: "ACC0009", 19: "RP0009",
                    20: "SPS0009", 24: "DR", 27: "^^^20261125140000^^R"}),
    ])
    write("adt_a40_ihe.hl7", [
        msh("ADT^A40^ADT_A39", "ADT0011"),
        seg("EVN", {1: "A40", 2: "20261125100000"}),
        seg("PID", ZHANG),
        seg("MRG", {1: "P10009^^^HOSP^PI"}),
    ])
    write("adt_a47_ihe.hl7", [
        msh("ADT^A47^ADT_A30", "ADT0012"),
        seg("EVN", {1: "A47", 2: "20261125101000"}),
        seg("PID", {**ZHANG, 3: "P20001^^^HOSP^PI"}),
        seg("MRG", {1: "P10001^^^HOSP^PI"}),
    ])
    order_nw = [
        msh("ORM^O01", "ORM0001", version="2.3.1", when="20261125084500"),
        seg("PID", {**ZHANG, 5: "张^三^^^^^L^I~ZHANG^SAN^^^^^L^A"}),
        seg("PV1", {1: "1", 2: "I", 3: "W3^301^2^HOSP", 8: "D003^赵^六", 19: "V2001"}),
        seg("ORC", {1: "NW", 2: "PL0001^HIS", 5: "SC", 7: "^^^20261125100000^^R", 9: "20261125084500",
                    12: "D002^王^五", 17: "RAD^放射科"}),
        seg("OBR", {1: "1", 2: "PL0001^HIS", 4: "CT0001^胸部CT平扫^HOSP", 16: "D002^王^五", 18: "ACC0001",
                    19: "RP0001", 20: "SPS0001", 24: "CT", 27: "^^^20261125100000^^R", 31: "^咳嗽两周"}),
        seg("ZDS", {1: "1.2.840.113619.2.55.3.1234567.20261125.1^HIS^Application^DICOM"}),
    ]
    write("orm_o01_nw_ihe.hl7", order_nw)
    write("orm_o01_xo_ihe.hl7", [
        msh("ORM^O01", "ORM0002", version="2.3.1"),
        seg("PID", ZHANG),
        seg("PV1", {1: "1", 2: "I", 3: "W3^301^2^HOSP", 8: "D003^赵^六", 19: "V2001"}),
        seg("ORC", {1: "XO", 2: "PL0001^HIS", 5: "SC", 7: "^^^20261125113000^^S", 9: "20261125090000",
                    12: "D002^王^五", 17: "RAD^放射科"}),
        seg("OBR", {1: "1", 2: "PL0001^HIS", 4: "CT0002^胸部CT增强^HOSP", 16: "D002^王^五", 18: "ACC0001",
                    19: "RP0001", 20: "SPS0001", 24: "CT", 27: "^^^20261125113000^^S", 31: "^咳嗽两周，发热"}),
    ])
    write("orm_o01_sc_ihe.hl7", [
        msh("ORM^O01", "ORM0003", version="2.3.1"),
        seg("PID", ZHANG),
        seg("ORC", {1: "SC", 2: "PL0001^HIS", 5: "IP"}),
    ])
    write("orm_o01_nw2_ihe.hl7", [
        msh("ORM^O01", "ORM0004", version="2.3.1"),
        seg("PID", ZHANG),
        seg("ORC", {1: "NW", 2: "PL0002^HIS", 5: "SC", 7: "^^^20261125150000^^R", 12: "D002^王^五"}),
        seg("OBR", {1: "1", 2: "PL0002^HIS", 4: "MR0001^头颅MR平扫^HOSP", 18: "ACC0002", 19: "RP0002",
                    20: "SPS0002", 24: "MR", 27: "^^^20261125150000^^R"}),
        seg("ORC", {1: "NW", 2: "PL0003^HIS", 5: "SC", 7: "^^^20261125160000^^R", 12: "D002^王^五"}),
        seg("OBR", {1: "2", 2: "PL0003^HIS", 4: "US0001^腹部超声^HOSP", 18: "ACC0003", 19: "RP0003",
                    20: "SPS0003", 24: "US", 27: "^^^20261125160000^^R"}),
    ])
    write("orm_o01_ca_ihe.hl7", [
        msh("ORM^O01", "ORM0005", version="2.3.1"),
        seg("PID", ZHANG),
        seg("ORC", {1: "CA", 2: "PL0002^HIS", 5: "CA", 9: "20261125091000", 12: "D002^王^五"}),
        seg("OBR", {1: "1", 2: "PL0002^HIS", 4: "MR0001^头颅MR平扫^HOSP"}),
    ])
    write("orm_o01_dc_ihe.hl7", [
        msh("ORM^O01", "ORM0006", version="2.3.1"),
        seg("PID", ZHANG),
        seg("ORC", {1: "DC", 2: "PL0003^HIS", 5: "DC", 9: "20261125091100", 12: "D002^王^五"}),
        seg("OBR", {1: "1", 2: "PL0003^HIS", 4: "US0001^腹部超声^HOSP"}),
    ])
    write("omi_o23_nw_ihe.hl7", [
        msh("OMI^O23^OMI_O23", "OMI0001", version="2.5.1"),
        seg("PID", {1: "1", 3: "P30001^^^HOSP^PI~110101195505051111^^^CHN^NI", 5: "吕^小女^^^^^L^I",
                    7: "19550505", 8: "F"}),
        seg("PV1", {1: "1", 2: "E", 3: "ED^^^HOSP", 8: "D010^曾^国藩", 19: "V3001"}),
        seg("ORC", {1: "NW", 2: "PL3001^HIS", 3: "FL3001^PACS", 5: "SC", 9: "20261125093000", 12: "D010^曾^国藩",
                    17: "ED^急诊科"}),
        seg("TQ1", {1: "1", 7: "20261125100000", 9: "S"}),
        seg("OBR", {1: "1", 2: "PL3001^HIS", 3: "FL3001^PACS", 4: "CT0201^上腹部CT增强^HOSP", 24: "CT",
                    31: "^外伤"}),
        seg("IPC", {1: "ACC3001", 2: "RP3001", 3: "1.2.156.112604.1.2.3001.1", 4: "SPS3001A", 5: "CT",
                    6: "ABD_ARTERIAL^Arterial phase^HOSP", 7: "CT Room 2", 8: "CT2-ROOM", 9: "CT2"}),
        seg("IPC", {1: "ACC3001", 2: "RP3001", 3: "1.2.156.112604.1.2.3001.1", 4: "SPS3001B", 5: "CT",
                    6: "ABD_VENOUS^Venous phase^HOSP", 7: "CT Room 2", 8: "CT2-ROOM", 9: "CT2"}),
    ])
    china = dict(application="WINNING", facility="HIS_CN", charset=None, version="2.4")
    china_pid = seg("PID", {1: "1", 3: "1000234^^^HIS^PI", 5: "欧阳娜娜", 7: "19851203", 8: "2",
                            11: "朝阳区建国路88号", 13: "13912345678", 19: "110105198512031229"})
    write("adt_a04_china_gb18030.hl7", [
        msh("ADT^A04", "CN0001", **china),
        seg("EVN", {1: "A04", 2: "20261125090000"}),
        china_pid,
        seg("PV1", {1: "1", 2: "门诊", 3: "放射科", 7: "1001^单^田芳", 19: "OP778899"}),
    ], "gb18030")
    write("orm_o01_multi_china.hl7", [
        msh("ORM^O01", "CN0002", **china),
        china_pid,
        seg("PV1", {1: "1", 2: "门诊", 3: "放射科", 7: "1001^单^田芳", 19: "OP778899"}),
        seg("ORC", {1: "NW", 2: "HIS20261125001", 5: "SC", 7: "^^^20261125103000", 9: "20261125093000",
                    12: "1001^单^田芳", 17: "0301^呼吸内科"}),
        seg("OBR", {1: "1", 2: "HIS20261125001", 4: "CT0001^胸部CT平扫", 5: "Y", 16: "1001^单^田芳", 24: "CT",
                    31: "发热咳嗽"}),
        seg("ORC", {1: "NW", 2: "HIS20261125002", 5: "SC", 7: "^^^20261125110000", 9: "20261125093000",
                    12: "1001^单^田芳", 17: "0301^呼吸内科"}),
        seg("OBR", {1: "2", 2: "HIS20261125002", 4: "DR0002^膝关节正侧位", 5: "N", 16: "1001^单^田芳",
                    24: "DR", 31: "膝关节疼痛"}),
    ], "gb18030")


if __name__ == "__main__":
    main()

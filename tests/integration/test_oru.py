"""ORU^R01 of a signed report: valid under hl7apy's strict validation in each version the HIS
may speak, whatever the radiologist typed (HL7 delimiters, blank lines, very long lines)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from pacs.integration.hl7v2 import parse, unescape
from pacs.integration.oru import TEXT_LINE, report_message
from pacs.registry.models import ImagingOrder, Patient, Visit
from pacs.reporting.models import ReportVersion
from pacs.settings import HISDestination, Settings

HOSPITAL = ZoneInfo("Asia/Shanghai")
ORDER = ImagingOrder(id=1, patient=1, placer_number="PL0001", placer_authority="HIS", accession_number="ACC0001",
                     procedure_code="CT0001", procedure_text="胸部CT平扫", procedure_scheme="HOSP",
                     study_instance_uid="1.2.840.113619.2.55.3.1234567.20261125.1", requested_procedure_id="RP0001")
PATIENT = Patient(id=1, patient_id="P10001", issuer="HOSP", name_ideographic="张^三", name_alphabetic="ZHANG^SAN",
                  sex="M", birth_date=date(1990, 1, 1))
VISIT = Visit(id=1, patient=1, patient_class="inpatient", visit_number="V2001")
FINDINGS = "CT值 40|60 HU^~\\&，见结节。\n\n" + "长" * (TEXT_LINE + 10)
DELIMITED = "|" * 100  # each escaped into three characters


def version(status: str) -> ReportVersion:
    signed = datetime(2026, 12, 6, 2, 30, tzinfo=UTC)  # 10:30 in the hospital
    return ReportVersion(id=1, report=1, number=1, status=status, findings=FINDINGS, impression="结节，建议随访。",
                         author="li", author_name="李住院", signed_at=signed,
                         verifier="wang" if status != "P" else "", verifier_name="王主任" if status != "P" else "",
                         verified_at=signed if status != "P" else None, critical=status == "F",
                         critical_told="护士 陈静", critical_told_at=signed, reason="更正" if status == "C" else "")


@pytest.mark.parametrize("hl7_version", ["2.3.1", "2.4", "2.5.1"])
@pytest.mark.parametrize("status", ["P", "F", "C"])
def test_valid_in_every_version_with_the_text_intact(hl7_version, status):
    settings = Settings(his=HISDestination(version=hl7_version, charset="GB 18030-2000"))
    text = report_message(order=ORDER, patient=PATIENT, visit=VISIT, version=version(status), modality="CT",
                          study_started=datetime(2026, 12, 6, 9, 0), his=settings.his, settings=settings,
                          zone=HOSPITAL)
    parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
    message = parse(text)
    assert message.get("MSH-12") == hl7_version and message.get("MSH-18") == "GB 18030-2000"
    assert message.get("OBR-25") == status and message.get("OBR-22") == "20261206103000"
    assert message.get("OBR-7") == "20261206090000" and message.get("PV1-2") == "I"
    obx = [line.split("|") for line in text.split("\r") if line.startswith("OBX|")]
    findings = [unescape(o[5]) for o in obx if o[3].startswith("18782-3")]
    assert findings[0] == "CT值 40|60 HU^~\\&，见结节。" and findings[1] == ""
    assert "".join(findings[2:]) == "长" * (TEXT_LINE + 10) and len(findings) == 4
    assert all(len(o[5]) <= TEXT_LINE for o in obx)
    assert [o[1] for o in obx] == [str(n) for n in range(1, len(obx) + 1)]
    assert message.get("OBR-32.1.2") == ("李住院" if status == "P" else "王主任")


def test_a_line_of_delimiters_is_cut_between_escape_sequences():
    settings = Settings(his=HISDestination(version="2.5.1"))
    signed = version("F")
    signed.impression = DELIMITED
    text = report_message(order=ORDER, patient=PATIENT, visit=None, version=signed, modality="CT", study_started=None,
                          his=settings.his, settings=settings, zone=HOSPITAL)
    parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
    lines = [line.split("|")[5] for line in text.split("\r") if line.startswith("OBX|") and "19005-8" in line]
    assert len(lines) == 2 and all(len(line) <= TEXT_LINE for line in lines)
    assert "".join(unescape(line) for line in lines) == DELIMITED
    assert "PV1" not in text  # no visit, no PV1

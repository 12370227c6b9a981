"""HL7 aECG → 12-Lead ECG Waveform (pacs.capture.aecg, pacs.capture.convert): the rhythm strip's
digits kept sample for sample with their scale and origin, the leads coded by CID 3001, dciodvfy
finds no error; what does not fit a 12-lead object is refused with the reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacs.capture.convert import AECG_TYPE, Equipment, Unconvertible, inspect, sniff, to_dataset
from tests.capture.test_convert import NOW, TARGET, dciodvfy_errors

LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def aecg(samples: int = 5000, increment: str = '<increment value="0.002" unit="s"/>', scale: str = "5",
         leads: list[str] = LEADS, extra: str = "") -> tuple[bytes, np.ndarray]:
    """An aECG document (as ECG carts export for the FDA's warehouse) with ``samples`` a lead."""
    t = np.arange(samples) / 500.0
    digits = np.stack([np.round(200 * np.sin(2 * np.pi * (1.2 + i / 10) * t) + 10 * i).astype(np.int16)
                       for i in range(len(leads))])
    sequences = "".join(
        f'<component><sequence><code code="MDC_ECG_LEAD_{name}" codeSystem="2.16.840.1.113883.6.24"/>'
        f'<value xsi:type="SLIST_PQ"><origin value="0" unit="uV"/><scale value="{scale}" unit="uV"/>'
        f'<digits>{" ".join(str(d) for d in row)}</digits></value></sequence></component>'
        for name, row in zip(leads, digits, strict=True))
    document = (
        f'<?xml version="1.0" encoding="UTF-8"?>{extra}'
        '<AnnotatedECG xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<id root="2.16.840.1.113883.3.1"/><code code="93000" codeSystem="2.16.840.1.113883.6.12"/>'
        '<effectiveTime><low value="20261125093000"/><high value="20261125093010"/></effectiveTime>'
        '<component><series><code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>'
        '<effectiveTime><low value="20261125093000"/></effectiveTime>'
        '<component><sequenceSet>'
        '<component><sequence><code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4"/>'
        f'<value xsi:type="GLIST_TS"><head value="20261125093000.000"/>{increment}</value></sequence></component>'
        f'{sequences}</sequenceSet></component></series></component></AnnotatedECG>')
    return document.encode(), digits


def test_an_aecg_becomes_a_twelve_lead_ecg_waveform(tmp_path: Path):
    data, digits = aecg()
    assert sniff(data) == AECG_TYPE
    ds = to_dataset(inspect(data, "ACC7_心电图.xml"), target=TARGET, device=Equipment("ECG1"), now=NOW)
    ds.save_as(tmp_path / "ecg.dcm", enforce_file_format=True)
    ecg = pydicom.dcmread(tmp_path / "ecg.dcm")
    assert ecg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.1" and ecg.Modality == "ECG"
    assert ecg.AccessionNumber == "A0017" and str(ecg.PatientName) == "ZHANG^SAN=张^三"
    assert ecg.AcquisitionDateTime == "20261125093000"  # when the cart recorded it
    [group] = ecg.WaveformSequence
    assert (group.NumberOfWaveformChannels, group.NumberOfWaveformSamples, float(group.SamplingFrequency)) == (
        12, 5000, 500.0)
    sources = [(c.ChannelSourceSequence[0].CodeValue, c.ChannelSourceSequence[0].CodingSchemeDesignator)
               for c in group.ChannelDefinitionSequence]
    assert sources[:3] == [("5.6.3-9-1", "SCPECG"), ("5.6.3-9-2", "SCPECG"), ("5.6.3-9-61", "SCPECG")]
    assert sources[6] == ("5.6.3-9-3", "SCPECG")  # V1 after the limb leads (CID 3001's order)
    assert {float(c.ChannelSensitivity) for c in group.ChannelDefinitionSequence} == {5.0}
    assert group.ChannelDefinitionSequence[0].ChannelSensitivityUnitsSequence[0].CodeValue == "uV"
    raw = np.frombuffer(group.WaveformData, dtype="<i2").reshape(5000, 12)
    assert np.array_equal(raw.T, digits)  # every sample as the cart sent it, interleaved
    assert np.allclose(ecg.waveform_array(0), digits.T * 5.0)  # in microvolts, as a reader computes them
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(tmp_path / "ecg.dcm") == []


@pytest.mark.parametrize(("document", "reason"), [
    (aecg(increment='<increment value="0.01" unit="s"/>')[0], "sampled at 100 Hz"),
    (aecg(samples=16385)[0], "at most 16384"),
    (aecg(increment="")[0], "no increment"),
    (aecg()[0].replace(b"<digits>", b"<digits>x ", 1), "not whole numbers"),
    (aecg(extra='<!DOCTYPE a [<!ENTITY b "c">]>')[0], "DOCTYPE"),
    (aecg()[0][:-40], "not well-formed"),
])
def test_an_aecg_that_does_not_fit_is_refused_with_the_reason(document, reason):
    with pytest.raises(Unconvertible, match=reason):
        inspect(document, "ecg.xml")


def test_the_ecg_reaches_the_study_through_the_api(server, tmp_path):
    from tests.archive.test_reconciliation import hl7
    from tests.capture.test_api import order_of, post, us_order

    hl7(server, us_order("P107", "吴", "婷", "WU TING", 7, 9))
    response = post(server, [("ACC7_ecg.xml", aecg()[0])], accession_number="ACC7")
    assert response.status_code == 201, response.text
    [stored] = response.json()["stored"]
    assert stored["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.9.1.1"
    assert stored["study_instance_uid"] == order_of(server, "ACC7").study_instance_uid

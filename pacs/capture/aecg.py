"""HL7 aECG (HL7 Version 3 Annotated ECG, ANSI/HL7 V3 ECG R1) read into the waveform of a DICOM
12-Lead ECG object (PS3.3 A.34.3).

An aECG file holds, under ``AnnotatedECG/component/series``, a ``sequenceSet`` of sequences: one
with the sample times (``TIME_ABSOLUTE`` or ``TIME_RELATIVE``, a ``GLIST_TS``/``GLIST_PQ`` whose
``increment`` is the sampling interval) and one per lead (``MDC_ECG_LEAD_I`` …, an ``SLIST_PQ``
whose physical value is ``origin + scale × digit``). The first rhythm series is taken (the
derived median beats, when present, are not). :func:`add_waveform` writes it as the Waveform
module (PS3.3 C.10.9) with the 12-Lead ECG constraints of A.34.3.4: 16-bit signed samples, 200
to 1000 samples a second, at most 16,384 samples, leads coded by CID 3001 (SCP-ECG codes), the
sensitivity in microvolts (UCUM ``uV``).

>>> ecg = read(open("ecg.xml", "rb").read())        # doctest: +SKIP
>>> ecg.sampling_frequency, sorted(ecg.leads)[:2]   # doctest: +SKIP
(500.0, ['I', 'II'])
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset

NS = {"v3": "urn:hl7-org:v3"}
MIN_FREQUENCY, MAX_FREQUENCY = 200.0, 1000.0  # PS3.3 A.34.3.4.3
MAX_SAMPLES = 16384  # PS3.3 A.34.3.4.4
MAX_BYTES = 64 * 1024 * 1024
SCPECG = ("SCPECG", "1.3")  # coding scheme and version of CID 3001's lead codes
# MDC lead names (ISO/IEEE 11073-10101, as aECG names them) → SCP-ECG code, meaning (PS3.16 CID 3001)
LEADS: dict[str, tuple[str, str, str]] = {
    "MDC_ECG_LEAD_I": ("I", "5.6.3-9-1", "Lead I"),
    "MDC_ECG_LEAD_II": ("II", "5.6.3-9-2", "Lead II"),
    "MDC_ECG_LEAD_III": ("III", "5.6.3-9-61", "Lead III"),
    "MDC_ECG_LEAD_AVR": ("aVR", "5.6.3-9-62", "aVR, augmented voltage, right"),
    "MDC_ECG_LEAD_AVL": ("aVL", "5.6.3-9-63", "aVL, augmented voltage, left"),
    "MDC_ECG_LEAD_AVF": ("aVF", "5.6.3-9-64", "aVF, augmented voltage, foot"),
    "MDC_ECG_LEAD_V1": ("V1", "5.6.3-9-3", "Lead V1"),
    "MDC_ECG_LEAD_V2": ("V2", "5.6.3-9-4", "Lead V2"),
    "MDC_ECG_LEAD_V3": ("V3", "5.6.3-9-5", "Lead V3"),
    "MDC_ECG_LEAD_V4": ("V4", "5.6.3-9-6", "Lead V4"),
    "MDC_ECG_LEAD_V5": ("V5", "5.6.3-9-7", "Lead V5"),
    "MDC_ECG_LEAD_V6": ("V6", "5.6.3-9-8", "Lead V6"),
}
TO_MICROVOLTS = {"uV": 1.0, "mV": 1000.0, "V": 1_000_000.0}


class AECGError(ValueError):
    """An aECG file that cannot be read or does not fit a 12-lead ECG object; says why."""


@dataclass
class Lead:
    name: str  # I, II, aVR, V1 ...
    code: str  # SCP-ECG code (CID 3001)
    meaning: str
    digits: np.ndarray  # int16
    baseline_uv: float  # origin, in microvolts
    sensitivity_uv: float  # scale: microvolts per digit


@dataclass
class ECG:
    leads: dict[str, Lead]
    sampling_frequency: float
    samples: int
    started: datetime | None


def is_aecg(data: bytes) -> bool:
    """Whether the first bytes are an XML document whose root is an ``AnnotatedECG``."""
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"<") and b"<AnnotatedECG" in head


def read(data: bytes) -> ECG:
    """The rhythm waveform of an aECG file. Raises :class:`AECGError`."""
    if len(data) > MAX_BYTES:
        raise AECGError(f"the aECG file has {len(data)} bytes; at most {MAX_BYTES} are taken")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise AECGError("the aECG file declares a DOCTYPE or entities, which aECG has no use for")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise AECGError(f"the aECG file is not well-formed XML: {exc}") from None
    if root.tag != "{urn:hl7-org:v3}AnnotatedECG":
        raise AECGError(f"the XML's root is {root.tag}, not an HL7 v3 AnnotatedECG")
    for series in root.iterfind("v3:component/v3:series", NS):
        code = series.find("v3:code", NS)
        if code is not None and code.get("code") not in (None, "RHYTHM"):
            continue
        sequence_set = series.find("v3:component/v3:sequenceSet", NS)
        if sequence_set is not None:
            return _waveform(sequence_set)
    raise AECGError("the aECG file has no rhythm series with a sequenceSet")


def _waveform(sequence_set: ET.Element) -> ECG:
    interval = None
    started = None
    leads: dict[str, Lead] = {}
    for sequence in sequence_set.iterfind("v3:component/v3:sequence", NS):
        coded = sequence.find("v3:code", NS)
        code = coded.get("code", "") if coded is not None else ""
        value = sequence.find("v3:value", NS)
        if value is None:
            continue
        if code in ("TIME_ABSOLUTE", "TIME_RELATIVE"):
            increment = value.find("v3:increment", NS)
            if increment is None:
                raise AECGError(f"{code} has no increment: the sampling interval is not given")
            interval = _seconds(increment)
            head = value.find("v3:head", NS)
            if code == "TIME_ABSOLUTE" and head is not None and head.get("value"):
                started = _ts(head.get("value", ""))
            continue
        if code not in LEADS:
            continue
        name, scp, meaning = LEADS[code]
        origin, scale = value.find("v3:origin", NS), value.find("v3:scale", NS)
        digits_text = (value.findtext("v3:digits", default="", namespaces=NS) or "").split()
        if scale is None or not digits_text:
            raise AECGError(f"lead {name} has no scale or no digits")
        try:
            digits = np.array([int(d) for d in digits_text], dtype=np.int64)
        except ValueError:
            raise AECGError(f"lead {name}'s digits are not whole numbers") from None
        if digits.min() < -32768 or digits.max() > 32767:
            raise AECGError(f"lead {name} has samples beyond 16 bits")
        leads[name] = Lead(name, scp, meaning, digits.astype(np.int16),
                           _microvolts(origin) if origin is not None else 0.0, _microvolts(scale))
    if interval is None or interval <= 0:
        raise AECGError("the aECG file gives no sampling interval (TIME_ABSOLUTE or TIME_RELATIVE increment)")
    if not leads:
        raise AECGError("the aECG file has no standard lead (MDC_ECG_LEAD_I … V6)")
    frequency = round(1.0 / interval, 6)
    if not MIN_FREQUENCY <= frequency <= MAX_FREQUENCY:
        raise AECGError(f"the ECG is sampled at {frequency:g} Hz; a 12-lead ECG object takes 200 to 1000 Hz")
    lengths = {len(lead.digits) for lead in leads.values()}
    if len(lengths) != 1:
        raise AECGError(f"the leads have different numbers of samples: {sorted(lengths)}")
    samples = lengths.pop()
    if samples > MAX_SAMPLES:
        raise AECGError(f"the ECG has {samples} samples a lead; a 12-lead ECG object takes at most {MAX_SAMPLES}")
    return ECG(leads, frequency, samples, started)


def _seconds(element: ET.Element) -> float:
    factor = {"s": 1.0, "ms": 0.001, "us": 0.000001}.get(element.get("unit", "s"))
    if factor is None:
        raise AECGError(f"the sampling interval's unit {element.get('unit')!r} is not s, ms or us")
    return float(element.get("value", "0")) * factor


def _microvolts(element: ET.Element) -> float:
    unit = element.get("unit", "uV")
    if unit not in TO_MICROVOLTS:
        raise AECGError(f"the unit {unit!r} is not uV, mV or V")
    return float(element.get("value", "0")) * TO_MICROVOLTS[unit]


def _ts(value: str) -> datetime | None:
    digits = value.split(".")[0][:14]
    try:
        return datetime.strptime(digits.ljust(14, "0"), "%Y%m%d%H%M%S")
    except ValueError:
        return None


def _code(value: str, scheme: str, meaning: str, version: str = "") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    if version:
        item.CodingSchemeVersion = version
    return item


def add_waveform(ds: Dataset, ecg: ECG) -> None:
    """Waveform (PS3.3 C.10.9) and Acquisition Context (C.7.6.14) modules of a 12-Lead ECG
    object: one multiplex group, the leads in CID 3001's order, samples interleaved."""
    ordered = [lead for name, _code_value, _m in LEADS.values() for lead in [ecg.leads.get(name)] if lead]
    group = Dataset()
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(ordered)
    group.NumberOfWaveformSamples = ecg.samples
    group.SamplingFrequency = f"{ecg.sampling_frequency:g}"
    group.MultiplexGroupLabel = "RHYTHM"
    channels = []
    for number, lead in enumerate(ordered, 1):
        channel = Dataset()
        channel.WaveformChannelNumber = number
        channel.ChannelLabel = lead.name
        channel.ChannelSourceSequence = [_code(lead.code, SCPECG[0], lead.meaning, SCPECG[1])]
        channel.ChannelSensitivity = f"{lead.sensitivity_uv:.6g}"
        channel.ChannelSensitivityUnitsSequence = [_code("uV", "UCUM", "microvolt")]
        channel.ChannelSensitivityCorrectionFactor = "1"
        channel.ChannelBaseline = f"{lead.baseline_uv:.6g}"
        channel.ChannelTimeSkew = "0"
        channel.WaveformBitsStored = 16
        channels.append(channel)
    group.ChannelDefinitionSequence = channels
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    interleaved = np.stack([lead.digits for lead in ordered], axis=1).astype("<i2")
    group.WaveformData = interleaved.tobytes()
    group["WaveformData"].VR = "OW"
    ds.WaveformSequence = [group]
    ds.AcquisitionContextSequence = []  # type 2: PS3.3 C.7.6.14

"""The C-FIND answer encoder gives what pydicom reads back, in both little endian syntaxes."""

from __future__ import annotations

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset

from pacs.archive.encoding import Encoded

ELEMENTS = [
    (0x00100010, "PN", "ZHANG^SAN=张^三"),
    (0x00080005, "CS", "ISO_IR 192"),
    (0x00100020, "LO", "P10001"),
    (0x0020000D, "UI", "1.2.3.4.5"),  # odd length: padded with NUL
    (0x00400100, "SQ", [[(0x00080060, "CS", "CT"), (0x00400002, "DA", "20261125"),
                         (0x00400008, "SQ", [[(0x00080100, "SH", "X1"), (0x00080104, "LO", "胸部CT")]])]]),
    (0x00321060, "LO", None),  # an empty return key
    (0x00081110, "SQ", []),  # an empty sequence
]


@pytest.mark.parametrize("implicit", [True, False])
def test_round_trip_through_pydicom(implicit):
    data = Encoded(ELEMENTS, "ISO_IR 192").encoded(implicit)
    buffer = DicomBytesIO(data)
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    ds = read_dataset(buffer, is_implicit_VR=implicit, is_little_endian=True)
    ds.decode()
    assert str(ds.PatientName) == "ZHANG^SAN=张^三"
    assert ds.StudyInstanceUID == "1.2.3.4.5" and ds.PatientID == "P10001"
    sps = ds.ScheduledProcedureStepSequence[0]
    assert sps.Modality == "CT" and sps.ScheduledProcedureStepStartDate == "20261125"
    assert sps.ScheduledProtocolCodeSequence[0].CodeMeaning == "胸部CT"
    assert ds.RequestedProcedureDescription in ("", None) and len(ds.ReferencedStudySequence) == 0
    assert [e.tag for e in ds] == sorted(e.tag for e in ds)  # ascending tag order (PS3.5 7.1)


def test_gb18030_and_ascii():
    gb = Encoded([(0x00100010, "PN", "OUYANG^NANA=欧阳^娜娜")], "GB18030").encoded(True)
    assert "欧阳".encode("gb18030") in gb
    plain = Encoded([(0x00100010, "PN", "ZHANG^SAN")], None).encoded(True)
    assert plain.endswith(b"ZHANG^SAN ")


def _identifiers() -> list[tuple[str, bytes, bool]]:
    """Identifiers as requestors encode them, and broken ones: (name, bytes, implicit)."""
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    study = Dataset()
    study.SpecificCharacterSet = "ISO_IR 192"
    study.QueryRetrieveLevel = "STUDY"
    study.PatientName = "张*"
    study.PatientID = ""
    study.PatientBirthDate = ""
    study.StudyDate = "20260101-20261231"
    study.StudyInstanceUID = ""
    study.NumberOfStudyRelatedInstances = None
    study.ModalitiesInStudy = ["CT", "MR"]
    study.add_new(0x00091010, "LO", "private")
    worklist = Dataset()
    worklist.PatientName = ""
    step = Dataset()
    step.Modality = "CT"
    step.ScheduledStationAETitle = "CT1"
    step.ScheduledProcedureStepStartDate = "20261207"
    worklist.ScheduledProcedureStepSequence = [step]
    out = []
    for implicit in (True, False):
        for name, ds in (("study", study), ("worklist", worklist)):
            out.append((f"{name}, {'implicit' if implicit else 'explicit'}", bytes(encode(ds, implicit, True)), implicit))
        out.append((f"answer encoder, {implicit}", Encoded(ELEMENTS, "ISO_IR 192").encoded(implicit), implicit))
    flat = bytes(encode(study, False, True))
    second = 18  # the second element's header, after (0008,0005) "ISO_IR 192"
    assert flat[second + 4:second + 6] == b"DA"  # Study Date
    out += [
        ("broken: explicit sent as implicit", flat, True),
        ("broken: implicit sent as explicit", bytes(encode(study, True, True)), False),
        ("broken: cut short", flat[:-3], False),
        ("broken: an unknown VR", flat[:second + 4] + b"QQ" + flat[second + 6:], False),
        ("broken: a length past the end", flat[:second + 6] + b"\xff\x7f" + flat[second + 8:], False),
        ("broken: a lone byte", b"\x08", True),
        ("empty", b"", True),
    ]
    return out


@pytest.mark.parametrize(("name", "data", "implicit"), _identifiers(), ids=lambda v: v if isinstance(v, str) else "")
def test_flat_identifiers_read_as_pydicom_reads_them(name, data, implicit):
    """read_flat gives exactly pydicom's raw elements and encoding, or gives up (None) and
    pydicom reads it; well-formed flat identifiers are never given up."""
    import warnings

    from pacs.archive.encoding import read_flat

    fast = read_flat(data, implicit)
    buffer = DicomBytesIO(data)
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            slow = read_dataset(buffer, is_implicit_VR=implicit, is_little_endian=True)
        except Exception:  # noqa: BLE001 - what pydicom refuses, read_flat must not take
            slow = None
    if name.startswith("broken"):  # pydicom warns, guesses, repairs or refuses: left to it
        assert fast is None
        return
    assert fast is not None, "a well-formed identifier was given up"
    assert slow is not None
    assert list(fast._dict) == list(slow._dict)
    if name.startswith("study"):  # its empty return keys come converted
        assert sum(not isinstance(e, RawDataElement) for e in fast._dict.values()) >= 4
    for tag, element in fast._dict.items():
        if isinstance(element, RawDataElement):
            assert element == slow._dict[tag]
        else:  # an empty value, made into the element pydicom's conversion makes of it
            assert isinstance(slow._dict[tag], RawDataElement) and slow._dict[tag].length == 0
            converted = slow[tag]
            assert (element.tag, element.VR, element.value, type(element.value), element.file_tell,
                    element.is_undefined_length) == (converted.tag, converted.VR, converted.value,
                                                     type(converted.value), converted.file_tell,
                                                     converted.is_undefined_length)
    assert fast.original_encoding == slow.original_encoding
    assert fast.original_character_set == slow.original_character_set
    assert [(e.tag, e.VR, e.value) for e in fast] == [(e.tag, e.VR, e.value) for e in slow]

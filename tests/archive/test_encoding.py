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
    texts = Dataset()  # plain text as devices pad it, and text that is not plain
    texts.SpecificCharacterSet = "ISO_IR 100"
    texts.QueryRetrieveLevel = "SERIES "
    texts.PatientID = "ID 7  "
    texts.IssuerOfPatientID = "HOSP\\OTHER"
    texts.AccessionNumber = " A1"
    texts.StudyID = "S\x001"
    texts.PatientSex = "M\\F"
    texts.Modality = "ct"
    texts.StationName = "CT-王"
    texts.InstitutionName = "x" * 70  # longer than LO's 64: pydicom warns, and so does read_flat
    worklist = Dataset()
    worklist.PatientName = ""
    step = Dataset()
    step.Modality = "CT"
    step.ScheduledStationAETitle = "CT1"
    step.ScheduledProcedureStepStartDate = "20261207"
    worklist.ScheduledProcedureStepSequence = [step]
    out = []
    for implicit in (True, False):
        for name, ds in (("study", study), ("worklist", worklist), ("texts", texts)):
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
def test_flat_identifiers_read_as_pydicom_reads_them(name, data, implicit, monkeypatch):
    """read_flat gives exactly pydicom's raw elements and encoding, or gives up (None) and
    pydicom reads it; well-formed flat identifiers are never given up."""
    import warnings

    from pydicom import config

    from pacs.archive.encoding import read_flat

    # pydicom's default, which the server's AE turns to IGNORE (pacs.archive.ae) for the process
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.WARN)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
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
    if name.startswith("texts"):  # one value of plain text comes converted, as pydicom checks it
        assert not isinstance(fast._dict[0x00080052], RawDataElement) and fast._dict[0x00080052].value == "SERIES"
        assert isinstance(fast._dict[0x00100040], RawDataElement)  # two values: left to pydicom
        assert any("exceeds the maximum length of 64" in str(w.message) for w in caught)
    for tag, element in fast._dict.items():
        if isinstance(element, RawDataElement):
            assert element == slow._dict[tag]
        else:  # an empty value or one of plain text, made into the element pydicom's conversion makes of it
            assert isinstance(slow._dict[tag], RawDataElement)
            converted = slow[tag]
            assert (element.tag, element.VR, element.value, type(element.value), element.file_tell,
                    element.is_undefined_length) == (converted.tag, converted.VR, converted.value,
                                                     type(converted.value), converted.file_tell,
                                                     converted.is_undefined_length)
    assert fast.original_encoding == slow.original_encoding
    assert fast.original_character_set == slow.original_character_set
    assert [(e.tag, e.VR, e.value) for e in fast] == [(e.tag, e.VR, e.value) for e in slow]


def test_new_dataset_is_a_fresh_empty_dataset():
    """new_dataset and Encoded start from the state pydicom's constructor gives, in containers
    of their own."""
    from pydicom.dataset import Dataset

    from pacs.archive.encoding import Encoded, new_dataset

    first, second = new_dataset(), new_dataset()
    assert first.__dict__ == Dataset().__dict__
    first.PatientID = "P1"
    first._private_blocks[(0x0009, "X")] = None
    first._pixel_array_opts["use_pdh"] = True
    assert "PatientID" not in second and not second._private_blocks and second._pixel_array_opts == {"use_pdh": False}
    answer = Encoded([(0x00100020, "LO", "P1")], None)
    assert {k: v for k, v in answer.__dict__.items() if not k.startswith("_pacs")} == Dataset().__dict__
    assert len(answer) == 1 and answer.dataset().PatientID == "P1"

"""The C-FIND answer encoder gives what pydicom reads back, in both little endian syntaxes."""

from __future__ import annotations

import pytest
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

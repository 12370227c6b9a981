"""DICOM clients for tests: pynetdicom as SCU, and DCMTK's command-line tools."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep, ModalityWorklistInformationFind, Verification

DCMTK = shutil.which("findscu") is not None
needs_dcmtk = pytest.mark.skipif(not DCMTK, reason="DCMTK is not installed (apt-get install dcmtk; .ci/run does)")


def client(calling: str = "CT1", transfer_syntax: str | None = None) -> AE:
    ae = AE(ae_title=calling)
    for abstract in (ModalityWorklistInformationFind, ModalityPerformedProcedureStep, Verification):
        if transfer_syntax:
            ae.add_requested_context(abstract, [transfer_syntax])
        else:
            ae.add_requested_context(abstract)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def mwl_find(port: int, query: Dataset, calling: str = "CT1",
             transfer_syntax: str | None = None) -> tuple[list[int], list[Dataset], Dataset | None]:
    """(statuses, matches, the final status dataset) of one worklist C-FIND."""
    assoc = client(calling, transfer_syntax).associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established, "association rejected"
    statuses, matches, final = [], [], None
    try:
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            statuses.append(int(status.Status))
            if status.Status in (0xFF00, 0xFF01):
                matches.append(identifier)
            else:
                final = status
    finally:
        assoc.release()
    return statuses, matches, final


def findscu(port: int, keys: list[str], out: Path, calling: str = "FINDSCU",
            options: tuple[str, ...] = (), model: str = "-W") -> list[Dataset]:
    """DCMTK findscu, of the worklist (``-W``) unless ``model`` names another information model
    (``-S``: Study Root); every answer is written by findscu as a file and read back."""
    out.mkdir(parents=True, exist_ok=True)
    args = ["findscu", model, "-aet", calling, "-aec", "PACS", "-X", "-od", str(out), *options]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(args + ["127.0.0.1", str(port)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TCP_NODELAY": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def mpps_attributes(*, study_uid: str, accession: str, sps_id: str = "", patient_id: str = "P10001",
                    status: str = "IN PROGRESS", modality: str = "CT") -> Dataset:
    """An N-CREATE attribute list as IHE RAD-6 asks a modality to send it."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ref = Dataset()
    ref.StudyInstanceUID = study_uid
    ref.AccessionNumber = accession
    ref.RequestedProcedureID = ""
    ref.RequestedProcedureDescription = ""
    ref.ScheduledProcedureStepID = sps_id
    ref.ScheduledProcedureStepDescription = ""
    ref.ScheduledProtocolCodeSequence = []
    ref.ReferencedStudySequence = []
    ds.ScheduledStepAttributesSequence = [ref]
    ds.PatientName = "ZHANG^SAN=张^三"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19900101"
    ds.PatientSex = "M"
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS-" + (sps_id or accession)
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedStationName = "CT Room 1"
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20261125"
    ds.PerformedProcedureStepStartTime = "100500"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = "胸部CT"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = None
    ds.PerformedProcedureStepEndTime = None
    ds.Modality = modality
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def completion(status: str = "COMPLETED", series_uid: str = "1.2.3.4.5.6", instances: int = 3) -> Dataset:
    """An N-SET modification list ending the step, with its performed series (IHE RAD-7); with
    ``instances=0`` the series references no image, as for a step discontinued before any."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261125"
    ds.PerformedProcedureStepEndTime = "101500"
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.SeriesDescription = "Chest 1.25mm"
    series.PerformingPhysicianName = ""
    series.OperatorsName = "LI^SI"
    series.ProtocolName = "Chest"
    series.RetrieveAETitle = "PACS"
    refs = []
    for n in range(instances):
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ref.ReferencedSOPInstanceUID = f"{series_uid}.{n + 1}"
        refs.append(ref)
    series.ReferencedImageSequence = refs
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    ds.PerformedSeriesSequence = [series]  # a series even when nothing was made (PS3.4 F.7.2-1 Note 2)
    return ds

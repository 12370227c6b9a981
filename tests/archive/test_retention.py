"""Retention and deletion: IOCM rejection notes hide what they name from C-FIND, C-GET, DICOMweb
and FHIR; retention periods per modality expire whole studies; the trash keeps both for
``trash_days``; removal never leaves an index row without its copy and never takes the last copy
of something that is not in the trash; every step is audited."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from sqlmodel import Session, func, select

from pacs.archive.index import Instance, InstanceFile, Study
from pacs.archive.retention import KEY_OBJECT_SELECTION, LastCopy, delete_instances, remove_copy
from pacs.audit.service import Filters, as_json, search
from pacs.db import utcnow
from tests.archive.corpus import source_path

CT_FILE, MR_FILE = "CT_small.dcm", "MR_small.dcm"


def make(tmp_path: Path, source: str, *, study: str, series: str, patient_id: str = "RET1",
         study_date: str = "20260101", modality: str | None = None) -> Path:
    ds = pydicom.dcmread(source_path(source))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.StudyDate = patient_id, study_date
    if modality:
        ds.Modality = modality
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def rejection_note(tmp_path: Path, code: str, meaning: str, named: list[Path], *, scheme: str = "DCM") -> Path:
    """A Key Object Selection document (PS3.3 A.35.4) titled with ``code``, naming ``named``."""
    first = pydicom.dcmread(named[0], stop_before_pixels=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = KEY_OBJECT_SELECTION
    ds.SOPClassUID = KEY_OBJECT_SELECTION
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = first.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "KO"
    ds.PatientID, ds.PatientName, ds.StudyDate = first.PatientID, first.PatientName, first.get("StudyDate", "")
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = code, scheme, meaning
    ds.ConceptNameCodeSequence = [title]
    ds.ContinuityOfContent = "SEPARATE"
    by_series: dict[tuple[str, str], list[Dataset]] = {}
    for path in named:
        item = pydicom.dcmread(path, stop_before_pixels=True)
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = item.SOPClassUID, item.SOPInstanceUID
        by_series.setdefault((item.StudyInstanceUID, item.SeriesInstanceUID), []).append(ref)
    studies: dict[str, list[Dataset]] = {}
    for (study, series), refs in by_series.items():
        series_item = Dataset()
        series_item.SeriesInstanceUID = series
        series_item.ReferencedSOPSequence = refs
        studies.setdefault(study, []).append(series_item)
    evidence = []
    for study, series_items in studies.items():
        study_item = Dataset()
        study_item.StudyInstanceUID = study
        study_item.ReferencedSeriesSequence = series_items
        evidence.append(study_item)
    ds.CurrentRequestedProcedureEvidenceSequence = evidence
    path = tmp_path / f"note-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def send(port: int, paths: list[Path], calling: str = "MODALITY") -> list[int]:
    ae = AE(ae_title=calling)
    for context in (CTImageStorage, MRImageStorage, KeyObjectSelectionDocumentStorage):
        ae.add_requested_context(context, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def cfind(port: int, level: str, **keys: str) -> list[Dataset]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "NumberOfStudyRelatedInstances",
                    "NumberOfStudyRelatedSeries", "ModalitiesInStudy"):
        if level != "STUDY" and keyword.startswith("Number") or (level == "STUDY" and keyword in (
                "SeriesInstanceUID", "SOPInstanceUID")):
            continue
        setattr(identifier, keyword, keys.get(keyword, ""))
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    found = [ds for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
             if status.Status in (0xFF00, 0xFF01)]
    assoc.release()
    return found


def cget(port: int, study: str) -> list[str]:
    received: list[str] = []
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for context in (CTImageStorage, MRImageStorage, KeyObjectSelectionDocumentStorage):
        ae.add_requested_context(context)
    roles = [build_role(c, scp_role=True) for c in (CTImageStorage, MRImageStorage, KeyObjectSelectionDocumentStorage)]

    def on_store(event):  # type: ignore[no-untyped-def]
        received.append(event.request.AffectedSOPInstanceUID)
        return 0

    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    assoc.release()
    return received


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def audit_entries(server, **filters) -> list[dict]:
    services = server.server.services
    services.audit.flush()
    with services.db.engine.connect() as connection:
        return [as_json(r) for r in search(connection, Filters(**filters), limit=100)[1]]


def copies_intact(server) -> None:
    """Every copy the index knows is in its area: no index row without its object."""
    areas = server.server.services.archive.areas
    with Session(server.db.engine) as session:
        for copy in session.exec(select(InstanceFile)).all():
            assert areas[copy.area].exists(copy.key), f"{copy.area}/{copy.key} is indexed but gone"


@pytest.fixture
def study(server, tmp_path):
    """A study of three CT images in one series and an MR image in another."""
    uid, ct_series, mr_series = generate_uid(), generate_uid(), generate_uid()
    ct = [make(tmp_path, CT_FILE, study=uid, series=ct_series) for _ in range(3)]
    mr = [make(tmp_path, MR_FILE, study=uid, series=mr_series)]
    assert send(server.dicom_port, ct + mr) == [0, 0, 0, 0]
    return {"uid": uid, "ct": ct, "mr": mr, "ct_series": ct_series, "mr_series": mr_series}


def test_rejection_note_hides_what_it_names(server, study, tmp_path):
    note = rejection_note(tmp_path, "113001", "Rejected for Quality Reasons", study["ct"][:2])
    assert send(server.dicom_port, [note], calling="CT1") == [0]
    rejected = {uid_of(p) for p in study["ct"][:2]}

    # C-FIND: counts and matches leave them out; the note itself is visible (viewers learn of it)
    [found] = cfind(server.dicom_port, "STUDY", StudyInstanceUID=study["uid"])
    assert int(found.NumberOfStudyRelatedInstances) == 3 and int(found.NumberOfStudyRelatedSeries) == 3
    images = {str(ds.SOPInstanceUID) for ds in cfind(server.dicom_port, "IMAGE", StudyInstanceUID=study["uid"])}
    assert images == {uid_of(study["ct"][2]), uid_of(study["mr"][0]), uid_of(note)}
    # C-GET: nothing from the trash
    assert set(cget(server.dicom_port, study["uid"])) == images
    # DICOMweb and FHIR
    base = server.http_url
    qido = httpx.get(f"{base}/dicomweb/studies/{study['uid']}/instances").json()
    assert {i["00080018"]["Value"][0] for i in qido} == images
    gone = uid_of(study["ct"][0])
    assert httpx.get(f"{base}/dicomweb/studies/{study['uid']}/series/{study['ct_series']}/instances/{gone}").status_code == 404
    with Session(server.db.engine) as session:
        row = session.exec(select(Study).where(Study.study_instance_uid == study["uid"])).one()
        rows = session.exec(select(Instance).where(Instance.sop_instance_uid.in_(rejected))).all()
    assert {r.rejection_code for r in rows} == {"113001"} and all(r.rejected_at for r in rows)
    resource = httpx.get(f"{base}/fhir/ImagingStudy/{row.id}").json()
    assert resource["numberOfInstances"] == 3
    assert sum(s["numberOfInstances"] for s in resource["series"]) == 3
    assert not {i["uid"] for s in resource["series"] for i in s.get("instance", [])} & rejected
    # audited: DICOM Instances Accessed, U, by the modality that sent the note
    [entry] = audit_entries(server, event_id="110103", action="U")
    assert entry["user"] == "CT1" and entry["details"]["rejection_code"] == "113001"
    assert entry["details"]["instances"] == 2 and entry["studies"] == [study["uid"]] and entry["patients"] == ["RET1"]
    # the rest of the series still shows; rejecting the whole series takes it out
    note2 = rejection_note(tmp_path, "113037", "Rejected for Patient Safety Reasons", study["ct"])
    assert send(server.dicom_port, [note2]) == [0]
    [found] = cfind(server.dicom_port, "STUDY", StudyInstanceUID=study["uid"])
    assert int(found.NumberOfStudyRelatedSeries) == 3  # MR and the two notes' series
    assert "CT" not in list(found.ModalitiesInStudy)
    assert not [ds for ds in cfind(server.dicom_port, "SERIES", StudyInstanceUID=study["uid"])
                if ds.SeriesInstanceUID == study["ct_series"]]


def answered_as(server, study_uid: str) -> dict:
    """What the study answers with at STUDY level (C-FIND, QIDO-RS, FHIR), checked against the
    series and instances it answers with below: PS3.4 C.3.4's Modalities in Study and Number of
    Study Related Series/Instances are of those, and matching on Modalities in Study finds the
    study exactly for them."""
    port = server.dicom_port
    [study] = cfind(port, "STUDY", StudyInstanceUID=study_uid)
    series = cfind(port, "SERIES", StudyInstanceUID=study_uid)
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID, identifier.Modality = "SERIES", study_uid, ""
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    modalities = sorted({str(ds.Modality) for status, ds in
                         assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
                         if status.Status in (0xFF00, 0xFF01)})
    assoc.release()
    images = cfind(port, "IMAGE", StudyInstanceUID=study_uid)
    listed = study.ModalitiesInStudy
    shown = {"modalities": sorted([listed] if isinstance(listed, str) else [str(m) for m in listed]),
             "series": int(study.NumberOfStudyRelatedSeries), "instances": int(study.NumberOfStudyRelatedInstances)}
    assert shown == {"modalities": modalities, "series": len(series), "instances": len(images)}
    for modality in ("CT", "MR", "KO"):
        found = [ds.StudyInstanceUID for ds in cfind(port, "STUDY", StudyInstanceUID=study_uid,
                                                     ModalitiesInStudy=modality)]
        assert (found == [study_uid]) == (modality in modalities), f"ModalitiesInStudy={modality}"
    [qido] = httpx.get(f"{server.http_url}/dicomweb/studies", params={"StudyInstanceUID": study_uid,
                                                                     "includefield": "00080061"}).json()
    assert sorted(qido["00080061"]["Value"]) == modalities
    assert qido["00201206"]["Value"] == [len(series)] and qido["00201208"]["Value"] == [len(images)]
    with Session(server.db.engine) as session:
        row_id = session.exec(select(Study.id).where(Study.study_instance_uid == study_uid)).one()
    resource = httpx.get(f"{server.http_url}/fhir/ImagingStudy/{row_id}").json()
    assert (resource["numberOfSeries"], resource["numberOfInstances"]) == (len(series), len(images))
    assert sorted(m["code"] for m in resource.get("modality", [])) == modalities
    return shown


@pytest.mark.parametrize("order", ["note after", "note after, whole series", "one association",
                                   "one association, whole series", "series sent again", "note first"])
def test_study_agrees_with_what_it_answers(server, tmp_path, order):
    """Issue 27: after a rejection note, ModalitiesInStudy said CT while the study still counted
    the note's series; whatever arrives in which order, the study-level attributes are those of
    the series and instances the study answers with."""
    uid, ct_series = generate_uid(), generate_uid()
    ct = [make(tmp_path, CT_FILE, study=uid, series=ct_series) for _ in range(3)]
    whole = "whole series" in order
    named = ct if whole else ct[:2]
    note = rejection_note(tmp_path, "113001", "Rejected for Quality Reasons", named)
    if order.startswith("note after"):
        assert send(server.dicom_port, ct) == [0, 0, 0]
        assert send(server.dicom_port, [note], calling="CT1") == [0]
    elif order.startswith("one association"):
        assert send(server.dicom_port, ct + [note]) == [0, 0, 0, 0]
    elif order == "series sent again":
        assert send(server.dicom_port, ct) == [0, 0, 0]
        assert send(server.dicom_port, [rejection_note(tmp_path, "113001", "Rejected for Quality Reasons", ct)]) == [0]
        assert answered_as(server, uid)["modalities"] == ["KO"]
        again = make(tmp_path, CT_FILE, study=uid, series=ct_series)  # a retake into the emptied series
        assert send(server.dicom_port, [again]) == [0]
        assert answered_as(server, uid) == {"modalities": ["CT", "KO"], "series": 2, "instances": 2}
        return
    else:  # the note before what it names: nothing held to reject, then the images come
        assert send(server.dicom_port, [note]) == [0]
        assert send(server.dicom_port, ct) == [0, 0, 0]
    expected = ({"modalities": ["KO"], "series": 1, "instances": 1} if whole
                else {"modalities": ["CT", "KO"], "series": 2, "instances": 2})
    if order == "note first":
        expected = {"modalities": ["CT", "KO"], "series": 2, "instances": 4}
    assert answered_as(server, uid) == expected


@pytest.mark.parametrize("code, meaning", [("113001", "Rejected for Quality Reasons"),
                                           ("113037", "Rejected for Patient Safety Reasons"),
                                           ("113038", "Incorrect Modality Worklist Entry"),
                                           ("113039", "Data Retention Policy Expired")])
def test_every_iocm_title_rejects(server, study, tmp_path, code, meaning):
    note = rejection_note(tmp_path, code, meaning, study["mr"])
    assert send(server.dicom_port, [note]) == [0]
    with Session(server.db.engine) as session:
        mr = session.exec(select(Instance).where(Instance.sop_instance_uid == uid_of(study["mr"][0]))).one()
        kept = session.exec(select(Instance).where(Instance.sop_instance_uid == uid_of(note))).one()
    assert mr.rejection_code == code
    # a retention-expired note goes to the trash with what it names; the others stay visible
    assert (kept.rejected_at is not None) == (code == "113039")


def test_other_titles_reject_nothing(server, study, tmp_path):
    of_interest = rejection_note(tmp_path, "113000", "Of Interest", study["ct"])
    wrong_scheme = rejection_note(tmp_path, "113001", "Rejected for Quality Reasons", study["ct"], scheme="99LOCAL")
    assert send(server.dicom_port, [of_interest, wrong_scheme]) == [0, 0]
    with Session(server.db.engine) as session:
        assert session.exec(select(func.count()).select_from(Instance)
                            .where(Instance.rejected_at.is_not(None))).one() == 0


def test_trash_then_removal(server, study, tmp_path, settings, monkeypatch, capsys):
    retention = server.server.services.retention
    note = rejection_note(tmp_path, "113001", "Rejected for Quality Reasons", study["ct"][:1])
    assert send(server.dicom_port, [note]) == [0]
    with Session(server.db.engine) as session:
        key = session.exec(select(InstanceFile.key).join(Instance, Instance.id == InstanceFile.instance)
                           .where(Instance.sop_instance_uid == uid_of(study["ct"][0]))).one()
    area = server.server.services.archive.areas["online"]

    # listed in the trash, with when it goes
    monkeypatch.setenv("PACS_DATABASE_URL", settings.database_url)
    from pacs.cli import main

    assert main(["retention", "trash", "--data-dir", str(settings.data_dir), "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["instances"] == 1 and listed["rejection_code"] == "113001" and listed["study_instance_uid"] == study["uid"]

    # not before trash_days
    assert retention.purge(now=utcnow() + timedelta(days=29)).instances == 0
    assert area.exists(key)
    # then removed: the index rows and the object; the rest of the study stays, audited as a deletion
    result = retention.purge(now=utcnow() + timedelta(days=31))
    assert result.instances == 1 and result.objects_removed == 1 and result.studies_deleted == []
    assert not area.exists(key)
    with Session(server.db.engine) as session:
        assert session.exec(select(Instance).where(Instance.sop_instance_uid == uid_of(study["ct"][0]))).first() is None
        assert session.exec(select(func.count()).select_from(Instance)).one() == 4
    copies_intact(server)
    [deleted] = audit_entries(server, event_id="110103", action="D")
    assert deleted["studies"] == [study["uid"]] and deleted["details"]["sop_instances"] == [uid_of(study["ct"][0])]

    # a whole study in the trash goes as "DICOM Study Deleted"
    rest = study["ct"][1:] + study["mr"] + [note]
    expired = rejection_note(tmp_path, "113039", "Data Retention Policy Expired", rest)
    assert send(server.dicom_port, [expired]) == [0]
    result = retention.purge(now=utcnow() + timedelta(days=31))
    assert result.studies_deleted == [study["uid"]] and result.instances == 5
    [gone] = audit_entries(server, event_id="110105")
    assert gone["action"] == "D" and gone["studies"] == [study["uid"]] and gone["patients"] == ["RET1"]
    assert cfind(server.dicom_port, "STUDY", StudyInstanceUID=study["uid"]) == []
    assert list(area.keys()) == []
    copies_intact(server)
    # a study sent again after its deletion is stored and answered again
    again = make(tmp_path, CT_FILE, study=study["uid"], series=generate_uid())
    assert send(server.dicom_port, [again]) == [0]
    [found] = cfind(server.dicom_port, "STUDY", StudyInstanceUID=study["uid"])
    assert int(found.NumberOfStudyRelatedInstances) == 1


def test_retention_periods_per_modality(start_server, tmp_path):
    server = start_server(retention={"per_modality": {"CT": 3650, "MG": 7300}, "trash_days": 10})
    today = utcnow()
    old = (today - timedelta(days=4000)).strftime("%Y%m%d")  # past CT's 10 years, within MG's 20
    recent = (today - timedelta(days=100)).strftime("%Y%m%d")

    def study_of(*modalities: str, date: str) -> str:
        uid = generate_uid()
        paths = [make(tmp_path, CT_FILE, study=uid, series=generate_uid(), study_date=date, modality=m,
                      patient_id="RET2") for m in modalities]
        assert send(server.dicom_port, paths) == [0] * len(paths)
        return uid

    old_ct = study_of("CT", date=old)
    old_ct_with_sr = study_of("CT", "SR", date=old)  # unlisted modalities do not count
    old_ct_with_mg = study_of("CT", "MG", date=old)  # the longest period wins
    recent_ct = study_of("CT", date=recent)
    undated = study_of("CT", date="")
    old_mr = study_of("MR", date=old)  # no period: kept for ever
    retention = server.server.services.retention

    dry = retention.run(dry_run=True)
    assert sorted(dry.expired_studies) == sorted([old_ct, old_ct_with_sr])
    assert {ds.StudyInstanceUID for ds in cfind(server.dicom_port, "STUDY")} >= {old_ct, old_ct_with_sr}

    result = retention.run()
    assert sorted(result.expired_studies) == sorted([old_ct, old_ct_with_sr]) and result.expired_instances == 3
    visible = {ds.StudyInstanceUID for ds in cfind(server.dicom_port, "STUDY")}
    assert visible == {old_ct_with_mg, recent_ct, undated, old_mr}
    entry = [e for e in audit_entries(server, event_id="110103", action="U") if e["studies"] == [old_ct]]
    assert entry and entry[0]["details"]["rejection_code"] == "113039" and entry[0]["user"] == "retention"

    assert retention.run(now=utcnow() + timedelta(days=11)).purge.studies_deleted
    deleted = {e["studies"][0] for e in audit_entries(server, event_id="110105")}
    assert deleted == {old_ct, old_ct_with_sr}
    copies_intact(server)


def test_never_the_last_copy(server, study):
    services = server.server.services
    areas = services.archive.areas
    area = areas["online"]
    with Session(server.db.engine) as session:
        copy = session.exec(select(InstanceFile).join(Instance, Instance.id == InstanceFile.instance)
                            .where(Instance.sop_instance_uid == uid_of(study["ct"][0]))).one()
        instance, key, size, checksum = copy.instance, copy.key, copy.size, copy.checksum
        with pytest.raises(LastCopy):
            remove_copy(session, copy, areas)
        with pytest.raises(LastCopy):
            delete_instances(session, [instance])
    # a second copy whose object is missing does not count
    with Session(server.db.engine) as session:
        session.add(InstanceFile(instance=instance, area="online", key="0" * 32, size=size, checksum=checksum))
        session.commit()
    with Session(server.db.engine) as session:
        with pytest.raises(LastCopy):
            remove_copy(session, session.exec(select(InstanceFile).where(InstanceFile.key == key)).one(), areas)
    assert area.exists(key)
    # an intact second copy does: then the first may go
    second = area.put_file(area.local_path(key))
    with Session(server.db.engine) as session:
        session.add(InstanceFile(instance=instance, area="online", key=second.key, size=second.size,
                                 checksum=second.checksum))
        session.commit()
    with Session(server.db.engine) as session:
        remove_copy(session, session.exec(select(InstanceFile).where(InstanceFile.key == key)).one(), areas)
        session.commit()
    with Session(server.db.engine) as session:
        keys = session.exec(select(InstanceFile.key).where(InstanceFile.instance == instance)).all()
    assert key not in keys and second.key in keys


def test_scheduled_by_the_server(start_server, tmp_path):
    server = start_server(retention={"per_modality": {"CT": 30}, "trash_days": 0, "interval_hours": 1})
    old = (utcnow() - timedelta(days=400)).strftime("%Y%m%d")
    uid = generate_uid()
    assert send(server.dicom_port, [make(tmp_path, CT_FILE, study=uid, series=generate_uid(), study_date=old)]) == [0]
    housekeeping = server.server.services.housekeeping
    for job in housekeeping.jobs:
        job.last -= 3600 * 24 * 2  # as if their turn had come
    assert "retention" in housekeeping.run_due()
    [gone] = audit_entries(server, event_id="110105")
    assert gone["studies"] == [uid]
    with Session(server.db.engine) as session:
        assert session.exec(select(func.count()).select_from(Instance)).one() == 0
    assert list(server.server.services.archive.areas["online"].keys()) == []
    shutil.rmtree(tmp_path, ignore_errors=True)

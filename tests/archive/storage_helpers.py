"""Helpers for the storage tests: synthetic CT/MR/DX studies, sending them over one
association, a server with tiers configured, and checks on the copies the index records."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlmodel import Session, col, select

from pacs.archive.index import Instance, InstanceFile, Series, Study
from pacs.settings import StorageSettings

SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage, "DX": DigitalXRayImageStorageForPresentation}


@dataclass
class SyntheticStudy:
    study_uid: str
    paths: list[Path]
    sop_instance_uids: list[str]


def make_study(folder: Path, count: int, *, patient_id: str = "P10001", modality: str = "CT",
               body_part: str = "CHEST", study_date: str = "20240101", size: int = 512,
               seed: int = 0) -> SyntheticStudy:
    """``count`` images of ``size``×``size`` 16-bit pixels (a smooth phantom with noise, so
    lossless compression has something to do), one series."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study_uid, series_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    phantom = (1000 * np.exp(-((x - size / 2) ** 2 + (y - size / 2) ** 2) / (size * size / 8))).astype(np.int16)
    paths, uids = [], []
    for number in range(count):
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.SOPClassUID = SOP_CLASS[modality]
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientID = patient_id
        ds.Modality = modality
        ds.BodyPartExamined = body_part
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
        ds.InstanceNumber = number + 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        noise = rng.integers(-20, 20, (size, size), dtype=np.int16)
        ds.PixelData = (phantom + noise + number).astype(np.int16).tobytes()
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        uids.append(str(ds.SOPInstanceUID))
    return SyntheticStudy(study_uid, paths, uids)


def send(port: int, paths: list[Path]) -> None:
    """C-STORE every file over one association, its bytes as they are."""
    ae = AE(ae_title="MODALITY")
    for sop_class in SOP_CLASS.values():
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            assert status.Status == 0, f"{path}: 0x{status.Status:04X}"
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()


def storage_config(tmp_path: Path, moto=None, **changes: object) -> StorageSettings:
    """online (default) + nearline folder + offline tape (+ nearline S3 when a moto server is given)."""
    areas = [{"name": "nearline", "kind": "filesystem", "tier": "nearline", "path": tmp_path / "nearline"},
             {"name": "tape", "kind": "container", "tier": "offline", "path": tmp_path / "tape"}]
    if moto is not None:
        areas.append(moto.area_settings("s3", f"pacs-{tmp_path.name[-20:].lower().replace('_', '-')}"))
    return StorageSettings(**{"areas": areas, "rules_interval_seconds": 0, "scrub_interval_seconds": 0,
                              **changes})


def storage(server):
    return server.server.services.storage


def study_id(server, study_uid: str) -> int:
    with Session(server.db.engine) as session:
        return session.exec(select(Study.id).where(Study.study_instance_uid == study_uid)).one()


def copies(server, study_uid: str) -> dict[str, list[InstanceFile]]:
    """SOP Instance UID → its copies."""
    with Session(server.db.engine) as session:
        rows = session.exec(select(Instance.sop_instance_uid, InstanceFile)
                            .join(InstanceFile, col(InstanceFile.instance) == Instance.id)
                            .join(Series, col(Series.id) == Instance.series).join(Study, col(Study.id) == Series.study)
                            .where(Study.study_instance_uid == study_uid)).all()
        session.expunge_all()
    out: dict[str, list[InstanceFile]] = {}
    for uid, row in rows:
        out.setdefault(uid, []).append(row)
    return out


def areas_of(server, study_uid: str) -> set[str]:
    return {c.area for group in copies(server, study_uid).values() for c in group}


def good_copies(server, study_uid: str) -> dict[str, int]:
    """SOP Instance UID → how many of its indexed copies read back with their SHA-256."""
    manager = storage(server)
    out = {}
    for uid, group in copies(server, study_uid).items():
        good = 0
        for copy in group:
            try:
                good += hashlib.sha256(manager.areas[copy.area].read(copy.key)).hexdigest() == copy.checksum
            except (FileNotFoundError, KeyError):
                pass
        out[uid] = good
    return out


def online_bytes(server, study_uid: str) -> dict[str, bytes]:
    """SOP Instance UID → the bytes of its online copy."""
    manager = storage(server)
    out = {}
    for uid, group in copies(server, study_uid).items():
        for copy in group:
            if manager.tiers[copy.area] == "online":
                out[uid] = manager.areas[copy.area].read(copy.key)
    return out


def cget(port: int, study_uid: str, syntaxes: list[str], sop_classes=(CTImageStorage,)) -> tuple[list[Dataset], Dataset]:
    received: list[Dataset] = []

    def on_store(event):
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, syntaxes)
        roles.append(build_role(sop_class, scp_role=True))
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    final = None
    for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
        if status and status.Status != 0xFF00:
            final = status
    assoc.release()
    return received, final


class StoreSCP:
    """A pynetdicom Storage SCP to C-MOVE to; keeps what it receives in memory."""

    def __init__(self, port: int, ae_title: str = "WORKSTATION") -> None:
        self.received: list[Dataset] = []
        self.ae = AE(ae_title=ae_title)
        for sop_class in SOP_CLASS.values():
            self.ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
        self.server = self.ae.start_server(("127.0.0.1", port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event) -> int:
        self.received.append(event.dataset)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def cmove(port: int, study_uid: str, destination: str) -> Dataset:
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    final = None
    for status, _ in assoc.send_c_move(identifier, destination, StudyRootQueryRetrieveInformationModelMove):
        if status and status.Status != 0xFF00:
            final = status
    assoc.release()
    return final


def dataset_of(raw: bytes) -> bytes:
    """The data set of a Part 10 object, without preamble and file meta information (what a
    C-STORE carries, and so what the archive must keep byte for byte)."""
    assert raw[128:132] == b"DICM"
    group_length = int.from_bytes(raw[140:144], "little")  # (0002,0000) UL, explicit VR LE
    return raw[144 + group_length:]

"""Query/Retrieve over loopback: DCMTK findscu at every level, movescu to a storescp, getscu;
pynetdicom for transcoding and C-CANCEL; Chinese names in both character sets."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import numpy
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs.settings import Peer
from tests.archive.corpus import build, storescu
from tests.dicom import needs_dcmtk
from tests.process import free_port

pytestmark = needs_dcmtk


@pytest.fixture(scope="module")
def receiver_port() -> int:
    return free_port()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(request, tmp_path_factory, sqlite_template, pg_database, receiver_port):
    """One archive holding the corpus for the whole module (these tests only read it)."""
    import shutil

    from pacs.settings import Settings
    from tests.conftest import RunningServer, _truncate, mappings_dir_default

    folder = tmp_path_factory.mktemp(f"qr-{request.param}")
    if request.param == "sqlite":
        (folder / "db").mkdir()
        shutil.copy(sqlite_template, folder / "db" / "pacs.db")
        url = f"sqlite:///{folder / 'db' / 'pacs.db'}"
    else:
        if pg_database is None:
            pytest.skip("PostgreSQL run: set PACS_TEST_DATABASE_URL (as .ci/run does) to run this on PostgreSQL too")
        _truncate(pg_database)
        url = pg_database
    settings = Settings(data_dir=folder / "data", database_url=url, mappings_dir=mappings_dir_default(),
                        host="127.0.0.1", mllp_port=0, http_port=0, dicom_port=0, timezone="Asia/Shanghai",
                        archive={"min_free_bytes": 0},
                        peers=[Peer(ae_title="STORESCP", host="127.0.0.1", port=receiver_port),
                               Peer(ae_title="NOWHERE", host="127.0.0.1", port=free_port())])
    server = RunningServer(settings).start()
    corpus = build(folder / "corpus")
    result = storescu(server.dicom_port, corpus)
    assert result.returncode == 0, result.stdout + result.stderr
    server.corpus = corpus
    yield server
    server.stop()


def findscu(port: int, model: str, keys: list[str], out: Path) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = ["findscu", model, "-aec", "PACS", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(args + ["127.0.0.1", str(port)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TCP_NODELAY": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_findscu_at_every_level(archive, tmp_path):
    ct = next(c for c in archive.corpus if c.source == "CT_small.dcm")
    patients = findscu(archive.dicom_port, "-P", ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName",
                                                  "NumberOfPatientRelatedStudies"], tmp_path / "p")
    assert len(patients) == len({c.path for c in archive.corpus}) - 0 or len(patients) >= 2
    assert all(int(p.NumberOfPatientRelatedStudies) >= 1 for p in patients)
    studies = findscu(archive.dicom_port, "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={ct.study_instance_uid}",
                                                 "PatientID", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
                                                 "StudyDate"], tmp_path / "s")
    [study] = studies
    assert study.ModalitiesInStudy == "CT" and int(study.NumberOfStudyRelatedInstances) == 1
    series = findscu(archive.dicom_port, "-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={ct.study_instance_uid}",
                                                "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances"],
                     tmp_path / "r")
    assert [s.Modality for s in series] == ["CT"]
    images = findscu(archive.dicom_port, "-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={ct.study_instance_uid}",
                                                "SOPInstanceUID", "SOPClassUID", "InstanceNumber"], tmp_path / "i")
    assert [i.SOPInstanceUID for i in images] == [ct.sop_instance_uid]
    by_modality = findscu(archive.dicom_port, "-S", ["QueryRetrieveLevel=STUDY", "ModalitiesInStudy=MR",
                                                     "StudyInstanceUID"], tmp_path / "m")
    assert len(by_modality) == sum(1 for c in archive.corpus if pydicom.dcmread(c.path).Modality == "MR")


def cfind(port: int, identifier: Dataset, model=StudyRootQueryRetrieveInformationModelFind) -> tuple[list[Dataset], Dataset]:
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    matches, final = [], None
    for status, found in assoc.send_c_find(identifier, model):
        if status.Status in (0xFF00, 0xFF01):
            matches.append(found)
        else:
            final = status
    assoc.release()
    return matches, final


def name_query(name: str, charset: str | None) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = name
    ds.PatientID = ""
    ds.StudyInstanceUID = ""
    return ds


def test_chinese_names_in_both_character_sets(archive):
    matches, _ = cfind(archive.dicom_port, name_query("王*", "ISO_IR 192"))
    assert len(matches) == 2  # chrX1 (ISO_IR 192) and chrX2 (GB18030)
    assert {str(m.PatientName) for m in matches} == {"WANG^XIAODONG=王^小東", "WANG^XIAODONG=王^小东"} or \
        {str(m.PatientName).split("=")[1] for m in matches} == {"王^小東", "王^小东"}
    latin, _ = cfind(archive.dicom_port, name_query("wang*", None))
    assert len(latin) == 2 and all("=" not in str(m.PatientName) for m in latin)
    gb, _ = cfind(archive.dicom_port, name_query("*小东", "GB18030"))
    assert len(gb) == 1 and gb[0].SpecificCharacterSet == "GB18030"


def test_query_errors(archive):
    bad_level = Dataset()
    bad_level.QueryRetrieveLevel = "NONSENSE"
    bad_level.PatientID = ""
    _, final = cfind(archive.dicom_port, bad_level)
    assert final.Status == 0xA900
    patient_in_study_root = Dataset()
    patient_in_study_root.QueryRetrieveLevel = "PATIENT"
    _, final = cfind(archive.dicom_port, patient_in_study_root)
    assert final.Status == 0xA900
    dates = name_query("*", None)
    dates.StudyDate = "20261231-20260101"
    _, final = cfind(archive.dicom_port, dates)
    assert final.Status == 0xC000


@pytest.fixture
def storescp(receiver_port, tmp_path):
    out = tmp_path / "received"
    out.mkdir()
    process = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out), str(receiver_port)],
                               env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", receiver_port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield out
    process.terminate()
    process.wait(10)


def movescu(port: int, destination: str, keys: list[str]) -> subprocess.CompletedProcess[str]:
    args = ["movescu", "-v", "-S", "-aec", "PACS", "-aem", destination]
    for key in keys:
        args += ["-k", key]
    return subprocess.run(args + ["127.0.0.1", str(port)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TCP_NODELAY": "1"})


def test_movescu_to_storescp(archive, storescp):
    for item in archive.corpus[:4]:
        result = movescu(archive.dicom_port, "STORESCP", ["QueryRetrieveLevel=STUDY",
                                                           f"StudyInstanceUID={item.study_instance_uid}"])
        assert result.returncode == 0 and "Success" in result.stdout + result.stderr, result.stdout + result.stderr
    received = {pydicom.dcmread(p).SOPInstanceUID: p for p in storescp.iterdir()}
    for item in archive.corpus[:4]:
        got = pydicom.dcmread(received[item.sop_instance_uid])
        assert numpy.array_equal(got.pixel_array, pydicom.dcmread(item.path).pixel_array), item.source


def test_move_to_unknown_destination(archive):
    result = movescu(archive.dicom_port, "STRANGER", ["QueryRetrieveLevel=STUDY",
                                                      f"StudyInstanceUID={archive.corpus[0].study_instance_uid}"])
    assert "Refused: MoveDestinationUnknown" in result.stdout + result.stderr


def test_move_to_destination_that_is_down(archive):
    result = movescu(archive.dicom_port, "NOWHERE", ["QueryRetrieveLevel=STUDY",
                                                     f"StudyInstanceUID={archive.corpus[0].study_instance_uid}"])
    assert "Success" not in result.stdout.split("Final Move Response")[-1]


def test_getscu(archive, tmp_path):
    out = tmp_path / "got"
    out.mkdir()
    item = next(c for c in archive.corpus if c.source == "MR_small_RLE.dcm")
    result = subprocess.run(["getscu", "-S", "-aec", "PACS", "-od", str(out), "-k", "QueryRetrieveLevel=SERIES",
                             "-k", f"StudyInstanceUID={item.study_instance_uid}", "-k",
                             f"SeriesInstanceUID={pydicom.dcmread(item.path).SeriesInstanceUID}",
                             "127.0.0.1", str(archive.dicom_port)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TCP_NODELAY": "1"})
    [got] = list(out.iterdir())
    assert pydicom.dcmread(got).SOPInstanceUID == item.sop_instance_uid, result.stdout + result.stderr
    assert numpy.array_equal(pydicom.dcmread(got).pixel_array, pydicom.dcmread(item.path).pixel_array)


def cget(port: int, identifier: Dataset, accept: dict[str, list[str]]) -> tuple[list[Dataset], Dataset]:
    """pynetdicom C-GET, offering each storage class only the given transfer syntaxes."""
    received: list[Dataset] = []

    def on_store(event):
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for sop_class, syntaxes in accept.items():
        ae.add_requested_context(sop_class, syntaxes)
        roles.append(build_role(sop_class, scp_role=True))
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    final = None
    for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
        if status and status.Status not in (0xFF00,):
            final = status
    assoc.release()
    return received, final


@pytest.mark.parametrize("source", ["JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm",
                                    "MR_small_RLE.dcm", "SC_rgb_dcmtk_+eb+cr.dcm"])
def test_transcodes_for_a_viewer_that_takes_only_uncompressed(archive, source):
    item = next(c for c in archive.corpus if c.source == source)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = item.study_instance_uid
    received, final = cget(archive.dicom_port, identifier, {item.sop_class_uid: [ExplicitVRLittleEndian,
                                                                                 ImplicitVRLittleEndian]})
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 1
    [got] = received
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    original = pydicom.dcmread(item.path)
    assert numpy.array_equal(got.pixel_array, original.pixel_array)


def test_get_in_the_stored_syntax_keeps_it(archive):
    item = next(c for c in archive.corpus if c.source == "JPEG2000.dcm")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = item.study_instance_uid
    identifier.SOPInstanceUID = item.sop_instance_uid
    received, final = cget(archive.dicom_port, identifier, {item.sop_class_uid: [item.transfer_syntax]})
    assert final.Status == 0 and received[0].file_meta.TransferSyntaxUID == item.transfer_syntax
    assert received[0].PixelData == pydicom.dcmread(item.path).PixelData


def test_retrieve_needs_the_unique_key(archive):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientName = "*"
    received, final = cget(archive.dicom_port, identifier, {})
    assert not received and final.Status == 0xA900


def every_key(level: str, uid: str) -> Dataset:
    from pacs.archive.qr import VALUES

    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword in VALUES:
        setattr(identifier, keyword, None)
    identifier.StudyInstanceUID = uid
    identifier.RetrieveAETitle = ""
    identifier.OtherPatientIDsSequence = []  # a sequence key the archive holds nothing for
    identifier.PatientComments = ""  # a key it has no value for
    return identifier


def test_every_return_key_comes_back_at_every_level(archive):
    """Each answer holds every key asked for (PS3.4 C.2.2.1.2), in the keys' VRs; the keys of
    levels below the one asked come back empty."""
    from pacs.archive.qr import VALUES

    ct = next(c for c in archive.corpus if c.source == "CT_small.dcm")
    source = pydicom.dcmread(ct.path)
    for level in ("STUDY", "SERIES", "IMAGE"):
        matches, final = cfind(archive.dicom_port, every_key(level, ct.study_instance_uid))
        assert final.Status == 0 and len(matches) == 1, level
        [answer] = matches
        for keyword in [*VALUES, "RetrieveAETitle", "OtherPatientIDsSequence", "PatientComments"]:
            assert keyword in answer, (level, keyword)
        assert answer.QueryRetrieveLevel == level and answer.RetrieveAETitle == "PACS"
        assert answer.PatientID == source.PatientID and answer.StudyInstanceUID == ct.study_instance_uid
        assert answer.ModalitiesInStudy == "CT" and int(answer.NumberOfStudyRelatedInstances) == 1
        assert answer.OtherPatientIDsSequence == [] and not answer.PatientComments
        if level == "STUDY":
            assert not answer.SeriesInstanceUID and not answer.Modality and answer.Rows is None
        if level in ("SERIES", "IMAGE"):
            assert answer.SeriesInstanceUID == source.SeriesInstanceUID and answer.Modality == "CT"
            assert int(answer.NumberOfSeriesRelatedInstances) == 1
        if level == "SERIES":
            assert not answer.SOPInstanceUID and answer.Rows is None
        if level == "IMAGE":
            assert answer.SOPInstanceUID == ct.sop_instance_uid and answer.SOPClassUID == source.SOPClassUID
            assert (answer.Rows, answer.Columns) == (source.Rows, source.Columns)
            assert answer.AvailableTransferSyntaxUID == source.file_meta.TransferSyntaxUID


def test_patient_root_find(archive):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = archive.corpus[0].path and pydicom.dcmread(archive.corpus[0].path).PatientID
    identifier.PatientName = ""
    matches, final = cfind(archive.dicom_port, identifier, PatientRootQueryRetrieveInformationModelFind)
    assert final.Status == 0 and len(matches) == 1


def test_c_move_with_pynetdicom_counts_sub_operations(archive, storescp):
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="PACS")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "\\".join(c.study_instance_uid for c in archive.corpus[:3])
    statuses = [s for s, _ in assoc.send_c_move(identifier, "STORESCP", StudyRootQueryRetrieveInformationModelMove)]
    assoc.release()
    final = statuses[-1]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 3
    assert [s.NumberOfRemainingSuboperations for s in statuses[:-1]] == [2, 1, 0]


def _key_forms(conn) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """Values of every form of matching key (PS3.4 C.2.2.2), taken from the archive's own rows."""
    from sqlalchemy import select

    from pacs.archive.qr import INSTANCE, PATIENT, SERIES, STUDY, Instance, Series, Study

    rows = conn.execute(select(PATIENT.patient_id, PATIENT.name_alphabetic, PATIENT.name_ideographic,
                               PATIENT.birth_date, PATIENT.sex, STUDY.study_instance_uid, STUDY.study_date,
                               STUDY.study_time, STUDY.accession_number, STUDY.description, SERIES.series_instance_uid,
                               SERIES.modality, SERIES.series_number, SERIES.body_part, INSTANCE.sop_instance_uid,
                               INSTANCE.sop_class_uid, INSTANCE.instance_number)
                        .join(Study.__table__, STUDY.patient == PATIENT.id)
                        .join(Series.__table__, SERIES.study == STUDY.id)
                        .join(Instance.__table__, INSTANCE.series == SERIES.id)).all()
    def first(values, default: str = "X"):  # type: ignore[no-untyped-def]
        return next((v for v in values if v), default)

    pid, alpha, ideo = first(r[0] for r in rows), first(r[1] for r in rows), first(r[2] for r in rows)
    studies, instances = [r[5] for r in rows], [r[14] for r in rows]
    date, time_ = first((r[6] for r in rows), "20260101"), first((r[7] for r in rows), "101010")
    family = alpha.split("^")[0]
    return {
        "PatientID": [pid, pid[:2] + "*", "*" + pid[-2:], pid[:-1] + "?", "NOBODY"],
        "PatientName": [family, family.lower() + "*", "*" + family[1:3].lower() + "*", alpha, "=" + ideo[:1] + "*",
                        f"{alpha}={ideo}", "NOBODY^*"],
        "PatientBirthDate": ["19000101-20991231", "-20991231", "19000101-",
                             first((str(r[3]).replace("-", "") for r in rows if r[3]), "19800101")],
        "PatientSex": ["M", "f", "O"],
        "StudyInstanceUID": [studies[0], "\\".join(studies[:2]), "\\".join(studies[:3]), "1.2.3"],
        "StudyDate": [date, f"{date}-", f"-{date}", f"{date}-{date}", "19000101-19000102"],
        "StudyTime": [time_[:2], "0000-2359", f"-{time_[:4]}", f"{time_[:2]}-"],
        "AccessionNumber": [first(r[8] for r in rows), "*"],
        "StudyDescription": [first(r[9] for r in rows)[:3].lower() + "*", "*?*"],
        "ModalitiesInStudy": ["CT", "CT\\MR", "MR\\OT\\US", "XA"],
        "SeriesInstanceUID": [rows[0][10], f"{rows[0][10]}\\{rows[1][10]}"],
        "Modality": ["mr", "CT", "O*"],
        "SeriesNumber": [str(first((r[12] for r in rows), 1)), "99999999999999999999999"],
        "BodyPartExamined": ["*", first((r[13] for r in rows), "HEAD")],
        "SOPInstanceUID": [instances[0], "\\".join(instances[:4])],
        "SOPClassUID": [rows[0][15]],
        "InstanceNumber": [str(first((r[16] for r in rows), 1)), "0"],
    }


def test_shaped_queries_read_what_their_statements_read(archive):
    """A C-FIND's query is built and compiled once per shape of its keys and run with the
    values as parameters (pacs.db.Shaped). Random mixes of every form of matching key at every
    level, met in a random order and twice, read exactly the rows of the same query built with
    the values and run by SQLAlchemy: two shapes sharing a key would read another's rows."""
    import random

    from pacs.archive import qr
    from pacs.db import Database

    db = Database(archive.settings.database_url)
    rng = random.Random(25)
    try:
        with db.reader.connect() as conn:
            forms = _key_forms(conn)
            queries = []
            for _ in range(150):
                identifier = Dataset()
                level = rng.choice(("STUDY", "SERIES", "IMAGE"))
                for keyword in rng.sample(sorted(forms), rng.randint(1, 3)):
                    setattr(identifier, keyword, rng.choice(forms[keyword]))
                queries.append((identifier, level))
            matched = 0
            for identifier, level in queries + rng.sample(queries, len(queries)):
                found = qr.find_rows(conn, identifier, level)
                shaped = [tuple(getattr(record, key) for model, record in
                                zip((qr.Patient, qr.Study, qr.Series, qr.Instance), (f.patient, f.study, f.series,
                                                                                     f.instance), strict=True)
                                if record is not None for key in qr.ANSWERED[model]) for f in found]
                where = qr.every("and", qr.conditions(identifier, level)).expression()
                statement = qr._base_query(level).where(where).offset(0).limit(qr.MAX_MATCHES + 1)
                assert shaped == [tuple(row) for row in conn.execute(statement)], (level, identifier)
                matched += bool(shaped)
            assert matched > 60  # most mixes match something: the comparison is not of empty lists
    finally:
        db.dispose()

"""DICOMweb (PS3.18) with dicomweb-client as the client: STOW-RS of the varied corpus, QIDO-RS at
three levels, WADO-RS of studies, series, instances, metadata, bulk data, frames, rendered images
and thumbnails, values corrected from the order on the way out, transcoding, streaming, and bad
requests answered 4xx with nothing stored."""

from __future__ import annotations

import io
import re
import tracemalloc
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.encaps import get_frame
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom import evt
from sqlmodel import Session, select

from pacs.archive.index import Instance, InstanceFile, Study
from tests.archive.corpus import build, source_path
from tests.archive.test_reconcile import STUDY_UID, ct_for
from tests.archive.test_store import assert_nothing_kept, count, stored_path
from tests.helpers import MLLPClient, ack_fields, send_all

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
UNDECODABLE = "JPEG-lossy.dcm"  # 12-bit JPEG extended: no installed plugin decodes it


def dicomweb(server) -> DICOMwebClient:
    return DICOMwebClient(url=server.http_url + "/dicomweb")


def stow(server, paths, study: str | None = None):
    return dicomweb(server).store_instances([pydicom.dcmread(p) for p in paths], study_instance_uid=study)


def value(item: dict, tag: str):
    """The first value of an attribute of a DICOM JSON object (PS3.18 F.2)."""
    return item[tag]["Value"][0] if item.get(tag, {}).get("Value") else None


def multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related response: their headers and bodies."""
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"]).group(1).encode()
    parts = []
    for chunk in response.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().strip().split("\r\n"))
        parts.append(({k.lower(): v for k, v in headers.items()}, body[:-2]))
    return parts


def multipart_body(parts: list[bytes], boundary: str = "b0undary") -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
                    for part in parts)
    return body + b"--" + boundary.encode() + b"--\r\n"


STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b0undary'


def one_study(tmp_path: Path, sources: list[str], *, series_of=lambda n: n // 2) -> list[Path]:
    """Corpus files made into one study: same patient, series by ``series_of(position)``."""
    study, series = generate_uid(), {}
    paths = []
    for number, item in enumerate(build(tmp_path / "study", [(name, "") for name in sources])):
        ds = pydicom.dcmread(item.path)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series.setdefault(series_of(number), generate_uid())
        ds.PatientID, ds.PatientName = "WEB001", "LI^SI"
        ds.InstanceNumber = number + 1
        ds.save_as(item.path, enforce_file_format=True)
        paths.append(item.path)
    return paths


# -- STOW-RS and QIDO-RS ---------------------------------------------------------------------

def test_stow_corpus_and_qido_at_three_levels(server, tmp_path):
    corpus = build(tmp_path / "corpus")
    result = stow(server, [c.path for c in corpus])
    assert "FailedSOPSequence" not in result
    assert sorted(i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence) == sorted(
        c.sop_instance_uid for c in corpus)
    assert all(i.RetrieveURL.startswith(server.http_url + "/dicomweb/studies/") for i in result.ReferencedSOPSequence)
    assert count(server.db, Instance) == len(corpus)
    with_uids = {c.sop_instance_uid: c for c in corpus}
    for uid, item in with_uids.items():  # kept byte for byte, as for C-STORE
        assert stored_path(server, uid).read_bytes() == item.path.read_bytes(), item.source
    client = dicomweb(server)
    headers = [pydicom.dcmread(c.path, stop_before_pixels=True) for c in corpus]

    studies = client.search_for_studies()
    assert len(studies) == len(corpus)
    assert {value(s, "0020000D") for s in studies} == {c.study_instance_uid for c in corpus}
    assert all(value(s, "00081190").endswith("/dicomweb/studies/" + value(s, "0020000D")) for s in studies)

    # Chinese names: every PN group intact, found by pinyin and by Han characters
    for query in ("WANG*", "王*", "Wang^XiaoDong"):
        found = client.search_for_studies(search_filters={"PatientName": query})
        assert sorted(value(s, "00100020") for s in found) == ["X1EXAMPLE", "X2EXAMPLE"], query
    [x1] = client.search_for_studies(search_filters={"00100020": "X1EXAMPLE"})
    assert value(x1, "00100010") == {"Alphabetic": "WANG^XIAODONG", "Ideographic": "王^小東"}
    [x2] = client.search_for_studies(search_filters={"PatientID": "X2EXAMPLE"})
    assert value(x2, "00100010")["Ideographic"] == "王^小东"

    # Date ranges, modalities in study, includefield, limit and offset
    dates = [str(h.get("StudyDate", "")) for h in headers]
    low = sorted(d for d in dates if d)[len([d for d in dates if d]) // 2]
    in_range = client.search_for_studies(search_filters={"StudyDate": f"{low}-20991231"})
    assert len(in_range) == sum(1 for d in dates if d and d >= low) > 0
    mr = client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})
    assert len(mr) == sum(1 for h in headers if h.Modality == "MR") > 0
    mr_or_ct = client.search_for_studies(search_filters={"ModalitiesInStudy": "MR,CT"})
    assert len(mr_or_ct) == sum(1 for h in headers if h.Modality in ("MR", "CT")) > len(mr)
    [ct] = client.search_for_studies(search_filters={"StudyInstanceUID": corpus[0].study_instance_uid},
                                     fields=["StudyDescription", "00200010"])
    assert "00081030" in ct and value(ct, "00200010") == (str(headers[0].get("StudyID", "")) or None)
    first = client.search_for_studies(limit=5)
    rest = client.search_for_studies(offset=5)
    assert len(first) == 5 and len(rest) == len(corpus) - 5
    assert {value(s, "0020000D") for s in first + rest} == {c.study_instance_uid for c in corpus}
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []

    # Series: of a study, and across studies with relational keys
    series_uid = str(headers[0].SeriesInstanceUID)
    [series] = client.search_for_series(corpus[0].study_instance_uid)
    assert value(series, "0020000E") == series_uid and value(series, "00080060") == headers[0].Modality
    assert value(series, "00081190").endswith(f"/studies/{corpus[0].study_instance_uid}/series/{series_uid}")
    assert "00100020" not in series  # the study is in the path: no study attributes by default
    ct_series = client.search_for_series(search_filters={"Modality": "CT"}, fields=["ProtocolName"])
    assert len(ct_series) == sum(1 for h in headers if h.Modality == "CT")
    assert all("00181030" in s and "0020000D" in s for s in ct_series)
    assert len(client.search_for_series(search_filters={"PatientName": "王*", "Modality": "OT"})) == 2

    # Instances: of a series, of a study, everywhere with includefield=all
    [instance] = client.search_for_instances(corpus[0].study_instance_uid, series_uid)
    assert value(instance, "00080018") == corpus[0].sop_instance_uid
    assert value(instance, "00280010") == headers[0].Rows
    assert value(instance, "00081190").endswith(f"/series/{series_uid}/instances/{corpus[0].sop_instance_uid}")
    assert len(client.search_for_instances(corpus[1].study_instance_uid)) == 1
    everything = client.search_for_instances(fields=["all"])
    assert {value(i, "00080018"): value(i, "00083002") for i in everything} == {
        c.sop_instance_uid: c.transfer_syntax for c in corpus}
    mr_class = client.search_for_instances(search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"})
    assert len(mr_class) == sum(1 for h in headers if h.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4")

    # Keys the index does not match on are ignored, with a Warning header
    response = httpx.get(server.http_url + "/dicomweb/studies",
                         params={"InstitutionName": "X", "fuzzymatching": "true"})
    assert response.status_code == 200 and len(response.json()) == len(corpus)
    assert "InstitutionName" in response.headers["warning"] and "fuzzymatching" in response.headers["warning"]


# -- WADO-RS ---------------------------------------------------------------------------------

def test_wado_study_series_instance_as_stored_and_transcoded(server, tmp_path):
    paths = one_study(tmp_path, ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                 "MR_small_RLE.dcm", "SC_rgb_dcmtk_+eb+cr.dcm"])
    stow(server, paths)
    originals = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in paths)}
    study = str(next(iter(originals.values())).StudyInstanceUID)
    client = dicomweb(server)

    # As stored (transfer-syntax=*): the stored files themselves, part by part
    got = client.retrieve_study(study, media_types=(("application/dicom", "*"),))
    assert sorted(str(ds.SOPInstanceUID) for ds in got) == sorted(originals)
    for ds in got:
        original = originals[str(ds.SOPInstanceUID)]
        assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert ds.PixelData == original.PixelData
    response = httpx.get(f"{server.http_url}/dicomweb/studies/{study}", headers={"Accept": DICOM_ANY})
    # files sent as stored: the length is known before the first byte, no chunked coding
    assert int(response.headers["content-length"]) == len(response.content)
    assert "transfer-encoding" not in response.headers
    parts = multipart(response)
    assert [h["content-type"].split("transfer-syntax=")[1] for h, _ in parts] == [
        str(pydicom.dcmread(io.BytesIO(b)).file_meta.TransferSyntaxUID) for _, b in parts]
    for _, body in parts:  # byte for byte what was stored
        uid = str(pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True).SOPInstanceUID)
        assert body == stored_path(server, uid).read_bytes()

    # Default Accept: Explicit VR Little Endian, compressed objects decoded, UIDs kept
    first = pydicom.dcmread(paths[2])
    series = client.retrieve_series(study, str(first.SeriesInstanceUID))
    assert len(series) == 2
    for ds in series:
        original = originals[str(ds.SOPInstanceUID)]
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, original.pixel_array)
    for uid, original in originals.items():
        ds = client.retrieve_instance(study, str(original.SeriesInstanceUID), uid,
                                      media_types=(("application/dicom", ExplicitVRLittleEndian),))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and ds.SOPInstanceUID == uid
        assert np.array_equal(ds.pixel_array, original.pixel_array)
        assert ds.PatientID == "WEB001"

    # A bare application/dicom for one instance is one part, not multipart
    response = httpx.get(f"{server.http_url}/dicomweb/studies/{study}/series/{first.SeriesInstanceUID}/instances/"
                         f"{first.SOPInstanceUID}", headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert response.headers["content-type"].startswith("application/dicom")
    assert response.content == stored_path(server, str(first.SOPInstanceUID)).read_bytes()
    assert int(response.headers["content-length"]) == len(response.content)


def test_rows_without_a_transfer_syntax_are_served_from_what_their_files_say(server, tmp_path):
    """Index rows that hold no transfer syntax (as builds before it was kept wrote them) are
    served by WADO-RS and C-GET in the syntax their files declare, not refused with a 500."""
    from pynetdicom import AE, build_role
    from pynetdicom.sop_class import CTImageStorage, MRImageStorage, StudyRootQueryRetrieveInformationModelGet

    paths = one_study(tmp_path, ["CT_small.dcm", "MR_small_jpeg_ls_lossless.dcm"], series_of=lambda n: 0)
    stow(server, paths)
    originals = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in paths)}
    study = str(next(iter(originals.values())).StudyInstanceUID)
    with Session(server.server.services.db.engine) as session:
        for row in session.exec(select(Instance).where(Instance.sop_instance_uid.in_(list(originals)))):
            row.transfer_syntax_uid = ""
            session.add(row)
        session.commit()
    client = dicomweb(server)
    got = client.retrieve_study(study)  # the default: Explicit VR Little Endian, decoded where needed
    assert sorted(str(ds.SOPInstanceUID) for ds in got) == sorted(originals)
    for ds in got:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, originals[str(ds.SOPInstanceUID)].pixel_array)
    metadata = client.retrieve_study_metadata(study)
    assert sorted(value(m, "00080018") for m in metadata) == sorted(originals)
    response = httpx.get(f"{server.http_url}/dicomweb/studies/{study}", headers={"Accept": DICOM_ANY})
    assert [h["content-type"].split("transfer-syntax=")[1] for h, _ in multipart(response)] == [
        str(pydicom.dcmread(io.BytesIO(b)).file_meta.TransferSyntaxUID) for _, b in multipart(response)]

    received = []
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for storage in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(storage, ExplicitVRLittleEndian)
    handlers = [(evt.EVT_C_STORE, lambda event: received.append(event.dataset) or 0x0000)]
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS", evt_handlers=handlers,
                         ext_neg=[build_role(CTImageStorage, scp_role=True), build_role(MRImageStorage, scp_role=True)])
    query = pydicom.Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study
    statuses = [status.Status for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    assert statuses[-1] == 0x0000
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(originals)


def test_a_stored_file_shorter_than_its_record_breaks_the_response_not_the_data(server, tmp_path):
    """A study goes out with the Content-Length its files' recorded sizes give; a file found
    shorter than recorded must not pass for a whole answer (the client sees an incomplete body),
    and the server goes on serving."""
    paths = one_study(tmp_path, ["CT_small.dcm", "MR_small.dcm"])
    stow(server, paths)
    study = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    damaged = stored_path(server, str(pydicom.dcmread(paths[1], stop_before_pixels=True).SOPInstanceUID))
    whole = damaged.read_bytes()
    damaged.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server.http_url}/dicomweb/studies/{study}", headers={"Accept": DICOM_ANY})
    damaged.write_bytes(whole)
    response = httpx.get(f"{server.http_url}/dicomweb/studies/{study}", headers={"Accept": DICOM_ANY})
    assert response.status_code == 200 and len(multipart(response)) == 2


def test_metadata_bulk_data_and_chinese_names(server, tmp_path):
    paths = one_study(tmp_path, ["CT_small.dcm", "MR_small_jpeg_ls_lossless.dcm"], series_of=lambda n: n)
    chinese = build(tmp_path / "chinese", [("chrX1.dcm", ""), ("chrX2.dcm", "")])
    stow(server, paths + [c.path for c in chinese])
    client = dicomweb(server)
    ct, mr = (pydicom.dcmread(p) for p in paths)

    metadata = client.retrieve_study_metadata(str(ct.StudyInstanceUID))
    assert sorted(value(m, "00080018") for m in metadata) == sorted([ct.SOPInstanceUID, mr.SOPInstanceUID])
    for item in metadata:
        original = ct if value(item, "00080018") == ct.SOPInstanceUID else mr
        assert value(item, "00100020") == "WEB001" and value(item, "00280010") == original.Rows
        uri = item["7FE00010"]["BulkDataURI"]
        assert uri.startswith(server.http_url + "/dicomweb/studies/")  # an absolute, working URL
        [pixels] = client.retrieve_bulkdata(uri)
        assert pixels == original.pixel_array.astype(original.pixel_array.dtype.newbyteorder("<")).tobytes()
        assert "InlineBinary" not in item.get("7FE00010", {})
    one = client.retrieve_series_metadata(str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID))
    assert [value(m, "00080018") for m in one] == [ct.SOPInstanceUID]

    for item, ideographic in zip(chinese, ["王^小東", "王^小东"], strict=True):
        ds = pydicom.dcmread(item.path, stop_before_pixels=True)
        meta = client.retrieve_instance_metadata(item.study_instance_uid, str(ds.SeriesInstanceUID),
                                                 item.sop_instance_uid)
        assert value(meta, "00100010") == {"Alphabetic": "Wang^XiaoDong", "Ideographic": ideographic}
        assert pydicom.Dataset.from_json(meta, lambda uri: b"").PatientName.ideographic == ideographic


def test_frames_rendered_and_thumbnails(server, tmp_path):
    corpus = build(tmp_path / "frames", [("rtdose.dcm", ""), ("SC_rgb_rle_2frame.dcm", ""),
                                         ("examples_ybr_color.dcm", ""), ("CT_small.dcm", "")])
    stow(server, [c.path for c in corpus])
    client = dicomweb(server)
    dose, rle, ybr, ct = (pydicom.dcmread(c.path) for c in corpus)

    def uids(ds):
        return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)

    # Uncompressed frames: a byte range of a native file, decoded frames of a compressed one
    frames = client.retrieve_instance_frames(*uids(dose), frame_numbers=[1, 3, 15])
    assert frames == [dose.pixel_array[i].tobytes() for i in (0, 2, 14)]
    [second] = client.retrieve_instance_frames(*uids(rle), frame_numbers=[2])
    assert second == rle.pixel_array[1].tobytes()
    # The stored JPEG bitstream when the client asks for image/jpeg
    jpeg = client.retrieve_instance_frames(*uids(ybr), frame_numbers=[1, 30],
                                           media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),))
    assert jpeg == [get_frame(ybr.PixelData, i, number_of_frames=30) for i in (0, 29)]
    base = f"{server.http_url}/dicomweb/studies/{ybr.StudyInstanceUID}/series/{ybr.SeriesInstanceUID}" \
           f"/instances/{ybr.SOPInstanceUID}"
    assert httpx.get(base + "/frames/31").status_code == 404
    assert httpx.get(base + "/frames/one").status_code == 400

    # Rendered: JPEG by default, PNG on request, windowed, scaled to a viewport
    default = Image.open(io.BytesIO(client.retrieve_instance_rendered(*uids(ct))))
    assert default.format == "JPEG" and default.size == (ct.Columns, ct.Rows) and default.mode == "L"
    png = Image.open(io.BytesIO(client.retrieve_instance_rendered(*uids(ct), media_types=("image/png",))))
    assert png.format == "PNG" and png.size == (ct.Columns, ct.Rows)
    narrow = Image.open(io.BytesIO(client.retrieve_instance_rendered(
        *uids(ct), media_types=("image/png",), params={"window": "1000,1,linear"})))
    assert set(np.unique(np.asarray(narrow))) <= {0, 255} and np.asarray(narrow).std() > 0
    assert not np.array_equal(np.asarray(narrow), np.asarray(png))
    small = Image.open(io.BytesIO(client.retrieve_instance_rendered(*uids(ct), params={"viewport": "64,64"})))
    assert small.size == (64, 64)
    frame = Image.open(io.BytesIO(client.retrieve_instance_frames_rendered(*uids(ybr), frame_numbers=[5])))
    assert frame.mode == "RGB" and frame.size == (ybr.Columns, ybr.Rows)
    assert httpx.get(base + "/rendered", params={"window": "40,0,linear"}).status_code == 400
    for bad in ({"window": "nan,nan"}, {"window": "inf,400"}, {"quality": "³"}, {"viewport": "６４,６４"}):
        assert httpx.get(base + "/rendered", params=bad).status_code == 400, bad  # not a 500
    assert httpx.get(base + "/rendered", headers={"Accept": "image/gif"}).status_code == 406

    # Thumbnails of a study, a series and an instance: small JPEGs
    for url in (f"{server.http_url}/dicomweb/studies/{ct.StudyInstanceUID}/thumbnail",
                f"{server.http_url}/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/thumbnail",
                base + "/thumbnail"):
        response = httpx.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg", url
        thumbnail = Image.open(io.BytesIO(response.content))
        assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 128


def test_retrieve_carries_the_values_corrected_from_the_order(server, tmp_path):
    assert [a["code"] for a in send_all(server.mllp_port, ["orm_o01_nw_ihe.hl7"])] == ["AA"]
    # The radiographer typed the wrong patient ID; the study UID came from the worklist.
    path = ct_for(tmp_path, StudyInstanceUID=STUDY_UID, PatientID="WRONG123", PatientName="ZHNG^SAN",
                  AccessionNumber="")
    second = ct_for(tmp_path, "ct2.dcm", StudyInstanceUID=STUDY_UID, PatientID="WRONG123", PatientName="ZHNG^SAN",
                    AccessionNumber="", SeriesInstanceUID=pydicom.dcmread(path).SeriesInstanceUID)
    assert "FailedSOPSequence" not in stow(server, [path, second])
    ds = pydicom.dcmread(path)
    client = dicomweb(server)

    [study] = client.search_for_studies(search_filters={"StudyInstanceUID": STUDY_UID})
    assert value(study, "00100020") == "P10001" and value(study, "00080050") == "ACC0001"
    for got in client.retrieve_study(STUDY_UID, media_types=(("application/dicom", "*"),)):
        assert got.PatientID == "P10001" and got.AccessionNumber == "ACC0001"
        assert got.PatientName.alphabetic == "ZHANG^SAN" and got.PatientName.ideographic == "张^三"
        assert got.SpecificCharacterSet == "ISO_IR 192"
    got = client.retrieve_instance(STUDY_UID, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    assert got.PatientID == "P10001" and got.PixelData == ds.PixelData
    meta = client.retrieve_instance_metadata(STUDY_UID, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    assert value(meta, "00100020") == "P10001"
    assert value(meta, "00100010") == {"Alphabetic": "ZHANG^SAN", "Ideographic": "张^三"}
    assert pydicom.dcmread(stored_path(server, str(ds.SOPInstanceUID))).PatientID == "WRONG123"  # file as sent


def test_metadata_is_kept_once_built_and_follows_patient_updates(server, tmp_path):
    assert [a["code"] for a in send_all(server.mllp_port, ["orm_o01_nw_ihe.hl7"])] == ["AA"]
    path = ct_for(tmp_path, StudyInstanceUID=STUDY_UID, PatientID="P10001", PatientName="ZHANG^SAN=张^三",
                  SpecificCharacterSet="ISO_IR 192", AccessionNumber="ACC0001")
    stow(server, [path])
    ds = pydicom.dcmread(path)
    client = dicomweb(server)
    first = client.retrieve_study_metadata(STUDY_UID)
    assert value(first[0], "00100010") == {"Alphabetic": "ZHANG^SAN", "Ideographic": "张^三"}
    [cached] = (server.settings.data_dir / "cache" / "metadata").rglob("*.json")
    assert b'"BulkDataURI":"bulkdata/7FE00010"' in cached.read_bytes()  # the instance URL is put in per request

    # Served from what was kept: a changed kept copy shows (the file itself is not read again)
    cached.write_bytes(cached.read_bytes().replace(b'"00080060":{"vr":"CS","Value":["CT"]}',
                                                   b'"00080060":{"vr":"CS","Value":["OT"]}'))
    assert value(client.retrieve_study_metadata(STUDY_UID)[0], "00080060") == "OT"

    # An ADT update of the patient's name shows at once, over the kept copy
    update = (Path(__file__).parents[1] / "data" / "hl7" / "adt_a08_ihe.hl7").read_bytes()
    update = update.replace("张^三".encode(), "张^山".encode()).replace(b"ZHANG^SAN", b"ZHANG^SHAN")
    with MLLPClient(server.mllp_port) as mllp:
        assert ack_fields(mllp.send(update))["code"] == "AA"
    meta = client.retrieve_instance_metadata(STUDY_UID, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    assert value(meta, "00100010") == {"Alphabetic": "ZHANG^SHAN", "Ideographic": "张^山"}
    assert meta["7FE00010"]["BulkDataURI"].startswith(server.http_url + "/dicomweb/studies/")

    # A damaged kept copy is never sent: the answer is rebuilt from the file, and kept again
    cached.write_bytes(b'{"00080060":{"vr":"CS","Val')
    damaged = client.retrieve_study_metadata(STUDY_UID)
    assert value(damaged[0], "00080060") == "CT" and cached.read_bytes().endswith(b"}")

    # Whatever happens to the kept copies, the answer is rebuilt from the file
    cached.unlink()
    again = client.retrieve_study_metadata(STUDY_UID)
    assert value(again[0], "00080060") == "CT" and value(again[0], "00100010")["Alphabetic"] == "ZHANG^SHAN"
    assert len(list((server.settings.data_dir / "cache" / "metadata").rglob("*.json"))) == 1


def test_metadata_of_a_stable_study_is_built_before_anyone_asks(start_server, tmp_path):
    server = start_server(publish={"stable_after_seconds": 0})
    paths = one_study(tmp_path, ["CT_small.dcm", "MR_small_jpeg_ls_lossless.dcm"], series_of=lambda n: n)
    stow(server, paths)
    study = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    kept = server.settings.data_dir / "cache" / "metadata"
    assert not list(kept.rglob("*.json"))  # nothing built at store time
    housekeeping = server.server.services.housekeeping
    [job] = [job for job in housekeeping.jobs if job.name == "metadata"]
    assert job.interval() == server.settings.archive.metadata_warm_seconds > 0
    assert job.run() == 2  # the scheduled job's pass, run now rather than in a minute
    built = sorted(kept.rglob("*.json"))
    assert len(built) == 2
    assert job.run() == 0  # a pass builds a study once
    # what the request then answers is what was built, with its absolute URLs
    answer = dicomweb(server).retrieve_study_metadata(study)
    assert sorted(value(m, "00080018") for m in answer) == sorted(
        str(pydicom.dcmread(p).SOPInstanceUID) for p in paths)
    assert sorted(kept.rglob("*.json")) == built
    assert all(m["7FE00010"]["BulkDataURI"].startswith(server.http_url) for m in answer)


def test_a_file_that_cannot_be_read_does_not_stop_the_metadata_job(start_server, tmp_path):
    server = start_server(publish={"stable_after_seconds": 0})
    paths = one_study(tmp_path, ["CT_small.dcm", "MR_small_jpeg_ls_lossless.dcm"], series_of=lambda n: n)
    stow(server, paths)
    broken = stored_path(server, str(pydicom.dcmread(paths[0]).SOPInstanceUID))
    broken.write_bytes(b"not DICOM at all")  # damaged on disk: the scrubber's to report
    [job] = [job for job in server.server.services.housekeeping.jobs if job.name == "metadata"]
    assert job.run() == 1  # the other instance is built; the damaged one is logged and left
    assert len(list((server.settings.data_dir / "cache" / "metadata").rglob("*.json"))) == 1


def test_a_study_on_an_offline_tier_is_recalled_for_wado(start_server, tmp_path):
    """Migrated to a tape container, compressed losslessly on the way: WADO-RS recalls it, as
    C-MOVE does, and sends the copy's own syntax as stored or decodes it to the default."""
    from pacs.settings import StorageSettings

    server = start_server(storage=StorageSettings(
        areas=[{"name": "tape", "kind": "container", "tier": "offline", "path": tmp_path / "tape"}],
        rules_interval_seconds=0, scrub_interval_seconds=0))
    paths = big_study(tmp_path / "study", 3, size=64)
    stow(server, paths)
    originals = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in paths)}
    study = str(next(iter(originals.values())).StudyInstanceUID)
    with Session(server.db.engine) as session:
        study_id = session.exec(select(Study.id).where(Study.study_instance_uid == study)).one()
    server.server.services.storage.migrate_study(study_id, "online", "tape", compress_with="jpeg2000")
    with Session(server.db.engine) as session:
        assert set(session.exec(select(InstanceFile.area)).all()) == {"tape"}

    client = dicomweb(server)
    as_kept = client.retrieve_study(study, media_types=(("application/dicom", "*"),))
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in as_kept} == {JPEG2000Lossless}
    for ds in client.retrieve_study(study) + as_kept:  # decoded to the default, and as kept: bit-exact
        assert np.array_equal(ds.pixel_array, originals[str(ds.SOPInstanceUID)].pixel_array)
    assert len(client.retrieve_study_metadata(study)) == 3


# -- bad requests ----------------------------------------------------------------------------

def test_bad_requests_are_4xx_with_nothing_stored(server, tmp_path):
    url = server.http_url + "/dicomweb"
    good = build(tmp_path / "good", [("CT_small.dcm", "")])[0]
    not_dicom = b"this is a radiology report, not a DICOM object\n" * 20

    response = httpx.post(url + "/studies", content=multipart_body([not_dicom]), headers={"Content-Type": STOW_TYPE})
    assert response.status_code == 409 and response.headers["content-type"] == "application/dicom+json"
    [failed] = pydicom.Dataset.from_json(response.json()).FailedSOPSequence
    assert failed.FailureReason == 0xC000 and "ReferencedSOPSequence" not in response.json()
    other_study = generate_uid()
    response = httpx.post(f"{url}/studies/{other_study}", content=multipart_body([good.path.read_bytes()]),
                          headers={"Content-Type": STOW_TYPE})
    assert response.status_code == 409
    [failed] = pydicom.Dataset.from_json(response.json()).FailedSOPSequence
    assert failed.FailureReason == 0xA900 and failed.ReferencedSOPInstanceUID == good.sop_instance_uid
    # A File Meta Information without a transfer syntax this archive knows: refused, as it could not be served
    part10 = good.path.read_bytes()
    syntax = str(pydicom.dcmread(good.path).file_meta.TransferSyntaxUID).encode()
    syntax += b"\0" * (len(syntax) % 2)
    without = pydicom.dcmread(good.path)
    del without.file_meta.TransferSyntaxUID
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, without, implicit_vr=False, little_endian=True)  # pydicom reads it back all the same
    for damaged in (part10.replace(syntax, b"1.2.3.4.5.6.7.8.9.1\0"[:len(syntax)], 1), buffer.getvalue()):
        response = httpx.post(url + "/studies", content=multipart_body([damaged]), headers={"Content-Type": STOW_TYPE})
        assert response.status_code == 409, response.text
        [failed] = pydicom.Dataset.from_json(response.json()).FailedSOPSequence
        assert failed.FailureReason == 0xC000 and "transfer syntax" in response.headers["warning"].lower()
    # A warning quoting a damaged value (control characters in a UID) still makes a valid header
    damaged = pydicom.dcmread(good.path)
    damaged.StudyInstanceUID = "1.2\x08\x01.3"
    buffer = io.BytesIO()
    damaged.save_as(buffer, enforce_file_format=True)
    response = httpx.post(f"{url}/studies/{other_study}", content=multipart_body([buffer.getvalue()]),
                          headers={"Content-Type": STOW_TYPE})
    assert response.status_code == 409 and "1.2??.3" in response.headers["warning"]
    for content_type in ("application/json", 'multipart/related; type="application/dicom+json"; boundary=b0undary'):
        response = httpx.post(url + "/studies", content=multipart_body([good.path.read_bytes()]),
                              headers={"Content-Type": content_type})
        assert response.status_code == 415 and response.json()["message"], content_type
    response = httpx.post(url + "/studies", content=multipart_body([good.path.read_bytes()]),
                          headers={"Content-Type": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 400 and "boundary" in response.json()["message"]
    truncated = multipart_body([good.path.read_bytes()])[:-200]
    response = httpx.post(url + "/studies", content=truncated, headers={"Content-Type": STOW_TYPE})
    assert response.status_code == 400 and "ended" in response.json()["message"]
    assert_nothing_kept(server)

    # One good part and one bad: 202, the good one stored
    response = httpx.post(url + "/studies", content=multipart_body([good.path.read_bytes(), not_dicom]),
                          headers={"Content-Type": STOW_TYPE})
    assert response.status_code == 202
    body = pydicom.Dataset.from_json(response.json())
    assert [i.ReferencedSOPInstanceUID for i in body.ReferencedSOPSequence] == [good.sop_instance_uid]
    assert [i.FailureReason for i in body.FailedSOPSequence] == [0xC000]
    assert count(server.db, Instance) == 1
    # The same again: stored already, a warning (PS3.18 10.5.3), still one copy
    response = httpx.post(url + "/studies", content=multipart_body([good.path.read_bytes()]),
                          headers={"Content-Type": STOW_TYPE})
    assert response.status_code == 202 and count(server.db, Instance) == 1
    assert pydicom.Dataset.from_json(response.json()).ReferencedSOPSequence[0].WarningReason == 0xB006

    # QIDO and WADO: bad parameters 400, JSON only 406, unknown UIDs 404, each saying why
    series = str(pydicom.dcmread(good.path).SeriesInstanceUID)
    cases = [
        ("/studies", {"NotAnAttribute": "1"}, {}, 400),
        ("/studies", {"StudyDate": "2026-13-01"}, {}, 400),
        ("/studies", {"limit": "-1"}, {}, 400),
        ("/studies", {"InstanceNumber": "x"}, {}, 200),  # not a study-level key: ignored, with a warning
        ("/series", {"SeriesNumber": "abc"}, {}, 400),
        ("/studies", {}, {"Accept": "application/dicom+xml"}, 406),
        (f"/studies/{good.study_instance_uid}/metadata", {}, {"Accept": "application/dicom+xml"}, 406),
        (f"/studies/{good.study_instance_uid}", {}, {"Accept": "application/json"}, 406),
        (f"/studies/{generate_uid()}", {}, {}, 404),
        (f"/studies/{generate_uid()}/metadata", {}, {}, 404),
        (f"/studies/{good.study_instance_uid}/series/{generate_uid()}", {}, {}, 404),
        (f"/studies/{good.study_instance_uid}/series/{series}/instances/{generate_uid()}/rendered", {}, {}, 404),
        (f"/studies/{good.study_instance_uid}/series/{series}/instances/{good.sop_instance_uid}/bulkdata/xyz",
         {}, {}, 400),
    ]
    for path, params, headers, status in cases:
        response = httpx.get(url + path, params=params, headers=headers)
        assert response.status_code == status, (path, params, headers, response.text)
        if status >= 400:
            assert response.json()["message"], path
    with pytest.raises(requests.HTTPError) as error:
        dicomweb(server).retrieve_study(generate_uid())
    assert error.value.response.status_code == 404
    assert count(server.db, Instance) == 1


def test_an_undecodable_object_is_406_unless_taken_as_stored(server, tmp_path):
    lossy, ct = one_study(tmp_path, [UNDECODABLE, "CT_small.dcm"], series_of=lambda n: 0)
    stow(server, [lossy, ct])
    ds = pydicom.dcmread(lossy)
    uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    client = dicomweb(server)
    with pytest.raises(requests.HTTPError) as error:
        client.retrieve_instance(*uids, media_types=(("application/dicom", ExplicitVRLittleEndian),))
    assert error.value.response.status_code == 406 and "transfer-syntax=*" in error.value.response.json()["message"]
    assert client.retrieve_instance(*uids).PixelData == ds.PixelData  # as stored: fine
    with pytest.raises(requests.HTTPError) as error:
        client.retrieve_instance_frames(*uids, frame_numbers=[1])
    assert error.value.response.status_code == 406
    # Within a study the response has begun: the object is left out, the others still come.
    got = client.retrieve_study(uids[0])
    assert [g.SOPInstanceUID for g in got] == [pydicom.dcmread(ct).SOPInstanceUID]
    assert len(client.retrieve_study(uids[0], media_types=(("application/dicom", "*"),))) == 2


# -- streaming -------------------------------------------------------------------------------

def big_study(folder: Path, count_: int, size: int = 512) -> list[Path]:
    """``count_`` CT slices of ``size``×``size`` 16-bit pixels, one study, one series."""
    folder.mkdir(parents=True)
    template = pydicom.dcmread(source_path("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    paths = []
    for number in range(count_):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number + 1
        ds.Rows = ds.Columns = size
        ds.PixelData = ((np.arange(size * size, dtype=np.uint16) + number) % 4096).tobytes()
        path = folder / f"{number:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_a_large_study_streams_in_and_out(server, tmp_path):
    paths = big_study(tmp_path / "big", 50)
    total = sum(p.stat().st_size for p in paths)  # about 26 MB
    boundary = "streaming-boundary"

    def body():
        for path in paths:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            with path.open("rb") as handle:
                while chunk := handle.read(256 * 1024):
                    yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    study = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with httpx.Client(timeout=60) as client:
            response = client.post(server.http_url + "/dicomweb/studies", content=body(),
                                   headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                                            f'boundary={boundary}'})
        stow_peak = tracemalloc.get_traced_memory()[1] - before
        assert response.status_code == 200, response.text
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        received = 0
        with httpx.Client(timeout=60) as client, client.stream(
                "GET", f"{server.http_url}/dicomweb/studies/{study}", headers={"Accept": DICOM_ANY}) as answer:
            for chunk in answer.iter_bytes():
                received += len(chunk)
        wado_peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert count(server.db, Instance) == 50 and received > total
    # Neither the request nor the response was ever held whole (both are ~26 MB).
    assert stow_peak < total / 3, f"STOW-RS peak {stow_peak} bytes for {total}"
    assert wado_peak < total / 3, f"WADO-RS peak {wado_peak} bytes for {total}"


VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
MPEG4_AVC = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264 High Profile / Level 4.1


def video_object(tmp_path: Path, bitstream: bytes) -> pydicom.Dataset:
    """A video endoscopy object whose pixel data is ``bitstream`` (PS3.5 8.2.7: one fragment
    sequence, an empty Basic Offset Table)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = MPEG4_AVC
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = VIDEO_ENDOSCOPIC
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality, ds.InstanceNumber = "WEB002", "LI^SI", "ES", 1
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.FrameTime = 64, 64, 30, 33.3
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_PARTIAL_420", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([bitstream])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "video.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_single_part_bulk_data_video_and_names_as_qido_gives_them(server, tmp_path):
    [path] = one_study(tmp_path, ["CT_small.dcm"])
    ct = pydicom.dcmread(path)
    ct.SpecificCharacterSet = "ISO_IR 192"
    ct.ReferringPhysicianName = "王五"  # one group, in Hanzi: QIDO gives it its pinyin too
    ct.save_as(path, enforce_file_format=True)
    bitstream = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 4
    video = video_object(tmp_path, bitstream)
    stow(server, [path, tmp_path / "video.dcm"])
    client = dicomweb(server)

    # metadata and QIDO give the referring physician the same groups
    [found] = client.search_for_studies(search_filters={"StudyInstanceUID": ct.StudyInstanceUID},
                                        fields=["ReferringPhysicianName"])
    [meta] = client.retrieve_study_metadata(str(ct.StudyInstanceUID))
    assert value(found, "00080090") == value(meta, "00080090") == {"Alphabetic": "WANG^WU", "Ideographic": "王^五"}

    # bulk data and one frame as a single part when the bare media type is asked for
    pixels = ct.pixel_array.astype(ct.pixel_array.dtype.newbyteorder("<")).tobytes()
    instance = f"{server.http_url}/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}" \
               f"/instances/{ct.SOPInstanceUID}"
    for url in (meta["7FE00010"]["BulkDataURI"], instance + "/frames/1"):
        single = httpx.get(url, headers={"Accept": "application/octet-stream"})
        assert single.status_code == 200 and single.headers["content-type"] == "application/octet-stream", url
        assert single.content == pixels
        [(headers, body)] = multipart(httpx.get(url, headers={"Accept": 'multipart/related; type="application/'
                                                                         'octet-stream"'}))
        assert headers["content-type"].startswith("application/octet-stream") and body == pixels
    assert httpx.get(instance + "/frames/1,1", headers={"Accept": "application/octet-stream"}).status_code == 406

    # a video's pixel data is its bitstream, as video/mp4 (by Accept or by the accept parameter)
    [video_meta] = client.retrieve_study_metadata(str(video.StudyInstanceUID))
    uri = video_meta["7FE00010"]["BulkDataURI"]
    for answer in (httpx.get(uri, headers={"Accept": "video/mp4"}), httpx.get(uri, params={"accept": "video/mp4"})):
        assert answer.status_code == 200 and answer.headers["content-type"] == "video/mp4"
        assert answer.content == bitstream and int(answer.headers["content-length"]) == len(bitstream)
    [(headers, body)] = multipart(httpx.get(uri, headers={"Accept": 'multipart/related; type="video/mp4"'}))
    assert headers["content-type"] == "video/mp4" and body == bitstream
    assert httpx.get(uri, headers={"Accept": "application/octet-stream"}).status_code == 406
    video_instance = uri.rsplit("/bulkdata/", 1)[0]
    assert httpx.get(video_instance + "/frames/1").status_code == 406  # a bitstream has no frames to cut

"""POST /api/capture on a loopback server: a JPEG, a PNG and a PDF for an order become VL
Photographic and Encapsulated PDF objects in the order's study, found by QIDO and C-FIND (DCMTK
findscu) and retrieved by WADO with the JPEG's bytes and the PDF's unchanged; bad input is a 4xx
with its reason and nothing stored; a file that names no order waits on the reconciliation list
and is stored once a person attaches it."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import generate_frames
from sqlmodel import Session, select

from pacs.archive.index import Instance
from pacs.archive.reconciliation import ReconciliationItem
from pacs.auth import accounts
from pacs.capture.reasons import reason_text
from pacs.registry.models import ImagingOrder, OrderStatus
from pacs.web.i18n import translator
from tests.archive.test_dicomweb import dicomweb
from tests.archive.test_reconciliation import hl7, study_as_found, us_order
from tests.archive.test_store import storage_files
from tests.auth.test_access import basic
from tests.dicom import needs_dcmtk

PASSWORD = "correct horse 1"
PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
       b"trailer<</Root 1 0 R>>\n%%EOF\n")


def jpeg(seed: int = 1, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def png(seed: int = 2) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue(), pixels


def post(server, files: list[tuple[str, bytes]], **form: str) -> httpx.Response:
    return httpx.post(f"{server.http_url}/api/capture", data=form, timeout=60,
                      files=[("file", (name, data, "application/octet-stream")) for name, data in files])


def order_of(server, accession: str) -> ImagingOrder:
    with Session(server.db.engine) as session:
        return session.exec(select(ImagingOrder).where(ImagingOrder.accession_number == accession)).one()


def test_photos_and_a_pdf_go_into_the_orders_study(server, tmp_path):
    hl7(server, us_order("P100", "张", "三", "ZHANG SAN", 1, 10))
    order = order_of(server, "ACC1")
    photo, (picture, pixels) = jpeg(), png()
    response = post(server, [("胃镜_1.jpg", photo), ("scan.png", picture), ("心电图报告.pdf", PDF)],
                    accession_number="ACC1")
    assert response.status_code == 201, response.text
    stored = response.json()["stored"]
    assert response.json()["queued"] == []
    assert [s["sop_class_uid"] for s in stored] == ["1.2.840.10008.5.1.4.1.1.77.1.4"] * 2 + [
        "1.2.840.10008.5.1.4.1.1.104.1"]
    assert {s["study_instance_uid"] for s in stored} == {order.study_instance_uid}
    assert len({s["series_instance_uid"] for s in stored}) == 1  # one request, one series

    # QIDO finds them under the order's accession number, with the registry's Chinese name
    client = dicomweb(server)
    [study] = client.search_for_studies(search_filters={"AccessionNumber": "ACC1"})
    assert study["0020000D"]["Value"] == [order.study_instance_uid]
    assert study["00100010"]["Value"][0]["Ideographic"] == "张^三"
    instances = client.search_for_instances(order.study_instance_uid)
    assert len(instances) == 3

    # WADO: the JPEG's own bytes as the one frame (JPEG Baseline), the PNG's pixels, the PDF
    by_uid = {s["file_name"]: s for s in stored}
    first = by_uid["胃镜_1.jpg"]
    ds = client.retrieve_instance(order.study_instance_uid, first["series_instance_uid"], first["sop_instance_uid"],
                                  media_types=(("application/dicom", "*"),))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    [frame] = list(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame[:len(photo)] == photo and len(frame) - len(photo) in (0, 1)
    assert ds.PhotometricInterpretation == "YBR_FULL_422" and (ds.Rows, ds.Columns) == (64, 96)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.PatientName.ideographic == "张^三"
    assert ds.PatientID == "P100" and ds.AccessionNumber == "ACC1" and ds.Modality == "XC"
    assert ds.StationName == "CAPTURE" and ds.RequestAttributesSequence[0].AccessionNumber == "ACC1"
    second = by_uid["scan.png"]
    ds = client.retrieve_instance(order.study_instance_uid, second["series_instance_uid"],
                                  second["sop_instance_uid"])
    assert np.array_equal(ds.pixel_array, pixels) and ds.PhotometricInterpretation == "RGB"
    document = by_uid["心电图报告.pdf"]
    ds = client.retrieve_instance(order.study_instance_uid, document["series_instance_uid"],
                                  document["sop_instance_uid"])
    assert ds.EncapsulatedDocument[:ds.EncapsulatedDocumentLength] == PDF
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf" and ds.DocumentTitle == "心电图报告"
    assert ds.Modality == "DOC"

    # The order has its images
    assert order_of(server, "ACC1").status == OrderStatus.IMAGES_RECEIVED


@needs_dcmtk
def test_captures_are_found_by_c_find(server, tmp_path):
    hl7(server, us_order("P101", "李", "四", "LI SI", 2, 11))
    response = post(server, [("a.jpg", jpeg())], order=str(order_of(server, "ACC2").id))
    assert response.status_code == 201, response.text
    found = study_as_found(server.dicom_port, response.json()["stored"][0]["study_instance_uid"], tmp_path / "find")
    assert found.AccessionNumber == "ACC2" and found.PatientID == "P101"
    assert found.PatientName.ideographic == "李^四"


def test_bad_input_is_4xx_with_its_reason_and_nothing_kept(server, tmp_path):
    hl7(server, us_order("P102", "王", "五", "WANG WU", 3, 12))
    before = len(storage_files(server))
    response = post(server, [("notes.txt", b"just some text\n")], accession_number="ACC3")
    assert response.status_code == 400
    assert "not a JPEG, PNG, BMP, TIFF, PDF or MP4" in response.json()["detail"]
    # one bad file among good ones: none is stored
    response = post(server, [("a.jpg", jpeg()), ("cut.png", png()[0][:200])], accession_number="ACC3")
    assert response.status_code == 400 and response.json()["detail"].startswith("cut.png: ")
    refused = response.json()  # the reason as a code and its values too, for a page to translate
    assert (refused["code"], refused["values"]["file"], refused["values"]["reason_code"]) == (
        "in_file", "cut.png", "unreadable")
    response = post(server, [("cut.pdf", PDF[:60])], accession_number="ACC3")
    assert response.status_code == 400 and "truncated" in response.json()["detail"]
    response = post(server, [("a.jpg", jpeg())], accession_number="NOSUCH")
    assert response.status_code == 404 and "NOSUCH" in response.json()["detail"]
    assert response.json()["code"] == "unknown_accession" and response.json()["values"] == {"accession": "NOSUCH"}
    response = post(server, [("a.jpg", jpeg())], order="999999")
    assert response.status_code == 404 and "999999" in response.json()["detail"]
    response = post(server, [("a.jpg", jpeg())], accession_number="ACC3", device="NOSUCHDEVICE")
    assert response.status_code == 400 and "NOSUCHDEVICE" in response.json()["detail"]
    response = post(server, [("a.jpg", jpeg())], accession_number="ACC3", order="1")
    assert response.status_code == 400 and "not both" in response.json()["detail"]
    response = httpx.post(f"{server.http_url}/api/capture", data={"accession_number": "ACC3"})
    assert response.status_code == 422  # no file at all
    assert len(storage_files(server)) == before
    with Session(server.db.engine) as session:
        assert session.exec(select(Instance)).all() == []
        assert session.exec(select(ReconciliationItem)).all() == []


def test_a_file_that_names_no_order_waits_and_is_stored_once_attached(server, tmp_path, settings, monkeypatch,
                                                                     capsys):
    hl7(server, us_order("P103", "赵", "丽", "ZHAO LI", 4, 13))
    order = order_of(server, "ACC4")
    photo = jpeg(7)
    response = post(server, [("IMG_0042.jpg", photo)])
    assert response.status_code == 202, response.text
    [queued] = response.json()["queued"]
    assert response.json()["stored"] == []
    assert queued["code"] == "no_match" and "IMG" in queued["values"]["detail"]  # why, for a page to translate
    zh = reason_text(queued["reason"], translator("zh-CN"), queued["code"], queued["values"])
    assert zh.startswith("设备规则未找到唯一的检查（") and queued["values"]["barcode"] in zh
    listed = httpx.get(f"{server.http_url}/api/reconciliation").json()["items"]
    [item] = [i for i in listed if i["id"] == queued["item"]]
    assert item["kind"] == "file" and item["file"] == {"file_name": "IMG_0042.jpg", "media_type": "image/jpeg"}
    assert item["calling_ae"] == "CAPTURE" and "IMG" in item["reason"]
    with Session(server.db.engine) as session:
        assert session.exec(select(Instance)).all() == []
        key = session.get_one(ReconciliationItem, queued["item"]).key
    raw = server.settings.storage_dir / key[:2] / key[2:4] / key
    assert raw.read_bytes() == photo  # kept as received until attached

    from pacs.cli import main

    monkeypatch.setenv("PACS_DATABASE_URL", settings.database_url)
    assert main(["reconcile", "attach", str(queued["item"]), "--accession", "ACC4",
                 "--data-dir", str(settings.data_dir)]) == 1
    assert "POST /api/reconciliation" in capsys.readouterr().err  # the server makes it DICOM, not the command

    response = httpx.post(f"{server.http_url}/api/reconciliation/{queued['item']}/attach",
                          json={"accession_number": "ACC4"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "attached"
    [instance] = dicomweb(server).search_for_instances(order.study_instance_uid)
    ds = dicomweb(server).retrieve_instance(order.study_instance_uid, instance["0020000E"]["Value"][0],
                                            instance["00080018"]["Value"][0],
                                            media_types=(("application/dicom", "*"),))
    [frame] = list(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame[:len(photo)] == photo
    assert ds.AccessionNumber == "ACC4" and ds.PatientName.ideographic == "赵^丽"
    assert not raw.exists()  # the DICOM object holds it now
    assert order_of(server, "ACC4").status == OrderStatus.IMAGES_RECEIVED
    response = httpx.post(f"{server.http_url}/api/reconciliation/{queued['item']}/attach",
                          json={"accession_number": "ACC4"})
    assert response.status_code == 409  # attached already


def test_the_accession_at_the_start_of_a_files_name_finds_its_order(server, tmp_path):
    hl7(server, us_order("P104", "钱", "七", "QIAN QI", 5, 14))
    response = post(server, [("ACC5_2.jpg", jpeg())], device="CAPTURE")
    assert response.status_code == 201, response.text
    assert response.json()["stored"][0]["accession_number"] == "ACC5"


def test_dataset_read_back_is_valid_part10(server, tmp_path):
    hl7(server, us_order("P105", "孙", "八", "SUN BA", 6, 15))
    response = post(server, [("x.bmp", _bmp())], accession_number="ACC6")
    assert response.status_code == 201, response.text
    [stored] = response.json()["stored"]
    ds = dicomweb(server).retrieve_instance(stored["study_instance_uid"], stored["series_instance_uid"],
                                            stored["sop_instance_uid"], media_types=(("application/dicom", "*"),))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(out.getvalue()))
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert back.pixel_array.shape == (8, 10) and back.PhotometricInterpretation == "MONOCHROME2"


def _bmp() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.arange(80, dtype=np.uint8).reshape(8, 10)).save(out, "BMP")
    return out.getvalue()



def test_technologists_capture_registrars_may_not(guarded_server):
    hl7(guarded_server, us_order("P106", "周", "九", "ZHOU JIU", 7, 16))
    with Session(guarded_server.db.engine) as session:
        accounts.add_user(session, username="tech", password=PASSWORD, roles=["technologist"])
        accounts.add_user(session, username="desk", password=PASSWORD, roles=["registrar"])
        session.commit()
    url = f"{guarded_server.http_url}/api/capture"
    files = [("file", ("a.jpg", jpeg(), "image/jpeg"))]
    denied = httpx.post(url, data={"accession_number": "ACC7"}, files=files, headers=basic("desk", PASSWORD))
    assert denied.status_code == 403 and "images.write" in denied.json()["detail"]
    assert httpx.post(url, data={"accession_number": "ACC7"}, files=files).status_code == 401
    done = httpx.post(url, data={"accession_number": "ACC7"}, files=files, headers=basic("tech", PASSWORD))
    assert done.status_code == 201, done.text

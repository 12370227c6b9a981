"""Barcodes (pacs.capture.barcode, zbarimg and pdftoppm from Debian): a scanned requisition (a PDF
with the accession number as Code 128) and a photo of it, sent naming no exam, find their order
by the barcode; a barcode that names no order leaves the file on the reconciliation list with
what it said."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from reportlab.graphics.barcode.code128 import Code128
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

from pacs.capture.barcode import read_barcodes
from tests.archive.test_reconciliation import hl7, us_order
from tests.capture.test_api import post

pytestmark = pytest.mark.skipif(not (shutil.which("zbarimg") and shutil.which("pdftoppm")),
                                reason="zbar-tools and poppler-utils are not installed")


def requisition(accession: str) -> bytes:
    """A one-page A4 requisition with the accession number as a Code 128 barcode."""
    out = io.BytesIO()
    page = canvas.Canvas(out, pagesize=A4)
    page.drawString(72, 780, "Requisition")
    Code128(accession, barWidth=1.2, barHeight=40, humanReadable=True).drawOn(page, 72, 700)
    page.showPage()
    page.save()
    return out.getvalue()


def as_png(pdf: bytes, folder: Path) -> bytes:
    (folder / "r.pdf").write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "150", "-png", "-singlefile", str(folder / "r.pdf"), str(folder / "r")],
                   check=True, timeout=60)
    return (folder / "r.png").read_bytes()


def test_read_barcodes_of_a_pdf_and_an_image(tmp_path):
    pdf = requisition("ACC51")
    assert read_barcodes(pdf, "application/pdf") == ["ACC51"]
    assert read_barcodes(as_png(pdf, tmp_path), "image/png") == ["ACC51"]
    assert read_barcodes(b"%PDF-1.4\n%%EOF\n", "application/pdf") == []  # not drawable: none


def test_a_scan_naming_no_exam_finds_its_order_by_barcode(server, tmp_path):
    hl7(server, us_order("P500", "何", "六", "HE LIU", 51, 9))
    response = post(server, [("scan_0001.pdf", requisition("ACC51"))])
    assert response.status_code == 201, response.text
    [stored] = response.json()["stored"]
    assert stored["accession_number"] == "ACC51" and stored["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.104.1"
    response = post(server, [("photo_of_label.png", as_png(requisition("ACC51"), tmp_path))])
    assert response.status_code == 201, response.text
    assert response.json()["stored"][0]["accession_number"] == "ACC51"

    response = post(server, [("scan_0002.pdf", requisition("NOPE1"))])
    assert response.status_code == 202, response.text
    assert "barcode: NOPE1 names no single order" in response.json()["queued"][0]["reason"]

"""Barcodes on a captured file: the accession number printed on a requisition, a consent form or a
label, read from a scanned PDF or a photo with zbar (Debian's ``zbar-tools``: ``zbarimg``) and,
for a PDF, its first pages drawn by poppler (``poppler-utils``: ``pdftoppm``).

The capture service asks for them only when neither the caller nor the file's name named an
order it could find, so the photos of a busy hot folder are not read twice.

>>> read_barcodes(open("requisition.pdf", "rb").read(), "application/pdf")   # doctest: +SKIP
['A0017']
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

ZBARIMG, PDFTOPPM = "zbarimg", "pdftoppm"
PDF_PAGES = 2  # a requisition's barcode is on its first page; a consent form's on the first two
PDF_DPI = 200  # enough for a Code 128 printed at label size
TIMEOUT_SECONDS = 60
IMAGE_SUFFIXES = {"image/jpeg": ".jpg", "image/png": ".png", "image/bmp": ".bmp", "image/tiff": ".tif"}


def available() -> bool:
    return shutil.which(ZBARIMG) is not None


def read_barcodes(data: bytes, media_type: str) -> list[str]:
    """The values of the barcodes on an image or on a PDF's first pages, in the order zbar
    finds them, each once; empty when there are none or the tools are not installed."""
    if not available() or (media_type == "application/pdf" and shutil.which(PDFTOPPM) is None):
        return []
    with tempfile.TemporaryDirectory(prefix="capture-barcode-") as scratch:
        folder = Path(scratch)
        if media_type == "application/pdf":
            source = folder / "document.pdf"
            source.write_bytes(data)
            result = subprocess.run([PDFTOPPM, "-r", str(PDF_DPI), "-gray", "-png", "-f", "1", "-l", str(PDF_PAGES),
                                     str(source), str(folder / "page")], capture_output=True, timeout=TIMEOUT_SECONDS,
                                    check=False)
            if result.returncode != 0:
                log.info("pdftoppm could not draw the PDF: %s", result.stderr.decode(errors="replace").strip())
                return []
            images = sorted(folder.glob("page*.png"))
        elif media_type in IMAGE_SUFFIXES:
            image = folder / f"image{IMAGE_SUFFIXES[media_type]}"
            image.write_bytes(data)
            images = [image]
        else:
            return []
        if not images:
            return []
        result = subprocess.run([ZBARIMG, "--quiet", "--raw", *map(str, images)], capture_output=True,
                                timeout=TIMEOUT_SECONDS, check=False)
    # zbarimg: 0 found, 4 none found; anything else is an error worth a line in the log
    if result.returncode not in (0, 4):
        log.info("zbarimg failed (%s): %s", result.returncode, result.stderr.decode(errors="replace").strip())
    values = [line.strip() for line in result.stdout.decode("utf-8", errors="replace").splitlines()]
    return list(dict.fromkeys(value for value in values if value))

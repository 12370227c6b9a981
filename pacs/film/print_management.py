"""Film printing: this system as the SCU of the Basic Grayscale Print Management Meta SOP Class
(PS3.4 Annex H) on a DICOM film printer of ``[[printers]]``.

One print job is one association (H.4):

1. N-CREATE a Basic Film Session (H.4.1): number of copies, medium, destination, a label;
2. for each film: N-CREATE a Basic Film Box (H.4.2) with Image Display Format
   ``STANDARD\\C,R`` (C columns, R rows, PS3.3 C.13.3) under the session; the printer answers
   with the Image Boxes it made;
3. N-SET each Image Box (H.4.3) with its image: a Basic Grayscale Image Sequence (PS3.3
   C.13.5), MONOCHROME2, 8 or 12 bits stored, the pixel values already passed through the
   Modality LUT and the chosen window (PS3.3 C.11.2), so the printer prints what the
   radiologist saw, with the corners a viewer shows burnt in (patient, study, window, image);
4. N-ACTION Print on the film box (H.4.2.1.2, action type 1);
5. N-DELETE the film session (H.4.1.1.4), which ends the job on the printer.

A printer that can't be reached, or breaks off the association, raises
:class:`PrinterUnavailable`; one that answers a step with a failure status raises
:class:`PrintRefused` naming the step and the status. Warning statuses (0xB6xx: an image
demagnified, a film box not yet printed) are kept in the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing, pixel_array
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    BasicFilmBox,
    BasicFilmSession,
    BasicGrayscaleImageBox,
    BasicGrayscalePrintManagementMeta,
)

from pacs.archive import transport
from pacs.settings import Printer, Settings

log = logging.getLogger(__name__)

SUCCESS = 0x0000
PRINT_ACTION = 1  # N-ACTION Action Type ID of Print (PS3.4 H.4.2.1.2, H.4.1.1.3)
MAX_COLUMNS, MAX_ROWS = 5, 6  # STANDARD\C,R this page offers: 1×1 to 5×6 (PS3.3 C.13.3)
MAX_COPIES = 10
MAX_FILMS = 20  # a job larger than this is more likely a slip than a wish
TIMEOUT_SECONDS = 60  # a printer may take long to answer Print


class PrinterUnavailable(Exception):
    """The printer could not be reached, or broke off the association."""


class PrintRefused(Exception):
    """The printer answered a step with a failure status."""


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): centre and width in the modality's units (HU for CT)."""

    center: float
    width: float


@dataclass
class Job:
    """What to print: images (datasets and their 1-based frames) in a layout."""

    images: Sequence[tuple[Dataset, int]]
    columns: int
    rows: int
    copies: int = 1
    window: Window | None = None
    label: str = ""  # Film Session Label (2000,0050)
    annotate: bool = True  # the corners burnt into each image
    font: Path | None = None  # a font with Hanzi (the labels' Noto Sans SC); Pillow's own without

    def __post_init__(self) -> None:
        if not (1 <= self.columns <= MAX_COLUMNS and 1 <= self.rows <= MAX_ROWS):
            raise ValueError(f"a film holds 1×1 to {MAX_COLUMNS}×{MAX_ROWS} images (columns × rows)")
        if not 1 <= self.copies <= MAX_COPIES:
            raise ValueError(f"copies are 1 to {MAX_COPIES}")
        if not self.images:
            raise ValueError("no image to print")
        if self.films > MAX_FILMS:
            raise ValueError(f"{len(self.images)} images in {self.columns}×{self.rows} make {self.films} films; "
                             f"at most {MAX_FILMS} are printed at once")

    @property
    def per_film(self) -> int:
        return self.columns * self.rows

    @property
    def films(self) -> int:
        return -(-len(self.images) // self.per_film)

    @property
    def display_format(self) -> str:
        """Image Display Format (2010,0010): STANDARD\\C,R (PS3.3 C.13.3)."""
        return f"STANDARD\\{self.columns},{self.rows}"


@dataclass
class Printed:
    """What the printer did."""

    printer: str
    film_session: str  # its SOP Instance UID
    films: int
    images: int
    warnings: list[str] = field(default_factory=list)


def _first(value: Any) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _voi_dataset(window: Window, bits: int) -> Dataset:
    """A VOI LUT Module whose output range is 0 to 2^bits − 1 (pydicom's windowing maps the
    window onto the range of Bits Stored, PS3.3 C.11.2.1.2.1)."""
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = bits
    ds.PixelRepresentation = 0
    ds.WindowCenter = window.center
    ds.WindowWidth = window.width
    ds.VOILUTFunction = "LINEAR"
    return ds


def _shown_name(value: Any) -> str:
    """A PN as the viewer shows it: 张三 (ZHANG SAN), the groups without their carets (PS3.5 6.2.1)."""
    groups = str(value or "").split("=")
    alphabetic = " ".join(p for p in groups[0].split("^") if p) if groups else ""
    ideographic = "".join(p for p in groups[1].split("^") if p) if len(groups) > 1 else ""
    return f"{ideographic} ({alphabetic})" if ideographic and alphabetic else ideographic or alphabetic


def corners(ds: Dataset, frame: int, window: Window | None) -> dict[str, list[str]]:
    """What each corner of a printed image says, as the viewer's overlay does."""
    date = str(ds.get("StudyDate", "") or "")
    shown_date = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else date
    who = " ".join(str(v) for v in (ds.get("PatientID", ""), ds.get("PatientSex", ""), ds.get("PatientAge", "")) if v)
    image = f"Se {ds.get('SeriesNumber', '')} Im {ds.get('InstanceNumber', '')}"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return {
        "top_left": [line for line in (_shown_name(ds.get("PatientName")), who) if line],
        "top_right": [line for line in (shown_date, str(ds.get("AccessionNumber", "") or "")) if line],
        "bottom_left": [f"W {window.width:g} L {window.center:g}"] if window else [],  # none for colour
        "bottom_right": [image + (f" Fr {frame}/{frames}" if frames > 1 else "")],
    }


def burn_in(pixels: np.ndarray, top: int, text: dict[str, list[str]], font_path: Path | None) -> np.ndarray:
    """``pixels`` with ``text`` drawn in its corners, white with a black edge so that it reads on
    any grey."""
    rows, columns = pixels.shape
    size = max(9, min(rows, columns) // 32)
    font = (ImageFont.truetype(str(font_path), size) if font_path is not None
            else ImageFont.load_default(size))
    image = Image.fromarray(pixels.astype(np.int32), mode="I")
    draw = ImageDraw.Draw(image)
    margin, step = max(2, size // 3), size + max(2, size // 4)
    for corner, lines in text.items():
        for i, line in enumerate(lines):
            width = draw.textlength(line, font=font)
            x = margin if corner.endswith("left") else columns - margin - width
            y = margin + i * step if corner.startswith("top") else rows - margin - (len(lines) - i) * step
            draw.text((x, y), line, font=font, fill=top, stroke_width=1, stroke_fill=0)
    return np.asarray(image, dtype=np.int32).clip(0, top).astype(np.uint16)


def grayscale_image(ds: Dataset, frame: int, window: Window | None, bits: int, *, annotate: bool = False,
                    font: Path | None = None) -> Dataset:
    """The Basic Grayscale Image Sequence item (PS3.3 C.13.5) of one frame of ``ds``: the
    Modality LUT applied, then ``window`` (else the object's own Window Center/Width, else its
    VOI LUT, else the frame's range), as MONOCHROME2 of ``bits`` bits. A colour image is printed
    as its luminance (ITU-R 601, Pillow's L). With ``annotate``, the corners the viewer shows
    are burnt in (:func:`corners`)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= frames:
        raise ValueError(f"instance {ds.get('SOPInstanceUID', '')} has {frames} frame(s), not a frame {frame}")
    try:
        arr = pixel_array(ds, index=frame - 1) if frames > 1 else ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds of errors for pixel data it can't decode
        raise ValueError(f"the pixel data of {ds.get('SOPInstanceUID', '')} can't be decoded here: {exc}") from None
    top = 2 ** bits - 1
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        rgb = arr if arr.ndim == 3 else np.stack([arr] * 3, axis=-1)
        if rgb.dtype != np.uint8:
            rgb = (rgb.astype(np.float64) * (255.0 / max(float(rgb.max()), 1.0))).astype(np.uint8)
        grey = np.asarray(Image.fromarray(rgb, mode="RGB").convert("L"), dtype=np.float64) * (top / 255.0)
        out = grey.round().astype(np.uint16)
    else:
        values = apply_modality_lut(arr, ds)
        if window is None and "WindowCenter" in ds and "WindowWidth" in ds and _first(ds.WindowWidth) >= 1:
            window = Window(_first(ds.WindowCenter), _first(ds.WindowWidth))
        if window is None and ds.get("VOILUTSequence"):
            values = apply_voi_lut(values, ds, prefer_lut=True)
            low, high = float(np.min(values)), float(np.max(values))
            window = Window((low + high + 1) / 2, max(high - low + 1, 2.0))
        if window is None:
            low, high = float(np.min(values)), float(np.max(values))
            window = Window((low + high + 1) / 2, max(high - low + 1, 2.0))
        out = apply_windowing(values, _voi_dataset(window, bits)).clip(0, top).round().astype(np.uint16)
        if photometric == "MONOCHROME1":
            out = top - out
    if annotate:
        out = burn_in(out, top, corners(ds, frame, window), font)
    item = Dataset()
    item.SamplesPerPixel = 1
    item.PhotometricInterpretation = "MONOCHROME2"
    item.Rows, item.Columns = int(out.shape[0]), int(out.shape[1])
    item.PixelAspectRatio = [1, 1]
    if bits == 8:
        item.BitsAllocated, item.BitsStored, item.HighBit = 8, 8, 7
        item.PixelData = out.astype(np.uint8).tobytes()
    else:
        item.BitsAllocated, item.BitsStored, item.HighBit = 16, 12, 11
        item.PixelData = out.astype("<u2").tobytes()
    item.PixelRepresentation = 0
    return item


def _status(answer: Any) -> int | None:
    return int(answer.Status) if answer is not None and "Status" in answer else None


class _Session:
    """One association with the printer, each DIMSE answer checked."""

    def __init__(self, assoc: Any, printer: Printer, warnings: list[str]) -> None:
        self.assoc = assoc
        self.printer = printer
        self.warnings = warnings

    def check(self, step: str, answer: Any) -> None:
        status = _status(answer)
        if status is None:
            raise PrinterUnavailable(f"{self.printer.label} did not answer the {step} (association aborted or "
                                     "timed out)")
        comment = str(answer.get("ErrorComment", "") or "").strip()
        if status == SUCCESS:
            return
        if 0xB000 <= status <= 0xBFFF or status == 0x0107:  # warnings (PS3.4 H.4, PS3.7 C)
            self.warnings.append(f"{step}: 0x{status:04X}{' ' + comment if comment else ''}")
            return
        raise PrintRefused(f"{self.printer.label} refused the {step}: status 0x{status:04X}"
                           f"{' (' + comment + ')' if comment else ''}")

    def run(self, call: Callable[..., Any], step: str, *args: Any, **kwargs: Any) -> Any:
        answer = call(*args, meta_uid=BasicGrayscalePrintManagementMeta, **kwargs)
        status, attributes = answer if isinstance(answer, tuple) else (answer, None)
        self.check(step, status)
        return attributes


def print_job(settings: Settings, printer: Printer, job: Job) -> Printed:
    """Print ``job`` on ``printer`` (PS3.4 H.4); see the module's docstring for the steps."""
    images = [grayscale_image(ds, frame, job.window, printer.bits, annotate=job.annotate, font=job.font)
              for ds, frame in job.images]
    ae = AE(ae_title=settings.ae_title)
    ae.add_requested_context(BasicGrayscalePrintManagementMeta)
    ae.acse_timeout = ae.network_timeout = 30
    ae.dimse_timeout = TIMEOUT_SECONDS
    try:
        assoc = transport.associate(ae, settings, printer)  # over TLS where the printer has tls = true
    except OSError as exc:
        raise PrinterUnavailable(f"{printer.label} ({printer.host}:{printer.port}) can't be reached: {exc}") from None
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "could not be reached"
        raise PrinterUnavailable(f"{printer.label} ({printer.ae_title} at {printer.host}:{printer.port}) {why}")
    warnings: list[str] = []
    session = _Session(assoc, printer, warnings)
    film_session = generate_uid()
    try:
        request = Dataset()
        request.NumberOfCopies = job.copies
        request.PrintPriority = "MED"
        request.MediumType = printer.medium
        request.FilmDestination = printer.destination
        if job.label:
            request.FilmSessionLabel = job.label[:64]
        session.run(assoc.send_n_create, "film session N-CREATE", request, BasicFilmSession, film_session)
        for number in range(job.films):
            page = images[number * job.per_film:(number + 1) * job.per_film]
            box = Dataset()
            box.ImageDisplayFormat = job.display_format
            box.FilmOrientation = printer.orientation
            box.FilmSizeID = printer.film_size
            if printer.magnification:
                box.MagnificationType = printer.magnification
            reference = Dataset()
            reference.ReferencedSOPClassUID = BasicFilmSession
            reference.ReferencedSOPInstanceUID = film_session
            box.ReferencedFilmSessionSequence = [reference]
            film_box = generate_uid()
            made = session.run(assoc.send_n_create, f"film box N-CREATE ({job.display_format})", box, BasicFilmBox,
                               film_box)
            boxes = list(getattr(made, "ReferencedImageBoxSequence", []) or [])
            if len(boxes) < len(page):
                raise PrintRefused(f"{printer.label} made {len(boxes)} image boxes for {job.display_format}, "
                                   f"not {job.per_film}")
            for position, (image, image_box) in enumerate(zip(page, boxes, strict=False), start=1):
                content = Dataset()
                content.ImageBoxPosition = position
                content.BasicGrayscaleImageSequence = [image]
                session.run(assoc.send_n_set, f"image box {position} N-SET", content, BasicGrayscaleImageBox,
                            image_box.ReferencedSOPInstanceUID)
            session.run(assoc.send_n_action, f"film {number + 1} print N-ACTION", None, PRINT_ACTION, BasicFilmBox,
                        film_box)
        delete = assoc.send_n_delete(BasicFilmSession, film_session, meta_uid=BasicGrayscalePrintManagementMeta)
        session.check("film session N-DELETE", delete)
    finally:
        if assoc.is_established:
            assoc.release()
    log.info("printed %d film(s) of %d image(s) on %s", job.films, len(images), printer.label)
    return Printed(printer=printer.label, film_session=film_session, films=job.films, images=len(images),
                   warnings=warnings)


__all__ = ["Job", "PrintRefused", "Printed", "PrinterUnavailable", "Window", "grayscale_image", "print_job"]

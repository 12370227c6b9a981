"""Rendered images and thumbnails (PS3.18 10.4.1.1.5, 10.4.1.1.6; parameters 8.3.5.1).

A frame is decoded by pydicom, passed through the Modality LUT (rescale) and a VOI window, and
written by Pillow as JPEG (the default) or PNG. The window is the ``window=center,width,function``
parameter when given (8.3.5.1.4), else the object's first Window Center/Width (PS3.3 C.11.2.1.2),
else its VOI LUT Sequence, else the frame's own minimum and maximum. MONOCHROME1 is inverted;
colour images are shown as decoded (YBR as RGB), palette colour through its LUT.

>>> jpeg = render(ds, frame=1, media="image/jpeg", params=RenderParams())  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    apply_windowing,
    pixel_array,
)

from pacs.archive.dicomweb.media import MediaRange, bad_request, not_acceptable, shown
from pacs.db import row_id

JPEG = "image/jpeg"
PNG = "image/png"
RENDERED_TYPES = (JPEG, PNG)
VOI_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}  # 8.3.5.1.4
THUMBNAIL_SIZE = 128
MIN_QUALITY, MAX_QUALITY = 1, 100  # the quality parameter's range (PS3.18 8.3.5.1.2)
KNOWN_PARAMS = ("window", "viewport", "quality", "annotation", "iccprofile", "charset")  # 8.3.5.1


@dataclass
class Window:
    center: float
    width: float
    function: str = "LINEAR"


@dataclass
class RenderParams:
    window: Window | None = None
    viewport: tuple[int, int] | None = None
    quality: int = 90


def rendered_media(ranges: list[MediaRange]) -> str:
    """image/jpeg unless the client prefers image/png (PS3.18 8.7.3.4: JPEG is the default)."""
    for item in ranges:
        for media in RENDERED_TYPES:
            if item.type == media:
                return media
        if item.matches(JPEG):
            return JPEG
    raise not_acceptable(f"rendered images are available as {JPEG} or {PNG}")


def _whole(text: str) -> int | None:
    """A whole number in ASCII digits ("³" is a digit to ``str.isdigit`` but not to ``int``),
    read without ``int()`` meeting thousands of digits; None for anything else, and for a number
    past the largest row id, far beyond any image size or quality."""
    return row_id(text.strip())


def parse_params(params: list[tuple[str, str]], *, thumbnail: bool = False) -> RenderParams:
    """The rendering parameters of PS3.18 8.3.5.1 (annotation and iccprofile are accepted and
    ignored); anything else is a 400."""
    out = RenderParams(viewport=(THUMBNAIL_SIZE, THUMBNAIL_SIZE) if thumbnail else None)
    for name, value in params:
        if name == "window":
            out.window = parse_window(value)
        elif name == "viewport":
            parts = value.split(",")
            size = [_whole(p) for p in parts[:2]]
            if len(size) < 2 or not all(size):  # None or 0
                raise bad_request(f"viewport={shown(value)}: give the width and height in pixels, e.g. 512,512")
            if len(parts) > 2 and any(p.strip() for p in parts[2:]):
                raise bad_request("viewport: a source region (sx,sy,sw,sh) is not supported; give width,height")
            out.viewport = (size[0], size[1])  # type: ignore[assignment]
        elif name == "quality":
            quality = _whole(value)
            if quality is None or not MIN_QUALITY <= quality <= MAX_QUALITY:
                raise bad_request(f"quality={shown(value)}: give a whole number from {MIN_QUALITY} to {MAX_QUALITY}")
            out.quality = quality
        elif name not in KNOWN_PARAMS:
            raise bad_request(f"{shown(name)} is not a rendering parameter ({', '.join(KNOWN_PARAMS)})")
    return out


def parse_window(value: str) -> Window:
    """``window=center,width,function`` (PS3.18 8.3.5.1.4); the function defaults to linear."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 3):
        raise bad_request(f"window={shown(value)}: give center,width,function, e.g. 40,400,linear")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise bad_request(f"window={shown(value)}: center and width must be numbers") from None
    if not (math.isfinite(center) and math.isfinite(width)):  # "nan", "inf" parse as floats
        raise bad_request(f"window={shown(value)}: center and width must be finite numbers")
    function = VOI_FUNCTIONS.get(parts[2].lower() if len(parts) == 3 else "linear")
    if function is None:
        raise bad_request(f"window function {shown(parts[2])} is not one of {', '.join(VOI_FUNCTIONS)}")
    if width <= 0 or (function == "LINEAR" and width < 1):
        raise bad_request(f"window width {parts[1]} is too small (at least 1 for linear, above 0 otherwise)")
    return Window(center, width, function)


def render(ds: Dataset, *, frame: int, media: str, params: RenderParams) -> bytes:
    """One frame (1-based) of ``ds`` as a JPEG or PNG image."""
    try:
        arr = pixel_array(ds, index=frame - 1) if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ds.pixel_array
    except Exception as exc:  # pydicom raises many kinds of errors for pixel data it can't decode
        raise not_acceptable(f"the pixel data can't be decoded here, so it can't be rendered: {exc}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        image = Image.fromarray(_grey(arr, ds, params.window, invert=photometric == "MONOCHROME1"), mode="L")
    else:
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        image = Image.fromarray(_eight_bits(arr, int(ds.get("BitsStored", 8) or 8)), mode="RGB")
    if params.viewport is not None:
        image.thumbnail(params.viewport, Image.Resampling.LANCZOS)
    out = BytesIO()
    if media == PNG:
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=params.quality)
    return out.getvalue()


def _grey(arr: np.ndarray, ds: Dataset, window: Window | None, *, invert: bool) -> np.ndarray:
    values = apply_modality_lut(arr, ds)
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if width > (1 if function == "LINEAR" else 0) and function in VOI_FUNCTIONS.values():
            window = Window(center, width, function)
    if window is None and ds.get("VOILUTSequence"):
        values = apply_voi_lut(values, ds, prefer_lut=True)
    if window is None:
        low, high = float(np.min(values)), float(np.max(values))
        window = Window((low + high + 1) / 2, max(high - low + 1, 1.0), "LINEAR")
    out = apply_windowing(values, _window_dataset(window)).clip(0, 255).astype(np.uint8)
    return 255 - out if invert else out


def _window_dataset(window: Window) -> Dataset:
    """A VOI LUT Module whose output range is 0–255, so pydicom's windowing gives 8-bit grey."""
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = 8
    ds.PixelRepresentation = 0
    ds.WindowCenter = window.center
    ds.WindowWidth = window.width
    ds.VOILUTFunction = window.function
    return ds


def _first(value: object) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def _eight_bits(arr: np.ndarray, bits_stored: int) -> np.ndarray:
    """Colour samples as 8 bits: wider samples (16-bit RGB, 16-bit palette entries) scaled down."""
    top = int(np.max(arr)) if arr.size else 0
    if top <= 255:
        return arr.astype(np.uint8)
    bits = max(top.bit_length(), bits_stored)
    return (arr.astype(np.float64) * (255.0 / (2 ** bits - 1))).clip(0, 255).astype(np.uint8)

"""Lossless compression on the way to a slower tier, proven lossless before it is kept.

An object with native (uncompressed) pixel data is re-encoded with pydicom's encoders — JPEG-LS
lossless (pyjpegls) or JPEG 2000 lossless (pylibjpeg-openjpeg) — and the result is decoded
again: only if every pixel value comes back bit for bit is the compressed copy used. Everything
else about the object stays: the same SOP Instance UID (lossless compression does not make a new
image, PS3.3 C.7.6.1.1.5), the same elements; the copy records its new transfer syntax.
Objects that are already encapsulated, have no pixel data, or that the encoder will not take
(floating point pixels, more than 16 bits for JPEG-LS, ...) are left as they are.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, UID

log = logging.getLogger(__name__)

METHODS = {"jpeg-ls": (JPEGLSLossless, "pyjpegls"), "jpeg2000": (JPEG2000Lossless, "pylibjpeg")}
# pylibjpeg-openjpeg's encoder crashes the process when two threads encode at once (2.6.0):
# one encoding at a time. CharLS (pyjpegls) encodes in parallel safely.
_SERIAL = {"jpeg2000": threading.Lock()}


class NotLossless(Exception):
    """The compressed pixel data did not decode to the original values."""


@dataclass(frozen=True)
class Compressed:
    data: bytes  # the whole Part 10 object
    transfer_syntax: str


def compress(source: Path | bytes, method: str) -> Compressed | None:
    """The object re-encoded losslessly with ``method`` ("jpeg-ls" or "jpeg2000"), or None
    when it stays as it is. Raises :class:`NotLossless` if decoding did not give the pixels back."""
    if method not in METHODS:
        raise ValueError(f"unknown compression {method!r}; use one of {', '.join(METHODS)} or none")
    syntax, plugin = METHODS[method]
    ds = pydicom.dcmread(BytesIO(source) if isinstance(source, bytes) else source)
    stored = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if "PixelData" not in ds or stored.is_encapsulated or not stored:
        return None
    try:
        original = ds.pixel_array.copy()
        with _SERIAL.get(method, nullcontext()):
            ds.compress(syntax, encoding_plugin=plugin, generate_instance_uid=False)
    except Exception as exc:  # the encoder's own reasons: bit depth, photometric interpretation ...
        log.debug("%s stays uncompressed: %s", ds.get("SOPInstanceUID", "?"), exc)
        return None
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    decoded = pydicom.dcmread(BytesIO(data)).pixel_array
    if decoded.dtype != original.dtype or decoded.shape != original.shape or not np.array_equal(decoded, original):
        raise NotLossless(f"{ds.get('SOPInstanceUID', '?')}: {method} did not decode to the original pixels")
    return Compressed(data, str(syntax))

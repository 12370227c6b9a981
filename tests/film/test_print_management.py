"""The images a film printer gets (PS3.3 C.13.5): grey, windowed, with or without the corners."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import generate_uid

from pacs.film.print_management import Job, Window, grayscale_image
from tests.web.viewer_studies import ct_phantom, rgb_photo


def pixels(item) -> np.ndarray:  # type: ignore[no-untyped-def]
    dtype = np.uint8 if item.BitsAllocated == 8 else np.dtype("<u2")
    return np.frombuffer(item.PixelData, dtype=dtype).reshape(item.Rows, item.Columns)


def test_a_colour_image_is_printed_as_its_luminance() -> None:
    photo = rgb_photo(generate_uid())
    item = grayscale_image(photo, 1, None, 8)
    assert (item.PhotometricInterpretation, item.SamplesPerPixel, item.BitsStored) == ("MONOCHROME2", 1, 8)
    rgb = photo.pixel_array.astype(float)
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]  # ITU-R BT.601
    grey = pixels(item).astype(float)
    assert np.abs(grey - luma).max() <= 1.5
    assert len(np.unique(grey)) >= 3  # red, green and blue regions print as distinct greys


def test_monochrome1_is_inverted_and_12_bits_span_the_window() -> None:
    [ct] = ct_phantom(1, 64)
    plain = pixels(grayscale_image(ct, 1, Window(0, 2000), 12))
    ct.PhotometricInterpretation = "MONOCHROME1"
    inverted = pixels(grayscale_image(ct, 1, Window(0, 2000), 12))
    assert plain.max() <= 4095 and int(plain[1, 1]) == 0
    assert np.array_equal(inverted, 4095 - plain)


def test_the_corners_are_burnt_in_only_when_asked() -> None:
    [ct] = ct_phantom(1, 256)
    bare = pixels(grayscale_image(ct, 1, Window(40, 400), 12))
    annotated = pixels(grayscale_image(ct, 1, Window(40, 400), 12, annotate=True))
    assert int(bare[:20, :].max()) == 0  # air above the cylinder
    assert (annotated[:20, :100] == 4095).sum() > 20  # the name, top left
    assert (annotated[-20:, -100:] == 4095).sum() > 10  # the image number, bottom right
    assert np.array_equal(bare[100:156, 100:156], annotated[100:156, 100:156])  # the middle untouched


@pytest.mark.parametrize(("columns", "rows", "images", "refused"), [
    (0, 1, 1, "1×1"), (6, 1, 1, "1×1"), (1, 7, 1, "1×1"), (1, 1, 0, "no image"), (1, 1, 21, "films"),
])
def test_a_job_out_of_bounds_is_refused(columns: int, rows: int, images: int, refused: str) -> None:
    [ct] = ct_phantom(1, 16)
    with pytest.raises(ValueError, match=refused):
        Job(images=[(ct, 1)] * images, columns=columns, rows=rows)

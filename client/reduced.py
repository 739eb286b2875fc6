"""How far a frame may be reduced before the model input's resize, and JPEG decoded that small.

A 3000 px radiograph becomes a 224 px model input: decoding every pixel is mostly wasted work.
The model sees the centred square (:func:`centre_box`); decoded frames are box-reduced by the
largest whole factor that keeps :data:`REDUCING_GAP` times the target (:func:`box_factor`).
JPEG baseline decodes at 1/2, 1/4 or 1/8 scale inside its inverse DCT (Pillow's draft mode), a
block average done by the decoder. The reduction stops where the image keeps at least
:data:`REDUCING_GAP` times the target side, as the box reduction of decoded frames does, so the
final antialiased resize matches a full decode within one grey level (tested). Only where the
decoded values are shown as they are: a window's clipping does not commute with averaging.

JPEG 2000 is always decoded in full. Its half-resolution level (OpenJPEG's ``reduce``, about 4x
faster here) was measured and left out: the 5/3 wavelet's low-pass band is not a box average, and
on generated 12-bit radiographs it left 2 grey levels against a full decode even where twice the
gap was kept (shifting the band onto the box grid did not help).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: A reduction (box or DCT scaling) leaves the image at least this many times the
#: target size, so the final antialiased resize matches a direct one within one grey level
#: (measured on the shared samples from 16 to 224 px: 3 and 4 leave up to 3 levels, 5 at most 1).
REDUCING_GAP = 5
#: Halvings JPEG's scaled inverse DCT offers (down to 1/8).
_JPEG_LEVELS = 3
_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def reduction_levels(width: int, height: int, target: int, most: int) -> int:
    """How many halvings (at most ``most``) keep the short side at least
    :data:`REDUCING_GAP` times ``target``."""
    side, levels = min(width, height), 0
    while levels < most and side >> (levels + 1) >= REDUCING_GAP * target:
        levels += 1
    return levels


def centre_box(height: int, width: int) -> tuple[int, int, int]:
    """Top, left and side of the centred square on the short side of a ``height x width``
    image (what the model sees)."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def box_factor(side: int, target: int) -> int:
    """The largest whole box-reduction factor that divides ``side`` (no partial boxes at the
    edge, which shift the result) and leaves at least :data:`REDUCING_GAP` times ``target``."""
    limit = side // (target * REDUCING_GAP)
    return next((factor for factor in range(limit, 1, -1) if side % factor == 0), 1)


def resize_square(square: np.ndarray, size: int) -> np.ndarray:
    """A 2-D uint8 square as the ``size x size`` model input: box-reduced by :func:`box_factor`,
    then Pillow's antialiased bilinear resize (what the compiled pass of
    :mod:`cxr.client.lut_kernel` gives too, byte for byte)."""
    if size < 1:
        raise ValueError(f"a model input is at least 1 px, not {size}")
    if square.shape[0] == size:
        return square
    image = Image.fromarray(np.ascontiguousarray(square))
    factor = box_factor(square.shape[0], size)
    if factor > 1:
        image = image.reduce(factor)
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def draft_jpeg(image: Image.Image, target: int) -> int:
    """Have Pillow decode an opened (not yet loaded) JPEG at the smallest DCT scale that keeps
    :data:`REDUCING_GAP` times ``target``; returns the halvings asked for (0: full size)."""
    levels = reduction_levels(image.width, image.height, target, _JPEG_LEVELS)
    if levels:
        scale = 1 << levels  # Pillow picks the scale from the ratio of whole sizes
        image.draft(image.mode, (image.width // scale, image.height // scale))
    return levels


def reduced_dicom_frame(ds: Dataset, rows: int, columns: int, target: int) -> np.ndarray | None:
    """A single 8-bit greyscale JPEG baseline frame decoded at reduced scale; None
    when the frame is not one, no reduction keeps enough pixels, or Pillow refuses it (the full
    decode then says why)."""
    from pydicom.encaps import generate_frames

    if ds.file_meta.get("TransferSyntaxUID") != _JPEG_BASELINE:
        return None
    levels = reduction_levels(columns, rows, target, _JPEG_LEVELS)
    if not levels:
        return None
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        image = Image.open(io.BytesIO(frame), formats=["JPEG"])
        draft_jpeg(image, target)
        image.load()
        pixels = np.asarray(image)
    except Exception:  # any refusal: pydicom's full decode names the problem
        return None
    scale = 1 << levels
    if pixels.shape != (-(-rows // scale), -(-columns // scale)):
        return None
    return pixels

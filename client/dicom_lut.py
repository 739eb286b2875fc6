"""A DICOM frame's stored integers to display uint8 through one lookup table.

Modality LUT / rescale, VOI window or VOI LUT, the scaling of the image's own value range to
0..255 and MONOCHROME1 inversion are all functions of the stored value alone. So they are computed
once per possible stored value (256 or 65,536 of them, with pydicom's own functions) and applied to
the frame in a single ``take``: no float copy of a full frame is ever made. The value range is
taken over the stored values present in the frame (its extremes, or a histogram), so the result is
the one the straightforward full-frame float computation gives; where a window clips both ends,
a sparse sample already shows both extremes and the full pass is skipped.

Palette colour goes through its palette the same way (a luminance per index), after the palette's
segments were checked to expand to no more than its descriptor's entries. Colour frames become
luminance with Pillow's conversion, so the same pixels give the same grey levels as a PNG or JPEG.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cxr.client.decode_errors import ImageDecodeError, dicom_errors, why
from cxr.client.lut_kernel import check_table, kernels, readonly
from cxr.client.reduced import box_factor, centre_box, resize_square

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: Most segments a segmented palette may hold or reference (a real one has a few dozen).
MAX_PALETTE_SEGMENTS = 65_536
#: Pixels converted per band where a full-size intermediate copy is avoided (:func:`apply_lut`,
#: 16-bit Pillow images): the band's 8-byte indices (320 KB) stay in cache; measured fastest of
#: 16k-640k on a 2500 x 2500 frame here.
BAND_PIXELS = 40_000
#: Every this many rows and columns, the pixels whose display values may settle the frame's value
#: range without a full pass (:func:`_clipped_extremes`): 1/64 of a 2-D frame.
SAMPLE_STEP = 8


def as_codes(pixels: np.ndarray) -> np.ndarray:
    """The frame's stored integers viewed as unsigned codes (``uint8`` or ``uint16``)."""
    return pixels.view(np.uint8 if pixels.dtype.itemsize == 1 else np.uint16)


def code_domain(pixels: np.ndarray, bits_allocated: int, bits_stored: int) -> np.ndarray:
    """Every possible stored value, in the frame's dtype, indexed by its unsigned code; unused
    high bits are ignored (sign-extended for signed data), as pydicom does."""
    codes = np.arange(256 if pixels.dtype.itemsize == 1 else 65_536, dtype=np.uint32)
    values = codes.astype(as_codes(pixels).dtype).view(pixels.dtype)
    shift = _unused_bits(pixels, bits_allocated, bits_stored)
    if shift:
        values = np.right_shift(np.left_shift(values, shift), shift)
    return values


def _unused_bits(pixels: np.ndarray, bits_allocated: int, bits_stored: int) -> int:
    """How many high bits of the frame's dtype the stored values ignore (0: none)."""
    shift = min(bits_allocated, 8 * pixels.dtype.itemsize) - bits_stored
    return shift if 0 < shift < 8 * pixels.dtype.itemsize else 0


def grayscale_lut(
    pixels: np.ndarray,
    ds: Dataset,
    *,
    bits_allocated: int,
    bits_stored: int,
    rescale: bool,
    voi: bool,
    invert: bool,
    lut_sequences: bool,
) -> np.ndarray:
    """The uint8 display value of every stored code of a greyscale frame (``lut_sequences``:
    whether a Modality or VOI LUT table, possibly non-monotonic, takes part)."""
    stored = code_domain(pixels, bits_allocated, bits_stored)
    # The domain repeats every 2**(used bits) codes (12-bit data: 16 times): compute one period
    # through pydicom's float64 functions, then repeat it.
    period = len(stored) >> _unused_bits(pixels, bits_allocated, bits_stored)
    values = display_values(stored[:period], ds, rescale=rescale, voi=voi)
    values = np.tile(values, len(stored) // period)
    extremes = _clipped_extremes(values, pixels)
    if extremes is None:
        shown = values[_present(pixels, stored, bits_stored, monotonic=not lut_sequences)]
        extremes = float(shown.min()), float(shown.max())
    if not np.isfinite(extremes).all():
        raise ImageDecodeError("corrupt", "image contains non-finite values")
    lut = stretch(values, *extremes)
    return 255 - lut if invert else lut


def _clipped_extremes(values: np.ndarray, pixels: np.ndarray) -> tuple[float, float] | None:
    """The frame's lowest and highest display values when a sparse sample of its pixels already
    shows both extremes that any stored value can take (a window clipping both ends, as on most
    radiographs): exact, since no pixel can lie outside them, and a full pass saved. None
    otherwise."""
    floor, ceiling = float(values.min()), float(values.max())
    sample = np.take(values, as_codes(pixels[::SAMPLE_STEP, ::SAMPLE_STEP]), mode="clip")
    if sample.size and float(sample.min()) == floor and float(sample.max()) == ceiling:
        return floor, ceiling
    return None


def display_values(values: np.ndarray, ds: Dataset, *, rescale: bool, voi: bool) -> np.ndarray:
    """``values`` through the Modality LUT / rescale, then the VOI LUT or window (pydicom's
    functions), as float32."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        if rescale:
            values = apply_modality_lut(values, ds)
        if voi:
            values = apply_voi_lut(values, ds, index=0)
    except dicom_errors() as err:  # e.g. Window Width < 1, an empty Rescale Slope, a broken LUT
        raise ImageDecodeError(
            "corrupt", f"invalid DICOM rescale or window (VOI LUT) attributes: {why(err)}"
        ) from err
    return np.asarray(values, dtype=np.float32)


def stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low..high`` of float32 ``values`` linearly onto 0..255, rounded (all zeros when
    ``high <= low``): the one scaling of a value range to display grey levels."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip((values - low) * (255.0 / (high - low)) + 0.5, 0, 255).astype(np.uint8)


def _present(
    pixels: np.ndarray, stored: np.ndarray, bits_stored: int, *, monotonic: bool
) -> np.ndarray:
    """Which entries of the code domain can hold the frame's extremes: with a monotonic
    transform and no stray high bits, every stored value between the frame's minimum and maximum
    (two cheap passes); otherwise exactly the codes present (a histogram)."""
    low, high = int(pixels.min()), int(pixels.max())
    signed = pixels.dtype.kind == "i"
    valid = (
        (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1)
        if signed
        else (0, (1 << bits_stored) - 1)
    )
    if monotonic and valid[0] <= low and high <= valid[1]:
        return (stored >= low) & (stored <= high)
    return np.bincount(as_codes(pixels).ravel(), minlength=len(stored)) > 0


def apply_lut(lut: np.ndarray, pixels: np.ndarray, *, size: int | None = None) -> np.ndarray:
    """``lut[pixels]`` over the frame's unsigned codes (``lut`` has an entry for every code of
    the dtype), uint8 out; ``size``: the ``size x size`` model input made from it instead
    (:func:`~cxr.client.reduced.resize_square` of the centre square). In compiled passes where
    numba is installed (:mod:`cxr.client.lut_kernel`), else numpy a band of rows at a time, then
    Pillow: the same bytes."""
    codes = as_codes(pixels)
    check_table(lut, codes)
    if codes.ndim != 2:
        if size is not None:
            raise ValueError(f"a model input needs a 2-D frame, not {codes.shape}")
        return _take(lut, codes)
    compiled = kernels()
    if size is None:
        if compiled is None:
            return _take(lut, codes)
        out = np.empty(codes.shape, dtype=np.uint8)
        compiled.lookup(readonly(lut), readonly(codes), out)
        return out
    top, left, side = centre_box(*codes.shape)
    if compiled is None:
        return resize_square(_take(lut, codes[top : top + side, left : left + side]), size)
    return compiled.model_input(lut, codes, top, left, side, box_factor(side, size), size)


def _take(lut: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``lut`` covers every code of the dtype, so no index is out of range: ``mode="clip"`` only
    skips numpy's bounds check (25 % faster)."""
    if codes.ndim != 2:
        return np.take(lut, codes, mode="clip")
    out = np.empty(codes.shape, dtype=np.uint8)
    band = max(1, BAND_PIXELS // max(1, codes.shape[1]))
    index = np.empty((band, codes.shape[1]), dtype=np.intp)
    for top in range(0, codes.shape[0], band):
        rows = codes[top : top + band]
        np.copyto(index[: len(rows)], rows)
        np.take(lut, index[: len(rows)], out=out[top : top + band], mode="clip")
    return out


def rgb_to_gray(rgb: np.ndarray, bits_stored: int) -> np.ndarray:
    """[H, W, 3] colour to luminance with Pillow's RGB->L conversion (as for PNG and JPEG);
    more than 8 bits per sample are first scaled by a fixed factor, never stretched."""
    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:
        top = (1 << bits_stored) - 1 if 8 < bits_stored <= 16 else int(rgb.max() or 1)
        scale = np.round(np.arange(top + 1, dtype=np.float32) * (255.0 / top)).astype(np.uint8)
        rgb = np.take(scale, np.clip(rgb, 0, top).astype(np.intp))
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb), "RGB").convert("L"))


def palette_lut(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """The luminance of every palette index (uint8), its palette checked for bombs first."""
    from pydicom.pixels import apply_color_lut

    check_palette(ds)
    domain = code_domain(pixels, 8 * pixels.dtype.itemsize, 8 * pixels.dtype.itemsize)
    try:
        rgb = apply_color_lut(domain, ds)
    except dicom_errors() as err:
        raise ImageDecodeError("bad_palette", f"invalid DICOM palette: {why(err)}") from err
    depth = 16 if rgb.dtype.itemsize > 1 else 8
    return rgb_to_gray(rgb[None, :, :3], depth)[0]


def check_palette(ds: Dataset) -> None:
    """Refuse a palette whose (segmented) data would expand past its descriptor's entries."""
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    if not isinstance(descriptor, list | tuple) or len(descriptor) != 3:
        raise ImageDecodeError("bad_palette", "DICOM palette colour image has no valid palette")
    entries, _first, bits = descriptor
    entries = entries or 65_536
    if bits not in (8, 16):
        raise ImageDecodeError("bad_palette", f"DICOM palette entries of {bits} bits")
    for colour in ("Red", "Green", "Blue"):
        segmented = ds.get(f"Segmented{colour}PaletteColorLookupTableData")
        if segmented is not None:
            words = np.frombuffer(segmented, dtype="<u1" if bits == 8 else "<u2")
            _check_segments(words.tolist(), entries, colour, indirect=bits == 16)
        elif f"{colour}PaletteColorLookupTableData" not in ds:
            raise ImageDecodeError("bad_palette", f"DICOM palette has no {colour.lower()} data")


def _check_segments(words: list[int], entries: int, colour: str, *, indirect: bool) -> None:
    """Walk segmented palette data (PS3.3 C.7.9.2) counting the entries it expands to, without
    expanding it; nested indirect segments (and any in 8-bit data) are refused."""
    total = visits = 0

    def walk(offset: int, limit: int | None, nested: bool) -> None:
        nonlocal total, visits
        done = 0
        while offset + 1 < len(words) and (limit is None or done < limit):
            opcode, length = words[offset], words[offset + 1]
            visits += 1
            if visits > MAX_PALETTE_SEGMENTS:
                raise _bomb(colour, f"more than {MAX_PALETTE_SEGMENTS:,} segments")
            if opcode == 0 and offset + 2 + length <= len(words):
                total += length
                offset += 2 + length
            elif opcode == 1 and length > 0 and (total or nested):
                total += length
                offset += 3
            elif opcode == 2 and indirect and not nested and total and offset + 3 < len(words):
                target = words[offset + 3] << 16 | words[offset + 2]
                if not 0 <= target < len(words):
                    raise _bomb(colour, "an indirect segment points outside the data")
                walk(target, length, True)
                offset += 4
            else:
                raise _bomb(colour, f"segment {visits} (type {opcode}) is invalid here")
            if total > entries:
                raise _bomb(colour, f"it expands past the {entries:,} entries of its descriptor")
            done += 1

    walk(0, None, False)


def _bomb(colour: str, reason: str) -> ImageDecodeError:
    return ImageDecodeError(
        "bad_palette", f"DICOM segmented {colour.lower()} palette refused: {reason}"
    )

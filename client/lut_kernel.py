"""A frame's lookup table, and the model input made from it, in compiled passes where numba is
installed (the ``fast`` extra).

numpy applies a 65,536-entry table by first widening every stored value to an 8-byte index, then
gathering; Pillow then box-reduces the full-size uint8 frame it wrote and resizes it, walking each
output pixel's window one pixel at a time. Compiled, :attr:`Kernels.model_input` is one pass over
the stored integers of the centre square: table, box means, then Pillow's antialiased bilinear
resize across the rows. The reduced rows go 64 at a time into a column-major block that stays in
cache, so the resize across them is vectorised over the 64 rows (an output pixel's window is too
short to vectorise along); the resize down then runs on the narrow result. 2-4x less time than
numpy and Pillow, and the same bytes: Pillow's fixed-point weights (:func:`bilinear_weights`) and
box rounding (:func:`pillow_multiplier`) are reproduced, tested for every box factor and many
sizes. :attr:`Kernels.lookup` applies the table to a whole frame. Without numba, :func:`kernels`
is None and :mod:`cxr.client.dicom_lut` takes the numpy and Pillow path.

numba is imported on the first decode that needs it, not with the client, and compiles the passes
for this CPU (~3 s), cached beside this module or in numba's user cache (then ~0.3 s to load).
A numba that cannot import or compile here turns the passes off, with one warning in the log.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from functools import cache, lru_cache
from typing import NamedTuple

import numpy as np

from cxr.client.decode_errors import why

log = logging.getLogger("client")
_LOCK = threading.Lock()

#: Element types of the codes the passes are compiled for, when first needed (then loaded from
#: numba's cache).
CODE_TYPES = ("uint8", "uint16")
#: Pillow's fixed-point fraction bits for 8-bit resampling (``PRECISION_BITS`` in Resample.c).
PRECISION = 22
#: Pillow's ``reduce`` divides a box sum by multiplying with :func:`pillow_multiplier`, then
#: shifting right this many bits.
BOX_SHIFT = 24
#: Reduced rows per column-major block: the resize across them is vectorised over this many rows
#: (16 or 32 were too few for the compiler; 64 keeps a 2,048 px block in 128 KB).
BLOCK_ROWS = 64


class Kernels(NamedTuple):
    """The compiled passes (arrays read-only and C-contiguous, :func:`readonly`; ``out`` uint8)
    and :meth:`model_input`, which checks what the compiled code does not."""

    #: ``lookup(lut, codes, out)``: ``out = lut[codes]`` over a 2-D frame.
    lookup: Callable[[np.ndarray, np.ndarray, np.ndarray], None]
    #: ``resize(lut, codes, top, left, factor, multiplier, side, bounds, weights, out)``: see
    #: :meth:`model_input`; ``side`` is the reduced side, ``bounds`` and ``weights`` its
    #: :func:`bilinear_weights`, ``multiplier`` the box area's :func:`pillow_multiplier`.
    resize: Callable[..., None]

    def model_input(
        self,
        lut: np.ndarray,
        codes: np.ndarray,
        top: int,
        left: int,
        side: int,
        factor: int,
        size: int,
    ) -> np.ndarray:
        """Pillow's bilinear resize to ``size x size`` of the ``factor x factor`` box means of
        ``lut[codes]`` over the ``side`` square at ``top, left`` (checked to lie in the frame,
        the factor to divide it and ``lut`` to cover every code: numba checks no index)."""
        height, width = codes.shape
        check_table(lut, codes)
        inside = min(top, left) >= 0 and top + side <= height and left + side <= width
        if not inside or side < 1 or size < 1 or factor < 1 or side % factor:
            raise ValueError(
                f"no {size} px model input from a {side} px square at ({top}, {left}) of a "
                f"{height} x {width} frame, box factor {factor}"
            )
        reduced = side // factor
        bounds, weights = bilinear_weights(reduced, size)
        out = np.empty((size, size), dtype=np.uint8)
        multiplier = pillow_multiplier(factor * factor)
        self.resize(
            readonly(lut),
            readonly(codes),
            top,
            left,
            factor,
            multiplier,
            reduced,
            bounds,
            weights,
            out,
        )
        return out


def check_table(lut: np.ndarray, codes: np.ndarray) -> None:
    """Refuse a table without exactly one entry per code of ``codes``' (unsigned) dtype: the
    passes, and numpy's unchecked ``take``, would read past a short one."""
    entries = 1 << (8 * codes.itemsize)
    if len(lut) != entries:
        raise ValueError(f"{codes.dtype} codes need a {entries:,}-entry table, not {len(lut):,}")


def readonly(array: np.ndarray) -> np.ndarray:
    """A read-only, C-contiguous view of ``array`` (a copy only where it is not contiguous)."""
    view = np.ascontiguousarray(array).view()
    view.flags.writeable = False
    return view


def pillow_multiplier(area: int) -> int:
    """The fixed-point reciprocal of ``area`` that Pillow's ``reduce`` divides box sums with:
    ``(sum + area // 2) * multiplier >> BOX_SHIFT``, the multiplier computed in float32 and
    truncated (so it is not always the rounded mean: 2,800 / 25 gives 111)."""
    return int(np.float32(2.0**32) / np.float32(256 * area))


@lru_cache(maxsize=64)
def bilinear_weights(source: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's antialiased bilinear resize of ``source`` pixels to ``size``, as its C code
    computes it (``precompute_coeffs`` and ``normalize_coeffs_8bpc``, the same float64 steps in
    the same order): each output pixel's first input pixel and count (``bounds``, int64
    ``[size, 2]``) and its fixed-point weights (int32 ``[size, taps]``, zero past the count)."""
    scale = float(source) / size
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1
    taps = int(np.ceil(support)) * 2 + 1
    centre = (np.arange(size, dtype=np.float64) + 0.5) * scale
    first = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), source) - first
    tap = np.arange(taps)
    distance = np.abs(((tap + first[:, None]) - centre[:, None] + 0.5) * (1.0 / filterscale))
    weights = np.where((distance < 1.0) & (tap < count[:, None]), 1.0 - distance, 0.0)
    total = np.cumsum(weights, axis=1)[:, -1]  # summed in order, as the C loop does
    weights /= np.where(total == 0.0, 1.0, total)[:, None]
    fixed = np.trunc(0.5 + weights * (1 << PRECISION)).astype(np.int32)
    return readonly(np.stack([first, count], axis=1)), readonly(fixed)


def kernels() -> Kernels | None:
    """The compiled passes, or None where numba is not installed or cannot compile them here
    (said once in the log: decoding goes on, slower, with the same output)."""
    with _LOCK:  # threads decoding their first frames together compile once
        return _load()


@cache
def _load() -> Kernels | None:
    if importlib.util.find_spec("numba") is None:
        return None
    try:
        return _compile(cache=True)
    except Exception as err:  # a numba that cannot import (numpy too new), no writable cache
        first = err
    try:
        return _compile(cache=False)
    except Exception as err:
        log.warning(
            "the compiled decode pass is off (numba: %s; %s): numpy and Pillow do its work",
            why(first),
            why(err),
        )
        return None


def _compile(*, cache: bool) -> Kernels:
    import numba
    from numba import types

    # Read-only, C-contiguous inputs: a file's bytes are read-only, and a cropped view's unknown
    # column stride would keep the compiler from vectorising (~1.5x slower).
    def frame(name: str, dims: int = 2) -> types.Array:
        return types.Array(getattr(types, name), dims, "C", readonly=True)

    integer, out = types.int64, types.Array(types.uint8, 2, "C")
    half, rows = np.int32(1 << (PRECISION - 1)), BLOCK_ROWS

    @numba.njit(inline="always")
    def weigh(
        lines: np.ndarray,
        start: int,
        taps: int,
        weights: np.ndarray,
        acc: np.ndarray,
        width: int,
    ) -> None:  # pragma: no cover - compiled
        """One output line of Pillow's resize along ``lines``, before its shift and clip:
        ``acc[:width]`` gets half a fixed-point unit plus the ``taps`` lines from ``start``,
        each times its weight (an output pixel's row of :func:`bilinear_weights`)."""
        for i in range(width):
            acc[i] = half
        for t in range(taps):
            weight, line = weights[t], lines[start + t]
            for i in range(width):
                acc[i] += line[i] * weight

    @numba.njit(
        [types.void(frame("uint8", 1), frame(name), out) for name in CODE_TYPES],
        cache=cache,
        nogil=True,
    )
    def lookup(lut: np.ndarray, codes: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
        height, width = out.shape
        for i in range(height):
            line, display = codes[i], out[i]
            for j in range(width):
                display[j] = lut[line[j]]

    @numba.njit(
        [
            types.void(
                frame("uint8", 1),
                frame(name),
                integer,
                integer,
                integer,
                integer,
                integer,
                frame("int64"),
                frame("int32"),
                out,
            )
            for name in CODE_TYPES
        ],
        cache=cache,
        nogil=True,
    )
    def resize(
        lut: np.ndarray,
        codes: np.ndarray,
        top: int,
        left: int,
        factor: int,
        multiplier: int,
        side: int,
        bounds: np.ndarray,
        weights: np.ndarray,
        out: np.ndarray,
    ) -> None:  # pragma: no cover - compiled
        size = out.shape[0]
        block = np.empty((side, rows), np.uint8)  # column j of reduced rows first..first+63
        across = np.empty((side, size), np.uint8)  # every reduced row, resized across
        sums = np.empty((4, side), np.uint32)
        acc = np.empty(max(rows, size), np.int32)
        rounding = factor * factor // 2
        for first in range(0, side, rows):
            count = min(rows, side - first)
            for r in range(0, count, 4):  # four rows a time: one 4-byte store per column
                y = top + (first + r) * factor
                if factor == 1 and r + 4 <= count:
                    a, b = codes[y, left:], codes[y + 1, left:]
                    c, d = codes[y + 2, left:], codes[y + 3, left:]
                    for j in range(side):
                        column = block[j]
                        column[r], column[r + 1] = lut[a[j]], lut[b[j]]
                        column[r + 2], column[r + 3] = lut[c[j]], lut[d[j]]
                    continue
                if factor == 2 and r + 4 <= count:  # the usual case, unrolled; Pillow's 2x2
                    for q in range(4):  # rounding is (sum + 2) >> 2
                        upper, lower = codes[y + 2 * q, left:], codes[y + 2 * q + 1, left:]
                        for j in range(side):
                            total = np.uint32(lut[upper[2 * j]]) + lut[upper[2 * j + 1]]
                            total += np.uint32(lut[lower[2 * j]]) + lut[lower[2 * j + 1]]
                            sums[q, j] = total
                    for j in range(side):
                        column = block[j]
                        column[r], column[r + 1] = (sums[0, j] + 2) >> 2, (sums[1, j] + 2) >> 2
                        column[r + 2], column[r + 3] = (sums[2, j] + 2) >> 2, (sums[3, j] + 2) >> 2
                    continue
                group = min(4, count - r)
                for q in range(group):
                    sums[q] = rounding
                    for di in range(factor):
                        line = codes[y + q * factor + di, left:]
                        for j in range(side):
                            total = np.uint32(0)
                            for dj in range(factor):
                                total += lut[line[j * factor + dj]]
                            sums[q, j] += total
                for j in range(side):
                    for q in range(group):
                        block[j, r + q] = (np.uint64(sums[q, j]) * multiplier) >> BOX_SHIFT
            # Resize across, all 64 rows of the block at once (in the last block, rows past
            # ``count`` hold stale values: computed, never stored, so the loop stays vectorised).
            for x in range(size):
                weigh(block, bounds[x, 0], bounds[x, 1], weights[x], acc, rows)
                for r in range(count):
                    across[first + r, x] = min(max(acc[r] >> PRECISION, 0), 255)
        for y in range(size):  # resize down, along the narrow rows
            weigh(across, bounds[y, 0], bounds[y, 1], weights[y], acc, size)
            for x in range(size):
                out[y, x] = min(max(acc[x] >> PRECISION, 0), 255)

    return Kernels(lookup, resize)

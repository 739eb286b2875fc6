"""A frame's lookup table and box reduction in one compiled pass, where numba is installed (the
``fast`` extra).

numpy applies a 65,536-entry table by first widening every stored value to an 8-byte index, then
gathering; Pillow then box-reduces the full-size uint8 frame it wrote. Compiled, the two become
one pass over the stored integers that writes only the reduced frame: the same bytes (Pillow's
integer rounding, reproduced and tested for every factor), 2-3x less time. Without numba,
:func:`kernel` is None and :mod:`cxr.client.dicom_lut` takes the numpy and Pillow path.

numba is imported on the first decode that needs it, not with the client, and compiles the pass
for this CPU (~1.7 s), cached beside this module or in numba's user cache (then ~0.3 s to load).
A numba that cannot import or compile here turns the pass off, with one warning in the log.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from functools import cache

import numpy as np

from cxr.client.decode_errors import why

log = logging.getLogger("client")
_LOCK = threading.Lock()

#: ``kernel(lut, codes, top, left, factor, multiplier, out)``: ``out`` (uint8) gets the box means
#: of ``lut[codes]`` over the crop of ``codes`` at ``top, left`` that is ``factor`` times its size;
#: ``lut`` and ``codes`` read-only and C-contiguous (:func:`readonly`).
Kernel = Callable[[np.ndarray, np.ndarray, int, int, int, int, np.ndarray], None]
#: Element types of the codes a kernel is compiled for, when first needed (then loaded from
#: numba's cache).
CODE_TYPES = ("uint8", "uint16")


def readonly(array: np.ndarray) -> np.ndarray:
    """A read-only, C-contiguous view of ``array`` (a copy only where it is not contiguous)."""
    view = np.ascontiguousarray(array).view()
    view.flags.writeable = False
    return view


def pillow_multiplier(area: int) -> int:
    """The fixed-point reciprocal of ``area`` that Pillow's ``reduce`` divides box sums with:
    ``(sum + area // 2) * multiplier >> 24``, the multiplier computed in float32 and truncated
    (so it is not always the rounded mean: 2,800 / 25 gives 111)."""
    return int(np.float32(2.0**32) / np.float32(256 * area))


def kernel() -> Kernel | None:
    """The compiled pass, or None where numba is not installed or cannot compile it here (said
    once in the log: decoding goes on, slower, with the same output)."""
    with _LOCK:  # threads decoding their first frames together compile it once
        return _load()


@cache
def _load() -> Kernel | None:
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


def _compile(*, cache: bool) -> Kernel:
    import numba
    from numba import types

    # Read-only, C-contiguous inputs: a file's bytes are read-only, and a cropped view's unknown
    # column stride would keep the compiler from vectorising (~1.5x slower).
    integer = types.int64
    signatures = [
        types.void(
            types.Array(types.uint8, 1, "C", readonly=True),
            types.Array(getattr(types, name), 2, "C", readonly=True),
            integer,
            integer,
            integer,
            integer,
            types.Array(types.uint8, 2, "C"),
        )
        for name in CODE_TYPES
    ]

    @numba.njit(signatures, cache=cache, nogil=True)
    def lut_box(
        lut: np.ndarray,
        codes: np.ndarray,
        top: int,
        left: int,
        factor: int,
        multiplier: int,
        out: np.ndarray,
    ) -> None:  # pragma: no cover - compiled
        rows, columns = out.shape
        if factor == 1:
            for i in range(rows):
                line, reduced = codes[top + i, left:], out[i]
                for j in range(columns):
                    reduced[j] = lut[line[j]]
        elif factor == 2:  # the usual case (2,240-4,470 px to 224 px), unrolled: 2.5x faster
            for i in range(rows):
                upper, lower = codes[top + 2 * i, left:], codes[top + 2 * i + 1, left:]
                reduced = out[i]
                for j in range(columns):
                    total = np.uint32(lut[upper[2 * j]]) + lut[upper[2 * j + 1]]
                    total += np.uint32(lut[lower[2 * j]]) + lut[lower[2 * j + 1]]
                    reduced[j] = (total + 2) >> 2  # Pillow's 2x2: multiplier 2**22
        else:
            amend = factor * factor // 2
            sums = np.empty(columns, np.uint32)
            for i in range(rows):
                sums[:] = amend
                for di in range(factor):
                    line = codes[top + i * factor + di, left:]
                    for j in range(columns):
                        total = np.uint32(0)
                        for dj in range(factor):
                            total += lut[line[j * factor + dj]]
                        sums[j] += total
                for j in range(columns):
                    out[i, j] = (np.uint64(sums[j]) * multiplier) >> 24

    return lut_box

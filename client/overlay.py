"""Heatmap overlays: the model input with its class activation map in a standard colormap, and the
score and operating threshold in a corner, as a PNG (numpy and Pillow only: no matplotlib in the
client's base install).

The colormap is Google's Turbo through its published polynomial approximation (Anton Mikhailov,
"Turbo, An Improved Rainbow Colormap for Visualization", Google AI Blog, 2019): six
coefficients per channel instead of a 256-entry table. Against matplotlib's ``turbo`` table it
differs by 0.03 on average and by at most 0.13, at the dark end (tested).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Turbo's polynomial: channel = sum(c[k] * x**k for k in 0..5), x clipped to 0..1.
TURBO_COEFFICIENTS = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)
#: Overlays are drawn at least this many pixels wide, so that the text stays legible.
MIN_SIDE = 256
#: Opacity of the colormap where the map is hottest (it fades with the map to the image).
ALPHA = 0.6
SUFFIX = ".heatmap.png"


def turbo(values: np.ndarray) -> np.ndarray:
    """RGB in 0..1, shape ``values.shape + (3,)``, of values in 0..1 (clipped)."""
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    powers = np.stack([x**k for k in range(TURBO_COEFFICIENTS.shape[1])], axis=-1)
    return np.clip(powers @ TURBO_COEFFICIENTS.T, 0.0, 1.0)


def overlay(
    image: np.ndarray, heatmap: np.ndarray, score: float, threshold: float, urgent: bool
) -> Image.Image:
    """The uint8 model input [S, S] with ``heatmap`` [h, w] (0..1) stretched over it
    (bilinear), coloured with :func:`turbo`, and the score and threshold in the top-left corner."""
    side = overlay_side(image.shape[-1])
    gray = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    base = np.asarray(gray.resize((side, side), Image.Resampling.BILINEAR), np.float64) / 255
    heat = stretch(heatmap, side)
    alpha = (ALPHA * heat)[..., None]
    rgb = (1 - alpha) * base[..., None] + alpha * turbo(heat)
    picture = Image.fromarray(np.round(rgb * 255).astype(np.uint8), mode="RGB")
    text = f"P(pneumonia) {score:.3f}  threshold {threshold:.3f}" + ("  URGENT" if urgent else "")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, side // 26))
    *_, right, bottom = draw.textbbox((4, 4), text, font=font)
    draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 255), font=font)
    return picture


def stretch(heatmap: np.ndarray, side: int) -> np.ndarray:
    """``heatmap`` [h, w] stretched over a ``side`` x ``side`` image (bilinear), clipped to 0..1:
    the map as the overlay draws it."""
    heat = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F")
    return np.clip(np.asarray(heat.resize((side, side), Image.Resampling.BILINEAR)), 0, 1)


def overlay_side(size: int) -> int:
    """The side in pixels of the overlay of a ``size`` x ``size`` model input."""
    return max(MIN_SIDE, size)


def hot_spot(heatmap: np.ndarray, size: int) -> tuple[float, float]:
    """Where the overlay of ``heatmap`` on a ``size`` px model input is hottest: the centre of
    the peak pixel of the map as drawn (:func:`stretch`), as fractions of the side (x from the
    left, y from the top). The first peak in reading order when pixels tie."""
    side = overlay_side(size)
    heat = stretch(heatmap, side)
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return (float(x) + 0.5) / side, (float(y) + 0.5) / side


def overlay_name(source: str) -> str:
    """A file name for the overlay of ``source`` (a path or label): readable, one folder level,
    and distinct for distinct sources (a digest of the source ends it)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("._")[-100:]
    return f"{readable}-{hashlib.sha256(source.encode()).hexdigest()[:8]}{SUFFIX}"


def write_overlay(
    folder: Path,
    source: str,
    image: np.ndarray,
    heatmap: np.ndarray,
    score: float,
    threshold: float,
    urgent: bool,
) -> Path:
    """Write the overlay of one result into ``folder`` (:func:`overlay_name`); its path."""
    path = folder / overlay_name(source)
    overlay(image, heatmap, score, threshold, urgent).save(path, format="PNG")
    return path


def heatmap_folder(path: Path) -> Path:
    """``path`` as the folder that receives overlays, created if needed; ``ValueError`` with a
    plain reason when it cannot be (an existing file, a parent that is a file, no permission)."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the folder {path}: {err.strerror or err}") from err
    return path

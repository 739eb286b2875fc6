"""The compiled lookup-and-reduce pass (numba, the ``fast`` extra) gives the very bytes of the
numpy ``take`` and Pillow ``reduce`` it replaces: for every box factor, both code widths, centre
crops of portrait and landscape frames, and whole decodes of full-size radiographs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxr.bench.decode_corpus import encode, radiograph_dataset, synthetic_pixels
from cxr.client import dicom_lut, lut_kernel
from cxr.client.imaging import load_model_input
from cxr.client.lut_kernel import kernel

pytest.importorskip("numba", reason="the fast extra (numba) is not installed")


@pytest.fixture
def numpy_only(monkeypatch: pytest.MonkeyPatch):
    """Run the body with the compiled pass switched off (numba absent, as far as decoding knows)."""

    def run(call, *args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(dicom_lut, "kernel", lambda: None)
            return call(*args, **kwargs)

    return run


def test_the_compiled_pass_is_in_use() -> None:
    assert kernel() is not None


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
@pytest.mark.parametrize("shape", [(60, 84), (84, 60), (72, 72), (77, 91)])  # factors 1-12
def test_every_factor_gives_the_numpy_and_pillow_bytes(numpy_only, dtype, shape) -> None:
    rng = np.random.default_rng(len(shape) + shape[0] + np.dtype(dtype).itemsize)
    info = np.iinfo(dtype)
    pixels = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    lut = rng.integers(0, 255, size=1 << (8 * pixels.dtype.itemsize), endpoint=True)
    lut = lut.astype(np.uint8)
    side = min(shape)
    for factor in [f for f in range(1, 13) if side % f == 0]:
        fast = dicom_lut.apply_lut(lut, pixels, square=True, factor=factor)
        plain = numpy_only(dicom_lut.apply_lut, lut, pixels, square=True, factor=factor)
        assert fast.shape == plain.shape == (side // factor, side // factor)
        assert np.array_equal(fast, plain), factor
    whole = dicom_lut.apply_lut(lut, pixels)
    assert np.array_equal(whole, numpy_only(dicom_lut.apply_lut, lut, pixels))
    assert np.array_equal(whole, lut[pixels.view(f"u{pixels.dtype.itemsize}")])


def test_frames_the_pass_cannot_take_are_refused_clearly() -> None:
    frame = np.zeros((60, 84), np.uint16)
    with pytest.raises(ValueError, match="box factor 7 does not divide the 60 x 60 frame"):
        dicom_lut.apply_lut(np.zeros(65_536, np.uint8), frame, square=True, factor=7)
    with pytest.raises(ValueError, match="uint16 codes need a 65,536-entry table, not 4,096"):
        dicom_lut.apply_lut(np.zeros(4_096, np.uint8), frame)
    with pytest.raises(ValueError, match="needs a 2-D frame"):
        dicom_lut.apply_lut(np.zeros(65_536, np.uint8), frame.ravel(), factor=2)


def test_a_numba_that_cannot_compile_turns_the_pass_off(monkeypatch, caplog) -> None:
    def broken(*, cache: bool) -> None:
        raise ImportError("Numba needs NumPy 2.2 or less")  # what a too-new numpy gives

    lut = np.arange(65_536).astype(np.uint8)
    frame = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    with monkeypatch.context() as patch:
        patch.setattr(lut_kernel, "_compile", broken)
        lut_kernel._load.cache_clear()
        assert lut_kernel.kernel() is None
        reduced = dicom_lut.apply_lut(lut, frame, factor=2)
    assert "the compiled decode pass is off (numba: Numba needs NumPy 2.2 or less" in caplog.text
    assert np.array_equal(reduced, np.asarray(Image.fromarray(lut[frame]).reduce(2)))
    lut_kernel._load.cache_clear()
    assert lut_kernel.kernel() is not None


def test_a_box_mean_rounds_as_pillow_does(numpy_only) -> None:
    # 24 x 112 + 100 = 2,788 over 25 pixels: a mean of 111.52, which Pillow's truncated float32
    # reciprocal turns into 111, not 112.
    lut = np.arange(256, dtype=np.uint8)
    pixels = np.full((10, 10), 112, dtype=np.uint8)
    pixels[::5, ::5] = 100
    fast = dicom_lut.apply_lut(lut, pixels, square=True, factor=5)
    assert np.array_equal(fast, numpy_only(dicom_lut.apply_lut, lut, pixels, square=True, factor=5))
    assert set(fast.ravel().tolist()) == {111}


@pytest.mark.parametrize(
    ("rows", "columns", "bits", "photometric", "size"),
    [
        (3000, 2500, 12, "MONOCHROME2", 224),  # box factor 2
        (2336, 2836, 16, "MONOCHROME1", 224),  # landscape crop, factor 2
        (2500, 2048, 12, "MONOCHROME1", 224),  # no whole factor: lookup only
        (2688, 2688, 16, "MONOCHROME2", 64),  # factor 8
    ],
)
def test_full_size_decodes_are_identical_with_and_without_numba(
    numpy_only, rows: int, columns: int, bits: int, photometric: str, size: int
) -> None:
    pixels = synthetic_pixels(rows, columns, bits, seed=rows + columns)
    data = encode(radiograph_dataset(pixels, bits, photometric), "explicit")
    fast = load_model_input(data, size)
    assert np.array_equal(fast, numpy_only(load_model_input, data, size))

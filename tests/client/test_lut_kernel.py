"""The compiled passes (numba, the ``fast`` extra) give the very bytes of the numpy ``take`` and
Pillow ``reduce`` and ``resize`` they replace: for every box factor, sizes down and up, both code
widths, centre crops of portrait and landscape frames, and whole decodes of full-size
radiographs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxr.bench.decode_corpus import encode, radiograph_dataset, synthetic_pixels
from cxr.client import dicom_lut, lut_kernel
from cxr.client.imaging import load_model_input
from cxr.client.lut_kernel import bilinear_weights, kernels

pytest.importorskip("numba", reason="the fast extra (numba) is not installed")


@pytest.fixture
def numpy_only(monkeypatch: pytest.MonkeyPatch):
    """Run the body with the compiled passes switched off (numba absent, as far as decoding
    knows)."""

    def run(call, *args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(dicom_lut, "kernels", lambda: None)
            return call(*args, **kwargs)

    return run


def compiled_model_input(lut: np.ndarray, square: np.ndarray, factor: int, size: int):
    """The compiled pass over a whole square frame with a given box factor."""
    return kernels().model_input(lut, square, 0, 0, square.shape[0], factor, size)


def test_the_compiled_passes_are_in_use() -> None:
    assert kernels() is not None


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("side", [72, 77, 130])
def test_every_factor_and_size_gives_pillows_bytes(dtype, side: int) -> None:
    rng = np.random.default_rng(side + np.dtype(dtype).itemsize)
    square = rng.integers(0, np.iinfo(dtype).max, size=(side, side), endpoint=True).astype(dtype)
    lut = rng.integers(0, 255, size=1 << (8 * square.itemsize), endpoint=True).astype(np.uint8)
    for factor in [f for f in range(1, 13) if side % f == 0]:
        reduced = Image.fromarray(lut[square]).reduce(factor)
        # down (several whole and fractional scales), the same size, and up
        for size in {1, 2, 3, 5, 7, 16, side // factor // 3, side // factor, side // factor + 9}:
            pillow = np.asarray(reduced.resize((size, size), Image.Resampling.BILINEAR))
            assert np.array_equal(compiled_model_input(lut, square, factor, size), pillow), (
                factor,
                size,
            )


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
@pytest.mark.parametrize("shape", [(720, 750), (750, 720), (77, 91)])
def test_model_inputs_are_the_numpy_and_pillow_bytes(numpy_only, dtype, shape) -> None:
    rng = np.random.default_rng(sum(shape) + np.dtype(dtype).itemsize)
    info = np.iinfo(dtype)
    pixels = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    lut = rng.integers(0, 255, size=1 << (8 * pixels.dtype.itemsize), endpoint=True)
    lut = lut.astype(np.uint8)
    # on 720 px: box factors 1, 2, 3, 4, 5, 6, 8, 9, 10, 12 and no resize at 720
    for size in (720, 300, 144, 72, 48, 36, 28, 24, 18, 16, 14, 12, 224):
        fast = dicom_lut.apply_lut(lut, pixels, size=size)
        plain = numpy_only(dicom_lut.apply_lut, lut, pixels, size=size)
        assert fast.shape == plain.shape == (size, size)
        assert np.array_equal(fast, plain), size
    whole = dicom_lut.apply_lut(lut, pixels)
    assert np.array_equal(whole, numpy_only(dicom_lut.apply_lut, lut, pixels))
    assert np.array_equal(whole, lut[pixels.view(f"u{pixels.dtype.itemsize}")])


def test_bilinear_weights_are_pillows_fixed_point() -> None:
    bounds, weights = bilinear_weights(10, 4)  # a 2.5x reduction: windows clipped at the edges
    assert bounds.tolist() == [[0, 4], [1, 5], [4, 5], [6, 4]]
    assert weights[1].tolist() == [167_772, 838_861, 1_509_949, 1_174_405, 503_316, 0, 0]
    assert weights.sum(axis=1).tolist() == [4_194_304, 4_194_303, 4_194_303, 4_194_304]
    assert not weights.flags.writeable  # cached and shared between decodes


def test_frames_the_pass_cannot_take_are_refused_clearly() -> None:
    frame = np.zeros((60, 84), np.uint16)
    table = np.zeros(65_536, np.uint8)
    for top, left, side, factor, size in [(1, 0, 60, 1, 8), (0, 25, 60, 1, 8), (0, 0, 60, 7, 8)]:
        with pytest.raises(ValueError, match=f"from a {side} px square at .{top}, {left}. of a"):
            kernels().model_input(table, frame, top, left, side, factor, size)
    with pytest.raises(ValueError, match="no 0 px model input"):
        kernels().model_input(table, frame, 0, 0, 60, 1, 0)
    with pytest.raises(ValueError, match="uint16 codes need a 65,536-entry table, not 4,096"):
        kernels().model_input(table[:4096], frame, 0, 0, 60, 1, 8)
    with pytest.raises(ValueError, match="uint16 codes need a 65,536-entry table, not 4,096"):
        dicom_lut.apply_lut(np.zeros(4_096, np.uint8), frame)
    with pytest.raises(ValueError, match="a model input needs a 2-D frame"):
        dicom_lut.apply_lut(np.zeros(65_536, np.uint8), frame.ravel(), size=16)


def test_a_numba_that_cannot_compile_turns_the_pass_off(monkeypatch, caplog) -> None:
    def broken(*, cache: bool) -> None:
        raise ImportError("Numba needs NumPy 2.2 or less")  # what a too-new numpy gives

    lut = np.arange(65_536).astype(np.uint8)
    frame = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    with monkeypatch.context() as patch:
        patch.setattr(lut_kernel, "_compile", broken)
        lut_kernel._load.cache_clear()
        assert lut_kernel.kernels() is None
        model_input = dicom_lut.apply_lut(lut, frame, size=16)
    assert "the compiled decode pass is off (numba: Numba needs NumPy 2.2 or less" in caplog.text
    pillow = Image.fromarray(lut[frame]).resize((16, 16), Image.Resampling.BILINEAR)
    assert np.array_equal(model_input, np.asarray(pillow))
    lut_kernel._load.cache_clear()
    assert lut_kernel.kernels() is not None


def test_a_box_mean_rounds_as_pillow_does() -> None:
    # 24 x 112 + 100 = 2,788 over 25 pixels: a mean of 111.52, which Pillow's truncated float32
    # reciprocal turns into 111, not 112.
    lut = np.arange(256, dtype=np.uint8)
    pixels = np.full((10, 10), 112, dtype=np.uint8)
    pixels[::5, ::5] = 100
    fast = compiled_model_input(lut, pixels, 5, 2)
    assert np.array_equal(fast, np.asarray(Image.fromarray(pixels).reduce(5)))
    assert set(fast.ravel().tolist()) == {111}


@pytest.mark.parametrize(
    ("rows", "columns", "bits", "photometric", "size"),
    [
        (3000, 2500, 12, "MONOCHROME2", 224),  # box factor 2
        (2336, 2836, 16, "MONOCHROME1", 224),  # landscape crop, factor 2
        (2500, 2048, 12, "MONOCHROME1", 224),  # no whole box factor
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

"""Tests for cxr.client.imaging: every container, every refusal, model input, in-memory images."""

from __future__ import annotations

import hashlib
import io
import re
import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.client.contract import MAX_PIXELS
from cxr.client.imaging import (
    ImageDecodeError,
    as_gray,
    decode_image,
    dicom_identity,
    dicom_to_gray,
    load_model_input,
    sniff_format,
    to_model_input,
)

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # tests/ holds the shared fuzz_inputs helper (no __init__ files)

from fuzz_inputs import dicom_bytes, jpeg_bytes, png_bytes, png_with_header  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "samples"
MONO2 = "cxr_pa_monochrome2.dcm"
MONO1 = "cxr_pa_monochrome1_tag.dcm"
PNG_SAMPLES = ("nih_00000001_000.png", "nih_00027426_000.png")


def sample(name: str) -> bytes:
    path = SAMPLES / name
    if not path.is_file():
        pytest.skip(f"sample {name} not found in {SAMPLES.resolve()} (shared data folder absent)")
    return path.read_bytes()


def gradient(height: int = 48, width: int = 64) -> np.ndarray:
    """A smooth uint8 image covering 0..255."""
    rows = np.linspace(0, 255, height)[:, None]
    cols = np.linspace(0, 255, width)[None, :]
    return np.rint((rows + cols) / 2).astype(np.uint8)


@contextmanager
def unexpanded(limit: int = 4 * 2**20) -> Iterator[None]:
    """Assert that the block allocates less than ``limit`` bytes at its peak: a refusal from the
    header, before any pixel is decoded (decoding the sizes these tests claim takes gigabytes)."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak:,} bytes allocated: the pixels were decoded"


def refused(data: bytes, *codes: str) -> ImageDecodeError:
    """Decode ``data``, expect an ImageDecodeError with one of ``codes``, return it."""
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    err = info.value
    assert err.code in codes, f"code {err.code!r} not in {codes}: {err}"
    assert_readable(err)
    return err


def assert_readable(err: ImageDecodeError) -> None:
    """A message a person can act on: words, one line, no object addresses or reprs."""
    message = str(err)
    assert len(message) >= 15, message
    assert re.search(r"[A-Za-z]{4,}", message), message
    assert " at 0x" not in message and "\n" not in message, message
    assert isinstance(err, ValueError)  # callers that catch ValueError keep working


def assert_gray(image: np.ndarray, shape: tuple[int, int] | None = None) -> None:
    assert isinstance(image, np.ndarray)
    assert image.dtype == np.uint8
    assert image.ndim == 2
    if shape is not None:
        assert image.shape == shape


# --- PNG and JPEG ----------------------------------------------------------------------------


def test_png_8bit_is_lossless() -> None:
    gray = gradient()
    data = png_bytes(gray)
    assert sniff_format(data) == "png"
    out = decode_image(data)
    assert_gray(out, gray.shape)
    np.testing.assert_array_equal(out, gray)


def test_png_16bit_is_scaled_from_its_own_range() -> None:
    values = np.linspace(1000, 41000, 40 * 30).reshape(40, 30).astype(np.uint16)
    out = decode_image(png_bytes(values))
    assert_gray(out, (40, 30))
    assert out.min() == 0 and out.max() == 255
    expected = (values.astype(np.float64) - 1000) * 255 / 40000
    assert np.abs(out - expected).max() <= 1.0
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotonic, like the input


def test_rgb_png_becomes_luminance() -> None:
    colours = np.array(
        [[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], dtype=np.uint8
    )
    out = decode_image(png_bytes(colours))
    assert_gray(out, (1, 5))
    # ITU-R 601: 0.299 R + 0.587 G + 0.114 B
    np.testing.assert_allclose(out[0], [76, 150, 29, 255, 0], atol=1)


def test_rgba_and_palette_png_become_luminance() -> None:
    gray = gradient(16, 16)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    np.testing.assert_allclose(decode_image(buffer.getvalue()), gray, atol=1)
    buffer = io.BytesIO()
    Image.fromarray(gray).convert("P").save(buffer, format="PNG")
    assert_gray(decode_image(buffer.getvalue()), gray.shape)


def test_jpeg_decodes_close_to_the_original() -> None:
    gray = gradient(64, 80)
    data = jpeg_bytes(gray, quality=95)
    assert sniff_format(data) == "jpeg"
    out = decode_image(data)
    assert_gray(out, gray.shape)
    assert np.abs(out.astype(int) - gray).mean() < 2.0


def test_colour_jpeg_becomes_luminance() -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 1] = 200  # pure green
    out = decode_image(jpeg_bytes(rgb, quality=95))
    assert_gray(out, (32, 32))
    assert abs(float(out.mean()) - 0.587 * 200) < 3


@pytest.mark.parametrize("name", PNG_SAMPLES)
def test_real_png_samples(name: str) -> None:
    out = decode_image(sample(name))
    assert_gray(out, (512, 512))
    assert out.std() > 10  # a radiograph, not a flat field


def test_bytes_like_inputs_are_accepted() -> None:
    data = png_bytes(gradient())
    expected = decode_image(data)
    np.testing.assert_array_equal(decode_image(bytearray(data)), expected)
    np.testing.assert_array_equal(decode_image(memoryview(data)), expected)
    with pytest.raises(ImageDecodeError) as info:
        decode_image("not bytes")  # type: ignore[arg-type]
    assert info.value.code == "unsupported_type"


# --- Refusals: not images, empty, truncated, bombs ----------------------------------------------


def test_text_is_not_an_image() -> None:
    err = refused(b"patient,label\n123,PNEUMONIA\n", "not_an_image")
    assert "PNG" in str(err) and "DICOM" in str(err)


def test_zero_bytes_is_empty() -> None:
    err = refused(b"", "empty")
    assert "0 bytes" in str(err)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_png(fraction: float) -> None:
    data = png_bytes(gradient(64, 64) ^ np.uint8(0x5A))  # noisy enough to make a long IDAT
    refused(data[: int(len(data) * fraction)], "truncated", "corrupt")


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_jpeg(fraction: float) -> None:
    data = jpeg_bytes(gradient(64, 64))
    refused(data[: int(len(data) * fraction)], "truncated", "corrupt")


def test_png_magic_with_garbage_is_corrupt() -> None:
    err = refused(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt")
    assert "PNG" in str(err)


def test_enormous_png_header_is_refused_before_decoding() -> None:
    data = png_with_header(100_000, 100_000)  # valid CRCs, a 100 kB-wide lie
    assert len(data) < 200
    with unexpanded():
        err = refused(data, "too_large")
    assert "100000x100000" in str(err) and f"{MAX_PIXELS:,}" in str(err)


def test_enormous_jpeg_header_is_refused() -> None:
    data = bytearray(jpeg_bytes(gradient(16, 16)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (65_535).to_bytes(2, "big") * 2
    with unexpanded():
        refused(bytes(data), "too_large")


def test_just_under_the_pixel_limit_is_not_refused_as_too_large() -> None:
    # 8000 x 8000 = 64 MP passes the guard; the (fake) data then fails as truncated/corrupt.
    refused(png_with_header(8000, 8000), "truncated", "corrupt")


# --- DICOM: real samples ----------------------------------------------------------------------


def test_real_dicom_monochrome2() -> None:
    data = sample(MONO2)
    assert sniff_format(data) == "dicom"
    out = decode_image(data)
    assert_gray(out, (1024, 1024))
    assert out.std() > 10


def test_real_dicom_monochrome1_is_the_inverse() -> None:
    mono2 = decode_image(sample(MONO2))
    mono1 = decode_image(sample(MONO1))
    assert_gray(mono1, (1024, 1024))
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_as_gray_of_a_real_pydicom_dataset() -> None:
    import pydicom

    data = sample(MONO2)
    ds = pydicom.dcmread(io.BytesIO(data))
    np.testing.assert_array_equal(as_gray(ds), decode_image(data))
    np.testing.assert_array_equal(dicom_to_gray(ds), decode_image(data))


def test_real_dicom_to_model_input() -> None:
    out = load_model_input(sample(MONO2), 224)
    assert out.shape == (1, 224, 224) and out.dtype == np.uint8


# --- DICOM: made here -------------------------------------------------------------------------


def test_dicom_16bit_rescale_and_window() -> None:
    # Stored s -> HU = 2 s - 1000; window centre 0, width 401 shows HU -200..200.
    stored = np.array(
        [[0, 400, 450, 500], [550, 600, 1000, 65_535]], dtype=np.uint16
    )  # HU -1000, -200, -100, 0 / 100, 200, 1000, 130070
    data = dicom_bytes(
        stored,
        RescaleSlope="2",
        RescaleIntercept="-1000",
        WindowCenter="0",
        WindowWidth="401",
    )
    out = decode_image(data)
    assert_gray(out, (2, 4))
    hu = stored.astype(np.float64) * 2 - 1000
    centre, width = 0.0, 401.0
    inside = ((hu - (centre - 0.5)) / (width - 1) + 0.5) * 255
    expected = np.clip(inside, 0, 255)
    assert np.abs(out - expected).max() <= 1.0, (out, expected)
    assert out[0, 0] == 0 and out[1, 3] == 255 and out[1, 2] == 255  # outside the window
    assert abs(int(out[0, 3]) - 128) <= 1  # the centre is mid-gray


def test_dicom_window_changes_the_rendering() -> None:
    stored = np.linspace(0, 4000, 64).astype(np.uint16).reshape(8, 8)
    plain = decode_image(dicom_bytes(stored))
    windowed = decode_image(dicom_bytes(stored, WindowCenter="1000", WindowWidth="500"))
    assert not np.array_equal(plain, windowed)
    assert (windowed == 255).sum() > (plain == 255).sum()  # everything above 1250 saturates


def test_dicom_12bit_stored_in_16() -> None:
    stored = np.linspace(0, 4095, 32 * 32).reshape(32, 32).astype(np.uint16)
    out = decode_image(dicom_bytes(stored, BitsStored=12, HighBit=11))
    assert_gray(out, (32, 32))
    assert out.min() == 0 and out.max() == 255
    assert np.abs(out - stored / 4095 * 255).max() <= 1.0


def test_dicom_signed_16bit() -> None:
    stored = np.linspace(-2000, 2000, 16 * 16).reshape(16, 16).astype(np.int16)
    out = decode_image(dicom_bytes(stored))
    assert out[0, 0] == 0 and out[-1, -1] == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)


def test_dicom_8bit_is_kept_as_is() -> None:
    gray = gradient(20, 30)
    np.testing.assert_array_equal(decode_image(dicom_bytes(gray)), gray)


def test_dicom_1bit_is_scaled_not_black() -> None:
    bits = (gradient(16, 16) > 127).astype(np.uint8)
    data = dicom_bytes(
        None,
        pixel_data=np.packbits(bits, bitorder="little").tobytes(),
        Rows=16,
        Columns=16,
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        BitsAllocated=1,
        BitsStored=1,
        HighBit=0,
        PixelRepresentation=0,
    )
    np.testing.assert_array_equal(decode_image(data), bits * 255)


def test_dicom_monochrome1_is_inverted() -> None:
    stored = np.linspace(0, 4095, 16 * 16).reshape(16, 16).astype(np.uint16)
    mono2 = decode_image(dicom_bytes(stored))
    mono1 = decode_image(dicom_bytes(stored, PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_dicom_without_preamble() -> None:
    gray = gradient(24, 24)
    data = dicom_bytes(gray, preamble=False)
    assert data[128:132] != b"DICM" and data[:2] == b"\x02\x00"
    assert sniff_format(data) == "dicom"
    np.testing.assert_array_equal(decode_image(data), gray)


@pytest.mark.parametrize("implicit", [True, False])
def test_raw_dicom_without_file_meta(implicit: bool) -> None:
    """A bare dataset (no preamble, no group 0002) decodes with the encoding it was written in."""
    import pydicom

    gray = gradient(24, 24)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(gray)))
    del ds.file_meta
    ds.preamble = None
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=implicit, little_endian=True)
    data = buffer.getvalue()
    assert data[:2] == b"\x08\x00"
    np.testing.assert_array_equal(decode_image(data), gray)


def test_dicom_jpeg_baseline_made_in_memory() -> None:
    gray = gradient(40, 40)
    data = dicom_bytes(
        gray,
        transfer_syntax="1.2.840.10008.1.2.4.50",
        pixel_data=jpeg_bytes(gray, quality=95),
        encapsulated=True,
    )
    out = decode_image(data)
    assert_gray(out, gray.shape)
    assert np.abs(out.astype(int) - gray).mean() < 2.0


def test_dicom_rle_lossless() -> None:
    import pydicom
    from pydicom.uid import RLELossless

    stored = np.linspace(0, 4095, 32 * 32).reshape(32, 32).astype(np.uint16)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(stored)))
    try:
        ds.compress(RLELossless)
    except (RuntimeError, NotImplementedError) as err:  # pragma: no cover - encoder missing
        pytest.skip(f"no RLE encoder: {err}")
    buffer = io.BytesIO()
    ds.save_as(buffer)
    expected = decode_image(dicom_bytes(stored))
    np.testing.assert_array_equal(decode_image(buffer.getvalue()), expected)


def test_dicom_palette_colour_goes_through_its_palette() -> None:
    indices = np.arange(256, dtype=np.uint8).reshape(16, 16)
    lut = ((255 - np.arange(256)) * 257).astype("<u2").tobytes()  # an inverting gray palette
    palette = {
        f"{colour}PaletteColorLookupTable{part}": value
        for colour in ("Red", "Green", "Blue")
        for part, value in (("Descriptor", [256, 0, 16]), ("Data", lut))
    }
    data = dicom_bytes(indices, PhotometricInterpretation="PALETTE COLOR", **palette)
    out = decode_image(data)
    np.testing.assert_allclose(out, 255 - indices.astype(int), atol=1)


def test_dicom_rgb_becomes_luminance_and_ignores_a_window() -> None:
    gray = gradient(16, 16)
    rgb = np.dstack([gray, gray, gray])
    attributes = {
        "Rows": 16,
        "Columns": 16,
        "SamplesPerPixel": 3,
        "PlanarConfiguration": 0,
        "PhotometricInterpretation": "RGB",
        "BitsAllocated": 8,
        "BitsStored": 8,
        "HighBit": 7,
        "PixelRepresentation": 0,
    }
    plain = decode_image(dicom_bytes(None, pixel_data=rgb.tobytes(), **attributes))
    np.testing.assert_allclose(plain, gray, atol=1)
    # A window is a grayscale (VOI) transform: on a colour image it is not applied, nor fatal.
    windowed = dicom_bytes(
        None, pixel_data=rgb.tobytes(), WindowCenter="40", WindowWidth="10", **attributes
    )
    np.testing.assert_array_equal(decode_image(windowed), plain)


def _full_pass(monkeypatch: pytest.MonkeyPatch, data: bytes) -> np.ndarray:
    """``data`` decoded with the value range always taken over every pixel."""
    from cxr.client import dicom_lut

    with monkeypatch.context() as patch:
        patch.setattr(dicom_lut, "_clipped_extremes", lambda values, pixels: None)
        return decode_image(data)


@pytest.mark.parametrize(
    ("case", "window", "sample_settles"),
    [
        ("clipped at both ends", {"WindowCenter": "2000", "WindowWidth": "2000"}, True),
        ("clipped at the low end only", {"WindowCenter": "3500", "WindowWidth": "3000"}, False),
        (
            "clipped off the sample grid only",
            {"WindowCenter": "2000.5", "WindowWidth": "3998"},
            False,
        ),
        ("no window, range inside the 12 bits", {}, False),
    ],
)
def test_value_range_from_a_sample_equals_the_full_pass(
    monkeypatch: pytest.MonkeyPatch, case: str, window: dict[str, str], sample_settles: bool
) -> None:
    # Stored 2..3998 over the frame and 1 and 3999 at two pixels off the sampled rows and
    # columns: only a window that clips both ends on the sample lets the sample decide; without
    # a window the range is 1..3999, not the 0..4095 the 12 bits allow.
    from cxr.client import dicom_lut

    stored = np.linspace(2, 3998, 64 * 64).reshape(64, 64).astype(np.uint16)
    stored[3, 5], stored[61, 59] = 1, 3999
    data = dicom_bytes(stored, BitsStored=12, HighBit=11, **window)
    settled = []
    sampled = dicom_lut._clipped_extremes

    def spy(values: np.ndarray, pixels: np.ndarray) -> tuple[float, float] | None:
        settled.append(sampled(values, pixels) is not None)
        return sampled(values, pixels)

    monkeypatch.setattr(dicom_lut, "_clipped_extremes", spy)
    out = decode_image(data)
    assert settled == [sample_settles], case
    np.testing.assert_array_equal(out, _full_pass(monkeypatch, data))
    assert out.min() == 0 and out.max() == 255


def test_uncompressed_pixel_data_is_decoded_without_a_copy() -> None:
    # 2000 x 2000 12-bit: 8 MB of Pixel Data; the decoded uint8 frame is 4 MB. A copy of the
    # Pixel Data (pydicom reading its value) would take the peak above 12 MB.
    stored = (np.arange(2000 * 2000) % 4096).reshape(2000, 2000).astype(np.uint16)
    data = dicom_bytes(stored, BitsStored=12, HighBit=11, WindowCenter="2000", WindowWidth="2000")
    decode_image(data)  # imports and first-use allocations outside the measurement
    with unexpanded(limit=stored.nbytes * 3 // 4):
        out = decode_image(data)
    assert out.shape == (2000, 2000)


def test_oversize_pixel_attribute_is_refused_without_being_read() -> None:
    lut = b"\0" * (2**21)  # a 2 MiB "palette": twice the limit for a pixel attribute
    data = dicom_bytes(gradient(16, 16), RedPaletteColorLookupTableData=lut)
    with unexpanded(limit=2**20):
        err = refused(data, "too_large")
    assert "(0028,1201)" in str(err) and "2,097,152 bytes" in str(err)


def test_dicom_without_pixel_data() -> None:
    err = refused(dicom_bytes(None, Rows=64, Columns=64), "no_pixel_data")
    assert "pixel data" in str(err).lower()


def test_dicom_with_empty_pixel_data() -> None:
    refused(dicom_bytes(gradient(8, 8), pixel_data=b""), "no_pixel_data")


def test_multi_frame_dicom() -> None:
    frames = np.stack([gradient(16, 16), 255 - gradient(16, 16)])
    data = dicom_bytes(frames[0], NumberOfFrames="2", pixel_data=frames.tobytes())
    err = refused(data, "multi_frame")
    assert "2 frames" in str(err)


def test_jpeg_ls_dicom_with_junk() -> None:
    # No JPEG-LS plugin in the base install: unsupported; with one, the junk is corrupt.
    data = dicom_bytes(
        gradient(16, 16),
        transfer_syntax="1.2.840.10008.1.2.4.80",
        pixel_data=b"\xff\xd8\xff\xf7 not really JPEG-LS " * 4,
        encapsulated=True,
    )
    # These bytes happen to hold a JPEG-LS frame header of 29285x29728: refused before decoding.
    err = refused(data, "unsupported_transfer_syntax", "corrupt", "frame_mismatch")
    if err.code == "unsupported_transfer_syntax":
        assert "JPEG-LS" in str(err)


def test_made_up_compressed_transfer_syntax() -> None:
    syntax = "1.2.826.0.1.3680043.8.498.77"
    data = dicom_bytes(
        gradient(16, 16), transfer_syntax=syntax, pixel_data=b"junk" * 20, encapsulated=True
    )
    err = refused(data, "unsupported_transfer_syntax")
    assert syntax in str(err)


def test_supported_syntax_with_corrupt_data_is_corrupt_not_unsupported() -> None:
    data = dicom_bytes(
        gradient(16, 16),
        transfer_syntax="1.2.840.10008.1.2.4.50",
        pixel_data=b"\xff\xd8\xff\xe0" + b"\x00" * 60,
        encapsulated=True,
    )
    refused(data, "corrupt")


def test_dicom_short_pixel_data_is_corrupt() -> None:
    stored = gradient(32, 32).astype(np.uint16)
    refused(dicom_bytes(stored, pixel_data=stored.tobytes()[:-100]), "corrupt")


def test_dicom_enormous_rows_columns() -> None:
    data = dicom_bytes(gradient(8, 8), Rows=65_535, Columns=65_535)
    with unexpanded():
        refused(data, "too_large")


@pytest.mark.parametrize(
    ("attributes", "words"),
    [
        ({"WindowCenter": "100", "WindowWidth": "0"}, "Window Width"),
        ({"RescaleSlope": "", "RescaleIntercept": "0"}, "rescale"),
        ({"Rows": None}, "Rows"),
        ({"BitsAllocated": None}, "Bits Allocated"),
        ({"NumberOfFrames": "-1"}, "Number of Frames"),
    ],
)
def test_dicom_bad_attributes_are_corrupt(attributes: dict[str, object], words: str) -> None:
    err = refused(dicom_bytes(gradient(8, 8).astype(np.uint16), **attributes), "corrupt")
    assert words in str(err)


def test_truncated_dicom() -> None:
    data = dicom_bytes(gradient(32, 32).astype(np.uint16))
    for cut in (140, 300, len(data) // 2, len(data) - 1):
        refused(data[:cut], "corrupt", "truncated", "no_pixel_data")


# --- Model input ------------------------------------------------------------------------------


def test_to_model_input_shape_and_dtype() -> None:
    out = to_model_input(gradient(300, 200), 224)
    assert out.shape == (1, 224, 224) and out.dtype == np.uint8


def test_to_model_input_centre_crops_the_long_side() -> None:
    wide = np.full((100, 160), 255, np.uint8)
    wide[:, 30:130] = 0  # the centred 100x100 square is black, the side bands white
    np.testing.assert_array_equal(to_model_input(wide, 100)[0], np.zeros((100, 100), np.uint8))
    small = to_model_input(wide, 50)
    assert small.shape == (1, 50, 50) and small.max() == 0
    tall = wide.T.copy()
    assert to_model_input(tall, 64).max() == 0


def test_to_model_input_upsamples_and_keeps_the_range() -> None:
    out = to_model_input(gradient(32, 32), 224)
    assert out.shape == (1, 224, 224)
    assert out.min() <= 5 and out.max() >= 250


def test_to_model_input_refuses_non_2d() -> None:
    with pytest.raises(ImageDecodeError) as info:
        to_model_input(np.zeros((4, 4, 3), np.uint8), 8)
    assert info.value.code == "bad_shape"


def test_load_model_input_from_png() -> None:
    out = load_model_input(png_bytes(gradient(90, 120)), 64)
    assert out.shape == (1, 64, 64) and out.dtype == np.uint8


# --- In-memory images -------------------------------------------------------------------------


def test_as_gray_uint8_array_is_kept() -> None:
    gray = gradient()
    np.testing.assert_array_equal(as_gray(gray), gray)
    np.testing.assert_array_equal(as_gray(gray[None]), gray)  # [1, H, W]
    np.testing.assert_array_equal(as_gray(gray[..., None]), gray)  # [H, W, 1]


def test_as_gray_float_array_is_scaled() -> None:
    values = np.linspace(0.0, 1.0, 100, dtype=np.float32).reshape(10, 10)
    out = as_gray(values)
    assert_gray(out, (10, 10))
    assert out.min() == 0 and out.max() == 255
    np.testing.assert_allclose(out, values * 255, atol=1)
    with pytest.raises(ImageDecodeError) as info:
        as_gray(np.array([[0.0, np.nan]]))
    assert info.value.code == "corrupt"


def test_as_gray_rgb_arrays() -> None:
    gray = gradient(12, 12)
    rgb = np.dstack([gray, gray, gray])
    np.testing.assert_allclose(as_gray(rgb), gray, atol=1)
    np.testing.assert_allclose(as_gray(np.dstack([rgb, np.full_like(gray, 7)])), gray, atol=1)
    # Float RGB in 0..1 is scaled like float gray, not rounded to a black 0/1 image.
    out = as_gray(rgb.astype(np.float32) / 255)
    assert out.max() == 255
    np.testing.assert_allclose(out, gray, atol=1)


def test_as_gray_pil_images() -> None:
    gray = gradient()
    np.testing.assert_array_equal(as_gray(Image.fromarray(gray)), gray)
    np.testing.assert_allclose(as_gray(Image.fromarray(gray).convert("RGB")), gray, atol=1)
    wide = (gradient().astype(np.uint16) * 200).astype(np.uint16)
    out = as_gray(Image.fromarray(wide))  # mode I;16
    assert out.min() == 0 and out.max() == 255
    with pytest.raises(ImageDecodeError) as info:
        as_gray(Image.new("LAB", (4, 4)))  # Pillow has no LAB -> L conversion
    assert info.value.code == "unsupported_type"


def test_as_gray_pydicom_dataset_made_here() -> None:
    import pydicom

    stored = np.linspace(0, 4095, 16 * 16).reshape(16, 16).astype(np.uint16)
    data = dicom_bytes(stored)
    ds = pydicom.dcmread(io.BytesIO(data))
    np.testing.assert_array_equal(as_gray(ds), decode_image(data))
    without_pixels = pydicom.dcmread(io.BytesIO(dicom_bytes(None, Rows=4, Columns=4)))
    with pytest.raises(ImageDecodeError) as info:
        as_gray(without_pixels)
    assert info.value.code == "no_pixel_data"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ([[1, 2], [3, 4]], "unsupported_type"),
        ("image.png", "unsupported_type"),
        (np.zeros((2, 2), np.complex64), "unsupported_type"),
        (np.array([["a", "b"]]), "unsupported_type"),
        (np.zeros((2, 3, 4, 5), np.uint8), "bad_shape"),
        (np.zeros((0, 5), np.uint8), "corrupt"),
        (np.zeros((0, 5, 3), np.float32), "corrupt"),
    ],
)
def test_as_gray_refusals(value: object, code: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        as_gray(value)
    assert info.value.code == code
    assert_readable(info.value)


def test_as_gray_constant_image_is_black_not_an_error() -> None:
    np.testing.assert_array_equal(as_gray(np.full((4, 4), 7.5)), np.zeros((4, 4), np.uint8))


# --- Identity ---------------------------------------------------------------------------------


def test_dicom_identity_is_a_hash_never_the_uid() -> None:
    from pydicom.dataset import Dataset

    uid = "1.2.826.0.1.3680043.8.498.12345"
    ds = Dataset()
    ds.SOPInstanceUID = uid
    identity = dicom_identity(ds)
    assert identity == "sop:" + hashlib.sha256(uid.encode()).hexdigest()[:16]
    assert uid not in identity and "12345" not in identity
    assert re.fullmatch(r"sop:[0-9a-f]{16}", identity)
    assert dicom_identity(ds) == identity  # stable
    other = Dataset()
    other.SOPInstanceUID = uid + "1"
    assert dicom_identity(other) != identity
    assert dicom_identity(Dataset()) is None


def test_dicom_identity_of_the_real_sample() -> None:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(sample(MONO2)))
    identity = dicom_identity(ds)
    assert identity is not None and identity.startswith("sop:")
    assert str(ds.SOPInstanceUID) not in identity

"""The one-table fast path gives today's output (within one grey level) on generated full-size
radiographs of every supported transfer syntax, on the shared real samples, and on the awkward
cases of the lookup-table domain (signed data, negative slopes, stray high bits, VOI LUT tables,
MONOCHROME1); colour is scaled alike in every format; only pixels go to the server."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fuzz_inputs import dicom_bytes
from PIL import Image, PngImagePlugin

from cxr.bench.decode_corpus import (
    SYNTAXES,
    can_encode,
    encode,
    radiograph_dataset,
    reference_model_input,
    synthetic_pixels,
)
from cxr.client import imaging
from cxr.client.imaging import decode_image, load_model_input
from cxr.client.inputs import Prepared, server_payload

SIZES = (224, 64)
#: syntax -> (rows, columns, bits, photometric): full-size, every combination seen at least once
CASES = {
    "explicit": (2500, 2048, 12, "MONOCHROME2"),
    "implicit": (2048, 2300, 16, "MONOCHROME1"),
    "deflated": (2000, 2000, 12, "MONOCHROME1"),
    "rle": (2000, 2100, 16, "MONOCHROME2"),
    "jpeg-ls": (2100, 2000, 12, "MONOCHROME1"),
    "j2k": (2000, 2048, 16, "MONOCHROME2"),
    "htj2k": (2048, 2000, 12, "MONOCHROME2"),
    "htj2k-rpcl": (2000, 2300, 16, "MONOCHROME1"),
    "htj2k-lossy": (2300, 2048, 12, "MONOCHROME1"),
    "jpeg-lossless-sv1": (2200, 2000, 12, "MONOCHROME1"),
    "jpeg-lossless": (2000, 2200, 16, "MONOCHROME2"),
    "jpeg-baseline": (2000, 2400, 12, "MONOCHROME2"),
}


def assert_close(data: bytes) -> None:
    for size in SIZES:
        fast = load_model_input(data, size)
        reference = reference_model_input(data, size)
        assert fast.shape == reference.shape == (1, size, size)
        difference = np.abs(fast.astype(np.int16) - reference.astype(np.int16))
        assert difference.max() <= 1, (size, difference.max(), (difference > 0).mean())


def test_every_syntax_is_covered() -> None:
    assert set(CASES) == set(SYNTAXES)


@pytest.mark.parametrize("syntax", list(CASES))
def test_full_size_syntax_matches_the_reference(syntax: str) -> None:
    reason = can_encode(syntax)
    if reason:
        pytest.skip(reason)
    rows, columns, bits, photometric = CASES[syntax]
    pixels = synthetic_pixels(rows, columns, bits, seed=len(syntax))
    assert_close(encode(radiograph_dataset(pixels, bits, photometric), syntax))


def test_shared_samples_match_the_reference(samples_dir: Path) -> None:
    dicoms = sorted(samples_dir.glob("*.dcm"))
    assert dicoms, f"no DICOM samples in {samples_dir}"
    for path in dicoms:
        assert_close(path.read_bytes())


def _lut_case(name: str) -> bytes:
    rng = np.random.default_rng(7)
    if name == "signed_rescale_negative_slope":
        pixels = rng.integers(-2048, 2047, size=(300, 260)).astype(np.int16)
        return dicom_bytes(
            pixels, BitsStored=12, HighBit=11, RescaleSlope=-0.5, RescaleIntercept=100
        )
    if name == "stray_high_bits":
        pixels = rng.integers(0, 4096, size=(300, 260)).astype(np.uint16) | np.uint16(0xA000)
        return dicom_bytes(pixels, BitsStored=12, HighBit=11, WindowCenter=2000, WindowWidth=900)
    if name == "sigmoid_monochrome1":
        pixels = rng.integers(0, 65_535, size=(300, 260)).astype(np.uint16)
        return dicom_bytes(
            pixels,
            PhotometricInterpretation="MONOCHROME1",
            WindowCenter=30_000,
            WindowWidth=20_000,
            VOILUTFunction="SIGMOID",
        )
    if name == "voi_lut_table":
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        pixels = rng.integers(0, 1024, size=(300, 260)).astype(np.uint16)
        item = Dataset()
        item.LUTDescriptor = [1024, 0, 16]
        table = (np.sin(np.arange(1024) / 60.0) * 20_000 + 30_000).astype(np.uint16)
        item.LUTData = table.astype("<u2").tobytes()  # deliberately not monotonic
        return dicom_bytes(pixels, BitsStored=10, HighBit=9, VOILUTSequence=Sequence([item]))
    raise AssertionError(name)


@pytest.mark.parametrize(
    "name",
    ["signed_rescale_negative_slope", "stray_high_bits", "sigmoid_monochrome1", "voi_lut_table"],
)
def test_lookup_table_edge_cases_match_the_reference(name: str) -> None:
    assert_close(_lut_case(name))


def _rgb_dicom(rgb: np.ndarray) -> bytes:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = "RGB"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    return _with_meta(ds)


def _with_meta(ds) -> bytes:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def test_near_uniform_colour_is_not_stretched_in_any_format() -> None:
    rng = np.random.default_rng(3)
    rgb = (120 + rng.integers(0, 3, size=(40, 50, 3))).astype(np.uint8)
    from_png = decode_image(_png(Image.fromarray(rgb, "RGB")))
    from_dicom = decode_image(_rgb_dicom(rgb))
    assert np.array_equal(from_dicom, from_png)
    assert from_png.min() >= 118 and from_png.max() <= 124  # not stretched to {0, 255}


def test_palette_dicom_matches_the_same_palette_png() -> None:
    from pydicom.dataset import Dataset

    rng = np.random.default_rng(4)
    indices = rng.integers(0, 256, size=(40, 50)).astype(np.uint8)
    palette = rng.integers(100, 140, size=(256, 3)).astype(np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.ravel().tolist())
    ds = Dataset()
    ds.Rows, ds.Columns = indices.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for channel, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        table = palette[:, channel].astype(np.uint16) * 257  # 16-bit entries
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.astype("<u2").tobytes())
    ds.PixelData = indices.tobytes()
    assert np.array_equal(decode_image(_with_meta(ds)), decode_image(_png(image)))


def test_png_text_chunks_do_not_reach_the_server(patient: dict[str, str]) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("PatientName", patient["PatientName"])
    info.add_itxt("PatientID", patient["PatientID"])
    pixels = np.arange(64 * 48, dtype=np.uint32).reshape(64, 48).astype(np.uint8)
    original = _png(Image.fromarray(pixels), pnginfo=info)
    assert patient["PatientName"].encode() in original
    sent = server_payload(None, Prepared("x.png", original))
    assert patient["PatientName"].encode() not in sent
    assert patient["PatientID"].encode() not in sent
    assert np.array_equal(decode_image(sent), decode_image(original))


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_comments_and_exif_do_not_reach_the_server(
    patient: dict[str, str], progressive: bool
) -> None:
    exif = Image.Exif()
    exif[0x010E] = f"PatientName {patient['PatientName']}"  # ImageDescription
    rgb = np.random.default_rng(5).integers(0, 255, size=(64, 80, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(
        buffer,
        format="JPEG",
        comment=f"{patient['PatientName']} {patient['PatientID']}".encode(),
        exif=exif,
        progressive=progressive,
    )
    trailer = f"{patient['PatientName']} {patient['PatientID']}".encode()  # after EOI
    original = buffer.getvalue() + trailer
    sent = server_payload(None, Prepared("x.jpg", original))
    assert sent.endswith(b"\xff\xd9")
    assert patient["PatientName"].encode() not in sent
    assert patient["PatientID"].encode() not in sent
    assert np.array_equal(decode_image(sent), decode_image(original))


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the junk
def test_server_payload_of_malformed_files_is_a_clear_error_or_bytes() -> None:
    from fuzz_inputs import malformed_inputs

    from cxr.client.imaging import ImageDecodeError

    for name, data in malformed_inputs(7, 600):
        try:
            sent = server_payload(None, Prepared(name, data))
        except ImageDecodeError:
            continue
        assert isinstance(sent, bytes) and sent, name


def _spy_reduced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record the shape of every frame decoded at reduced resolution."""

    shapes: list[tuple[int, int]] = []
    decode = imaging.reduced_dicom_frame

    def spy(*args: object, **kwargs: object) -> np.ndarray | None:
        pixels = decode(*args, **kwargs)
        if pixels is not None:
            shapes.append(pixels.shape)
        return pixels

    monkeypatch.setattr(imaging, "reduced_dicom_frame", spy)
    return shapes


def _jpeg_dicom(seed: int, window: tuple[int, int] | None) -> bytes:
    """A 2600 x 2400 8-bit JPEG baseline radiograph with the VOI window ``(centre, width)``."""
    ds = radiograph_dataset(synthetic_pixels(2600, 2400, 8, seed=seed), 8, "MONOCHROME1")
    del ds.WindowCenter, ds.WindowWidth
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    return encode(ds, "jpeg-baseline")


def test_jpeg_dicom_shown_as_stored_is_decoded_at_reduced_scale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Half scale keeps five times 224 px, a quarter five times 64 px.
    shapes = _spy_reduced(monkeypatch)
    assert_close(_jpeg_dicom(seed=5, window=None))
    assert shapes == [(1300, 1200), (650, 600)]


def test_jpeg_dicom_with_a_window_is_decoded_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    # A window clips: averaging before it is not averaging after it.
    shapes = _spy_reduced(monkeypatch)
    assert_close(_jpeg_dicom(seed=6, window=(128, 120)))
    assert shapes == []


def test_plain_jpeg_is_decoded_at_reduced_scale_within_one_level() -> None:
    gray = (synthetic_pixels(2600, 2400, 12, seed=7) >> 4).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    image = Image.open(io.BytesIO(data))
    image.load()
    for size in SIZES:
        fast = load_model_input(data, size).astype(np.int16)
        square = image.crop((0, 100, 2400, 2500)).resize((size, size), Image.Resampling.BILINEAR)
        assert np.abs(fast[0] - np.asarray(square, dtype=np.int16)).max() <= 1

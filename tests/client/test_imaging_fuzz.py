"""Fuzzed-input campaign for client.imaging.decode_image.

Property, for every input: ``decode_image`` returns a 2-D uint8 array or raises
:class:`ImageDecodeError` with a known code and a readable message; never another exception type,
never a hang (each call is timed, with a SIGALRM backstop where available). Everything is
deterministic: a seeded corpus from ``tests/fuzz_inputs.py`` plus hypothesis with
``derandomize=True``, a bounded number of examples and no example database.
"""

from __future__ import annotations

import contextlib
import signal
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from cxr.client.contract import MAX_PIXELS
from cxr.client.imaging import ImageDecodeError, array_to_gray, decode_image, to_model_input

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # tests/ holds the shared fuzz_inputs helper (no __init__ files)

from fuzz_inputs import (  # noqa: E402
    DICOM_BREAKS,
    dicom_base_names,
    dicom_bytes,
    dicom_variant,
    malformed_inputs,
    png_with_header,
    seed_files,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about junk

CODES = {
    "empty",
    "not_an_image",
    "corrupt",
    "truncated",
    "too_large",
    "no_pixel_data",
    "multi_frame",
    "unsupported_transfer_syntax",
    "frame_mismatch",
    "bad_palette",
    "inflate_too_large",
    "too_many_elements",
}
BACKSTOP_S = 10.0  # SIGALRM interrupts a call stuck in Python code this long
CORPUS_SEED = 20_240_601
CORPUS_SIZE = 1500

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,  # timing is asserted per call below, with a clearer message
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=False,
)


class DecodeHungError(Exception):
    """A decode call ran past the backstop."""


@contextlib.contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Raise DecodeHungError if the block runs past ``seconds`` (POSIX main thread only)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise DecodeHungError(f"decode still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_decode(data: bytes, name: str = "") -> str:
    """Assert the decoder's contract on ``data``; return ``"ok"`` or the error code."""
    try:
        with time_bound(BACKSTOP_S):
            image = decode_image(data)
    except ImageDecodeError as err:
        outcome = err.code
        assert err.code in CODES, f"{name}: unknown code {err.code!r}: {err}"
        message = str(err)
        assert len(message) >= 10 and "\n" not in message and " at 0x" not in message, (
            f"{name}: unreadable message {message!r}"
        )
    except DecodeHungError as err:
        pytest.fail(f"{name}: {err}")
    except Exception as err:
        pytest.fail(f"{name}: {type(err).__module__}.{type(err).__name__} escaped: {err}")
    else:
        outcome = "ok"
        assert isinstance(image, np.ndarray), name
        assert image.ndim == 2 and image.dtype == np.uint8, f"{name}: {image.shape} {image.dtype}"
        assert image.size > 0 and image.size <= MAX_PIXELS, name
        model_input = to_model_input(image, 32)
        assert model_input.shape == (1, 32, 32) and model_input.dtype == np.uint8
    if currently_in_test_context():
        event(outcome)  # pytest --hypothesis-show-statistics shows how deep the inputs reach
    return outcome


# --- the seeded corpus (shared with the server's preprocess fuzzing) --------------------------


def test_seeds_are_valid() -> None:
    for name, data in seed_files().items():
        assert check_decode(data, name) == "ok", name


def test_malformed_inputs_is_deterministic_and_small() -> None:
    first = malformed_inputs(7, 200)
    assert first == malformed_inputs(7, 200)
    assert first != malformed_inputs(8, 200)
    assert len(first) == 200 and len(malformed_inputs(7, 5)) == 5
    assert malformed_inputs(7, 300)[:200] == first  # a longer list extends a shorter one
    assert all(isinstance(n, str) and n and isinstance(b, bytes) for n, b in first)
    assert max(len(b) for _, b in first) < 16_384
    valid = set(seed_files().values())
    assert not any(b in valid for _, b in first), "a 'malformed' input is a valid seed"


def test_decoder_survives_the_malformed_corpus() -> None:
    outcomes: dict[str, int] = {}
    for name, data in malformed_inputs(CORPUS_SEED, CORPUS_SIZE):
        outcome = check_decode(data, name)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # The corpus must reach deep: every kind of refusal, and some mutations that still decode.
    for code in ("empty", "not_an_image", "corrupt", "truncated", "too_large", "no_pixel_data"):
        assert outcomes.get(code, 0) > 0, (code, outcomes)
    assert outcomes.get("multi_frame", 0) > 0 and outcomes.get("unsupported_transfer_syntax", 0)
    assert 0 < outcomes.get("ok", 0) < CORPUS_SIZE // 2, outcomes


# --- hypothesis: mutations of the valid seeds -------------------------------------------------

SEED_NAMES = sorted(seed_files())


@FUZZ
@given(name=st.sampled_from(SEED_NAMES), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncation_at_any_offset(name: str, cut: float) -> None:
    data = seed_files()[name]
    check_decode(data[: int(len(data) * cut)], f"{name}[:{int(len(data) * cut)}]")


@FUZZ
@given(
    name=st.sampled_from(SEED_NAMES),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 7)), max_size=8),
    header_only=st.booleans(),
)
def test_bit_flips(name: str, flips: list[tuple[float, int]], header_only: bool) -> None:
    data = bytearray(seed_files()[name])
    span = min(len(data), 512) if header_only else len(data)
    for where, bit in flips:
        data[int(where * span)] ^= 1 << bit
    check_decode(bytes(data), f"{name} flips={flips}")


@FUZZ
@given(
    name=st.sampled_from(SEED_NAMES),
    where=st.floats(0.0, 1.0, exclude_max=True),
    junk=st.binary(min_size=1, max_size=64),
)
def test_overwritten_spans(name: str, where: float, junk: bytes) -> None:
    data = bytearray(seed_files()[name])
    start = int(where * len(data))
    data[start : start + len(junk)] = junk
    check_decode(bytes(data), f"{name} @{start}={junk.hex()}")


@FUZZ
@given(
    prefix=st.sampled_from(
        [
            b"",
            b"\x89PNG\r\n\x1a\n",
            b"\xff\xd8\xff",
            b"\x02\x00",
            b"\x08\x00",
            b"\x00" * 128 + b"DICM",
        ]
    ),
    body=st.binary(max_size=2048),
)
def test_random_bytes(prefix: bytes, body: bytes) -> None:
    check_decode(prefix + body, f"{prefix[:8].hex()}+{len(body)} random")


# --- hypothesis: headers that lie -------------------------------------------------------------


@FUZZ
@given(
    width=st.integers(0, 2**32 - 1),
    height=st.integers(0, 2**32 - 1),
    depth_colour=st.sampled_from(
        [(1, 0), (8, 0), (16, 0), (8, 2), (16, 2), (8, 3), (8, 6), (3, 0)]
    ),
    idat=st.binary(max_size=64),
)
def test_png_header_values(
    width: int, height: int, depth_colour: tuple[int, int], idat: bytes
) -> None:
    data = png_with_header(width, height, *depth_colour, idat=idat or None)
    outcome = check_decode(data, f"png {width}x{height} {depth_colour}")
    if (
        depth_colour != (3, 0)
        and 0 < width < 2**31
        and 0 < height < 2**31
        and width * height > MAX_PIXELS
    ):
        assert outcome == "too_large", (width, height, outcome)


@FUZZ
@given(width=st.integers(0, 65_535), height=st.integers(0, 65_535))
def test_jpeg_header_values(width: int, height: int) -> None:
    data = bytearray(seed_files()["jpeg"])
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    outcome = check_decode(bytes(data), f"jpeg sof {width}x{height}")
    if width * height > MAX_PIXELS:
        assert outcome == "too_large", (width, height, outcome)


DICOM_SPEC = st.fixed_dictionaries(
    {
        "rows": st.sampled_from([1, 2, 7, 16, 16, 0, 255, 4096, 65_535]),
        "columns": st.sampled_from([1, 3, 16, 16, 0, 4096, 65_535]),
        "bits": st.sampled_from([8, 16, 16, 1, 32, 0, 7, 12, 24, 64, 255]),
        "stored": st.sampled_from(["bits", "bits", 12, 0, 1, 99]),
        "samples": st.sampled_from([0, 1, 1, 3, 4, 65_535]),
        "frames": st.sampled_from([None, None, "0", "1", "2", "-3", "99999999"]),
        "photometric": st.sampled_from(
            ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR", "", "BOGUS"]
        ),
        "representation": st.sampled_from([0, 1, 2]),
        "syntax": st.sampled_from(
            [
                "1.2.840.10008.1.2.1",
                "1.2.840.10008.1.2",
                "1.2.840.10008.1.2.2",
                "1.2.840.10008.1.2.5",
                "1.2.840.10008.1.2.4.50",
                "1.2.840.10008.1.2.4.80",
            ]
        ),
        "pixel_length": st.sampled_from(["exact", "exact", "frames", 0, 2, 16, 255, 1024, 3000]),
        "window": st.sampled_from([None, ("40", "400"), ("0", "0"), ("1e30", "-1")]),
        "rescale": st.sampled_from([None, ("1", "-1024"), ("0", "0"), ("1e30", "1e30")]),
        "preamble": st.booleans(),
    }
)
NATIVE_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")


@FUZZ
@given(spec=DICOM_SPEC, junk=st.booleans())
def test_random_dicom_headers(spec: dict[str, object], junk: bool) -> None:
    """Random Rows / Columns / Bits / Samples / Frames / Photometric / syntax, short Pixel Data."""
    rows, columns, bits = int(spec["rows"]), int(spec["columns"]), int(spec["bits"])
    stored = bits if spec["stored"] == "bits" else int(spec["stored"])
    extra: dict[str, object] = {}
    if spec["frames"] is not None:
        extra["NumberOfFrames"] = spec["frames"]
    if spec["window"] is not None:
        extra["WindowCenter"], extra["WindowWidth"] = spec["window"]
    if spec["rescale"] is not None:
        extra["RescaleSlope"], extra["RescaleIntercept"] = spec["rescale"]
    frame = (rows * columns * int(spec["samples"]) * bits + 7) // 8
    choice = spec["pixel_length"]
    length = frame if choice == "exact" else 3 * frame if choice == "frames" else int(choice)
    length = min(length, 8192)  # short Pixel Data, never a big file
    pixel_data = (bytes(range(7, 256)) * 40)[:length] if junk else bytes(length)
    if spec["syntax"] == "1.2.840.10008.1.2.4.50" and junk:
        pixel_data = seed_files()["jpeg"][: length or None]  # a real JPEG stream, maybe cut
    data = dicom_bytes(
        None,
        preamble=bool(spec["preamble"]),
        transfer_syntax=str(spec["syntax"]),
        pixel_data=pixel_data,
        encapsulated=spec["syntax"] not in NATIVE_SYNTAXES,
        Rows=rows,
        Columns=columns,
        BitsAllocated=bits,
        BitsStored=stored,
        HighBit=max(stored - 1, 0),
        SamplesPerPixel=spec["samples"],
        PixelRepresentation=spec["representation"],
        PhotometricInterpretation=spec["photometric"],
        **extra,
    )
    outcome = check_decode(data, f"crafted dicom {spec}")
    if rows * columns > MAX_PIXELS:
        assert outcome in ("too_large", "corrupt", "no_pixel_data"), outcome


@FUZZ
@given(
    base=st.sampled_from(dicom_base_names()),
    breaks=st.dictionaries(st.sampled_from(sorted(DICOM_BREAKS)), st.integers(0, 99), max_size=3),
)
def test_broken_dicom_attributes(base: str, breaks: dict[str, int]) -> None:
    """A consistent DICOM with one to three attributes set to wrong, odd or missing values."""
    name, data = dicom_variant(base, breaks)
    outcome = check_decode(data, name)
    if not breaks:
        assert outcome == "ok", name


# --- hypothesis: in-memory arrays -------------------------------------------------------------


@FUZZ
@given(
    shape=st.sampled_from(
        [(5, 7), (1, 5, 7), (5, 7, 1), (5, 7, 3), (5, 7, 4), (0, 3), (3,), (2, 2, 2, 2)]
    ),
    dtype=st.sampled_from(["uint8", "uint16", "int16", "int64", "float32", "float64", "bool"]),
    data=st.data(),
)
def test_array_to_gray(shape: tuple[int, ...], dtype: str, data: st.DataObject) -> None:
    size = int(np.prod(shape))
    values = data.draw(
        st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=size, max_size=size)
    )
    array = np.asarray(values, dtype=np.float64).reshape(shape)
    if dtype == "bool":
        array = array > 0
    elif np.dtype(dtype).kind in "ui":
        info = np.iinfo(dtype)
        array = np.clip(array, info.min, info.max).astype(dtype)
    else:
        array = array.astype(dtype)
    try:
        gray = array_to_gray(array)
    except ImageDecodeError as err:
        assert err.code in ("bad_shape", "corrupt", "unsupported_type"), err
        return
    assert gray.ndim == 2 and gray.dtype == np.uint8

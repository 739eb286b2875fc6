"""Deterministic malformed image files for fuzzing the decoder (client and server ``preprocess``).

:func:`malformed_inputs` starts from small valid files made in memory (8-bit and 16-bit PNG, a
baseline JPEG, uncompressed and JPEG-compressed DICOM, DICOM without its preamble) and breaks
them in every way the decoder has to survive: truncation at structural and random offsets, bit
flips, overwritten spans, random bytes behind a valid magic number, oversized or zero header
values (with valid PNG CRCs so the lie reaches the decoder), and DICOM datasets with random
Rows / Columns / Bits Allocated / Number of Frames / Photometric Interpretation, short or junk
Pixel Data, bad rescale and window values. Same seed and count, same list (on one machine:
zlib and libjpeg builds decide the exact bytes of the valid seeds).

Every entry is small (a few KiB), so a list can be sent over gRPC as-is.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from functools import cache

import numpy as np
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
_SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1"  # fixed: the generated files must not vary

# --- valid seeds -----------------------------------------------------------------------------


def _gradient(height: int, width: int, high: int) -> np.ndarray:
    rows = np.linspace(0, high, height, dtype=np.float64)[:, None]
    cols = np.linspace(0, high, width, dtype=np.float64)[None, :]
    return ((rows + cols) / 2).astype(np.int64)


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a 2-D uint8 / uint16 (or [H,W,3] uint8) array as PNG."""
    buffer = io.BytesIO()
    if array.dtype == np.uint16:
        image = Image.fromarray(array.astype(np.uint16))  # mode I;16
    else:
        image = Image.fromarray(array)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 85) -> bytes:
    """Encode a 2-D uint8 (or [H,W,3] uint8) array as baseline JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_with_header(
    width: int, height: int, bit_depth: int = 8, color_type: int = 0, idat: bytes | None = None
) -> bytes:
    """A PNG whose IHDR says ``width`` x ``height`` (valid CRC) followed by ``idat`` (default: a
    few compressed zero bytes). Nothing of that size is ever allocated here."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64) if idat is None else idat
    return PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def dicom_bytes(
    pixels: np.ndarray | None = None,
    *,
    preamble: bool = True,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    pixel_data: bytes | None = None,
    encapsulated: bool = False,
    **attributes: object,
) -> bytes:
    """Write a single-frame grayscale DICOM in memory.

    ``pixels`` (2-D uint8 / uint16 / int16) sets Rows, Columns, Bits and Pixel Data; keyword
    ``attributes`` then override or add any element (``Rows=0``, ``WindowWidth=0`` ...), and
    ``pixel_data`` replaces the pixel bytes (``encapsulated=True`` marks them as a compressed
    fragment sequence). ``preamble=False`` drops the 128-byte preamble and ``DICM`` prefix.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS
    meta.MediaStorageSOPInstanceUID = _SOP_INSTANCE
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.2"

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _SOP_CLASS
    ds.SOPInstanceUID = _SOP_INSTANCE
    ds.Modality = "CR"
    ds.PatientID = "FUZZ"
    if pixels is not None:
        ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        bits = pixels.dtype.itemsize * 8
        ds.BitsAllocated = bits
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if pixel_data is not None:
        # encapsulate() wants at least 2 bytes per fragment
        ds.PixelData = encapsulate([pixel_data.ljust(2, b"\0")]) if encapsulated else pixel_data
    if "PixelData" in ds:
        ds["PixelData"].VR = "OB" if encapsulated or ds.get("BitsAllocated", 8) <= 8 else "OW"
        if encapsulated:
            ds["PixelData"].is_undefined_length = True

    buffer = io.BytesIO()
    ds.preamble = b"\x00" * 128
    encoding = {} if meta.TransferSyntaxUID.is_transfer_syntax else {"implicit_vr": False}
    if encoding:  # a made-up syntax: write it as explicit VR little endian
        encoding["little_endian"] = True
    ds.save_as(buffer, enforce_file_format=True, **encoding)
    data = buffer.getvalue()
    return data if preamble else data[132:]


@cache
def _seeds() -> dict[str, bytes]:
    """Small valid files of every kind the decoder reads (built once per process)."""
    rng = np.random.default_rng(1234)
    gray8 = (_gradient(48, 64, 255) + rng.integers(0, 16, (48, 64))).clip(0, 255).astype(np.uint8)
    gray16 = (_gradient(40, 40, 4095) * 16).astype(np.uint16)
    rgb = np.stack([gray8, gray8[::-1], 255 - gray8], axis=-1)
    jpeg = jpeg_bytes(gray8)
    return {
        "png8": png_bytes(gray8),
        "png16": png_bytes(gray16),
        "png_rgb": png_bytes(rgb),
        "jpeg": jpeg,
        "dicom16": dicom_bytes(
            (_gradient(32, 32, 4095)).astype(np.uint16),
            BitsStored=12,
            HighBit=11,
            RescaleSlope=1,
            RescaleIntercept=-1024,
            WindowCenter=1000,
            WindowWidth=2000,
        ),
        "dicom8_nopreamble": dicom_bytes(gray8[:32, :32], preamble=False),
        "dicom_jpeg": dicom_bytes(
            gray8,
            transfer_syntax="1.2.840.10008.1.2.4.50",
            pixel_data=jpeg,
            encapsulated=True,
        ),
    }


def seed_files() -> dict[str, bytes]:
    """The valid seed files (name -> bytes) that :func:`malformed_inputs` mutates."""
    return dict(_seeds())


# --- mutations -------------------------------------------------------------------------------


def _structural_offsets(data: bytes) -> list[int]:
    """Offsets where truncation hits a boundary: magic, PNG chunks, JPEG markers, DICOM tags."""
    offsets = {1, 2, 3, 4, 7, 8, 12, 16, 24, 33, 128, 131, 132, 136, len(data) // 2}
    offsets.update({len(data) - 1, len(data) - 2, len(data) - 12})
    if data.startswith(PNG_MAGIC):
        position = len(PNG_MAGIC)
        while position + 8 <= len(data):
            (length,) = struct.unpack(">I", data[position : position + 4])
            offsets.update({position, position + 4, position + 8, position + 8 + length // 2})
            position += 12 + length
    elif data.startswith(b"\xff\xd8"):
        offsets.update(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] != 0)
    else:
        offsets.update(i for i in range(0, len(data) - 4, 2) if data[i : i + 2] == b"\xe0\x7f")
        offsets.update(i for i in range(0, len(data) - 4, 2) if data[i : i + 2] == b"\x28\x00")
    return sorted(o for o in offsets if 0 < o < len(data))


def _truncate(rng: random.Random, name: str, data: bytes) -> tuple[str, bytes]:
    offsets = _structural_offsets(data)
    offset = rng.choice(offsets) if rng.random() < 0.7 else rng.randrange(1, len(data))
    return f"{name}/truncate@{offset}", data[:offset]


def _bit_flips(rng: random.Random, name: str, data: bytes) -> tuple[str, bytes]:
    out = bytearray(data)
    flips = rng.choice((1, 1, 2, 4, 16))
    # Half the time, aim at the header, where a flip changes what the decoder believes.
    limit = min(len(out), 400) if rng.random() < 0.5 else len(out)
    positions = []
    for _ in range(flips):
        position = rng.randrange(limit)
        out[position] ^= 1 << rng.randrange(8)
        positions.append(position)
    return f"{name}/flip{flips}@{min(positions)}", bytes(out)


def _overwrite(rng: random.Random, name: str, data: bytes) -> tuple[str, bytes]:
    out = bytearray(data)
    start = rng.randrange(len(out))
    length = min(rng.choice((1, 4, 16, 64, 256)), len(out) - start)
    fill = rng.choice((b"\x00", b"\xff", None))
    span = fill * length if fill is not None else rng.randbytes(length)
    out[start : start + length] = span
    return f"{name}/overwrite{length}@{start}", bytes(out)


def _magic_then_random(rng: random.Random, name: str, data: bytes) -> tuple[str, bytes]:
    keep = 132 if data[128:132] == b"DICM" else rng.choice((3, 8, 16, 33))
    size = rng.choice((0, 1, 16, 200, 2000))
    return f"{name}/magic+random{size}", data[:keep] + rng.randbytes(size)


def _random_bytes(rng: random.Random, name: str, data: bytes) -> tuple[str, bytes]:
    size = rng.choice((1, 2, 8, 64, 1024, 4096))
    prefix = rng.choice((b"", b"\x02\x00", b"\x08\x00", b"\xff\xd8\xff", b"\x89PNG"))
    return f"random{size}{'+' + prefix.hex() if prefix else ''}", prefix + rng.randbytes(size)


def _splice(rng: random.Random, name: str, data: bytes) -> tuple[str, bytes]:
    """Duplicate or delete a span (shifts everything behind it)."""
    start = rng.randrange(len(data))
    length = rng.choice((1, 3, 17, 100))
    if rng.random() < 0.5:
        return f"{name}/delete{length}@{start}", data[:start] + data[start + length :]
    return f"{name}/dup{length}@{start}", data[: start + length] + data[start:]


_MUTATIONS: tuple[Callable[[random.Random, str, bytes], tuple[str, bytes]], ...] = (
    _truncate,
    _truncate,
    _bit_flips,
    _bit_flips,
    _overwrite,
    _magic_then_random,
    _splice,
)


def _oversized_png(rng: random.Random) -> tuple[str, bytes]:
    width = rng.choice((0, 1, 100_000, 65_535, 2**31 - 1, 2**32 - 1, 9_000))
    height = rng.choice((0, 1, 100_000, 65_535, 2**31 - 1, 9_000))
    bit_depth, color_type = rng.choice(((8, 0), (16, 0), (8, 2), (8, 6), (16, 6), (1, 0), (7, 0)))
    return (
        f"png/header{width}x{height}d{bit_depth}c{color_type}",
        png_with_header(width, height, bit_depth, color_type),
    )


def _oversized_jpeg(rng: random.Random) -> tuple[str, bytes]:
    data = bytearray(_seeds()["jpeg"])
    sof = data.find(b"\xff\xc0")
    height = rng.choice((0, 1, 65_535, 30_000, 9_000))
    width = rng.choice((0, 1, 65_535, 30_000, 9_000))
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return f"jpeg/sof{width}x{height}", bytes(data)


@cache
def _dicom_bases() -> dict[str, tuple[dict[str, object], bytes]]:
    """Consistent single-frame DICOM descriptions: (attributes, raw pixel bytes)."""
    gray8 = (_gradient(16, 16, 255)).astype(np.uint8)
    gray16 = _gradient(16, 16, 4095).astype(np.uint16)
    signed = (_gradient(16, 16, 4000) - 2000).astype("<i2")
    rgb = np.stack([gray8, gray8[::-1], 255 - gray8], axis=-1)
    mono = {"SamplesPerPixel": 1, "PixelRepresentation": 0, "Rows": 16, "Columns": 16}
    eight = {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}
    sixteen = {"BitsAllocated": 16, "BitsStored": 16, "HighBit": 15}
    jpeg_source = (_gradient(48, 64, 255)).astype(np.uint8)
    return {
        "mono2_8": ({**mono, **eight, "PhotometricInterpretation": "MONOCHROME2"}, gray8.tobytes()),
        "mono2_12in16_window": (
            {
                **mono,
                **sixteen,
                "BitsStored": 12,
                "HighBit": 11,
                "PhotometricInterpretation": "MONOCHROME2",
                "RescaleSlope": "1",
                "RescaleIntercept": "-1024",
                "WindowCenter": "1000",
                "WindowWidth": "2000",
            },
            gray16.astype("<u2").tobytes(),
        ),
        "mono1_16": (
            {**mono, **sixteen, "PhotometricInterpretation": "MONOCHROME1"},
            gray16.astype("<u2").tobytes(),
        ),
        "signed16": (
            {**mono, **sixteen, "PixelRepresentation": 1,
             "PhotometricInterpretation": "MONOCHROME2"},
            signed.tobytes(),
        ),
        "bits1": (
            {**mono, "BitsAllocated": 1, "BitsStored": 1, "HighBit": 0,
             "PhotometricInterpretation": "MONOCHROME2"},
            np.packbits(gray8 > 127, bitorder="little").tobytes(),
        ),
        "rgb8": (
            {**mono, **eight, "SamplesPerPixel": 3, "PlanarConfiguration": 0,
             "PhotometricInterpretation": "RGB"},
            rgb.tobytes(),
        ),
        "jpeg_baseline": (
            {**mono, **eight, "Rows": 48, "Columns": 64, "PhotometricInterpretation": "MONOCHROME2",
             "TransferSyntax": "1.2.840.10008.1.2.4.50"},
            jpeg_bytes(jpeg_source),
        ),
    }  # fmt: skip


#: Values that break one attribute of a consistent DICOM (None deletes the element).
DICOM_BREAKS: dict[str, tuple[object, ...]] = {
    "Rows": (0, 1, 15, 17, 255, 65_535, None),
    "Columns": (0, 1, 15, 17, 255, 65_535, None),
    "BitsAllocated": (0, 1, 7, 8, 12, 16, 24, 32, 64, 255, None),
    "BitsStored": (0, 1, 7, 12, 16, 99, None),
    "HighBit": (0, 15, 99, None),
    "SamplesPerPixel": (0, 1, 3, 4, 65_535, None),
    "PlanarConfiguration": (0, 1, 2),
    "NumberOfFrames": ("0", "1", "2", "-1", "99999999"),
    "PhotometricInterpretation": (
        "MONOCHROME1", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "", "BOGUS", None,
    ),
    "PixelRepresentation": (0, 1, 2, None),
    "WindowCenter": ("0", "-1e9", "1e38", "40", ""),
    "WindowWidth": ("0", "-5", "1", "1e-30", "400", ""),
    "VOILUTFunction": ("SIGMOID", "LINEAR_EXACT", "BOGUS"),
    "RescaleSlope": ("0", "-1", "1e30", "", "NaN"),
    "RescaleIntercept": ("0", "-1e30", ""),
    "TransferSyntax": (
        "1.2.840.10008.1.2",  # implicit VR little endian
        "1.2.840.10008.1.2.1",  # explicit VR little endian
        "1.2.840.10008.1.2.2",  # explicit VR big endian
        "1.2.840.10008.1.2.5",  # RLE
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.80",  # JPEG-LS
        "1.2.840.10008.1.2.4.90",  # JPEG 2000
        "1.2.826.0.1.3680043.8.498.99",  # made up
    ),
    "PixelData": ("empty", "short", "half", "odd", "double", "triple", "junk"),
    "Preamble": (False,),
}  # fmt: skip

_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


def dicom_base_names() -> list[str]:
    """Names of the consistent DICOM files that :func:`dicom_variant` breaks."""
    return sorted(_dicom_bases())


def dicom_variant(base: str, breaks: dict[str, int]) -> tuple[str, bytes]:
    """A consistent DICOM ``base`` with the attributes in ``breaks`` replaced.

    ``breaks`` maps a key of :data:`DICOM_BREAKS` to an index (taken modulo the number of values),
    so any integer is valid: handy for hypothesis and for seeded generators alike.
    """
    attributes, pixels = _dicom_bases()[base]
    attributes = dict(attributes)
    syntax = str(attributes.pop("TransferSyntax", "1.2.840.10008.1.2.1"))
    preamble = True
    parts = [base]
    for field in sorted(breaks):
        values = DICOM_BREAKS[field]
        value = values[breaks[field] % len(values)]
        parts.append(f"{field}={value!r}")
        if field == "TransferSyntax":
            syntax = str(value)
        elif field == "PixelData":
            pixels = {
                "empty": b"",
                "short": pixels[: max(len(pixels) - 2, 0)],
                "half": pixels[: len(pixels) // 2],
                "odd": pixels[:-1],
                "double": pixels * 2,
                "triple": pixels * 3,
                "junk": bytes(range(7, 256)) * (len(pixels) // 249 + 1),
            }[str(value)]
        elif field == "Preamble":
            preamble = bool(value)
        else:
            attributes[field] = value
    data = dicom_bytes(
        None,
        preamble=preamble,
        transfer_syntax=syntax,
        pixel_data=pixels,
        encapsulated=syntax not in _NATIVE_SYNTAXES,
        **attributes,
    )
    return "dicom/" + " ".join(parts), data


def _crafted_dicom(rng: random.Random) -> tuple[str, bytes]:
    """A consistent DICOM with 1 to 3 (sometimes 6) of its attributes broken."""
    fields = sorted(DICOM_BREAKS)
    count = rng.choice((1, 1, 1, 2, 2, 3, 6))
    breaks = {field: rng.randrange(1000) for field in rng.sample(fields, count)}
    return dicom_variant(rng.choice(dicom_base_names()), breaks)


def _dicom_edge_cases() -> list[tuple[str, bytes]]:
    """Hand-written DICOM failures that random crafting may miss."""
    pixels = _gradient(16, 16, 4000).astype(np.uint16)
    return [
        ("dicom/no_pixel_data", dicom_bytes(None, Rows=16, Columns=16)),
        ("dicom/empty_pixel_data", dicom_bytes(pixels, pixel_data=b"")),
        ("dicom/window_width_0", dicom_bytes(pixels, WindowCenter="100", WindowWidth="0")),
        ("dicom/window_no_width", dicom_bytes(pixels, WindowCenter="100")),
        ("dicom/empty_slope", dicom_bytes(pixels, RescaleSlope="", RescaleIntercept="0")),
        ("dicom/nan_slope", dicom_bytes(pixels, RescaleSlope="NaN", RescaleIntercept="0")),
        ("dicom/rows_text", dicom_bytes(pixels, Rows=None, Columns=None)),
        ("dicom/no_bits", dicom_bytes(pixels, BitsAllocated=None)),
        ("dicom/multi_frame", dicom_bytes(pixels, NumberOfFrames="3")),
        (
            "dicom/jpeg_ls_junk",
            dicom_bytes(
                pixels,
                transfer_syntax="1.2.840.10008.1.2.4.80",
                pixel_data=b"\xff\xd8\xff\xf7junk" * 8,
                encapsulated=True,
            ),
        ),
        (
            "dicom/made_up_syntax",
            dicom_bytes(
                pixels,
                transfer_syntax="1.2.826.0.1.3680043.8.498.99",
                pixel_data=b"junk" * 16,
                encapsulated=True,
            ),
        ),
        (
            "dicom/jpeg_junk",
            dicom_bytes(
                pixels.astype(np.uint8),
                transfer_syntax="1.2.840.10008.1.2.4.50",
                pixel_data=b"\xff\xd8\xff\xe0" + b"\x00" * 60,
                encapsulated=True,
            ),
        ),
        ("dicom/preamble_only", b"\x00" * 128 + b"DICM"),
        ("dicom/header_only", _seeds()["dicom16"][:300]),
    ]


def malformed_inputs(seed: int, count: int) -> list[tuple[str, bytes]]:
    """``count`` deterministic malformed files as ``(name, bytes)``, derived from valid seeds.

    The list always starts with the fixed edge cases (empty input, text, oversized headers,
    hand-written DICOM failures) when ``count`` allows, then mixes random mutations of the valid
    seeds (truncation, bit flips, overwrites, splices, random tails), random bytes and crafted
    DICOM. Names say what was done (``"png8/truncate@57"``) and may repeat; bytes never exceed
    a few KiB. Same ``seed`` and ``count`` give the same list.
    """
    rng = random.Random(seed)
    seeds = _seeds()
    fixed: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("text", b"hello, this is not an image\n" * 4),
        ("png/header100000x100000", png_with_header(100_000, 100_000)),
        ("png/header0x0", png_with_header(0, 0)),
        ("png/magic_only", PNG_MAGIC),
        ("jpeg/magic_only", b"\xff\xd8\xff"),
        *_dicom_edge_cases(),
    ]
    out = fixed[:count]
    names = sorted(seeds)
    valid = set(seeds.values())
    while len(out) < count:
        roll = rng.random()
        if roll < 0.15:
            item = _crafted_dicom(rng)
        elif roll < 0.20:
            item = _oversized_png(rng)
        elif roll < 0.23:
            item = _oversized_jpeg(rng)
        elif roll < 0.28:
            item = _random_bytes(rng, "", b"")
        else:
            name = rng.choice(names)
            item = rng.choice(_MUTATIONS)(rng, name, seeds[name])
        if item[1] not in valid:  # e.g. two flips of the same bit
            out.append(item)
    return out

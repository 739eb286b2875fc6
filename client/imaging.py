"""Image decoding and resizing, shared by training, conversion, the server's preprocess model and
the client.

Every radiograph, whatever its container, becomes the same thing: a 2-D ``uint8`` array in display
orientation (bright = dense), then a square ``[1, S, S]`` model input. Decoding is strict: a file
that cannot be read gives :class:`ImageDecodeError` with a reason code and a message that says what
is wrong, never a crash and never a silently wrong image.

Choices, in one place:
- PNG and JPEG through Pillow; RGB or palette images become luminance; 16-bit images are scaled
  from their own min..max to 0..255.
- DICOM through pydicom: Modality LUT (rescale slope/intercept), then the VOI LUT or window when
  the file has one, then scaled to 0..255; MONOCHROME1 is inverted (displayed bright = dense), not
  rejected; PALETTE COLOR goes through its palette, then luminance; multi-frame files and files
  without pixel data are refused. A transfer syntax with no installed decoder is refused as
  ``unsupported_transfer_syntax``; pixel data a decoder cannot read is ``corrupt``. A dataset
  without a Transfer Syntax UID (raw DICOM, no file meta) is decoded with the encoding it was read
  with.
- In-memory arrays: ``uint8`` is kept as is, any other numeric dtype is scaled from its own
  min..max (RGB arrays become luminance first).
- Images above :data:`client.contract.MAX_PIXELS` are refused before their pixels are decoded.
- Model input: centre-crop to a square on the short side, then an antialiased bilinear resize.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from client.contract import IMAGE_DTYPE, MAX_PIXELS

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"

# Keep Pillow's own bomb check out of the way: ours runs first, with a clearer message.
Image.MAX_IMAGE_PIXELS = None


#: Every reason code an input can be refused with: decoding codes, file-access codes (raised by
#: the client when reading paths), and ``decode_failed`` (an unexpected decoder bug, reported by
#: the callers that guard against one). Clients map server errors back onto these.
DECODE_CODES = frozenset(
    {
        "not_found",
        "not_a_file",
        "unreadable",
        "empty",
        "not_an_image",
        "corrupt",
        "truncated",
        "too_large",
        "no_pixel_data",
        "unsupported_transfer_syntax",
        "multi_frame",
        "unsupported_type",
        "bad_shape",
        "decode_failed",
    }
)


class ImageDecodeError(ValueError):
    """An input that is not a usable radiograph. ``code`` is a stable, machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        if code not in DECODE_CODES:
            raise ValueError(f"unknown decode error code {code!r}")
        super().__init__(message)
        self.code = code


def sniff_format(data: bytes) -> str | None:
    """Return ``"png"``, ``"jpeg"`` or ``"dicom"`` from the leading bytes, or None."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC:
        return "dicom"
    # DICOM written without the 128-byte preamble starts with a group 0x0002 or 0x0008 tag.
    if data[:2] in (b"\x02\x00", b"\x08\x00") and len(data) > 8:
        return "dicom"
    return None


def decode_image(data: bytes) -> np.ndarray:
    """Decode PNG, JPEG or DICOM bytes into a 2-D uint8 grayscale array (bright = dense)."""
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise ImageDecodeError(
                "unsupported_type", f"expected encoded bytes, got {type(data).__name__}"
            )
        data = bytes(data)
    kind = image_kind(data)
    if kind == "dicom":
        return dicom_to_gray(read_dicom(data))
    return _decode_raster(data, kind)


def image_kind(data: bytes) -> str:
    """``png``, ``jpeg`` or ``dicom`` by magic number; empty or other bytes are refused."""
    if not data:
        raise ImageDecodeError("empty", "empty input (0 bytes)")
    kind = sniff_format(data)
    if kind is None:
        raise ImageDecodeError("not_an_image", "not a PNG, JPEG or DICOM file")
    return kind


def _decode_raster(data: bytes, kind: str) -> np.ndarray:
    try:
        # Only the plugin the magic number named: a PNG that fails is corrupt, not "maybe a TGA".
        image = Image.open(io.BytesIO(data), formats=[kind.upper()])
        _check_pixel_count(image.width, image.height)
        image.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as err:
        raise ImageDecodeError(
            "corrupt",
            f"corrupt {kind.upper()} file: it starts like one but its header is unreadable",
        ) from err
    except SyntaxError as err:
        raise ImageDecodeError("corrupt", f"corrupt {kind.upper()} file: {_why(err)}") from err
    except (OSError, ValueError, EOFError) as err:
        code = "truncated" if "truncated" in str(err) or isinstance(err, EOFError) else "corrupt"
        raise ImageDecodeError(code, f"{code} {kind.upper()} file: {_why(err)}") from err
    except (struct.error, IndexError, KeyError, TypeError) as err:  # malformed headers
        raise ImageDecodeError("corrupt", f"corrupt {kind.upper()} file: {_why(err)}") from err
    return pil_to_gray(image)


def _why(err: BaseException) -> str:
    """An exception's message for people: no object addresses, one line, bounded length."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err)) or type(err).__name__
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def pil_to_gray(image: Image.Image) -> np.ndarray:
    """Convert a decoded Pillow image of any mode to a 2-D uint8 array."""
    _check_pixel_count(image.width, image.height)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return scale_to_uint8(np.asarray(image, dtype=np.float32))
    if image.mode != "L":
        try:
            image = image.convert("L")  # RGB, RGBA, palette, LA, 1-bit: ITU-R 601 luminance
        except ValueError as err:  # e.g. LAB or La images, which Pillow cannot convert to L
            raise ImageDecodeError(
                "unsupported_type", f"cannot convert a {image.mode} image to grayscale: {err}"
            ) from err
    return np.asarray(image, dtype=np.uint8)


def _check_pixel_count(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError("corrupt", f"image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            "too_large",
            f"image is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{MAX_PIXELS:,} (refused as a possible decompression bomb)",
        )


def _dicom_errors() -> tuple[type[BaseException], ...]:
    """What pydicom raises on malformed input, while reading or when an element is first used
    (values are converted lazily): bad lengths, unknown VRs (NotImplementedError, a RuntimeError),
    short buffers (struct.error), values of the wrong type, all decoding plugins failing
    (RuntimeError)."""
    from pydicom.errors import BytesLengthException, InvalidDicomError

    return (
        InvalidDicomError,
        BytesLengthException,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        OverflowError,
        RuntimeError,
        struct.error,
    )


def read_dicom(data: bytes) -> Dataset:
    """Parse DICOM bytes (with or without preamble and file meta); corrupt files raise
    :class:`ImageDecodeError`."""
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        meta = ds.file_meta
        if "TransferSyntaxUID" not in meta:
            # Raw DICOM (no file meta): decode the pixels with the encoding the dataset was read in.
            implicit, little = ds.original_encoding
            if implicit is not None:
                meta.TransferSyntaxUID = (
                    ImplicitVRLittleEndian  # pydicom reads implicit VR as little endian only
                    if implicit
                    else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
                )
    except _dicom_errors() as err:
        raise ImageDecodeError("corrupt", f"unreadable DICOM file: {_why(err)}") from err
    return ds


def _syntax_label(syntax: object) -> str:
    from pydicom.uid import UID

    uid = UID(str(syntax))
    return f"{uid.name} ({uid})" if uid.name != str(uid) else f"'{uid}'"


def _check_decodable(ds: Dataset) -> None:
    """Refuse, before decoding, a transfer syntax that no installed pydicom plugin can decode."""
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        return  # pixel_array explains what is missing
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise ImageDecodeError(
            "unsupported_transfer_syntax",
            f"DICOM transfer syntax {_syntax_label(syntax)} is not supported: no pixel data "
            "decoder exists for it (send uncompressed, JPEG baseline, JPEG 2000 or RLE DICOM)",
        ) from err
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise ImageDecodeError(
            "unsupported_transfer_syntax",
            f"DICOM transfer syntax {_syntax_label(syntax)} cannot be decoded by this "
            f"installation (no decoder plugin installed: {missing})",
        )


def dicom_to_gray(ds: Dataset) -> np.ndarray:
    """Render a pydicom dataset's single frame as a 2-D uint8 display image."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    errors = _dicom_errors()
    if "PixelData" not in ds:
        raise ImageDecodeError("no_pixel_data", "DICOM file has no pixel data (PixelData absent)")
    missing = [keyword for keyword in ("Rows", "Columns") if keyword not in ds]
    if missing:
        raise ImageDecodeError(
            "corrupt",
            f"DICOM image attributes missing: {', '.join(missing)} (cannot size the image)",
        )
    try:
        empty = not ds["PixelData"].value
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits_stored = int(ds.get("BitsStored", 8) or 8)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    except errors as err:
        raise ImageDecodeError(
            "corrupt", f"DICOM image attributes missing or invalid: {_why(err)}"
        ) from err
    if empty:
        raise ImageDecodeError("no_pixel_data", "DICOM file has an empty Pixel Data element")
    _check_pixel_count(columns, rows)
    if frames < 1:
        raise ImageDecodeError("corrupt", f"DICOM Number of Frames is invalid ({frames})")
    if frames != 1:
        raise ImageDecodeError(
            "multi_frame", f"multi-frame DICOM ({frames} frames): send one radiograph per file"
        )
    try:
        _check_decodable(ds)
        pixels = ds.pixel_array
    except ImageDecodeError:
        raise
    except errors as err:
        raise ImageDecodeError("corrupt", f"corrupt DICOM pixel data: {_why(err)}") from err
    # pydicom turns pixel data longer than one frame into extra frames: never show a frame stack
    # (or a row of it) as if it were the image the header describes.
    frame_ndim = 2 if samples == 1 else 3
    if pixels.ndim == frame_ndim + 1 and pixels.shape[0] > 1:
        raise ImageDecodeError(
            "multi_frame",
            f"DICOM pixel data holds {pixels.shape[0]} frames of {rows}x{columns} although "
            "Number of Frames says 1: send one radiograph per file",
        )
    if pixels.ndim == frame_ndim + 1:
        pixels = pixels[0]
    if pixels.ndim != frame_ndim or pixels.shape[:2] != (rows, columns):
        raise ImageDecodeError(
            "corrupt",
            f"DICOM pixel data decoded to shape {pixels.shape}, not the {rows}x{columns} image "
            f"with {samples} sample(s) per pixel that its header describes",
        )
    if photometric == "PALETTE COLOR" and pixels.ndim == 2:
        try:
            pixels = apply_color_lut(pixels, ds)  # indices -> RGB, never shown as gray levels
        except errors as err:
            raise ImageDecodeError("corrupt", f"invalid DICOM palette: {_why(err)}") from err

    if pixels.ndim == 3:  # colour (RGB / YBR after pydicom's conversion to RGB): luminance
        pixels = pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if pixels.ndim != 2:
        raise ImageDecodeError("corrupt", f"unexpected DICOM pixel array shape {pixels.shape}")

    # Modality and VOI LUTs are grayscale transforms (PS3.3 C.11): colour images skip them.
    grayscale = samples == 1 and photometric != "PALETTE COLOR"
    has_rescale = grayscale and ("RescaleSlope" in ds or "RescaleIntercept" in ds)
    has_voi = grayscale and ("WindowCenter" in ds or "VOILUTSequence" in ds)
    if pixels.dtype == np.uint8 and bits_stored >= 8 and not (has_rescale or has_voi):
        gray = pixels  # 8-bit display values as stored (1..7-bit images are scaled below)
    else:
        try:
            values = apply_modality_lut(pixels, ds) if has_rescale else pixels
            if has_voi:
                values = apply_voi_lut(values, ds, index=0)
        except errors as err:  # e.g. Window Width < 1, an empty Rescale Slope, a broken LUT
            raise ImageDecodeError(
                "corrupt", f"invalid DICOM rescale or window (VOI LUT) attributes: {_why(err)}"
            ) from err
        gray = scale_to_uint8(np.asarray(values, dtype=np.float32))
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return np.ascontiguousarray(gray, dtype=np.uint8)


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Linearly map an array's own min..max onto 0..255 (a constant image becomes zeros)."""
    low, high = float(np.min(values)), float(np.max(values))
    if not np.isfinite(low) or not np.isfinite(high):
        raise ImageDecodeError("corrupt", "image contains non-finite values")
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def to_model_input(gray: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop a 2-D uint8 image to a square and resize it to the model input ``[1, S, S]``."""
    if gray.ndim != 2:
        raise ImageDecodeError(
            "bad_shape", f"expected a 2-D grayscale image, got shape {gray.shape}"
        )
    height, width = gray.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = gray[top : top + side, left : left + side]
    if side != size:
        resized = Image.fromarray(np.ascontiguousarray(square)).resize(
            (size, size), Image.Resampling.BILINEAR
        )
        square = np.asarray(resized)
    return np.ascontiguousarray(square, dtype=IMAGE_DTYPE)[None, :, :]


def load_model_input(data: bytes, size: int) -> np.ndarray:
    """Decode encoded bytes and resize: the whole client/server preprocessing in one call."""
    return to_model_input(decode_image(data), size)


def is_dataset(value: object) -> bool:
    """Whether ``value`` is a pydicom dataset (checked without importing pydicom)."""
    return type(value).__name__ in ("Dataset", "FileDataset") or hasattr(value, "PixelData")


def as_gray(value: Any) -> np.ndarray:
    """Turn an in-memory image (numpy array, PIL image or pydicom dataset) into 2-D uint8."""
    if isinstance(value, Image.Image):
        return pil_to_gray(value)
    if isinstance(value, np.ndarray):
        return array_to_gray(value)
    if is_dataset(value):
        return dicom_to_gray(value)
    raise ImageDecodeError("unsupported_type", f"unsupported input type {type(value).__name__}")


def array_to_gray(array: np.ndarray) -> np.ndarray:
    """Accept [H,W], [1,H,W] or [H,W,1|3|4] arrays of any real numeric dtype; return 2-D uint8.

    ``uint8`` values are kept (RGB ``uint8`` becomes its luminance); every other dtype, float
    RGB included, is scaled from its own min..max, as a 2-D float image is.
    """
    if array.dtype.kind not in "biuf":
        raise ImageDecodeError(
            "unsupported_type", f"image arrays must be real numbers, got dtype {array.dtype}"
        )
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        if array.shape[-1] == 1:
            array = array[..., 0]
        else:
            _check_pixel_count(array.shape[1], array.shape[0])
            weights = np.array([0.299, 0.587, 0.114], np.float32)
            luminance = array[..., :3].astype(np.float32) @ weights
            if array.dtype == np.uint8:
                return np.clip(luminance + 0.5, 0, 255).astype(np.uint8)
            array = luminance  # float RGB in 0..1 must not become a black 0/1 image
    if array.ndim != 2:
        raise ImageDecodeError(
            "bad_shape", f"expected an image array [H,W] or [H,W,C], got shape {array.shape}"
        )
    _check_pixel_count(array.shape[1], array.shape[0])
    if array.dtype == np.uint8:
        return array
    return scale_to_uint8(array.astype(np.float32))


def dicom_identity(ds: Dataset) -> str | None:
    """A non-identifying handle for a DICOM instance: a short SHA-256 of its SOP Instance UID."""
    uid = ds.get("SOPInstanceUID")
    if not uid:
        return None
    return "sop:" + hashlib.sha256(str(uid).encode()).hexdigest()[:16]

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
- Colour becomes luminance with Pillow's RGB->L conversion in every format (colour DICOM too), with
  no contrast stretch; more than 8 bits per sample are scaled by a fixed factor.
- Every expansion is bounded before it happens (:mod:`cxr.client.dicom_read`,
  :mod:`cxr.client.codestream`, :mod:`cxr.client.dicom_lut`): inputs above
  :data:`cxr.client.contract.MAX_FILE_BYTES` are refused unread; images above
  :data:`cxr.client.contract.MAX_PIXELS` before their pixels are decoded (sizes read from the PNG
  IHDR, JPEG SOF or JPEG 2000 SIZ, and for DICOM checked against the header); deflated datasets,
  element counts and palettes are capped. Pillow's own bomb guard stays on.
- DICOM greyscale goes through one lookup table per file (:mod:`cxr.client.dicom_lut`), never a
  float copy of the frame.
- Model input: centre-crop to a square on the short side, a whole-factor box reduction that keeps
  it at least ``REDUCING_GAP`` times the target, then an antialiased bilinear resize. Greyscale
  DICOM that goes through a lookup table is cropped, reduced and resized in the table's pass
  (compiled where numba is installed: :mod:`client.lut_kernel`); JPEG whose values are shown as
  stored is decoded at the DCT scale that keeps the same gap (:mod:`client.reduced`).
"""

from __future__ import annotations

import hashlib
import io
import struct
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.client.codestream import PNG_MAGIC, frame_size
from cxr.client.contract import IMAGE_DTYPE, MAX_FILE_BYTES, MAX_PIXELS
from cxr.client.decode_errors import ImageDecodeError, dicom_errors, why
from cxr.client.dicom_lut import (
    BAND_PIXELS,
    apply_lut,
    display_values,
    grayscale_lut,
    palette_lut,
    rgb_to_gray,
    stretch,
)
from cxr.client.dicom_read import pixel_data, read_bounded
from cxr.client.reduced import centre_box, draft_jpeg, reduced_dicom_frame, resize_square

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"

#: Bytes of an encapsulated frame searched for its codestream header (SOF / SIZ).
_HEADER_BYTES = 65_536
#: Attributes an uncompressed frame needs before it is read here rather than by pydicom.
_NATIVE_REQUIRED = (
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
)


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


def decode_image(data: bytes, *, target: int | None = None) -> np.ndarray:
    """Decode PNG, JPEG or DICOM bytes into a 2-D uint8 grayscale array (bright = dense);
    ``target``: the model input side the image is for. The image may then come back reduced
    toward it, never below it: JPEG decoded at a reduced scale (:mod:`client.reduced`), and
    greyscale DICOM that goes through a lookup table (all but 8-bit values shown as stored and
    float data) as the ``target x target`` model input itself, its display scaling still taken
    over the whole frame. :func:`to_model_input` of the result gives the same bytes as of the
    full decode."""
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise ImageDecodeError(
                "unsupported_type", f"expected encoded bytes, got {type(data).__name__}"
            )
        data = bytes(data)
    check_file_size(len(data))
    kind = image_kind(data)
    if kind == "dicom":
        return dicom_to_gray(read_dicom(data), target=target)
    return _decode_raster(data, kind, target)


def check_file_size(size: int) -> None:
    """Refuse an input above :data:`cxr.client.contract.MAX_FILE_BYTES` (before reading it)."""
    if size > MAX_FILE_BYTES:
        raise ImageDecodeError(
            "file_too_large",
            f"file is {size:,} bytes, above the limit of {MAX_FILE_BYTES:,} "
            "(an uncompressed 16-bit image at the pixel limit)",
        )


def image_kind(data: bytes) -> str:
    """``png``, ``jpeg`` or ``dicom`` by magic number; empty or other bytes are refused."""
    if not data:
        raise ImageDecodeError("empty", "empty input (0 bytes)")
    kind = sniff_format(data)
    if kind is None:
        raise ImageDecodeError("not_an_image", "not a PNG, JPEG or DICOM file")
    return kind


def _decode_raster(data: bytes, kind: str, target: int | None) -> np.ndarray:
    declared = frame_size(data[:_HEADER_BYTES])
    if declared is not None:  # before Pillow sees it: no bomb warning, no allocation
        _check_pixel_count(declared.width, declared.height)
    try:
        # Only the plugin the magic number named: a PNG that fails is corrupt, not "maybe a TGA".
        image = Image.open(io.BytesIO(data), formats=[kind.upper()])
        _check_pixel_count(image.width, image.height)
        if kind == "jpeg" and target:
            draft_jpeg(image, target)
        image.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageDecodeError("too_large", f"image refused by Pillow: {why(err)}") from err
    except UnidentifiedImageError as err:
        raise ImageDecodeError(
            "corrupt",
            f"corrupt {kind.upper()} file: it starts like one but its header is unreadable",
        ) from err
    except SyntaxError as err:
        raise ImageDecodeError("corrupt", f"corrupt {kind.upper()} file: {why(err)}") from err
    except (OSError, ValueError, EOFError) as err:
        code = "truncated" if "truncated" in str(err) or isinstance(err, EOFError) else "corrupt"
        raise ImageDecodeError(code, f"{code} {kind.upper()} file: {why(err)}") from err
    except (struct.error, IndexError, KeyError, TypeError) as err:  # malformed headers
        raise ImageDecodeError("corrupt", f"corrupt {kind.upper()} file: {why(err)}") from err
    return pil_to_gray(image)


def pil_to_gray(image: Image.Image) -> np.ndarray:
    """Convert a decoded Pillow image of any mode to a 2-D uint8 array."""
    _check_pixel_count(image.width, image.height)
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return _sixteen_bit_to_gray(image)
    if image.mode in ("I", "F"):
        return scale_to_uint8(np.asarray(image, dtype=np.float32))
    if image.mode != "L":
        try:
            image = image.convert("L")  # RGB, RGBA, palette, LA, 1-bit: ITU-R 601 luminance
        except ValueError as err:  # e.g. LAB or La images, which Pillow cannot convert to L
            raise ImageDecodeError(
                "unsupported_type", f"cannot convert a {image.mode} image to grayscale: {err}"
            ) from err
    return np.asarray(image, dtype=np.uint8)


def _sixteen_bit_to_gray(image: Image.Image) -> np.ndarray:
    """A 16-bit Pillow image scaled from its own min..max through one table, a band of rows at a
    time: no full-size copy beside Pillow's own."""
    low, high = image.getextrema()
    width, height = image.size
    out = np.zeros((height, width), dtype=np.uint8)
    if high <= low:
        return out
    lut = stretch(np.arange(65_536, dtype=np.float32), low, high)
    band = max(1, BAND_PIXELS // width)
    for top in range(0, height, band):
        rows = np.asarray(image.crop((0, top, width, min(height, top + band))))
        out[top : top + len(rows)] = apply_lut(lut, rows.astype(np.uint16, copy=False))
    return out


def _check_pixel_count(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError("corrupt", f"image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            "too_large",
            f"image is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{MAX_PIXELS:,} (refused as a possible decompression bomb)",
        )


def read_dicom(data: bytes) -> Dataset:
    """Parse DICOM bytes (with or without preamble and file meta) into a dataset of its pixel
    attributes, every cost bounded (:mod:`cxr.client.dicom_read`); bad files raise
    :class:`ImageDecodeError`."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = read_bounded(data)
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
    except ImageDecodeError:
        raise
    except dicom_errors() as err:
        raise ImageDecodeError("corrupt", f"unreadable DICOM file: {why(err)}") from err
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


def dicom_to_gray(ds: Dataset, *, target: int | None = None) -> np.ndarray:
    """Render a pydicom dataset's single frame as a 2-D uint8 display image (``target``: see
    :func:`decode_image`)."""
    errors = dicom_errors()
    if "PixelData" not in ds:
        raise ImageDecodeError("no_pixel_data", "DICOM file has no pixel data (PixelData absent)")
    missing = [keyword for keyword in ("Rows", "Columns") if keyword not in ds]
    if missing:
        raise ImageDecodeError(
            "corrupt",
            f"DICOM image attributes missing: {', '.join(missing)} (cannot size the image)",
        )
    try:
        empty = not len(pixel_data(ds))
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits_stored = int(ds.get("BitsStored", 8) or 8)
        bits_allocated = int(ds.get("BitsAllocated", 8) or 8)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    except errors as err:
        raise ImageDecodeError(
            "corrupt", f"DICOM image attributes missing or invalid: {why(err)}"
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
        _check_codestream(ds, rows, columns, samples)
        pixels = _native_frame(ds, rows, columns, samples, bits_allocated)
        if pixels is None and target and _shown_as_stored(ds, photometric, samples, bits_stored):
            pixels = reduced_dicom_frame(ds, rows, columns, target)
            if pixels is not None:
                rows, columns = pixels.shape
        if pixels is None:
            prefer_fast_codecs(ds)
            pixels = ds.pixel_array
    except ImageDecodeError:
        raise
    except errors as err:
        raise ImageDecodeError("corrupt", f"corrupt DICOM pixel data: {why(err)}") from err
    # pydicom turns pixel data longer than one frame into extra frames: never show a frame stack
    # (or a row of it) as if it were the image the header describes.
    frame_ndim = 2 if samples == 1 else 3
    if pixels.ndim == frame_ndim + 1 and pixels.shape[0] > 1:
        raise _extra_frames(pixels.shape[0], rows, columns)
    if pixels.ndim == frame_ndim + 1:
        pixels = pixels[0]
    if pixels.ndim != frame_ndim or pixels.shape[:2] != (rows, columns):
        raise ImageDecodeError(
            "corrupt",
            f"DICOM pixel data decoded to shape {pixels.shape}, not the {rows}x{columns} image "
            f"with {samples} sample(s) per pixel that its header describes",
        )
    integers = pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2
    if photometric == "PALETTE COLOR" and pixels.ndim == 2:
        if not integers:
            raise ImageDecodeError("bad_palette", f"palette indices of type {pixels.dtype}")
        return apply_lut(palette_lut(pixels, ds), pixels)  # indices -> RGB -> luminance
    if pixels.ndim == 3:  # colour (RGB / YBR after pydicom's conversion to RGB): luminance
        return rgb_to_gray(pixels, bits_stored)

    # Modality and VOI LUTs are grayscale transforms (PS3.3 C.11): colour images skip them.
    has_rescale = "RescaleSlope" in ds or "RescaleIntercept" in ds
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    invert = photometric == "MONOCHROME1"
    if pixels.dtype == np.uint8 and bits_stored >= 8 and not (has_rescale or has_voi):
        gray = pixels  # 8-bit display values as stored (1..7-bit images are scaled below)
        return 255 - gray if invert else np.ascontiguousarray(gray)
    if not integers:  # 32-bit or float pixel data: rare, computed the plain way
        return _float_frame_to_gray(pixels, ds, has_rescale, has_voi, invert)
    lut = grayscale_lut(
        pixels,
        ds,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        rescale=has_rescale,
        voi=has_voi,
        invert=invert,
        lut_sequences="ModalityLUTSequence" in ds or "VOILUTSequence" in ds,
    )
    return apply_lut(lut, pixels, size=target)


def _shown_as_stored(ds: Dataset, photometric: str, samples: int, bits_stored: int) -> bool:
    """Whether a frame's 8-bit greyscale values are displayed as stored (no rescale, LUT or
    window): only then may it be decoded at reduced scale, since averaging commutes with no
    mapping but a linear one (a window's clipping, measured: 2 grey levels off at 224 px)."""
    lut = ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence", "WindowCenter")
    return (
        samples == 1
        and photometric in ("MONOCHROME1", "MONOCHROME2")
        and bits_stored == 8
        and not any(keyword in ds for keyword in (*lut, "VOILUTSequence"))
    )


def _extra_frames(count: int, rows: int, columns: int) -> ImageDecodeError:
    return ImageDecodeError(
        "multi_frame",
        f"DICOM pixel data holds {count} frames of {rows}x{columns} although "
        "Number of Frames says 1: send one radiograph per file",
    )


def prefer_fast_codecs(ds: Dataset) -> None:
    """Baseline JPEG through Pillow's libjpeg-turbo, as before pylibjpeg was installed: about 4x
    faster here than pylibjpeg's libjpeg, which pydicom would otherwise pick first (the two
    IDCTs differ by a level here and there)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGBaseline8Bit

    baseline = ds.file_meta.get("TransferSyntaxUID") == JPEGBaseline8Bit
    if baseline and "pillow" in get_decoder(JPEGBaseline8Bit).available_plugins:
        ds.pixel_array_options(decoding_plugin="pillow")


def _native_frame(
    ds: Dataset, rows: int, columns: int, samples: int, bits_allocated: int
) -> np.ndarray | None:
    """An uncompressed 8- or 16-bit greyscale frame as a view of Pixel Data (stored integers,
    unused high bits left for the lookup table), or None for everything pydicom should decode."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or syntax.is_encapsulated or samples != 1 or bits_allocated not in (8, 16):
        return None
    if any(keyword not in ds for keyword in _NATIVE_REQUIRED):
        return None  # pydicom names what is missing
    itemsize = bits_allocated // 8
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    dtype = np.dtype(f"{'<>'[not syntax.is_little_endian]}{'iu'[not signed]}{itemsize}")
    data = pixel_data(ds)
    expected = rows * columns * itemsize
    if len(data) >= 2 * expected:
        raise _extra_frames(len(data) // expected, rows, columns)
    if len(data) < expected:
        raise ImageDecodeError(
            "corrupt",
            f"DICOM pixel data is {len(data):,} bytes, shorter than the {expected:,} bytes of "
            f"the {rows}x{columns} {bits_allocated}-bit frame its header describes",
        )
    frame = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
    return frame.astype(dtype.newbyteorder("="), copy=False)


def _check_codestream(ds: Dataset, rows: int, columns: int, samples: int) -> None:
    """Refuse an encapsulated JPEG-family frame whose own header is missing or disagrees with the
    DICOM header, before any decoder allocates what that header says."""
    from pydicom.encaps import generate_fragments, parse_basic_offsets
    from pydicom.uid import RLELossless

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or not syntax.is_encapsulated or syntax == RLELossless:
        return  # RLE: pydicom sizes its output from Rows and Columns
    stream = io.BytesIO(ds.PixelData)
    parse_basic_offsets(stream)
    parts, length = [], 0
    for fragment in generate_fragments(stream):
        parts.append(fragment)
        length += len(fragment)
        if length >= _HEADER_BYTES:
            break
    size = frame_size(b"".join(parts))
    if size is None:
        raise ImageDecodeError(
            "corrupt",
            f"DICOM {_syntax_label(syntax)} pixel data has no readable frame header (SOF/SIZ) "
            "at the start of its first fragment",
        )
    if (size.width, size.height, size.components) != (columns, rows, samples):
        raise ImageDecodeError(
            "frame_mismatch",
            f"the compressed frame is {size.width}x{size.height} with {size.components} "
            f"component(s), but the DICOM header describes {columns}x{rows} with {samples}: "
            "refused before decoding",
        )


def _float_frame_to_gray(
    pixels: np.ndarray, ds: Dataset, rescale: bool, voi: bool, invert: bool
) -> np.ndarray:
    gray = scale_to_uint8(display_values(pixels, ds, rescale=rescale, voi=voi))
    return 255 - gray if invert else gray


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Linearly map an array's own min..max onto 0..255 (a constant image becomes zeros)."""
    low, high = float(np.min(values)), float(np.max(values))
    if not np.isfinite(low) or not np.isfinite(high):
        raise ImageDecodeError("corrupt", "image contains non-finite values")
    return stretch(values, low, high)


def to_model_input(gray: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop a 2-D uint8 image to a square and resize it to the model input ``[1, S, S]``
    (:func:`~cxr.client.reduced.resize_square`: a whole-factor box reduction, then an
    antialiased bilinear resize)."""
    if gray.ndim != 2:
        raise ImageDecodeError(
            "bad_shape", f"expected a 2-D grayscale image, got shape {gray.shape}"
        )
    square = resize_square(centre_square(gray), size)
    return np.ascontiguousarray(square, dtype=IMAGE_DTYPE)[None, :, :]


def centre_square(image: np.ndarray) -> np.ndarray:
    """The centred square on the short side of a 2-D image (a view)."""
    top, left, side = centre_box(*image.shape[:2])
    return image[top : top + side, left : left + side]


def load_model_input(data: bytes, size: int) -> np.ndarray:
    """Decode encoded bytes and resize: the whole client/server preprocessing in one call."""
    return to_model_input(decode_image(data, target=size), size)


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

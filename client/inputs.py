"""Turning whatever a caller passes (paths, bytes, arrays, PIL images, pydicom datasets) into what
is sent: a uint8 model input, or pixel-only encoded bytes for the server's ``preprocess``.

Patient data never leaves the client: only pixels are sent. DICOM going to the server is rewritten
with the image-pixel attributes alone, and inputs are named by path or by a hash of the SOP Instance
UID, never by a patient attribute.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from client.imaging import (
    ImageDecodeError,
    as_gray,
    decode_image,
    dicom_identity,
    dicom_to_gray,
    sniff_format,
    to_model_input,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: DICOM attributes that describe pixels and nothing else: all a decoder needs.
PIXEL_ATTRIBUTES = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "ModalityLUTSequence",
    "PixelData",
)

Input = str | Path | bytes | np.ndarray | Image.Image | Any  # Any: a pydicom Dataset


@dataclass
class Prepared:
    """One input, ready to send."""

    source: str  # a path, or a non-identifying handle
    data: bytes | None = None  # the encoded file when it came as a file or bytes


def describe(value: Input, index: int) -> Prepared:
    """Read an input once and name it without patient identifiers."""
    if isinstance(value, str | Path):
        path = Path(value)
        try:
            data = path.read_bytes()
        except IsADirectoryError as err:
            raise ImageDecodeError("not_a_file", f"{path} is a directory") from err
        except FileNotFoundError as err:
            raise ImageDecodeError("not_found", f"{path}: no such file") from err
        except OSError as err:
            raise ImageDecodeError("unreadable", f"{path}: {err.strerror or err}") from err
        return Prepared(str(value), data)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return Prepared(f"bytes:{hashlib.sha256(data).hexdigest()[:16]}", data)
    if hasattr(value, "PixelData") or type(value).__name__ in ("Dataset", "FileDataset"):
        return Prepared(dicom_identity(value) or f"dicom:{index}")
    return Prepared(f"{type(value).__name__.lower()}:{index}")


def local_model_input(value: Input, prepared: Prepared, size: int) -> np.ndarray:
    """Decode and resize on the client: uint8 ``[1, S, S]``."""
    gray = decode_image(prepared.data) if prepared.data is not None else as_gray(value)
    return to_model_input(gray, size)


def server_payload(value: Input, prepared: Prepared) -> bytes:
    """Encoded bytes for the server's ``preprocess``: PNG/JPEG as they are, DICOM with its
    pixel attributes only, in-memory images as PNG."""
    if prepared.data is not None:
        kind = sniff_format(prepared.data)
        if kind == "dicom":
            return pixel_only_dicom(_read_dataset(prepared.data))
        if kind is None:
            raise ImageDecodeError("not_an_image", "not a PNG, JPEG or DICOM file")
        return prepared.data
    if hasattr(value, "PixelData"):
        return pixel_only_dicom(value)
    buffer = io.BytesIO()
    Image.fromarray(as_gray(value)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _read_dataset(data: bytes) -> Dataset:
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as err:
        raise ImageDecodeError("corrupt", f"unreadable DICOM file: {err}") from err


def pixel_only_dicom(ds: Dataset) -> bytes:
    """A new DICOM file holding only ``ds``'s pixel attributes (no patient or study data)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    if "PixelData" not in ds:
        dicom_to_gray(ds)  # raises the precise error (no pixel data)
    clean = Dataset()
    for keyword in PIXEL_ATTRIBUTES:
        if keyword in ds:
            clean[keyword] = ds[keyword]
    meta = FileMetaDataset()
    source_meta = getattr(ds, "file_meta", None)
    syntax = getattr(source_meta, "TransferSyntaxUID", None) or ExplicitVRLittleEndian
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    clean.file_meta = meta
    buffer = io.BytesIO()
    clean.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

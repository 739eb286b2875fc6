"""Turning whatever a caller passes (paths, bytes, arrays, PIL images, pydicom datasets) into what
is sent: a uint8 model input, or pixel-only encoded bytes for the server's ``preprocess``.

Patient data never leaves the client: only pixels are sent. DICOM going to the server is rewritten
with the image-pixel attributes alone, and inputs are named by path or by a hash of the SOP Instance
UID, never by a patient attribute.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cxr.client.contract import MAX_FILE_BYTES
from cxr.client.decode_errors import dicom_errors, why
from cxr.client.dicom_read import PIXEL_ATTRIBUTES
from cxr.client.imaging import (
    ImageDecodeError,
    as_gray,
    check_file_size,
    dicom_identity,
    dicom_to_gray,
    image_kind,
    is_dataset,
    load_model_input,
    read_dicom,
    to_model_input,
)
from cxr.client.metadata_strip import strip_jpeg, strip_png

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

Input = str | Path | bytes | np.ndarray | Image.Image | Any  # Any: a pydicom Dataset


@dataclass
class Prepared:
    """One input, read and named."""

    source: str  # a path, or a non-identifying handle
    data: bytes | None = None  # the encoded file when it came as a file or bytes


def as_items(inputs: Input | Iterable[Input]) -> list[Input]:
    """One input, or an iterable of inputs, as a list (a dataset or an array is one input)."""
    single = (str, Path, bytes, bytearray, memoryview, np.ndarray, Image.Image)
    if isinstance(inputs, single) or is_dataset(inputs):
        return [inputs]
    if isinstance(inputs, Iterable):
        return list(inputs)
    return [inputs]


def fallback_source(value: Input, index: int) -> str:
    """A name for an input that could not be read: its path, or its position."""
    return str(value) if isinstance(value, str | Path) else f"input:{index}"


def describe(value: Input, index: int) -> Prepared:
    """Read an input once and name it without patient identifiers."""
    if isinstance(value, str | Path):
        return Prepared(str(value), read_file(Path(value)))
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return Prepared(f"bytes:{hashlib.sha256(data).hexdigest()[:16]}", data)
    if is_dataset(value):
        return Prepared(dicom_identity(value) or f"dicom:{index}")
    if isinstance(value, np.ndarray):
        return Prepared(f"array:{index}")
    if isinstance(value, Image.Image):
        return Prepared(f"image:{index}")
    raise ImageDecodeError("unsupported_type", f"unsupported input type {type(value).__name__}")


def read_file(path: Path) -> bytes:
    """A regular file's bytes; anything else (folder, pipe, missing, above
    :data:`cxr.client.contract.MAX_FILE_BYTES`) is a specific error."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ImageDecodeError("not_a_file", f"{path} is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise ImageDecodeError("not_a_file", f"{path} is not a regular file")
        if not os.access(path, os.R_OK):
            raise ImageDecodeError("unreadable", f"{path}: permission denied")
        check_file_size(info.st_size)  # before reading: never a multi-GB read to refuse it
        with path.open("rb") as handle:
            # The size stat() gave, plus one byte: a buffer of the file's size, not of the limit
            # (the limit's buffer cost 4-7 ms more per 13 MB DICOM here, in page faults).
            data = handle.read(info.st_size + 1)
            if len(data) > info.st_size:  # the file grew since stat(): read on to the limit
                data += handle.read(MAX_FILE_BYTES + 1 - len(data))
        check_file_size(len(data))
        return data
    except FileNotFoundError as err:
        raise ImageDecodeError("not_found", f"{path}: no such file") from err
    except OSError as err:
        raise ImageDecodeError("unreadable", f"{path}: {err.strerror or err}") from err


def local_model_input(value: Input, prepared: Prepared, size: int) -> np.ndarray:
    """Decode and resize on the client: uint8 ``[1, S, S]``."""
    if prepared.data is None:
        return to_model_input(as_gray(value), size)
    return load_model_input(prepared.data, size)


def server_payload(value: Input, prepared: Prepared) -> bytes:
    """Encoded bytes for the server's ``preprocess``, pixels only: PNG/JPEG without metadata
    (text chunks, EXIF, comments), DICOM with its pixel attributes only, in-memory images as
    PNG."""
    if prepared.data is not None:
        kind = image_kind(prepared.data)
        if kind == "dicom":
            return pixel_only_dicom(read_dicom(prepared.data))
        return strip_png(prepared.data) if kind == "png" else strip_jpeg(prepared.data)
    if is_dataset(value):
        return pixel_only_dicom(value)
    buffer = io.BytesIO()
    Image.fromarray(as_gray(value)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def pixel_only_dicom(ds: Dataset) -> bytes:
    """A new DICOM file holding only ``ds``'s pixel attributes (no patient or study data)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    if "PixelData" not in ds:
        dicom_to_gray(ds)  # raises the precise error (no pixel data)
    clean = Dataset()
    try:
        for keyword in PIXEL_ATTRIBUTES:
            if keyword in ds:
                clean[keyword] = ds[keyword]
    except dicom_errors() as err:  # values are parsed here first: an unknown VR, a bad length
        raise ImageDecodeError("corrupt", f"invalid DICOM pixel attribute: {why(err)}") from err
    meta = FileMetaDataset()
    source_meta = getattr(ds, "file_meta", None)
    syntax = getattr(source_meta, "TransferSyntaxUID", None) or ExplicitVRLittleEndian
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    clean.file_meta = meta
    # A transfer syntax pydicom does not know still gets written (explicit VR little endian), so
    # the server's decoder can name it in its error.
    known = getattr(syntax, "is_transfer_syntax", False)
    encoding = {} if known else {"implicit_vr": False, "little_endian": True}
    buffer = io.BytesIO()
    try:
        clean.save_as(buffer, enforce_file_format=True, **encoding)
    except (ValueError, TypeError, AttributeError, OverflowError) as err:
        message = f"DICOM pixel attributes cannot be re-encoded: {err}"
        raise ImageDecodeError("corrupt", message) from err
    return buffer.getvalue()

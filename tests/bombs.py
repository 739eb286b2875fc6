"""Decompression and parser bombs, generated small: each expands to hundreds of MB (or GB) in a
decoder that trusts it. Shared by the local and the ensemble bomb tests."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def _meta(syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    return meta


def _image(rows: int = 16, columns: int = 16, bits: int = 8, photometric: str = "MONOCHROME2"):
    ds = Dataset()
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    return ds


def _save(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta = _meta(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def segmented_palette() -> bytes:
    """Palette colour DICOM whose segmented red/green/blue tables expand to 131 M entries each."""
    ds = _image(photometric="PALETTE COLOR")
    ds.PixelData = bytes(range(256))
    descriptor = [0, 0, 16]  # 65,536 entries of 16 bits
    segments = np.array([0, 1, 0] + [1, 65_535, 65_535] * 2000, dtype="<u2").tobytes()
    for colour in ("Red", "Green", "Blue"):
        ds[f"{colour}PaletteColorLookupTableDescriptor"] = _element(0x0028, colour, descriptor)
        setattr(ds, f"Segmented{colour}PaletteColorLookupTableData", segments)
    return _save(ds, ExplicitVRLittleEndian)


def _element(group: int, colour: str, value: list[int]):
    from pydicom.dataelem import DataElement

    tag = {"Red": 0x1101, "Green": 0x1102, "Blue": 0x1103}[colour]
    return DataElement((group << 16) | tag, "US", value)


def deflated(inflated_mb: int = 400) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM: a 16x16 header and ``inflated_mb`` MB of
    pixel data that deflates to about a thousandth of that."""
    ds = _image()
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    length = inflated_mb * 2**20
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, length)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(head.getvalue() + pixel_header)]
    chunk = bytes(2**20)
    parts += [compressor.compress(chunk) for _ in range(inflated_mb)]
    parts.append(compressor.flush())
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, _meta(DeflatedExplicitVRLittleEndian))
    return out.getvalue() + b"".join(parts)


def j2k_frame_larger_than_header(side: int = 6000) -> bytes:
    """A 16x16 DICOM header around a JPEG 2000 codestream whose SIZ says ``side`` x ``side``."""
    from pydicom.pixels import get_encoder

    pixels = np.arange(4096, dtype=np.uint16).astype(np.uint8).reshape(64, 64)
    stream = bytearray(get_encoder(JPEG2000Lossless).encode(pixels, **_encode_options()))
    assert stream[:4] == b"\xff\x4f\xff\x51"
    stream[8:16] = struct.pack(">II", side, side)  # Xsiz, Ysiz
    ds = _image()
    ds.PixelData = encapsulate([bytes(stream)])
    ds["PixelData"].VR = "OB"
    return _save(ds, JPEG2000Lossless)


def _encode_options() -> dict:
    return {
        "rows": 64,
        "columns": 64,
        "samples_per_pixel": 1,
        "bits_allocated": 8,
        "bits_stored": 8,
        "pixel_representation": 0,
        "photometric_interpretation": "MONOCHROME2",
        "number_of_frames": 1,
    }


def jpeg_frame_larger_than_header(side: int = 8000) -> bytes:
    """A 16x16 DICOM header around a baseline JPEG whose SOF says ``side`` x ``side`` (64 MP,
    under the pixel limit: only the header comparison catches it)."""
    buffer = io.BytesIO()
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(buffer, format="JPEG")
    stream = bytearray(buffer.getvalue())
    sof = stream.find(b"\xff\xc0")
    stream[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    ds = _image()
    ds.PixelData = encapsulate([bytes(stream)])
    ds["PixelData"].VR = "OB"
    return _save(ds, JPEGBaseline8Bit)


def sixteen_bit_png(width: int = 5000, height: int = 4000) -> bytes:
    """A 20 MP 16-bit greyscale PNG of a few tens of kB (a smooth ramp)."""
    ramp = np.linspace(1000, 3000, width, dtype=np.float32).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(np.broadcast_to(ramp, (height, width)).copy()).save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_elements(count: int = 600_000) -> bytes:
    """A 6 MB DICOM of ``count`` two-byte private elements before a 16x16 image."""
    ds = _image()
    ds.PixelData = bytes(256)
    whole = _save(ds, ExplicitVRLittleEndian)
    start = whole.index(struct.pack("<HH", 0x0028, 0x0002))  # first image attribute
    tiny = b"".join(
        struct.pack("<HH2sH", 0x0009, 0x1000 + i % 0xEFFF, b"LO", 2) + b"ab" for i in range(count)
    )
    return whole[:start] + tiny + whole[start:]


#: name -> (generator, expected code; None: decodes, but within the memory bound)
BOMBS: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "segmented_palette": (segmented_palette, "bad_palette"),
    "deflated": (deflated, "inflate_too_large"),
    "j2k_frame_larger_than_header": (j2k_frame_larger_than_header, "frame_mismatch"),
    "jpeg_frame_larger_than_header": (jpeg_frame_larger_than_header, "frame_mismatch"),
    "sixteen_bit_png_20mp": (sixteen_bit_png, None),
    "tiny_elements": (tiny_elements, "too_many_elements"),
}

"""Reading DICOM bytes with every expansion bounded before it happens.

pydicom reads whatever a file declares: a deflated dataset is inflated whole, every data element
becomes a Python object, a sequence of a million items is parsed eagerly. Here only the pixel
attributes are kept (the rest is skipped, not parsed), the number of data elements read is
capped, a deflated dataset is inflated to at most :data:`MAX_INFLATED_BYTES`, and every kept
attribute except Pixel Data is at most :data:`MAX_ATTRIBUTE_BYTES` long.
"""

from __future__ import annotations

import io
import zlib
from typing import TYPE_CHECKING

from cxr.client.decode_errors import ImageDecodeError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: DICOM attributes that describe pixels and nothing else: all a decoder needs, and all that is
#: read from a file (plus the SOP Instance UID, for a non-identifying handle).
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
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
)
_READ_ATTRIBUTES = (*PIXEL_ATTRIBUTES, "SOPInstanceUID")

#: Reads of the parser (about one per data element) before a file is refused: real radiographs
#: have a few hundred to a few thousand elements; 600,000 tiny ones cost pydicom >200 MB.
MAX_ELEMENT_READS = 100_000
#: Largest inflated Deflated Explicit VR Little Endian dataset (a 4000x5000 16-bit image is 40 MB).
MAX_INFLATED_BYTES = 48 * 2**20
#: Largest kept attribute other than Pixel Data (a 65,536-entry 16-bit LUT is 128 KiB).
MAX_ATTRIBUTE_BYTES = 2**20
_PIXEL_DATA_TAG = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF


class _CountingReader(io.BytesIO):
    """A byte stream over ``source`` that refuses to serve more than :data:`MAX_ELEMENT_READS`
    reads, and keeps ``source`` for :func:`pixel_data` to view without a copy."""

    reads = 0

    def __init__(self, source: bytes) -> None:
        super().__init__(source)
        self.source = source

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > MAX_ELEMENT_READS:
            raise ImageDecodeError(
                "too_many_elements",
                f"DICOM file has more than {MAX_ELEMENT_READS:,} data elements "
                "(refused as a possible parser bomb)",
            )
        return super().read(size)


def read_bounded(data: bytes, keywords: tuple[str, ...] | None = _READ_ATTRIBUTES) -> Dataset:
    """Parse DICOM bytes into a dataset of ``keywords`` (default: the pixel attributes; None:
    every attribute before Pixel Data, for a header), every cost bounded.

    Raises :class:`ImageDecodeError` (``too_many_elements``, ``inflate_too_large``,
    ``too_large``) for bombs; pydicom's own exceptions for malformed files.
    """
    import pydicom
    from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset, read_preamble
    from pydicom.tag import Tag
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    wanted = None if keywords is None else [Tag(keyword) for keyword in keywords]
    stream = _CountingReader(data)
    read_preamble(stream, True)
    meta = _read_file_meta_info(stream)
    syntax = meta.get("TransferSyntaxUID")
    if syntax == DeflatedExplicitVRLittleEndian:
        body = _inflate(data[stream.tell() :])
        stop = _at_pixel_data if keywords is None else None
        ds = read_dataset(_CountingReader(body), False, True, stop_when=stop, specific_tags=wanted)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian  # what the inflated bytes are
        ds.file_meta = meta
        ds.set_original_encoding(False, True)
    else:
        stream.seek(0)
        # Uncompressed: values above the attribute limit are not read, so Pixel Data stays in
        # ``data`` (see :func:`pixel_data`) and any other is refused below without being read.
        # (Encapsulated Pixel Data is read: deferring it would walk its fragments twice.)
        native = syntax is None or (syntax.is_transfer_syntax and not syntax.is_encapsulated)
        ds = pydicom.dcmread(
            stream,
            force=True,
            specific_tags=wanted,
            stop_before_pixels=keywords is None,
            defer_size=MAX_ATTRIBUTE_BYTES if native else None,
        )
    _check_attribute_sizes(ds)
    return ds


def pixel_data(ds: Dataset) -> bytes | memoryview:
    """The Pixel Data value of ``ds``: for a file read by :func:`read_bounded` whose Pixel Data
    is stored as is (not deflated or encapsulated), a view of the file's own bytes, not a copy
    (shorter than its declared length where the file is cut short)."""
    element = ds.get_item(_PIXEL_DATA_TAG, keep_deferred=True)
    stream = getattr(ds, "buffer", None)
    if element is not None and element.value is None and isinstance(stream, _CountingReader):
        start = element.value_tell
        return memoryview(stream.source)[start : start + element.length]
    return ds.PixelData


def _inflate(compressed: bytes) -> bytes:
    """Inflate a deflated dataset of at most :data:`MAX_INFLATED_BYTES`: a first pass counts
    the inflated size a megabyte at a time, keeping nothing, so a bomb costs no memory."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, tail = 0, compressed
    try:
        while chunk := inflater.decompress(tail, 2**20):
            total += len(chunk)
            tail = inflater.unconsumed_tail
            if total > MAX_INFLATED_BYTES:
                raise ImageDecodeError(
                    "inflate_too_large",
                    f"deflated DICOM dataset inflates to more than "
                    f"{MAX_INFLATED_BYTES // 2**20} MiB (refused as a possible decompression bomb)",
                )
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(compressed, total)
    except zlib.error as err:
        raise ImageDecodeError("corrupt", f"corrupt deflated DICOM dataset: {err}") from err


def _check_attribute_sizes(ds: Dataset) -> None:
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset would read deferred values)
        if tag == _PIXEL_DATA_TAG:
            continue
        element = ds.get_item(tag, keep_deferred=True)
        value = element.value
        if value is None and getattr(element, "is_raw", False):
            size = element.length  # deferred (above the limit, never read) or empty
        elif isinstance(value, bytes | bytearray):
            size = len(value)
        else:
            continue
        if size > MAX_ATTRIBUTE_BYTES:
            length = "of undefined length" if size == _UNDEFINED_LENGTH else f"{size:,} bytes long"
            raise ImageDecodeError(
                "too_large",
                f"DICOM attribute {element.tag} is {length}, above the "
                f"limit of {MAX_ATTRIBUTE_BYTES:,} bytes for a pixel attribute",
            )

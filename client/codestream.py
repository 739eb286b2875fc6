"""Frame sizes read from compressed codestreams themselves, before anything is decoded.

A DICOM header's Rows/Columns say nothing binding about the codestream inside Pixel Data: a 16x16
header can wrap a 6000x6000 JPEG 2000 frame. The decoders allocate what the codestream says, so the
size is read from the codestream's own header (PNG IHDR, JPEG and JPEG-LS SOF, JPEG 2000 SIZ)
and checked before a decoder sees the data.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

#: JPEG start-of-frame markers (SOF0..SOF15 without DHT, JPG and DAC) and JPEG-LS SOF55.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
#: The eight bytes every PNG file starts with.
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


class FrameSize(NamedTuple):
    """What a codestream header says it will decode to."""

    width: int
    height: int
    components: int
    precision: int


def frame_size(stream: bytes) -> FrameSize | None:
    """The frame size a PNG, JPEG, JPEG-LS or JPEG 2000 codestream (or JP2 file) declares, or
    None when its header cannot be found in ``stream`` (which may be just its first bytes)."""
    try:
        if stream.startswith(PNG_MAGIC) and stream[12:16] == b"IHDR":
            width, height, depth, colour = struct.unpack_from(">IIBB", stream, 16)
            return FrameSize(width, height, _PNG_CHANNELS.get(colour, 0), depth)
        if stream.startswith(b"\xff\xd8"):
            return _jpeg_sof(stream)
        if stream.startswith(_JP2_SIGNATURE):
            stream = _jp2_codestream(stream)
        if stream.startswith(b"\xff\x4f\xff\x51"):
            return _j2k_siz(stream)
    except (struct.error, IndexError):
        return None
    return None


def _jpeg_sof(stream: bytes) -> FrameSize | None:
    """Walk the marker segments of a JPEG / JPEG-LS stream up to its start of frame."""
    offset = 2
    while offset + 4 <= len(stream):
        if stream[offset] != 0xFF:
            return None
        marker = stream[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        (length,) = struct.unpack_from(">H", stream, offset + 2)
        if marker in _SOF_MARKERS:
            precision, height, width, components = struct.unpack_from(">BHHB", stream, offset + 4)
            return FrameSize(width, height, components, precision)
        if marker == 0xDA or length < 2:  # scan data before any frame header: malformed
            return None
        offset += 2 + length
    return None


def _jp2_codestream(stream: bytes) -> bytes:
    """The contiguous codestream box (``jp2c``) of a JP2 file, or ``b""``."""
    offset = 0
    while offset + 8 <= len(stream):
        length, box = struct.unpack_from(">I4s", stream, offset)
        header = 8
        if length == 1:  # 64-bit length follows
            (length,) = struct.unpack_from(">Q", stream, offset + 8)
            header = 16
        if box == b"jp2c":
            return stream[offset + header :]
        if length < header:
            return b""
        offset += length
    return b""


def _j2k_siz(stream: bytes) -> FrameSize:
    """Image size from a JPEG 2000 SIZ segment (ISO/IEC 15444-1 A.5.1)."""
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", stream, 8)
    (components,) = struct.unpack_from(">H", stream, 40)
    precision = (stream[42] & 0x7F) + 1
    return FrameSize(xsiz - xosiz, ysiz - yosiz, components, precision)

"""PNG and JPEG files with everything but their pixels removed, without re-encoding them.

Text chunks, EXIF, XMP and comments can carry patient names and IDs; the server's decoder needs
none of them. PNG keeps only the chunks that define the pixels (IHDR, PLTE, tRNS, IDAT, IEND);
JPEG drops comments (COM) and application segments APP1..APP13 and APP15 (EXIF, XMP, ICC, IPTC),
keeping JFIF (APP0) and Adobe (APP14), which say how to turn the samples into colours. The
compressed pixel data is copied byte for byte, so the decoded image is identical; nothing after
the end-of-image marker is kept.
"""

from __future__ import annotations

import struct

from cxr.client.codestream import PNG_MAGIC
from cxr.client.decode_errors import ImageDecodeError

_PNG_PIXEL_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"})
_JPEG_KEPT_APP = frozenset({0xE0, 0xEE})  # JFIF, Adobe
_JPEG_COMMENT = 0xFE
# Markers without a length: SOI, EOI, RST0..7, TEM.
_JPEG_EOI = 0xD9
_JPEG_STANDALONE = frozenset({0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)})


def strip_png(data: bytes) -> bytes:
    """``data`` (a PNG file) with only its pixel-defining chunks."""
    out = [PNG_MAGIC]
    offset = len(PNG_MAGIC)
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        kind = data[offset + 4 : offset + 8]
        end = offset + 12 + length
        if end > len(data):
            raise ImageDecodeError("truncated", f"truncated PNG file: chunk {kind!r} is cut off")
        if kind in _PNG_PIXEL_CHUNKS:
            out.append(data[offset:end])
        offset = end
        if kind == b"IEND":
            break
    return b"".join(out)


def strip_jpeg(data: bytes) -> bytes:
    """``data`` (a JPEG file) without comments and metadata application segments."""
    out = bytearray(data[:2])  # SOI
    offset = 2
    while offset + 2 <= len(data):
        if data[offset] != 0xFF:  # entropy-coded data: copy up to the next marker
            end = _next_marker(data, offset)
            out += data[offset:end]
            offset = end
            continue
        marker = data[offset + 1]
        if marker == 0x00:  # a stuffed 0xFF at the start of entropy-coded data
            end = _next_marker(data, offset + 2)
            out += data[offset:end]
            offset = end
            continue
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == _JPEG_EOI:  # the image ends here: trailing bytes never leave the client
            out += data[offset : offset + 2]
            break
        if marker in _JPEG_STANDALONE:
            out += data[offset : offset + 2]
            offset += 2
            continue
        if offset + 4 > len(data):
            break
        (length,) = struct.unpack_from(">H", data, offset + 2)
        end = offset + 2 + length
        app = 0xE1 <= marker <= 0xEF and marker not in _JPEG_KEPT_APP
        if not (app or marker == _JPEG_COMMENT):
            out += data[offset:end]
        offset = end
    return bytes(out)


def _next_marker(data: bytes, offset: int) -> int:
    """Where the entropy-coded run starting at ``offset`` ends: the next 0xFF that starts a
    marker (not a stuffed 0xFF00, not a restart marker), or the end of ``data``."""
    while True:
        found = data.find(b"\xff", offset)
        if found < 0 or found + 1 >= len(data):
            return len(data)
        follower = data[found + 1]
        if follower == 0x00 or 0xD0 <= follower <= 0xD7 or follower == 0xFF:
            offset = found + 1 if follower == 0xFF else found + 2
            continue
        return found

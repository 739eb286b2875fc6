"""The decoder's error type and every reason code an input can be refused with."""

from __future__ import annotations

import re
import struct

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
        "file_too_large",
        "frame_mismatch",
        "bad_palette",
        "inflate_too_large",
        "too_many_elements",
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


def why(err: BaseException) -> str:
    """An exception's message for people: no object addresses, one line, bounded length."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err)) or type(err).__name__
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def dicom_errors() -> tuple[type[BaseException], ...]:
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
        ZeroDivisionError,
        RuntimeError,
        struct.error,
    )

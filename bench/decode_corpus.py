"""Synthetic full-size radiographs as DICOM files in every supported transfer syntax, and the
straightforward reference decoder they are measured against (``cxr bench decode`` and the tests).

The images are not real chest X-rays but have what matters to a decoder: 2000-3000 px sides,
12- or 16-bit stored values spread over a few thousand levels with smooth anatomy-like structure
plus noise (so compressors work as hard as on real images), a window in the header, MONOCHROME1 or
MONOCHROME2.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

#: OpenJPH's quantisation step for lossy HTJ2K (a fraction of the sample range).
HTJ2K_LOSSY_STEP = 0.001
#: Syntax name -> (transfer syntax UID, how it is encoded). ``dcmtk`` syntaxes need its Debian
#: command-line tools (``apt-get install dcmtk``), HTJ2K the ``imagecodecs`` package (OpenJPH's
#: encoder, in the ``dev`` extra); the others use pydicom's encoders or Pillow.
SYNTAXES: dict[str, tuple[str, str]] = {
    "explicit": ("1.2.840.10008.1.2.1", "native"),
    "implicit": ("1.2.840.10008.1.2", "native"),
    "deflated": ("1.2.840.10008.1.2.1.99", "native"),
    "rle": ("1.2.840.10008.1.2.5", "pydicom"),
    "jpeg-ls": ("1.2.840.10008.1.2.4.80", "pydicom"),
    "j2k": ("1.2.840.10008.1.2.4.90", "pydicom"),
    "htj2k": ("1.2.840.10008.1.2.4.201", "openjph"),
    "htj2k-rpcl": ("1.2.840.10008.1.2.4.202", "openjph"),
    "htj2k-lossy": ("1.2.840.10008.1.2.4.203", "openjph"),
    "jpeg-lossless-sv1": ("1.2.840.10008.1.2.4.70", "dcmtk"),
    "jpeg-lossless": ("1.2.840.10008.1.2.4.57", "dcmtk"),
    "jpeg-baseline": ("1.2.840.10008.1.2.4.50", "pillow"),
}


@dataclass(frozen=True)
class Radiograph:
    """One generated image: its pixels, how they are stored, its encoded file and that file's
    pixels stored uncompressed (:func:`uncompressed`)."""

    name: str
    syntax: str
    rows: int
    columns: int
    bits: int
    photometric: str
    data: bytes
    uncompressed: bytes


def synthetic_pixels(rows: int, columns: int, bits: int, seed: int) -> np.ndarray:
    """A radiograph-like stored-value frame: a bright body with darker lungs, ribs, noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, columns, dtype=np.float32)[None, :]
    body = np.exp(-((x / 0.8) ** 4) - (y / 0.95) ** 4)
    lungs = np.exp(-(((np.abs(x) - 0.38) / 0.22) ** 2) - ((y + 0.05) / 0.5) ** 2)
    ribs = 0.08 * np.sin(y * 40.0 + 3.0 * x**2) * lungs
    image = 0.15 + 0.7 * body - 0.45 * lungs + ribs
    image += rng.normal(0.0, 0.01, size=(rows, columns)).astype(np.float32)
    top = (1 << bits) - 1
    return np.clip(image * top * 0.9 + top * 0.03, 0, top).astype(np.uint16)


def radiograph_dataset(pixels: np.ndarray, bits: int, photometric: str) -> Dataset:
    """A CR-like single-frame greyscale dataset (explicit VR little endian) with a window."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientName = "Synthetic^Radiograph"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = int(pixels.mean())
    ds.WindowWidth = int(np.percentile(pixels, 99.5) - np.percentile(pixels, 0.5)) or 1
    dtype = np.uint8 if bits == 8 else np.uint16
    ds.PixelData = pixels.astype(dtype).tobytes()
    return ds


def encode(ds: Dataset, syntax: str) -> bytes:
    """``ds`` (explicit VR little endian) written in the transfer syntax named ``syntax``."""
    from pydicom.uid import UID

    uid, how = SYNTAXES[syntax]
    ds = copy.deepcopy(ds)  # a shallow copy shares the elements, Transfer Syntax UID included
    if how == "native":
        ds.file_meta.TransferSyntaxUID = UID(uid)
    elif how == "pydicom":
        ds.compress(UID(uid))
    elif how == "openjph":
        ds = _htj2k(ds, UID(uid))
    elif how == "pillow":
        ds = _jpeg_baseline(ds)
    elif how == "dcmtk":
        return _dcmtk_jpeg(ds, "+e1" if uid.endswith(".70") else "+el")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def uncompressed(data: bytes) -> bytes:
    """The pixels of an encoded file, decoded and written explicit VR little endian: what a codec
    that cost nothing would leave (for lossy JPEG, its decoded pixels, not the original frame)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    from cxr.client.imaging import prefer_fast_codecs

    ds = pydicom.dcmread(io.BytesIO(data))
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        prefer_fast_codecs(ds)
        ds.decompress(generate_instance_uid=False)
    else:  # deflated or implicit VR: read as plain values already
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def can_encode(syntax: str) -> str | None:
    """None when ``syntax`` can be generated here, else why not."""
    how = SYNTAXES[syntax][1]
    if how == "dcmtk" and shutil.which("dcmcjpeg") is None:
        return "dcmtk's dcmcjpeg is not installed (apt-get install dcmtk)"
    if how == "openjph" and importlib.util.find_spec("imagecodecs") is None:
        return "imagecodecs (OpenJPH's HTJ2K encoder) is not installed: pip install imagecodecs"
    return None


def _jpeg_baseline(ds: Dataset) -> Dataset:
    from PIL import Image
    from pydicom.uid import JPEGBaseline8Bit

    pixels = _stored_frame(ds)
    if ds.BitsStored > 8:  # baseline JPEG is 8-bit: keep the top bits, as a modality would
        pixels = (pixels >> (ds.BitsStored - 8)).astype(np.uint8)
        ds.WindowCenter, ds.WindowWidth = int(pixels.mean()), 200
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    return _encapsulated(ds, buffer.getvalue(), JPEGBaseline8Bit)


def _htj2k(ds: Dataset, uid: UID) -> Dataset:
    """A real Part 15 (high-throughput) codestream from OpenJPH, RPCL progression (its default):
    reversible for the lossless syntaxes, with tile-part length (TLM) markers for the RPCL one;
    for HTJ2K (``.203``) the irreversible wavelet with a quantisation step of
    :data:`HTJ2K_LOSSY_STEP` (~25:1 on 12-bit frames, up to ~130 stored levels off)."""
    from imagecodecs import htj2k_encode
    from pydicom.uid import HTJ2K, HTJ2KLosslessRPCL

    frame = _stored_frame(ds)
    if uid != HTJ2K:
        codestream = htj2k_encode(frame, reversible=True, tlm=uid == HTJ2KLosslessRPCL)
        return _encapsulated(ds, codestream, uid)
    codestream = htj2k_encode(frame, HTJ2K_LOSSY_STEP, reversible=False)
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{frame.nbytes / len(codestream):.1f}"
    ds.LossyImageCompressionMethod = "ISO_15444_15"
    return _encapsulated(ds, codestream, uid)


def _stored_frame(ds: Dataset) -> np.ndarray:
    """The native frame of ``ds`` (as :func:`radiograph_dataset` writes it) as an array."""
    pixels = np.frombuffer(ds.PixelData, np.uint16 if ds.BitsAllocated == 16 else np.uint8)
    return pixels.reshape(ds.Rows, ds.Columns)


def _encapsulated(ds: Dataset, frame: bytes, uid: UID) -> Dataset:
    """``ds`` with ``frame`` (one compressed frame) as its encapsulated Pixel Data in ``uid``."""
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid
    return ds


def _dcmtk_jpeg(ds: Dataset, option: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="cxr-dcmtk-") as folder:
        source, target = Path(folder) / "in.dcm", Path(folder) / "out.dcm"
        ds.save_as(source, enforce_file_format=True)
        subprocess.run(
            ["dcmcjpeg", option, str(source), str(target)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return target.read_bytes()


#: Matrix sizes (rows, columns) of common CR/DX detectors and cassettes, 2000-3000 px.
DETECTOR_SIZES = (
    (3000, 2500),
    (2836, 2336),
    (2500, 2048),
    (2688, 2688),
    (3000, 3000),
    (2022, 2022),
)


def corpus(syntaxes: list[str], count: int, *, seed: int = 0) -> list[Radiograph]:
    """``count`` radiographs per syntax, alternating 12/16-bit and MONOCHROME2/1, in turn in
    each of :data:`DETECTOR_SIZES`."""
    rng = np.random.default_rng(seed)
    images = []
    for syntax in syntaxes:
        for index in range(count):
            rows, columns = DETECTOR_SIZES[index % len(DETECTOR_SIZES)]
            bits = 12 if index % 2 == 0 else 16
            photometric = "MONOCHROME2" if index % 4 < 2 else "MONOCHROME1"
            pixels = synthetic_pixels(rows, columns, bits, seed=int(rng.integers(1 << 31)))
            data = encode(radiograph_dataset(pixels, bits, photometric), syntax)
            name = f"{syntax}-{index}"
            plain = data if syntax == "explicit" else uncompressed(data)
            images.append(Radiograph(name, syntax, rows, columns, bits, photometric, data, plain))
    return images


def reference_model_input(data: bytes, size: int) -> np.ndarray:
    """The straightforward decode: pydicom ``pixel_array``, modality and VOI LUT in float64,
    min..max to uint8 (8-bit values with no LUT as stored, the project's display rule),
    MONOCHROME1 inverted, centre crop, Pillow antialiased bilinear resize.
    Codecs are those the project's path uses, so the two differ only in what follows them."""
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from cxr.client.imaging import prefer_fast_codecs

    ds = pydicom.dcmread(io.BytesIO(data))
    prefer_fast_codecs(ds)
    pixels = ds.pixel_array
    plain = not any(k in ds for k in ("RescaleSlope", "RescaleIntercept", "WindowCenter"))
    if (
        pixels.dtype == np.uint8
        and int(ds.BitsStored) >= 8
        and plain
        and "VOILUTSequence" not in ds
    ):
        gray = pixels  # the display rule: 8-bit values with no LUT are shown as stored
    else:
        values = np.asarray(apply_voi_lut(apply_modality_lut(pixels, ds), ds), dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        gray = np.clip((values - low) * (255.0 / max(high - low, 1e-12)) + 0.5, 0, 255)
        gray = gray.astype(np.uint8)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        gray = 255 - gray
    side = min(gray.shape)
    top, left = (gray.shape[0] - side) // 2, (gray.shape[1] - side) // 2
    square = Image.fromarray(np.ascontiguousarray(gray[top : top + side, left : left + side]))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR))[None]

"""What every load generator sends: the target model and prepared request inputs.

Shared by the Locust user (gevent) and the asyncio baseline, so both send identical requests.
Two payloads: ``decoded`` sends uint8 model inputs to the classifier (the batcher and model under
load); ``encoded`` sends the files themselves, pixels only as ``cxr client predict
--server-preprocess`` does, to the ``pneumonia`` ensemble, so the server's ``preprocess`` decodes
every request. Nothing here imports a gRPC client at module level: the locustfile must patch
gRPC first.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
from PIL import Image

from cxr.client import contract
from cxr.client.core import discover
from cxr.client.imaging import ImageDecodeError, load_model_input
from cxr.client.inputs import describe, server_payload
from cxr.client.protocol import TriageError
from cxr.loadtest.runner import Payload

#: At most this many files of an ``--images`` folder are decoded (once per process).
PAYLOAD_LIMIT = 256
SYNTHETIC_PAYLOADS = 16
PAYLOADS: tuple[Payload, ...] = get_args(Payload)


def image_files(folder: Path) -> list[Path]:
    """The files a payload folder offers, sorted (raises ValueError when there are none)."""
    if not folder.is_dir():
        raise ValueError(f"--images {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"--images {folder}: the folder holds no files")
    return files[:PAYLOAD_LIMIT]


def load_payloads(folder: Path | None, size: int, seed: int = 0) -> list[np.ndarray]:
    """Model inputs [1, 1, S, S]: real images of ``folder`` (undecodable files skipped) or noise."""
    if folder is None:
        rng = np.random.default_rng(seed)
        return [
            rng.integers(0, 256, (1, 1, size, size), dtype=np.uint8)
            for _ in range(SYNTHETIC_PAYLOADS)
        ]
    images = []
    for path in image_files(folder):
        try:
            images.append(load_model_input(path.read_bytes(), size)[None])
        except (ImageDecodeError, OSError):
            continue
    if not images:
        raise ValueError(f"--images {folder}: no decodable image among its files")
    return images


def load_files(folder: Path | None, size: int, seed: int = 0) -> list[bytes]:
    """Encoded files as the client sends them to the ensemble (pixels only): the decodable files
    of ``folder`` (others skipped), or synthetic noise as PNG."""
    if folder is None:
        files = []
        for image in load_payloads(None, size, seed):
            buffer = io.BytesIO()
            Image.fromarray(image[0, 0]).save(buffer, format="PNG")
            files.append(buffer.getvalue())
        return files
    files = []
    for index, path in enumerate(image_files(folder)):
        try:
            data = path.read_bytes()
            load_model_input(data, size)  # only files the server can decode
            files.append(server_payload(data, describe(data, index)))
        except (ImageDecodeError, OSError):
            continue
    if not files:
        raise ValueError(f"--images {folder}: no decodable image among its files")
    return files


def resolve_model(client: Any, model: str | None, timeout: float) -> tuple[str, int]:
    """(classifier name, image size) for ``model``, found as the client finds it; an ensemble
    resolves to the classifier it routes to, so the load measures the batcher with its priority
    queues. ``client`` is a synchronous ``tritonclient.grpc.InferenceServerClient``; each call
    waits ``timeout`` s."""

    def get_config(name: str) -> dict:
        return client.get_model_config(name, as_json=True, client_timeout=timeout)["config"]

    try:
        info = discover(get_config, model or contract.ENSEMBLE_MODEL, server_preprocess=False)
    except TriageError as err:
        raise ValueError(str(err)) from err
    return info.name, info.image_size


@dataclass
class Target:
    """The classifier to call and one prepared ``InferInput`` list per payload."""

    model: str
    inputs: list[list[Any]]
    outputs: list[Any]
    payload_bytes: int


def prepare_target(
    client: Any,
    model: str | None,
    images: Path | None,
    timeout: float = 10.0,
    payload: Payload = "decoded",
) -> Target:
    """Resolve the model and turn the payloads into reusable request inputs (decoded once);
    ``encoded``: the files, to the ensemble (``model``, default ``pneumonia``)."""
    if payload not in PAYLOADS:
        raise ValueError(f"payload must be one of {', '.join(PAYLOADS)}, not {payload!r}")
    name, size = resolve_model(client, model, timeout)
    if payload == "decoded":
        return target_of(name, load_payloads(images, size))
    if model and name == model:
        raise ValueError(f"--payload encoded sends files to an ensemble; {model!r} is not one")
    files = [np.array([[data]], dtype=np.object_) for data in load_files(images, size)]
    return target_of(model or contract.ENSEMBLE_MODEL, files)


def target_of(
    model: str, arrays: list[np.ndarray], outputs: tuple[str, ...] = (contract.PROBS,)
) -> Target:
    """The target ``model`` with ``arrays`` as its payloads, asking for ``outputs``: model inputs
    (uint8 [1, 1, S, S]) or encoded files (object [1, 1] of bytes, for the ensemble)."""
    import tritonclient.grpc as grpcclient

    if arrays[0].dtype == np.object_:
        name, dtype = contract.IMAGE_BYTES, contract.IMAGE_BYTES_TRITON_DTYPE
        length = round(float(np.mean([len(array[0, 0]) for array in arrays])))
    else:
        name, dtype, length = contract.IMAGE, contract.IMAGE_TRITON_DTYPE, arrays[0].size
    inputs = []
    for array in arrays:
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append([tensor])
    requested = [grpcclient.InferRequestedOutput(output) for output in outputs]
    return Target(model, inputs, requested, length)

"""What every load generator sends: the target classifier and prepared request inputs.

Shared by the Locust user (gevent) and the asyncio baseline, so both send identical requests.
Nothing here imports a gRPC client at module level: the locustfile must patch gRPC first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.client import contract
from cxr.client.core import discover
from cxr.client.imaging import ImageDecodeError, load_model_input
from cxr.client.protocol import TriageError

#: At most this many files of an ``--images`` folder are decoded (once per process).
PAYLOAD_LIMIT = 256
SYNTHETIC_PAYLOADS = 16


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
    client: Any, model: str | None, images: Path | None, timeout: float = 10.0
) -> Target:
    """Resolve the model and turn the payloads into reusable request inputs (decoded once)."""
    name, size = resolve_model(client, model, timeout)
    return target_of(name, load_payloads(images, size))


def target_of(
    model: str, images: list[np.ndarray], outputs: tuple[str, ...] = (contract.PROBS,)
) -> Target:
    """The target ``model`` with ``images`` (each [1, 1, S, S] uint8) as its payloads, asking for
    ``outputs``."""
    import tritonclient.grpc as grpcclient

    inputs = []
    for image in images:
        tensor = grpcclient.InferInput(
            contract.IMAGE, list(image.shape), contract.IMAGE_TRITON_DTYPE
        )
        tensor.set_data_from_numpy(image)
        inputs.append([tensor])
    requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
    return Target(model, inputs, requested, images[0].size)

"""Building inference requests and reading responses (shared by the sync and asyncio clients)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client import contract
from client.imaging import ImageDecodeError
from client.inputs import Input, describe, local_model_input, server_payload
from client.protocol import Failure, ModelInfo, TriageError, deployed_classifier


@dataclass
class Connection:
    """Where and how to connect; every call takes its deadline from ``timeout`` (seconds)."""

    url: str = "localhost:8001"
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    timeout: float = 30.0
    headers: dict[str, str] | None = None

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of tritonclient's gRPC ``InferenceServerClient``."""
        return {
            "url": self.url,
            "ssl": self.ssl,
            "root_certificates": self.root_certificates,
            "private_key": self.private_key,
            "certificate_chain": self.certificate_chain,
        }


@dataclass
class PreparedRequest:
    """One input turned into the tensors of one request."""

    source: str
    model: str
    inputs: list[Any]
    outputs: list[Any]


def priority_level(priority: str) -> int:
    """``stat`` / ``routine`` -> Triton priority level."""
    try:
        return contract.PRIORITIES[priority]
    except KeyError:
        choices = sorted(contract.PRIORITIES)
        raise ValueError(f"priority must be one of {choices}, not {priority!r}") from None


def prepare(value: Input, index: int, info: ModelInfo) -> PreparedRequest | Failure:
    """Decode (or re-encode) one input into request tensors; a bad input becomes a Failure."""
    import tritonclient.grpc as grpcclient

    source = str(value) if isinstance(value, str | Path) else f"input:{index}"
    try:
        prepared = describe(value, index)
        source = prepared.source
        if info.server_preprocess:
            payload = np.array([[server_payload(value, prepared)]], dtype=np.object_)
            tensor = grpcclient.InferInput(contract.IMAGE_BYTES, [1, 1], "BYTES")
            tensor.set_data_from_numpy(payload)
        else:
            image = local_model_input(value, prepared, info.image_size)[None]
            tensor = grpcclient.InferInput(contract.IMAGE, list(image.shape), "UINT8")
            tensor.set_data_from_numpy(image)
    except ImageDecodeError as err:
        return Failure(source, err.code, str(err))
    outputs = [grpcclient.InferRequestedOutput(contract.PROBS)]
    return PreparedRequest(source, info.name, [tensor], outputs)


def read_probs(result: Any) -> tuple[np.ndarray, str]:
    """``PROBS`` of the single item in a response, and the model version that answered."""
    probs = result.as_numpy(contract.PROBS)
    if probs is None:
        raise TriageError("bad_response", f"response has no {contract.PROBS} output")
    return probs[0], str(result.get_response().model_version)


def discovery(model: str | None, server_preprocess: bool) -> Generator[str, dict, ModelInfo]:
    """Sans-IO model discovery: yields model names, receives their JSON configs.

    With no model named, the ``pneumonia`` ensemble says which classifier is deployed; requests go
    to that classifier with local preprocessing, or to the ensemble with ``server_preprocess``.
    """
    target = model or contract.ENSEMBLE_MODEL
    config = yield target
    if config.get("platform") == "ensemble":
        classifier = deployed_classifier(config)
        send_to = target if server_preprocess else classifier
        config = yield classifier
    elif server_preprocess:
        raise TriageError(
            "bad_model",
            f"server-side preprocessing needs the {contract.ENSEMBLE_MODEL!r} ensemble, "
            f"but {target!r} is a classifier",
        )
    else:
        send_to = target
    return ModelInfo.from_configs(send_to, config, server_preprocess)

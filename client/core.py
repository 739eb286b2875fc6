"""The core the sync and asyncio clients share: connection, model discovery, building requests
and reading responses, all without I/O of their own."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.client import contract
from cxr.client.imaging import ImageDecodeError
from cxr.client.inputs import Input, describe, fallback_source, local_model_input, server_payload
from cxr.client.protocol import (
    Backoff,
    Failure,
    ModelInfo,
    Outage,
    Result,
    TriageError,
    deployed_classifier,
    to_prediction,
)


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
        """Keyword arguments of tritonclient's gRPC ``InferenceServerClient``: message sizes
        capped at the largest legitimate request and response (tritonclient's default is 2 GB),
        tritonclient's keep-alive defaults otherwise."""
        from tritonclient.grpc import KeepAliveOptions

        keepalive = KeepAliveOptions()
        return {
            "url": self.url,
            "ssl": self.ssl,
            "root_certificates": self.root_certificates,
            "private_key": self.private_key,
            "certificate_chain": self.certificate_chain,
            "channel_args": [
                ("grpc.max_send_message_length", contract.MAX_REQUEST_BYTES),
                ("grpc.max_receive_message_length", contract.MAX_RESPONSE_BYTES),
                ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
                ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
                ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
                ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ],
        }


def admin_headers(admin_key: str | None) -> dict[str, str] | None:
    """Request headers that open the server's restricted (admin) protocols."""
    return {contract.GRPC_ADMIN_HEADER: admin_key} if admin_key else None


@dataclass
class PreparedRequest:
    """One input turned into the tensors of one request."""

    source: str
    model: str
    inputs: list[Any]
    outputs: list[Any]
    #: SHA-256 of the bytes read for this request: the result is bound to this content.
    sha256: str = ""
    #: The uint8 model input [S, S], kept for the heatmap it gets (``heatmaps=True`` only).
    image: np.ndarray | None = None


def priority_level(priority: str) -> int:
    """``stat`` / ``routine`` -> Triton priority level."""
    try:
        return contract.PRIORITIES[priority]
    except KeyError:
        choices = sorted(contract.PRIORITIES)
        raise ValueError(f"priority must be one of {choices}, not {priority!r}") from None


@dataclass
class Payload:
    """One input decoded (or re-encoded) for its request: what a decoding process sends back."""

    source: str
    #: uint8 ``[1, 1, S, S]`` model input, or the ``[1, 1]`` object array of encoded bytes.
    data: np.ndarray
    #: SHA-256 of the bytes read for this input.
    sha256: str = ""
    #: The uint8 model input [S, S], kept for its heatmap (``keep_image`` only).
    image: np.ndarray | None = None


def decode_input(
    value: Input, index: int, server_preprocess: bool, image_size: int, keep_image: bool = False
) -> Payload | Failure:
    """Decode (or re-encode) one input; a bad input becomes a Failure. Picklable in and out and
    free of gRPC, so it runs in a decoding process.

    Never raises: an unexpected decoder exception is a ``decode_failed`` Failure, so one bad
    input cannot stop a run.
    """
    source, digest, image = fallback_source(value, index), "", None
    try:
        prepared = describe(value, index)
        source = prepared.source
        if prepared.data is not None:
            digest = hashlib.sha256(prepared.data).hexdigest()
        if not server_preprocess or keep_image:  # the heatmap overlay needs the model input
            image = local_model_input(value, prepared, image_size)
        if server_preprocess:
            data = np.array([[server_payload(value, prepared)]], dtype=np.object_)
        else:
            data = image[None]
    except ImageDecodeError as err:
        return Failure(source, err.code, str(err), digest)
    except Exception as err:
        return Failure(source, "decode_failed", f"{type(err).__name__}: {err}", digest)
    return Payload(source, data, digest, image[0] if keep_image and image is not None else None)


def to_request(payload: Payload, info: ModelInfo) -> PreparedRequest:
    """The request tensors of a decoded input (asking for ``HEATMAP`` too with heatmaps)."""
    import tritonclient.grpc as grpcclient

    if info.server_preprocess:
        name, dtype = contract.IMAGE_BYTES, contract.IMAGE_BYTES_TRITON_DTYPE
    else:
        name, dtype = contract.IMAGE, contract.IMAGE_TRITON_DTYPE
    tensor = grpcclient.InferInput(name, list(payload.data.shape), dtype)
    tensor.set_data_from_numpy(payload.data)
    names = [contract.PROBS, *([contract.HEATMAP] if info.heatmaps else [])]
    outputs = [grpcclient.InferRequestedOutput(n) for n in names]
    return PreparedRequest(
        payload.source, info.name, [tensor], outputs, payload.sha256, payload.image
    )


def prepare(value: Input, index: int, info: ModelInfo) -> PreparedRequest | Failure:
    """Decode one input into request tensors in this process; a bad input becomes a Failure."""
    payload = decode_input(value, index, info.server_preprocess, info.image_size, info.heatmaps)
    return payload if isinstance(payload, Failure) else to_request(payload, info)


def finish(request: PreparedRequest, reply: Any, info: ModelInfo, started: float) -> Result:
    """The result of one answered request: ``PROBS`` interpreted at the model's threshold, and
    ``HEATMAP`` when it was asked for."""
    probs = reply.as_numpy(contract.PROBS)
    if probs is None or len(probs) != 1:
        raise TriageError("bad_response", f"response has no single {contract.PROBS} row")
    latency = (time.monotonic() - started) * 1000
    version = str(reply.get_response().model_version)
    prediction = to_prediction(request.source, probs[0], info, version, latency)
    prediction.sha256 = request.sha256
    if info.heatmaps:
        heatmap = reply.as_numpy(contract.HEATMAP)
        if heatmap is None or heatmap.ndim != 3 or len(heatmap) != 1:
            raise TriageError("bad_response", f"response has no single {contract.HEATMAP} map")
        prediction.heatmap, prediction.image = heatmap[0], request.image
    return prediction


def discovery(
    model: str | None, server_preprocess: bool, heatmaps: bool = False
) -> Generator[str, dict, ModelInfo]:
    """Sans-IO model discovery: yields model names, receives their JSON configs.

    With no model named, the ``pneumonia`` ensemble says which classifier is deployed; requests go
    to that classifier with local preprocessing, or to the ensemble with ``server_preprocess``.
    ``heatmaps``: requests ask for ``HEATMAP`` too (the classifier must have it).
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
    return ModelInfo.from_configs(send_to, config, server_preprocess, heatmaps)


def discover(
    get_config: Callable[[str], dict],
    model: str | None,
    server_preprocess: bool,
    heatmaps: bool = False,
) -> ModelInfo:
    """Run :func:`discovery` with a synchronous ``get_config(name)`` returning a JSON config."""
    steps = discovery(model, server_preprocess, heatmaps)
    name = next(steps)
    while True:
        try:
            name = steps.send(get_config(name))
        except StopIteration as done:
            return done.value


class ClientBase:
    """Arguments and state shared by :class:`~client.TriageClient` and its asyncio twin."""

    def __init__(
        self,
        url: str = "localhost:8001",
        model: str | None = None,
        *,
        server_preprocess: bool = False,
        priority: str = "routine",
        timeout: float = 30.0,
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        headers: dict[str, str] | None = None,
        backoff: Backoff | None = None,
        heatmaps: bool = False,
    ) -> None:
        self.connection = Connection(
            url, ssl, root_certificates, private_key, certificate_chain, timeout, headers
        )
        self._client = self._connect(self.connection)
        self._model = model
        self._server_preprocess = server_preprocess
        self._heatmaps = heatmaps
        self._priority = priority_level(priority)
        self._backoff = backoff or Backoff()
        self.outage = Outage(self._backoff.maximum)
        self._info: ModelInfo | None = None

    def _connect(self, connection: Connection) -> Any:
        """The tritonclient gRPC client (sync or asyncio) for ``connection``."""
        raise NotImplementedError

    def _infer_call(self, request: PreparedRequest, level: int) -> Callable[[float], Any]:
        """The inference call of ``request`` at priority ``level``, given the seconds left (the
        sync client's reply, or the asyncio client's awaitable of it)."""
        return lambda remaining: self._client.infer(
            request.model,
            request.inputs,
            outputs=request.outputs,
            priority=level,
            client_timeout=remaining,
            headers=self.connection.headers,
        )

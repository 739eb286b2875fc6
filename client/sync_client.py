"""``TriageClient``: the synchronous gRPC client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from cxr.client.core import (
    ClientBase,
    Connection,
    PreparedRequest,
    discover,
    finish,
    prepare,
    priority_level,
)
from cxr.client.inputs import Input, as_items
from cxr.client.protocol import Attempts, Failure, ModelInfo, Result, TriageError

T = TypeVar("T")


class TriageClient(ClientBase):
    """Pneumonia triage over Triton gRPC.

    ``model=None`` follows the ``pneumonia`` ensemble to the deployed classifier and sends it
    locally decoded uint8 images; ``server_preprocess=True`` sends encoded files to the ensemble.
    ``heatmaps=True`` asks for ``HEATMAP`` too: each :class:`Prediction` then has ``heatmap``
    (the class activation map, 0..1) and ``image`` (the model input it lies on).
    Every call is bounded by ``timeout`` seconds, retries included: UNAVAILABLE (server down or
    restarting) and a full or timed-out server queue (``server_busy``) are retried with
    exponential backoff until then.
    """

    def _connect(self, connection: Connection) -> Any:
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(**connection.client_kwargs())

    # -- model discovery -----------------------------------------------------------------------
    def model_info(self) -> ModelInfo:
        """The model requests go to, its image size, classes and operating threshold (cached)."""
        if self._info is None:
            self._info = discover(
                self.model_config, self._model, self._server_preprocess, self._heatmaps
            )
        return self._info

    def model_config(self, name: str) -> dict[str, Any]:
        """A model's config as JSON."""
        return self._call(self._client.get_model_config, name, as_json=True)["config"]

    # -- inference -----------------------------------------------------------------------------
    def predict(
        self,
        inputs: Input | Iterable[Input],
        priority: str | None = None,
        timeout: float | None = None,
    ) -> list[Result]:
        """Triage each input: a :class:`Prediction` or a :class:`Failure` per input, in order."""
        info = self.model_info()
        level = priority_level(priority) if priority else self._priority
        results: list[Result] = []
        for index, value in enumerate(as_items(inputs)):
            request = prepare(value, index, info)
            if isinstance(request, PreparedRequest):
                request = self._infer(request, info, level, timeout or self.connection.timeout)
            results.append(request)
        return results

    def _infer(
        self, request: PreparedRequest, info: ModelInfo, level: int, timeout: float
    ) -> Result:
        started = time.monotonic()
        try:
            reply = self._retrying(timeout, self._infer_call(request, level))
            return finish(request, reply, info, started)
        except TriageError as err:
            return Failure(request.source, err.code, err.message, request.sha256)

    def _retrying(self, timeout: float, call: Callable[[float], T]) -> T:
        from tritonclient.utils import InferenceServerException

        attempts = Attempts(timeout, self._backoff, self.outage)
        while True:
            try:
                reply = call(attempts.budget())
            except InferenceServerException as err:
                time.sleep(attempts.retry_after(err))
            else:
                attempts.succeeded()
                return reply

    def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._retrying(
            self.connection.timeout,
            lambda remaining: method(
                *args, **kwargs, headers=self.connection.headers, client_timeout=remaining
            ),
        )

    # -- health and metadata -------------------------------------------------------------------
    def is_live(self) -> bool:
        """Whether the server answers."""
        return bool(self._call(self._client.is_server_live))

    def is_ready(self, model: str | None = None) -> bool:
        """Whether the server (or one model) is ready for inference."""
        if model:
            return bool(self._call(self._client.is_model_ready, model))
        return bool(self._call(self._client.is_server_ready))

    def server_metadata(self) -> dict[str, Any]:
        """Server name, version and extensions."""
        return self._call(self._client.get_server_metadata, as_json=True)

    def model_metadata(self, name: str) -> dict[str, Any]:
        """A model's versions, inputs and outputs."""
        return self._call(self._client.get_model_metadata, name, as_json=True)

    def repository_index(self) -> list[dict[str, Any]]:
        """Every model in the repository with its state (an admin call: the client needs
        ``headers=client.requests.admin_headers(KEY)`` when the server restricts it)."""
        return self._call(self._client.get_model_repository_index, as_json=True).get("models", [])

    def close(self) -> None:
        """Close the channel."""
        self._client.close()

    def __enter__(self) -> TriageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

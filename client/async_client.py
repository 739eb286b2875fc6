"""``AsyncTriageClient``: the asyncio gRPC client, with pipelined, bounded-concurrency triage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from client.inputs import Input
from client.protocol import (
    Backoff,
    Failure,
    ModelInfo,
    Result,
    TriageError,
    classify_error,
    is_retryable,
    to_prediction,
)
from client.requests import Connection, discovery, prepare, priority_level, read_probs


class AsyncTriageClient:
    """The asyncio twin of :class:`client.TriageClient` (same arguments, awaitable calls).

    Decoding runs in a thread pool while requests are in flight, so a single client keeps
    ``concurrency`` requests outstanding.
    """

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
    ) -> None:
        import tritonclient.grpc.aio as aioclient

        self.connection = Connection(
            url, ssl, root_certificates, private_key, certificate_chain, timeout, headers
        )
        self._client = aioclient.InferenceServerClient(**self.connection.client_kwargs())
        self._model = model
        self._server_preprocess = server_preprocess
        self._priority = priority_level(priority)
        self._backoff = backoff or Backoff()
        self._info: ModelInfo | None = None

    async def model_info(self) -> ModelInfo:
        """The model requests go to, its image size, classes and operating threshold (cached)."""
        if self._info is None:
            steps = discovery(self._model, self._server_preprocess)
            name = next(steps)
            while True:
                try:
                    name = steps.send(await self.model_config(name))
                except StopIteration as done:
                    self._info = done.value
                    break
        return self._info

    async def model_config(self, name: str) -> dict[str, Any]:
        """A model's config as JSON."""
        reply = await self._call(self._client.get_model_config, name, as_json=True)
        return reply["config"]

    async def predict(
        self,
        inputs: Input | Iterable[Input],
        priority: str | None = None,
        timeout: float | None = None,
        concurrency: int = 8,
    ) -> list[Result]:
        """Triage each input; results in input order, one per input."""
        items = [inputs] if not isinstance(inputs, list | tuple) else list(inputs)
        results: list[Result | None] = [None] * len(items)
        async for index, result in self.predict_stream(items, priority, timeout, concurrency):
            results[index] = result
        return [r for r in results if r is not None]

    async def predict_stream(
        self,
        items: list[Input],
        priority: str | None = None,
        timeout: float | None = None,
        concurrency: int = 8,
    ) -> AsyncIterator[tuple[int, Result]]:
        """Yield ``(index, result)`` as each input completes, ``concurrency`` at a time."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        info = await self.model_info()
        level = priority_level(priority) if priority else self._priority
        queue: asyncio.Queue[tuple[int, Result] | None] = asyncio.Queue()
        next_index = iter(range(len(items)))

        async def worker() -> None:
            for index in next_index:
                result = await self.predict_one(items[index], index, info, level, timeout)
                await queue.put((index, result))
            await queue.put(None)

        workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(items)))]
        finished = 0
        try:
            while finished < len(workers):
                item = await queue.get()
                if item is None:
                    finished += 1
                else:
                    yield item
        finally:
            for task in workers:
                task.cancel()

    async def predict_one(
        self, value: Input, index: int, info: ModelInfo, level: int, timeout: float | None
    ) -> Result:
        """Prepare (in a thread) and send one input."""
        loop = asyncio.get_running_loop()
        request = await loop.run_in_executor(None, prepare, value, index, info)
        if isinstance(request, Failure):
            return request
        started = time.perf_counter()
        deadline = started + (timeout or self.connection.timeout)
        try:
            reply = await self._with_retries(
                deadline,
                lambda remaining: self._client.infer(
                    request.model,
                    request.inputs,
                    outputs=request.outputs,
                    priority=level,
                    client_timeout=remaining,
                    headers=self.connection.headers,
                ),
            )
            probs, version = read_probs(reply)
        except TriageError as err:
            return Failure(request.source, err.code, str(err))
        latency = (time.perf_counter() - started) * 1000
        return to_prediction(request.source, probs, info, version, latency)

    async def _with_retries(self, deadline: float, call):
        from tritonclient.utils import InferenceServerException

        delays = self._backoff.delays()
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TriageError(
                    "deadline_exceeded", "deadline_exceeded: no time left for a retry"
                )
            try:
                return await call(remaining)
            except InferenceServerException as err:
                delay = next(delays, None) if is_retryable(err) else None
                if delay is None or time.perf_counter() + delay >= deadline:
                    raise classify_error(err) from err
                await asyncio.sleep(delay)

    async def _call(self, method, *args: Any, **kwargs: Any) -> Any:
        deadline = time.perf_counter() + self.connection.timeout
        return await self._with_retries(
            deadline,
            lambda remaining: method(
                *args, **kwargs, headers=self.connection.headers, client_timeout=remaining
            ),
        )

    async def is_ready(self, model: str | None = None) -> bool:
        """Whether the server (or one model) is ready for inference."""
        if model:
            return bool(await self._call(self._client.is_model_ready, model))
        return bool(await self._call(self._client.is_server_ready))

    async def close(self) -> None:
        """Close the channel."""
        await self._client.close()

    async def __aenter__(self) -> AsyncTriageClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

"""``AsyncTriageClient``: the asyncio gRPC client, with pipelined, bounded-concurrency triage."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from cxr.client.core import (
    ClientBase,
    Connection,
    PreparedRequest,
    decode_input,
    discovery,
    finish,
    priority_level,
    to_request,
)
from cxr.client.inputs import Input, as_items, fallback_source
from cxr.client.protocol import Attempts, Failure, ModelInfo, Result, TriageError

T = TypeVar("T")


def default_decode_workers() -> int:
    """One decoding process per core this process may use: decoding holds the interpreter lock
    in places, so threads would share one core's worth of it."""
    return len(os.sched_getaffinity(0))


def exit_with_parent(parent: int) -> None:
    """In a decoding process: end once ``parent``, the process that started it, has ended, even
    by SIGKILL (a pool's workers would otherwise wait on their queue for ever); a daemon thread
    looks once a second."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class AsyncTriageClient(ClientBase):
    """The asyncio twin of :class:`client.TriageClient` (same arguments, awaitable calls, and
    ``decode_workers``, default :func:`default_decode_workers`).

    :meth:`predict_stream` keeps ``concurrency`` requests in flight on one gRPC channel while
    inputs are read and decoded in ``decode_workers`` processes (spawned, never forked: gRPC's
    threads do not survive a fork), started at the first decode.
    """

    def __init__(self, *args: Any, decode_workers: int | None = None, **kwargs: Any) -> None:
        if decode_workers is not None and decode_workers < 1:
            raise ValueError(f"decode_workers must be at least 1, not {decode_workers}")
        super().__init__(*args, **kwargs)
        self._workers = decode_workers or default_decode_workers()
        self._decoder = self._new_pool(self._workers)

    @staticmethod
    def _new_pool(workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=exit_with_parent,
            initargs=(os.getpid(),),
        )

    def _connect(self, connection: Connection) -> Any:
        import tritonclient.grpc.aio as aioclient

        return aioclient.InferenceServerClient(**connection.client_kwargs())

    async def model_info(self) -> ModelInfo:
        """The model requests go to, its image size, classes and operating threshold (cached)."""
        if self._info is None:
            steps = discovery(self._model, self._server_preprocess, self._heatmaps)
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
        """Triage each input; one result per input, in input order."""
        items = as_items(inputs)
        results: list[Result | None] = [None] * len(items)
        async for index, result in self.predict_stream(items, priority, timeout, concurrency):
            results[index] = result
        assert all(result is not None for result in results)
        return results  # type: ignore[return-value]

    async def predict_stream(
        self,
        items: Iterable[Input],
        priority: str | None = None,
        timeout: float | None = None,
        concurrency: int = 8,
    ) -> AsyncIterator[tuple[int, Result]]:
        """Yield ``(index, result)`` as each input completes, ``concurrency`` in flight.

        Exactly one result per input, whatever happens to it; inputs are read lazily.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        info = await self.model_info()
        level = priority_level(priority) if priority else self._priority
        pending = enumerate(items)
        done: asyncio.Queue[tuple[int, Result] | None] = asyncio.Queue()

        async def worker() -> None:
            # Decode the next input while this one is in flight: `concurrency` requests stay
            # outstanding, with as many decodes submitted to the processes beside them (files
            # are read by the processes as they come: never all first).
            upcoming = None
            try:
                upcoming = self._prepare_next(pending, info)
                while upcoming is not None:
                    index, value, preparing = upcoming
                    upcoming = self._prepare_next(pending, info)
                    result = await self.predict_one(value, index, info, level, timeout, preparing)
                    done.put_nowait((index, result))
            finally:
                if upcoming is not None:
                    upcoming[2].cancel()
                done.put_nowait(None)

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        running = len(workers)
        try:
            while running:
                item = await done.get()
                if item is None:
                    running -= 1
                else:
                    yield item
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def _prepare_next(
        self, pending: Iterator[tuple[int, Input]], info: ModelInfo
    ) -> tuple[int, Input, asyncio.Task[PreparedRequest | Failure]] | None:
        """Start decoding the next input in a process (None when there is none left)."""
        item = next(pending, None)
        if item is None:
            return None
        index, value = item
        return index, value, self._decode(value, index, info)

    def _decode(
        self, value: Input, index: int, info: ModelInfo
    ) -> asyncio.Task[PreparedRequest | Failure]:
        """Start decoding one input in the decoding processes."""
        return asyncio.ensure_future(self._decoded(value, index, info))

    async def _decoded(
        self, value: Input, index: int, info: ModelInfo
    ) -> PreparedRequest | Failure:
        """One input decoded in a process. A process that dies (a decoder crash, the OOM killer)
        breaks the pool and every decode in flight in it: the pool is replaced, and each of
        those inputs is decoded again in a process of its own, which only it can break (then it
        is a ``decode_failed`` row) while the others go on."""
        loop = asyncio.get_running_loop()
        args = (value, index, info.server_preprocess, info.image_size, info.heatmaps)
        pool = self._decoder
        try:
            payload = await loop.run_in_executor(pool, decode_input, *args)
        except BrokenProcessPool:
            if self._decoder is pool:
                pool.shutdown(wait=False, cancel_futures=True)
                self._decoder = self._new_pool(self._workers)
            alone = self._new_pool(1)
            try:
                payload = await loop.run_in_executor(alone, decode_input, *args)
            except BrokenProcessPool:
                message = "the decoding process died on this input (a decoder crash or no memory)"
                return Failure(fallback_source(value, index), "decode_failed", message)
            finally:
                alone.shutdown(wait=False)
        return payload if isinstance(payload, Failure) else to_request(payload, info)

    async def predict_one(
        self,
        value: Input,
        index: int,
        info: ModelInfo,
        level: int,
        timeout: float | None,
        preparing: Awaitable[PreparedRequest | Failure] | None = None,
    ) -> Result:
        """Send one input, decoded in a process (or by ``preparing``, already started); never
        raises: a failure is a Failure."""
        source, digest = fallback_source(value, index), ""
        try:
            if preparing is None:
                preparing = self._decode(value, index, info)
            request = await preparing
            if not isinstance(request, PreparedRequest):
                return request
            source, digest = request.source, request.sha256
            started = time.monotonic()
            reply = await self._retrying(
                timeout or self.connection.timeout, self._infer_call(request, level)
            )
            return finish(request, reply, info, started)
        except TriageError as err:
            return Failure(source, err.code, err.message, digest)
        except Exception as err:  # a bug must not lose the input's row
            return Failure(source, "client_error", f"{type(err).__name__}: {err}", digest)

    async def _retrying(self, timeout: float, call: Callable[[float], Awaitable[T]]) -> T:
        from tritonclient.utils import InferenceServerException

        attempts = Attempts(timeout, self._backoff, self.outage)
        while True:
            try:
                reply = await call(attempts.budget())
            except InferenceServerException as err:
                await asyncio.sleep(attempts.retry_after(err))
            else:
                attempts.succeeded()
                return reply

    async def _call(self, method: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        return await self._retrying(
            self.connection.timeout,
            lambda remaining: method(
                *args, **kwargs, headers=self.connection.headers, client_timeout=remaining
            ),
        )

    # -- health and metadata -------------------------------------------------------------------
    async def is_live(self) -> bool:
        """Whether the server answers."""
        return bool(await self._call(self._client.is_server_live))

    async def is_ready(self, model: str | None = None) -> bool:
        """Whether the server (or one model) is ready for inference."""
        if model:
            return bool(await self._call(self._client.is_model_ready, model))
        return bool(await self._call(self._client.is_server_ready))

    async def server_metadata(self) -> dict[str, Any]:
        """Server name, version and extensions."""
        return await self._call(self._client.get_server_metadata, as_json=True)

    async def model_metadata(self, name: str) -> dict[str, Any]:
        """A model's versions, inputs and outputs."""
        return await self._call(self._client.get_model_metadata, name, as_json=True)

    async def close(self) -> None:
        """Close the channel and stop the decoding processes."""
        self._decoder.shutdown(wait=False, cancel_futures=True)
        await self._client.close()

    async def __aenter__(self) -> AsyncTriageClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

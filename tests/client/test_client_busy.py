"""A full queue and a queue timeout: what Triton answers, how the client names it (``server_busy``)
and that the client retries it until the request gets through."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from cxr.client import AsyncTriageClient, TriageClient, contract
from cxr.client.imaging import load_model_input
from cxr.client.protocol import Backoff, classify_error

TRITON_MESSAGES = {"full": "Exceeds maximum queue size", "timeout": "Request timeout expired"}


async def flood(url: str, model: str, size: int, count: int) -> list[InferenceServerException]:
    """Send ``count`` requests at once with plain tritonclient; the errors Triton answered."""
    image = grpcclient.InferInput(contract.IMAGE, [1, 1, size, size], contract.IMAGE_TRITON_DTYPE)
    image.set_data_from_numpy(np.zeros((1, 1, size, size), np.uint8))
    async with aioclient.InferenceServerClient(url) as client:
        replies = await asyncio.gather(
            *(client.infer(model, [image]) for _ in range(count)), return_exceptions=True
        )
    return [reply for reply in replies if isinstance(reply, Exception)]


@pytest.mark.parametrize("kind", ["full", "timeout"])
def test_triton_queue_rejections_are_server_busy(busy_server, queue_models, kind: str) -> None:
    model = queue_models[kind]
    with TriageClient(busy_server.grpc_url, model=model) as client:
        size = client.model_info().image_size
    errors = asyncio.run(flood(busy_server.grpc_url, model, size, 200))
    assert errors, "the flood was not rejected at all"
    assert all(isinstance(e, InferenceServerException) for e in errors), errors[:3]
    # Triton's status for both is UNAVAILABLE, like a server that is down: the message decides
    assert {e.status() for e in errors} == {"StatusCode.UNAVAILABLE"}
    assert any(TRITON_MESSAGES[kind] in e.message() for e in errors)
    assert {classify_error(e).code for e in errors} == {"server_busy"}


@pytest.mark.parametrize("kind", ["full", "timeout"])
def test_client_retries_server_busy_until_it_gets_through(
    busy_server, queue_models, xray_pngs: list[Path], caplog, kind: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="client")
    with TriageClient(busy_server.grpc_url, model=queue_models[kind]) as client:
        size = client.model_info().image_size
    # Model inputs decoded beforehand: the 96 requests leave at once whatever decoding costs on
    # this machine (files would trickle out of the decode processes as fast as they are decoded,
    # and a loaded machine's slow decoding kept the queue short enough to never time out).
    images = [load_model_input(path.read_bytes(), size)[0] for path in xray_pngs]
    inputs = images * 16  # 96 at once: many more than a batch, the rest queue up

    async def run() -> list:
        async with AsyncTriageClient(
            busy_server.grpc_url,
            model=queue_models[kind],
            timeout=60,
            backoff=Backoff(initial=0.01, maximum=0.2),
        ) as client:
            return await client.predict(inputs, concurrency=len(inputs))

    results = asyncio.run(run())
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    retried = [r.getMessage() for r in caplog.records if "server_busy" in r.getMessage()]
    assert retried, "no request was rejected and retried: the test proves nothing"

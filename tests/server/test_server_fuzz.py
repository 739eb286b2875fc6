"""Fuzzed files through the ensemble over gRPC: each gets an answer or a clear decoding error,
within a bounded time, and the server stays ready and serving."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from fuzz_inputs import malformed_inputs
from tritonclient.utils import InferenceServerException

from cxr.client import contract

COUNT = 160
SEED = 20_241_121
CONCURRENCY = 32
#: Per request, and for the whole campaign: a hang fails the test instead of stalling the suite.
REQUEST_DEADLINE_S = 30
CAMPAIGN_DEADLINE_S = 180
#: What the ensemble answers for a file ``preprocess`` cannot decode: the decoder's code first.
DECODE_ERROR = re.compile(r"in ensemble 'pneumonia', ([a-z_]+): \S")


async def _campaign(url: str, files: list[tuple[str, bytes]]) -> list[Any]:
    gate = asyncio.Semaphore(CONCURRENCY)
    async with aioclient.InferenceServerClient(url) as client:

        async def one(data: bytes) -> Any:
            array = np.array([[data]], dtype=np.object_)
            tensor = aioclient.InferInput(contract.IMAGE_BYTES, [1, 1], "BYTES")
            tensor.set_data_from_numpy(array)
            async with gate:
                try:
                    result = await client.infer(
                        contract.ENSEMBLE_MODEL, [tensor], client_timeout=REQUEST_DEADLINE_S
                    )
                except InferenceServerException as err:
                    return err
                return result.as_numpy(contract.PROBS)

        return await asyncio.gather(*(one(data) for _, data in files))


def test_fuzzed_files_get_clear_errors_and_the_server_survives(
    served: Any, grpc: Any, samples_dir: Path
) -> None:
    files = malformed_inputs(SEED, COUNT)
    results = asyncio.run(asyncio.wait_for(_campaign(served.grpc_url, files), CAMPAIGN_DEADLINE_S))
    unclear = []
    codes: dict[str, int] = {}
    for (name, _), result in zip(files, results, strict=True):
        if isinstance(result, np.ndarray):  # a mutation that still decodes: a normal answer
            assert result.shape == (1, 2) and np.isfinite(result).all(), name
            continue
        match = DECODE_ERROR.search(result.message())
        if result.status() != "StatusCode.INVALID_ARGUMENT" or not match:
            unclear.append((name, result.status(), result.message()))
        else:
            codes[match.group(1)] = codes.get(match.group(1), 0) + 1
    assert not unclear, unclear
    assert sum(codes.values()) >= COUNT // 2, codes  # the campaign did exercise the errors
    assert grpc.is_server_live() and grpc.is_server_ready()
    png = (samples_dir / "nih_00000001_000.png").read_bytes()
    tensor = grpcclient.InferInput(contract.IMAGE_BYTES, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[png]], dtype=np.object_))
    after = grpc.infer(contract.ENSEMBLE_MODEL, [tensor], client_timeout=REQUEST_DEADLINE_S)
    assert after.as_numpy(contract.PROBS).shape == (1, 2)

"""``preprocess`` is scheduled like the classifiers and sized on the serving machine; what the
server tells clients about a bad input is a code and one short line, never exception text."""

from __future__ import annotations

import asyncio
import os
import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from fuzz_inputs import malformed_inputs
from tritonclient.utils import InferenceServerException

from cxr.client import contract
from cxr.server.backend.config import MAX_REASON_CHARS, short_reason
from cxr.server.repository import CONFIG_FILE, PREPROCESS_SCHEDULING, preprocess_config, read_config

#: ``<code>: <reason>`` as the ensemble relays it from ``preprocess``.
ANSWER = re.compile(r"in ensemble 'pneumonia', ([a-z_]+): (.*)$", re.DOTALL)


def test_preprocess_is_scheduled_like_the_classifiers(cpu_repo: Path, deployed: str) -> None:
    pre = read_config(cpu_repo / contract.PREPROCESS_MODEL / CONFIG_FILE).dynamic_batching
    clf = read_config(cpu_repo / deployed / CONFIG_FILE).dynamic_batching
    assert pre.priority_levels == clf.priority_levels == 2
    assert pre.default_priority_level == contract.PRIORITY_ROUTINE
    assert pre.default_queue_policy == clf.default_queue_policy
    assert pre.default_queue_policy.max_queue_size > 0
    assert pre.default_queue_policy.default_timeout_microseconds > 0
    stat = pre.priority_queue_policy[contract.PRIORITY_STAT]
    assert stat == clf.priority_queue_policy[contract.PRIORITY_STAT]
    assert stat.max_queue_size > 0 and stat.default_timeout_microseconds > 0


def test_preprocess_instances_do_not_depend_on_the_writing_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = set()
    for cores in (1, 2, 96):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        config = preprocess_config(64, 8)
        counts.add(sum(group.count for group in config.instance_group))
    assert counts == {PREPROCESS_SCHEDULING.instances}


def test_short_reason_is_one_bounded_line() -> None:
    assert short_reason("no pixel data\nTraceback (most recent call last):") == "no pixel data"
    long = short_reason("x" * 1000)
    assert len(long) == MAX_REASON_CHARS and long.endswith("...")
    assert short_reason("") == ""


async def _send_all(url: str, files: list[bytes]) -> list[Any]:
    gate = asyncio.Semaphore(16)
    async with aioclient.InferenceServerClient(url) as client:

        async def one(data: bytes) -> Any:
            tensor = aioclient.InferInput(contract.IMAGE_BYTES, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
            async with gate:
                try:
                    return await client.infer(contract.ENSEMBLE_MODEL, [tensor], client_timeout=60)
                except InferenceServerException as err:
                    return err

        return await asyncio.gather(*(one(data) for data in files))


def test_errors_are_codes_and_short_reasons(served: Any, grpc: Any) -> None:
    files = malformed_inputs(20_251_128, 48)
    results = asyncio.run(_send_all(served.grpc_url, [data for _, data in files]))
    errors = [r for r in results if isinstance(r, InferenceServerException)]
    assert len(errors) >= len(files) // 2, "the campaign did not exercise the errors"
    for (name, _), result in zip(files, results, strict=True):
        if not isinstance(result, InferenceServerException):
            continue
        match = ANSWER.search(result.message())
        assert match, (name, result.message())
        code, reason = match.groups()
        assert code in contract_codes(), (name, code)
        assert "\n" not in reason and len(reason) <= MAX_REASON_CHARS, (name, reason)
        assert "Traceback" not in reason and 'File "' not in reason, (name, reason)
    assert grpc.is_server_ready()


def contract_codes() -> set[str]:
    """Codes a client may get from ``preprocess``: the decoder's, and ``decode_failed``."""
    from cxr.client.decode_errors import DECODE_CODES

    return {*DECODE_CODES, "decode_failed"}


def _pending(metrics_url: str, model: str) -> int:
    """Requests waiting in ``model``'s queue, not yet executing (Triton's pending gauge)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    gauge = rf'^nv_inference_pending_request_count{{model="{model}",version="\d+"}} (\d+)$'
    match = re.search(gauge, text, re.MULTILINE)
    assert match, f"no pending-request gauge for {model} in {metrics_url}"
    return int(match.group(1))


def test_a_stat_study_overtakes_routine_decoding(served: Any) -> None:
    """80 routine files that are small to send but slow to decode (a 16 MP flat PNG) queue up in
    ``preprocess``; a STAT file sent once Triton's gauge shows at least 48 of them waiting is
    decoded in the next batch, not after them (priority levels in preprocess). The STAT file
    goes when the queue is seen, not after a sleep, so the outcome does not rest on how fast
    this machine decodes."""
    from fuzz_inputs import png_bytes

    heavy = png_bytes(np.full((4000, 4000), 128, dtype=np.uint8))
    light = png_bytes(np.full((64, 64), 128, dtype=np.uint8))
    routine_count, queued = 80, 48

    async def run() -> tuple[list[float], float]:
        async with aioclient.InferenceServerClient(served.grpc_url) as client:

            async def one(data: bytes, priority: int) -> float:
                tensor = aioclient.InferInput(contract.IMAGE_BYTES, [1, 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
                await client.infer(
                    contract.ENSEMBLE_MODEL, [tensor], priority=priority, client_timeout=300
                )
                return asyncio.get_running_loop().time()

            routine = [
                asyncio.ensure_future(one(heavy, contract.PRIORITY_ROUTINE))
                for _ in range(routine_count)
            ]
            waiting = 0
            while waiting < queued:
                assert not any(task.done() for task in routine), "the queue drained first"
                await asyncio.sleep(0.005)
                pending = asyncio.to_thread(_pending, served.metrics_url, contract.PREPROCESS_MODEL)
                waiting = await pending
            stat = await one(light, contract.PRIORITY_STAT)
            return list(await asyncio.gather(*routine)), stat

    routine_done, stat_done = asyncio.run(run())
    after = sum(done > stat_done for done in routine_done)
    # At least 48 waited when the STAT file was sent. Two instances take a batch each; the STAT
    # file joins the next one, so at least the two batches of the max batch size still queued
    # behind it finish after it.
    max_batch = read_config(served.config.repo / contract.PREPROCESS_MODEL / CONFIG_FILE)
    assert after >= 2 * max_batch.max_batch_size, (after, routine_count)

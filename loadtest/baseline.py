"""A plain closed-loop load generator: asyncio tritonclient, no framework in between.

It sends exactly what the Locust user sends (same target, prepared inputs, STAT share, deadline),
so the two rates at the same concurrency show whether Locust is the bottleneck. The sweep uses it
too: it starts in milliseconds and costs the measured server little CPU.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cxr.client import contract
from cxr.client.protocol import classify_error
from cxr.loadtest.payloads import Target, prepare_target
from cxr.loadtest.runner import RunResult, Stats


@dataclass
class BaselineSettings:
    """One closed-loop measurement."""

    url: str = "localhost:8001"
    model: str | None = None
    users: int = 8
    duration: float = 10.0
    warmup: float = 2.0
    stat_fraction: float = 0.1
    images: Path | None = None
    timeout: float = 10.0


def discover(settings: BaselineSettings) -> Target:
    """The target and payloads of a run, read from the server (synchronous gRPC)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(settings.url) as client:
        return prepare_target(client, settings.model, settings.images, settings.timeout)


async def _closed_loop(settings: BaselineSettings, target: Target) -> RunResult:
    import tritonclient.grpc.aio as aioclient

    latencies: dict[str, list[float]] = {"stat": [], "routine": []}
    failures = {"stat": 0, "routine": 0}
    errors: Counter[tuple[str, str]] = Counter()
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, end = start + settings.warmup, start + settings.warmup + settings.duration

    async def user(client: aioclient.InferenceServerClient, seed: int) -> None:
        rng = random.Random(seed)
        while loop.time() < end:
            stat = rng.random() < settings.stat_fraction
            name = "stat" if stat else "routine"
            began = time.perf_counter()
            error = None
            try:
                await client.infer(
                    target.model,
                    rng.choice(target.inputs),
                    outputs=target.outputs,
                    priority=contract.PRIORITY_STAT if stat else contract.PRIORITY_ROUTINE,
                    client_timeout=settings.timeout,
                )
            except Exception as err:
                error = str(classify_error(err))
            finished = loop.time()
            if measure_from <= finished <= end:
                latencies[name].append((time.perf_counter() - began) * 1000)
                if error is not None:
                    failures[name] += 1
                    errors[name, error] += 1

    async with aioclient.InferenceServerClient(settings.url) as client:
        await asyncio.gather(*(user(client, seed) for seed in range(settings.users)))
    stats = {
        name: Stats.from_latencies(name, latencies[name], failures[name], settings.duration)
        for name in ("stat", "routine")
    }
    everything = latencies["stat"] + latencies["routine"]
    stats["Aggregated"] = Stats.from_latencies(
        "Aggregated", everything, sum(failures.values()), settings.duration
    )
    return RunResult(stats, [(n, e, c) for (n, e), c in errors.most_common()])


def run_baseline(settings: BaselineSettings, target: Target | None = None) -> RunResult:
    """Closed loop of ``users`` concurrent requests for warm-up + duration: statistics (by name:
    ``stat``, ``routine``, ``Aggregated``) and errors of the requests that completed within the
    measured window."""
    return asyncio.run(_closed_loop(settings, target or discover(settings)))

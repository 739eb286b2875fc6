"""In-process onnxruntime throughput and latency of an ONNX classifier (no server in the way)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cxr.client.contract import IMAGE, PROBS
from cxr.runtime.sessions import onnx_image_size, ort_session

WARMUP_RUNS = 3


def bench_onnx(
    path: Path, batches: list[int], seconds: float, threads: int | None = None, spin: bool = True
) -> list[dict]:
    """Run ``path`` on random uint8 images for about ``seconds`` per batch size (``threads`` and
    ``spin`` as in :func:`convert.runtime.ort_session`).

    One row per batch size: ``batch``, ``runs``, ``images_per_s`` and latency percentiles of one
    run (``p50_ms``, ``p95_ms``, ``p99_ms``).
    """
    if not batches or min(batches) < 1:
        raise ValueError(f"batch sizes must be positive integers, got {batches}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    session = ort_session(path, threads, spin)
    size = onnx_image_size(session)
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        feed = {IMAGE: rng.integers(0, 256, (batch, 1, size, size), dtype=np.uint8)}
        for _ in range(WARMUP_RUNS):
            session.run([PROBS], feed)
        latencies = []
        started = time.perf_counter()
        while not latencies or time.perf_counter() - started < seconds:
            begin = time.perf_counter()
            session.run([PROBS], feed)
            latencies.append(time.perf_counter() - begin)
        elapsed = time.perf_counter() - started
        p50, p95, p99 = np.percentile(np.asarray(latencies) * 1000.0, [50, 95, 99])
        rows.append(
            {
                "batch": batch,
                "runs": len(latencies),
                "images_per_s": round(batch * len(latencies) / elapsed, 2),
                "p50_ms": round(float(p50), 3),
                "p95_ms": round(float(p95), 3),
                "p99_ms": round(float(p99), 3),
            }
        )
    return rows

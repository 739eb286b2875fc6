"""TensorRT plans from the FP16 / INT8 Q/DQ ONNX files, built with polygraphy's TensorRT loaders.

Strongly typed networks (TensorRT 10+): the precision comes from the ONNX, never from builder
flags. One optimisation profile, batch 1 / ``opt`` / ``max``; a timing cache kept beside the model
folder; the plan is written atomically with a stamp ``model.plan.json`` in the format
``docker/build_engines.sh`` writes, so that script (the compose ``engines`` service) and
``cxr repo check`` can tell which TensorRT and GPU built it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from cxr.client.contract import IMAGE
from cxr.client.files import write_atomic
from cxr.runtime.engines import sha256, stamp_path

#: Batch size the profile is tuned for, capped by the largest batch (as build_engines.sh does).
OPT_BATCH = 16


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX or build the engine."""


def _gpus() -> tuple[str, str]:
    """(compute capabilities, GPU names) of the visible GPUs, comma-joined; empty when none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "", ""
    try:
        done = subprocess.run(
            [smi, "--query-gpu=compute_cap,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "", ""
    rows = [[c.strip() for c in line.split(",", 1)] for line in done.stdout.splitlines() if line]
    caps = sorted({r[0] for r in rows if r and r[0]})
    names = sorted({r[1] for r in rows if len(r) > 1})
    return ",".join(caps), ",".join(names)


def unavailable() -> str | None:
    """Why TensorRT engines cannot be built here, or ``None`` when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed (pip install 'cxr-triage[tensorrt]')"
    if not _gpus()[0]:
        return "no NVIDIA GPU is visible (nvidia-smi reports none)"
    return None


def build_engine(
    onnx_path: Path, plan_path: Path, image_size: int, max_batch: int, timing_cache: Path
) -> dict:
    """Build ``plan_path`` from ``onnx_path``; write its stamp beside it and return the stamp."""
    import tensorrt as trt
    from polygraphy.backend.trt import (
        CreateConfig,
        Profile,
        engine_bytes_from_network,
        network_from_onnx_path,
    )
    from polygraphy.exception import PolygraphyException

    opt_batch = min(OPT_BATCH, max_batch)
    shape = (1, image_size, image_size)
    profile = Profile().add(IMAGE, (1, *shape), (opt_batch, *shape), (max_batch, *shape))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    config = CreateConfig(
        profiles=[profile],
        load_timing_cache=str(timing_cache) if timing_cache.is_file() else None,
    )
    try:
        serialized = engine_bytes_from_network(
            network_from_onnx_path(str(onnx_path), strongly_typed=True),
            config=config,
            save_timing_cache=str(timing_cache),
        )
    except PolygraphyException as err:
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build an engine: {err}") from err
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(plan_path, bytes(serialized))
    caps, names = _gpus()
    stamp = {
        "tensorrt_version": trt.__version__,
        "compute_capability": caps or "unknown",
        "gpu": names or "unknown",
        "onnx": onnx_path.name,
        "onnx_sha256": sha256(onnx_path),
        "image_size": image_size,
        "max_batch": max_batch,
        "opt_batch": opt_batch,
        "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "builder": "cxr convert: polygraphy, strongly typed",
    }
    write_atomic(stamp_path(plan_path), json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    return stamp

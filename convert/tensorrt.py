"""TensorRT plans from the FP16 / INT8 Q/DQ ONNX files, with the TensorRT Python API.

Strongly typed networks (TensorRT 10+): the precision comes from the ONNX, never from builder
flags. One optimisation profile, batch 1 / ``opt`` / ``max``; a timing cache kept beside the model
folder; the plan is written atomically with a stamp ``model.plan.json`` in the format
``docker/build_engines.sh`` writes, so that script (the compose ``engines`` service) and
``cxr repo check`` can tell which TensorRT and GPU built it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from cxr.client.contract import IMAGE

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


def stamp_path(plan: Path) -> Path:
    """The JSON stamp written beside a plan (by ``build_engine`` and ``docker/build_engines.sh``):
    which TensorRT, GPU and ONNX built it."""
    return plan.with_name(plan.name + ".json")


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_engine(
    onnx_path: Path, plan_path: Path, image_size: int, max_batch: int, timing_cache: Path
) -> dict:
    """Build ``plan_path`` from ``onnx_path``; write its stamp beside it and return the stamp."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    opt_batch = min(OPT_BATCH, max_batch)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    shape = (1, image_size, image_size)
    profile.set_shape(IMAGE, (1, *shape), (opt_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build an engine (see its log)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(plan_path, bytes(serialized))
    _write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
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
        "builder": "cxr convert: TensorRT Python API, strongly typed",
    }
    _write_atomic(
        stamp_path(plan_path),
        (json.dumps(stamp, indent=2, sort_keys=True) + "\n").encode(),
    )
    return stamp


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)

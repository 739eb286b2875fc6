"""TensorRT engine stamps: the JSON written beside each plan (by ``cxr convert`` and by
``docker/build_engines.sh``) saying which TensorRT, GPU and ONNX built it, read back by
``cxr repo check``."""

from __future__ import annotations

import hashlib
from pathlib import Path


def stamp_path(plan: Path) -> Path:
    """The JSON stamp beside a plan: ``model.plan`` -> ``model.plan.json``."""
    return plan.with_name(plan.name + ".json")


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (the stamp's ``onnx_sha256``)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

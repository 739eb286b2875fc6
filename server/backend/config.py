"""Reading the arguments Triton hands a Python-backend model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def model_parameters(args: dict[str, Any]) -> dict[str, str]:
    """The string ``parameters`` of the model's config."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def version_dir(args: dict[str, Any]) -> Path:
    """The folder of the model version being loaded."""
    return Path(args["model_repository"]) / str(args["model_version"])


def intra_op_threads(param: str, instances: int) -> int:
    """onnxruntime threads of one instance: the ``intra_op_threads`` parameter, or when it is 0
    the cores this process may run on (its affinity, e.g. a container's cpuset) / instances."""
    return int(param) or max(1, len(os.sched_getaffinity(0)) // max(1, instances))

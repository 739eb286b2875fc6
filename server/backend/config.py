"""Reading the arguments Triton hands a Python-backend model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: Parameters of a classifier's config that its Python model reads (``cxr.server.repository``
#: writes them): onnxruntime threads per instance (0: adaptive), busy-waiting ("1") and the file.
PARAM_THREADS = "intra_op_threads"
PARAM_SPIN = "intra_op_spinning"
PARAM_MODEL_FILE = "model_file"


def model_parameters(args: dict[str, Any]) -> dict[str, str]:
    """The string ``parameters`` of the model's config."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def version_dir(args: dict[str, Any]) -> Path:
    """The folder of the model version being loaded."""
    return Path(args["model_repository"]) / str(args["model_version"])


def intra_op_threads(param: str, instances: int) -> tuple[int, int]:
    """onnxruntime threads of one instance while the model's other instances are idle, and while
    they are running: the ``intra_op_threads`` parameter both times, or when it is 0 every core
    this process may run on (its affinity, e.g. a container's cpuset), and then that divided by
    the instances."""
    if int(param):
        return int(param), int(param)
    cores = len(os.sched_getaffinity(0))
    return cores, max(1, cores // max(1, instances))


#: Longest reason a Python-backend model returns to a client.
MAX_REASON_CHARS = 200


def short_reason(message: str) -> str:
    """The first line of ``message``, at most :data:`MAX_REASON_CHARS` characters: what a client
    is told (the full text stays in the server's log)."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."

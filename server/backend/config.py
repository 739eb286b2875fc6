"""Reading the arguments Triton hands a Python-backend model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def model_parameters(args: dict[str, Any]) -> dict[str, str]:
    """The string ``parameters`` of the model's config."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def version_dir(args: dict[str, Any]) -> Path:
    """The folder of the model version being loaded."""
    return Path(args["model_repository"]) / str(args["model_version"])

"""The import-weight rule: the client never pulls torch, torchvision, onnx or matplotlib (its
start-up time is a benchmark, ``cxr bench startup``, not a test)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "onnx", "onnxruntime", "tensorrt", "locust", "matplotlib")
CLIENT_MODULES = (
    "cxr.client",
    "cxr.client.contract",
    "cxr.client.imaging",
    "cxr.client.cli",
    "cxr.client.sync_client",
    "cxr.client.async_client",
    "cxr.client.results",
    "cxr.client.overlay",
)


def imported_modules(statement: str) -> set[str]:
    """Top-level modules imported by ``statement``, read from ``python -X importtime``."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        check=True,
    )
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("module", CLIENT_MODULES)
def test_client_never_imports_heavy_packages(module: str) -> None:
    loaded = imported_modules(f"import {module}")
    assert module.split(".", maxsplit=1)[0] in loaded  # the measurement itself works
    assert not loaded & set(HEAVY), f"{module} imports {sorted(loaded & set(HEAVY))}"


def test_startup_benchmark_prints_its_figures() -> None:
    command = [sys.executable, "-m", "cxr", "bench", "startup", "--runs", "1", "--json"]
    row = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    assert row["command"] == "cxr client predict --help" and row["runs"] == 1
    assert 0 < row["min_s"] <= row["median_s"] <= row["max_s"]


def test_predict_help_does_not_load_heavy_packages() -> None:
    loaded = imported_modules(
        "import sys; sys.argv=['cxr','client','predict','--help']\n"
        "from cxr.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass"
    )
    assert not loaded & set(HEAVY)

"""Fixtures of the load-test tests: the ``cxr loadtest`` command in a subprocess, SLOs no healthy
run can miss, a folder of real payload images, and a model repository of our own to tune."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

#: Objectives a run on a busy 2-core machine always meets, errors excepted: a run that breaches
#: them failed for another reason than speed.
GENEROUS = ("--slo-p99-ms", "60000", "--slo-stat-p99-ms", "60000", "--max-error-rate", "0")

CliRun = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="session")
def generous() -> tuple[str, ...]:
    """SLO options that only errors can breach."""
    return GENEROUS


@pytest.fixture(scope="session")
def loadtest_cli() -> CliRun:
    """Run ``cxr loadtest ARGS`` in a subprocess; wide output so tables are not cut."""

    def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
        return subprocess.run(
            [sys.executable, "-m", "cxr", "loadtest", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def payload_dir(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of real image files (PNG X-rays), plus one file that is not an image."""
    folder = tmp_path_factory.mktemp("payloads")
    for path in sorted((synthetic_data / "test" / "PNEUMONIA").glob("*.png"))[:4]:
        shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("not an image\n")
    return folder


@pytest.fixture
def own_repo(model_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the model repository that a test may rewrite."""
    copy = tmp_path / "model_repository"
    shutil.copytree(model_repo, copy)
    return copy


@pytest.fixture
def own_server(own_repo: Path) -> Iterator[Any]:
    """A tritonserver of our own, for tests that may upset it: thousands of requests cancelled
    at their deadline once left the shared server wedged (Triton 2.51; reported)."""
    from server.triton import ServerConfig, TritonServer, free_port

    config = ServerConfig(
        own_repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()
    )
    with TritonServer(config) as server:
        yield server

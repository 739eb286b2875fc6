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


#: How long :func:`slow_server`'s classifier holds a lone request, waiting for a full batch.
SLOW_DELAY_US = 3_000_000


@pytest.fixture
def slow_server(own_repo: Path) -> Iterator[Any]:
    """A tritonserver of our own whose deployed classifier holds every lone request for
    :data:`SLOW_DELAY_US` (its batcher waits for a full batch, and no queue timeout rejects it):
    a client deadline well below that expires whatever the machine's speed, a few requests at a
    time (thousands of requests cancelled at 1 ms deadlines once crashed Triton 2.51)."""
    from cxr.client import contract
    from cxr.server.repository import CONFIG_FILE, config_text, read_config
    from cxr.server.triton import ServerConfig, TritonServer

    ensemble = read_config(own_repo / contract.ENSEMBLE_MODEL / CONFIG_FILE)
    deployed = own_repo / ensemble.parameters[contract.PARAM_DEPLOYED_MODEL].string_value
    config = read_config(deployed / CONFIG_FILE)
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = SLOW_DELAY_US
    del batching.preferred_batch_size[:]
    batching.preferred_batch_size.append(config.max_batch_size)
    batching.default_queue_policy.default_timeout_microseconds = 0
    for policy in batching.priority_queue_policy.values():
        policy.default_timeout_microseconds = 0
    (deployed / CONFIG_FILE).write_text(config_text(config))
    server_config = ServerConfig.on_free_ports(own_repo)
    with TritonServer(server_config) as server:
        yield server

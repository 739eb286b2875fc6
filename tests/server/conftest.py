"""Fixtures of the server tests: model repositories cloned from the suite's converted
``model_repo`` (with test scheduling), and real servers of our own: one restricted by an admin key
with queue-limited classifier copies, one with mutual TLS."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cxr.client import contract
from cxr.server.repository import CONFIG_FILE, deployed_model, edit_config, read_config

#: The batching delay of ``preprocess`` and of the queue models in the test repository: long, so
#: requests sent together land in one batch (and queued requests stay queued).
LONG_DELAY_US = 400_000


@dataclass(frozen=True)
class Queues:
    """Copies of the deployed classifier in :func:`served_repo`, both with a long batching delay
    (requests sent together are one batch): ``full`` queues at most ``full_size`` requests per
    priority; ``timeout`` rejects requests after ``routine_timeout_us`` / ``stat_timeout_us``."""

    full: str = "pneumonia_qfull"
    full_size: int = 8
    timeout: str = "pneumonia_qtimeout"
    routine_timeout_us: int = 20_000
    stat_timeout_us: int = 40_000


QUEUES = Queues()


def clone_repo(source: Path, target: Path, models: list[str] | None = None) -> Path:
    """Copy a model repository (``models`` only, when given), hard-linking the model files.

    Tests must replace a linked file (unlink, then write), never write into it.
    """
    target.mkdir(parents=True)
    names = models or [p.name for p in source.iterdir() if (p / CONFIG_FILE).is_file()]
    for name in names:
        shutil.copytree(source / name, target / name, copy_function=_link_or_copy)
    return target


def _link_or_copy(src: str, dst: str) -> None:
    if src.endswith((".onnx", ".plan")):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


@pytest.fixture(scope="session")
def clone() -> Callable[..., Path]:
    """:func:`clone_repo`: ``clone(source, target, models=None)``."""
    return clone_repo


@pytest.fixture(scope="session")
def cpu_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted repository without its TensorRT variants (what the embedded server runs):
    the known-good repository the check and CLI tests start from. Do not modify: clone it."""
    cpu_models = [
        p.name
        for p in sorted(model_repo.iterdir())
        if (p / CONFIG_FILE).is_file() and read_config(p / CONFIG_FILE).platform != "tensorrt_plan"
    ]
    return clone_repo(model_repo, tmp_path_factory.mktemp("cpu") / "repo", cpu_models)


@pytest.fixture(scope="session")
def deployed(cpu_repo: Path) -> str:
    """The classifier the ensemble routes to (the same in every clone of :func:`cpu_repo`)."""
    return deployed_model(cpu_repo)


@pytest.fixture(scope="session")
def image_size(cpu_repo: Path, deployed: str) -> int:
    """Square input size of the classifiers."""
    return int(read_config(cpu_repo / deployed / CONFIG_FILE).input[0].dims[-1])


@pytest.fixture(scope="session")
def queues() -> Queues:
    """Names and limits of the queue-limited classifier copies of :func:`served`."""
    return QUEUES


@pytest.fixture(scope="session")
def admin_key() -> str:
    """The admin key of :func:`served`."""
    return "server-test-admin-key"


def _queue_copy(repo: Path, source: str, name: str) -> None:
    shutil.copytree(repo / source, repo / name, copy_function=_link_or_copy)

    def change(config: Any) -> None:
        config.name = name
        batching = config.dynamic_batching
        batching.max_queue_delay_microseconds = LONG_DELAY_US
        routine = batching.default_queue_policy
        stat = batching.priority_queue_policy[contract.PRIORITY_STAT]
        if name == QUEUES.full:
            routine.max_queue_size = stat.max_queue_size = QUEUES.full_size
        else:
            routine.default_timeout_microseconds = QUEUES.routine_timeout_us
            stat.default_timeout_microseconds = QUEUES.stat_timeout_us

    edit_config(repo / name / CONFIG_FILE, change)


@pytest.fixture(scope="session")
def served_repo(cpu_repo: Path, deployed: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`cpu_repo` with a long ``preprocess`` batching delay and the two queue-limited
    copies of the deployed classifier (:class:`Queues`)."""
    repo = clone_repo(cpu_repo, tmp_path_factory.mktemp("served") / "repo")

    def long_delay(config: Any) -> None:
        config.dynamic_batching.max_queue_delay_microseconds = LONG_DELAY_US

    edit_config(repo / contract.PREPROCESS_MODEL / CONFIG_FILE, long_delay)
    for name in (QUEUES.full, QUEUES.timeout):
        _queue_copy(repo, deployed, name)
    return repo


@pytest.fixture(scope="session")
def served(served_repo: Path, admin_key: str) -> Iterator[Any]:
    """A real server of :func:`served_repo`, admin protocols restricted by :func:`admin_key`."""
    from cxr.server.triton import ServerConfig, TritonServer

    config = ServerConfig.on_free_ports(served_repo, admin_key=admin_key)
    with TritonServer(config) as server:
        assert not server.failed_models(), server.log_tail()
        yield server


@pytest.fixture
def grpc(served: Any) -> Iterator[Any]:
    """A gRPC client of :func:`served` (no admin key)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(served.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A throw-away CA with server and client certificates for 127.0.0.1 / localhost."""
    pytest.importorskip("cryptography", reason="certificates need the certs extra")
    from cxr.server.certs import make_dev_certs

    return make_dev_certs(tmp_path_factory.mktemp("certs") / "dev", ("localhost", "127.0.0.1"))

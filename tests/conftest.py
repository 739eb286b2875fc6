"""Shared fixtures: tiny synthetic data, a trained run, a model repository, and a real
``tritonserver`` on free loopback ports (session-scoped: started once for the whole suite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLES = SHARED_DATA / "samples"
PNEUMONIAMNIST = SHARED_DATA / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
#: Small enough to train in seconds on 2 cores, large enough to learn the synthetic difference.
TEST_IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The real DICOM and PNG chest X-rays in ../shared (skips when absent)."""
    if not SAMPLES.is_dir():
        pytest.skip(f"shared samples not found at {SAMPLES}")
    return SAMPLES


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kermany-style folder of synthetic images."""
    from train.synth import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("data") / "synth", count=400, image_size=64, seed=1
    )


@pytest.fixture(scope="session")
def trained_run(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory trained from scratch on the synthetic data."""
    from train.trainer import TrainConfig, train

    run = tmp_path_factory.mktemp("runs") / "run"
    config = TrainConfig(
        arch="resnet18",
        pretrained="none",
        image_size=TEST_IMAGE_SIZE,
        epochs=4,
        batch_size=32,
        lr=2e-3,
        seed=0,
    )
    train(synthetic_data, run, config)
    return run


@pytest.fixture(scope="session")
def model_repo(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository published from the trained run by ``cxr convert``'s pipeline."""
    from convert.pipeline import convert_run

    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    convert_run(trained_run, repo)
    return repo


@pytest.fixture(scope="session")
def triton(model_repo: Path) -> Iterator:
    """A real embedded tritonserver serving ``model_repo`` on free loopback ports."""
    from server.triton import ServerConfig, TritonServer, free_port

    config = ServerConfig(
        model_repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()
    )
    with TritonServer(config) as server:
        failed = server.failed_models()
        assert not failed, f"models failed to load: {failed}\n{server.log_tail()}"
        yield server

"""Fixtures of the conversion tests: the report of the session's conversion, a tiny untrained run
directory, and a dataset whose images ruin INT8 calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TINY_SIZE = 32


@pytest.fixture(scope="session")
def converted(conversion: tuple[dict, Path]) -> dict:
    """The report of the session's conversion (``tests/conftest.py``)."""
    return conversion[0]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, synthetic_data: Path) -> Path:
    """A run directory holding an untrained resnet18 at 32x32 and its card (no training)."""
    import torch

    from cxr.train.card import WEIGHTS_FILE, ModelCard
    from cxr.train.models import build_model

    run = tmp_path_factory.mktemp("tiny") / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = build_model("resnet18", 2)
    torch.save(model.state_dict(), run / WEIGHTS_FILE)
    ModelCard(
        arch="resnet18",
        classes=["NORMAL", "PNEUMONIA"],
        image_size=TINY_SIZE,
        threshold=0.5,
        normalisation={},
        data={"path": str(synthetic_data)},
    ).save(run)
    return run


@pytest.fixture(scope="session")
def flat_grey_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MedMNIST-style .npz whose images are all one grey level: useless for calibration."""
    path = tmp_path_factory.mktemp("grey") / "grey.npz"
    images = np.full((64, 28, 28), 128, np.uint8)
    labels = np.arange(64) % 2
    np.savez(path, train_images=images, train_labels=labels)
    return path

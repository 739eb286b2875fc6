"""Fixtures of the conversion tests: one full conversion of the session's trained run, a tiny
untrained run directory, and a dataset whose images ruin INT8 calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TINY_SIZE = 32


#: Distance from the operating threshold of the images in the margin gate set: well above the
#: largest change INT8 makes to a score of the session's model (about 0.017).
GATE_MARGIN = 0.03


@pytest.fixture(scope="session")
def margin_gate_data(
    trained_run: Path, synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Synthetic images that ``trained_run`` scores at least :data:`GATE_MARGIN` from its
    threshold, as a MedMNIST-style .npz (train and val hold the same images).

    On a set whose images sit near the threshold, INT8 rounding can move a boundary positive
    across it and the gate (rightly) refuses the variant. Gating on images decided with a margin
    makes "INT8 passes" an outcome known in advance; the session's model is verified to leave
    every synthetic image that far from its threshold (``tests/conftest.py``).
    """
    import torch

    from train.data import load_split
    from train.models import load_trained
    from train.trainer import predict_probs

    model, card = load_trained(trained_run)
    splits = [load_split(synthetic_data, s, card.image_size) for s in ("train", "val", "test")]
    images = np.concatenate([s.images for s in splits])
    labels = np.concatenate([s.labels for s in splits])
    scores = 1.0 - predict_probs(model, images, torch.device("cpu"))[:, 0]
    keep = np.abs(scores - card.threshold) >= GATE_MARGIN
    counts = np.bincount(labels[keep], minlength=2)
    assert keep.sum() >= 100 and counts.min() >= 10, f"too few confident images: {counts}"
    path = tmp_path_factory.mktemp("margin") / "margin.npz"
    kept = images[keep][:, 0]
    np.savez(
        path, train_images=kept, train_labels=labels[keep], val_images=kept, val_labels=labels[keep]
    )
    return path


@pytest.fixture(scope="session")
def converted(
    trained_run: Path, margin_gate_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """The report of converting ``trained_run`` with every precision (TensorRT: auto), gated on
    :func:`margin_gate_data`."""
    from convert.pipeline import ConvertOptions, convert_run

    root = tmp_path_factory.mktemp("converted")
    options = ConvertOptions(
        gate_data=margin_gate_data, report_dir=root / "report", bench_seconds=0.2
    )
    return convert_run(trained_run, root / "model_repository", root / "work", options)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, synthetic_data: Path) -> Path:
    """A run directory holding an untrained resnet18 at 32x32 and its card (no training)."""
    import torch

    from train.card import WEIGHTS_FILE, ModelCard
    from train.models import build_model

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

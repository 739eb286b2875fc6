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


#: Images per class of the margin gate set: above the 381 abnormal images a paired sensitivity
#: bound needs to be able to pass its 0.01 limit (z^2 / (n + z^2) with no flip).
MARGIN_PER_CLASS = 420


@pytest.fixture(scope="session")
def margin_gate_data(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fresh synthetic images that ``trained_run`` scores at least :data:`GATE_MARGIN` from its
    threshold, :data:`MARGIN_PER_CLASS` of each class, as a MedMNIST-style .npz (train and val
    hold the same images).

    On a set whose images sit near the threshold, INT8 rounding can move a boundary positive
    across it and the gate (rightly) refuses the variant. Gating on images decided with a margin
    makes "INT8 passes" an outcome known in advance; the margin is checked here, on these images,
    so it holds whatever the model (a loud failure if too few images qualify).
    """
    import torch

    from client.imaging import to_model_input
    from train.models import load_trained
    from train.synth import synth_image
    from train.trainer import predict_probs

    model, card = load_trained(trained_run)
    rng = np.random.default_rng(7)
    labels = np.arange(3 * MARGIN_PER_CLASS) % 2
    raw = np.stack([synth_image(rng, 64, bool(label)) for label in labels])
    images = np.stack([to_model_input(image, card.image_size) for image in raw])
    scores = 1.0 - predict_probs(model, images, torch.device("cpu"))[:, 0]
    keep = np.abs(scores - card.threshold) >= GATE_MARGIN
    chosen = np.concatenate(
        [np.flatnonzero(keep & (labels == c))[:MARGIN_PER_CLASS] for c in (0, 1)]
    )
    counts = np.bincount(labels[chosen], minlength=2)
    assert counts.min() == MARGIN_PER_CLASS, f"too few confidently scored images: {counts}"
    path = tmp_path_factory.mktemp("margin") / "margin.npz"
    kept, kept_labels = raw[np.sort(chosen)], labels[np.sort(chosen)]
    np.savez(
        path, train_images=kept, train_labels=kept_labels, val_images=kept, val_labels=kept_labels
    )
    return path


@pytest.fixture(scope="session")
def converted(
    trained_run: Path, margin_gate_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """The report of converting ``trained_run`` with every precision (TensorRT: auto), gated on
    :func:`margin_gate_data`, clean images only (the margin is a property of the clean images;
    shifted ones may land near the threshold) and minmax calibration."""
    from convert.pipeline import ConvertOptions, convert_run

    root = tmp_path_factory.mktemp("converted")
    options = ConvertOptions(
        gate_data=margin_gate_data,
        perturbations=(),
        calib_method="minmax",
        report_dir=root / "report",
        bench_seconds=0.2,
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

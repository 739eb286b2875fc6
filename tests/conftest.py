"""Shared fixtures: tiny synthetic data, a trained run, a model repository, and a real
``tritonserver`` on free loopback ports (session-scoped: started once for the whole suite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
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
    from cxr.train.synth import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("data") / "synth", count=400, image_size=64, seed=1
    )


#: What the session's model must achieve on every split of ``synthetic_data`` before any test
#: uses it: the lowest PNEUMONIA score minus the highest NORMAL score. INT8 moves a score of this
#: model by about 0.02, so a gap of 0.2 with the threshold in its middle leaves every image
#: decided the same way by every variant.
SEPARATION = 0.2


class SessionModelError(AssertionError):
    """The session's model does not separate the synthetic classes by :data:`SEPARATION`."""


@pytest.fixture(scope="session")
def trained_run(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory trained from scratch on the synthetic data, whose behaviour is verified.

    Trained with the raw weights exported (``ema_decay=0``), a fixed seed and the locked
    versions; then checked to separate the classes by :data:`SEPARATION` on every split (a loud
    :class:`SessionModelError` otherwise, instead of failures downstream), and its operating
    threshold set to the middle of that gap, so every image lies at least ``SEPARATION / 2``
    from it: the served, converted and client tests then have known answers.
    """
    import numpy as np
    import torch

    from cxr.train.data import load_split
    from cxr.train.models import load_trained
    from cxr.train.trainer import TrainConfig, predict_probs, train

    run = tmp_path_factory.mktemp("runs") / "run"
    config = TrainConfig(
        arch="resnet18",
        pretrained="none",
        image_size=TEST_IMAGE_SIZE,
        epochs=15,
        batch_size=32,
        lr=2e-3,
        ema_decay=0,
        seed=0,
    )
    train(synthetic_data, run, config)
    model, card = load_trained(run)
    lowest_positive, highest_negative = 1.0, 0.0
    for split in ("train", "val", "test"):
        data = load_split(synthetic_data, split, card.image_size)
        scores = 1.0 - predict_probs(model, data.images, torch.device("cpu"))[:, 0]
        lowest_positive = min(lowest_positive, float(scores[data.labels == 1].min()))
        highest_negative = max(highest_negative, float(scores[data.labels == 0].max()))
    gap = lowest_positive - highest_negative
    if gap < SEPARATION:
        raise SessionModelError(
            f"the session's model separates the synthetic classes by {gap:.3f} (lowest "
            f"PNEUMONIA score {lowest_positive:.3f}, highest NORMAL {highest_negative:.3f}); the "
            f"tests need {SEPARATION}. Training changed: adjust the recipe in tests/conftest.py."
        )
    card.threshold = float(np.float32((lowest_positive + highest_negative) / 2))
    card.training["threshold_rule"] = "tests: middle of the verified separation gap"
    card.save(run)
    return run


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

    from cxr.client.imaging import to_model_input
    from cxr.train.models import load_trained
    from cxr.train.synth import synth_image
    from cxr.train.trainer import predict_probs

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
def conversion(
    trained_run: Path, margin_gate_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, Path]:
    """``cxr convert``'s pipeline on ``trained_run`` with every precision (TensorRT: auto), gated
    on :func:`margin_gate_data`, clean images only (the margin is a property of the clean images;
    shifted ones may land near the threshold) and minmax calibration: its report and the model
    repository it published (INT8 deployed)."""
    from cxr.convert.pipeline import ConvertOptions, convert_run

    root = tmp_path_factory.mktemp("converted")
    options = ConvertOptions(
        gate_data=margin_gate_data,
        perturbations=(),
        calib_method="minmax",
        report_dir=root / "report",
        bench_seconds=0.2,
    )
    repo = root / "model_repository"
    return convert_run(trained_run, repo, root / "work", options), repo


@pytest.fixture(scope="session")
def model_repo(conversion: tuple[dict, Path]) -> Path:
    """The model repository of the session's conversion (serve it from a copy to change it)."""
    return conversion[1]


@pytest.fixture(scope="session")
def triton(model_repo: Path) -> Iterator:
    """A real embedded tritonserver serving ``model_repo`` on free loopback ports."""
    from cxr.server.triton import ServerConfig, TritonServer

    config = ServerConfig.on_free_ports(model_repo)
    with TritonServer(config) as server:
        failed = server.failed_models()
        assert not failed, f"models failed to load: {failed}\n{server.log_tail()}"
        yield server

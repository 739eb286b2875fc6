"""The exported weights: PyTorch's AveragedModel with a warmed-up decay (never the initialisation
after a short run), and the checkpoint-selection rule tested on a hand-made history."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxr.train.card import HISTORY_FILE, WEIGHTS_FILE, ModelCard
from cxr.train.config import TrainConfig
from cxr.train.models import imagenet_weights
from cxr.train.trainer import select_epoch, train, weight_average


def _row(epoch: int, auc: float, loss: float) -> dict:
    return {"epoch": epoch, "val_auc": auc, "val_loss": loss, "train_loss": 1.0}


@pytest.mark.parametrize(
    ("rows", "selected"),
    [
        ([(0.90, 0.40), (0.95, 0.50), (0.93, 0.30)], 2),  # highest AUC wins over lower loss
        ([(0.95, 0.40), (0.95, 0.30), (0.94, 0.10)], 2),  # equal AUC: the lower loss
        ([(0.95, 0.30), (0.95, 0.30), (0.90, 0.30)], 1),  # equal AUC and loss: the earliest
        ([(0.80, 0.60)], 1),
    ],
)
def test_selection_rule_on_a_hand_made_history(rows, selected: int) -> None:
    history = [_row(epoch, auc, loss) for epoch, (auc, loss) in enumerate(rows, start=1)]
    assert select_epoch(history)["epoch"] == selected


def test_average_warms_up_and_never_holds_the_initialisation() -> None:
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1000.0)  # the "initialisation": must not survive the first update
    average = weight_average(model, decay=0.9)
    values = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0]
    expected = None
    for t, value in enumerate(values):
        with torch.no_grad():
            model[0].weight.fill_(value)
            model[1].running_mean.fill_(-value)
        average.update_parameters(model)
        decay = min(0.9, (1 + t) / (10 + t))  # t earlier updates: 0.18, 0.25, 0.31 ... 0.9
        expected = value if expected is None else decay * expected + (1 - decay) * value
        assert float(average.module[0].weight.detach()) == pytest.approx(expected, rel=1e-6)
        assert float(average.module[1].running_mean) == pytest.approx(-expected, rel=1e-6)
    assert expected is not None and 1.0 < expected < 2048.0  # a real average, not the last value


@pytest.fixture
def separable(tmp_path: Path) -> Path:
    """Two classes that any network separates: dark noise (NORMAL) against bright noise."""
    rng = np.random.default_rng(0)

    def split(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(count) % 2
        images = rng.normal(70 + 110 * labels[:, None, None], 25, (count, 64, 64))
        return images.clip(0, 255).astype(np.uint8), labels.reshape(-1, 1).astype(np.uint8)

    (train_x, train_y), (val_x, val_y) = split(128), split(32)
    path = tmp_path / "separable.npz"
    np.savez(path, train_images=train_x, train_labels=train_y, val_images=val_x, val_labels=val_y)
    return path


@pytest.mark.parametrize(("ema_decay", "seed"), [(0.998, 0), (0.998, 1), (0.998, 2), (0.0, 0)])
def test_a_short_run_exports_a_trained_model(
    separable: Path, tmp_path: Path, seed: int, ema_decay: float
) -> None:
    initial = imagenet_weights("efficientnet_lite0").state
    config = TrainConfig(
        arch="efficientnet_lite0",
        pretrained="imagenet",
        image_size=64,
        epochs=3,
        batch_size=16,
        ema_decay=ema_decay,
        seed=seed,
    )
    card = train(separable, tmp_path / "run", config)
    exported = torch.load(tmp_path / "run" / WEIGHTS_FILE, weights_only=True)
    body = [key for key in initial if key.endswith("weight") and "classifier" not in key][1:]
    assert len(body) > 50
    changed = [key for key in body if not torch.equal(exported[f"backbone.{key}"], initial[key])]
    assert len(changed) == len(body)  # every layer moved away from where it started
    history = json.loads((tmp_path / "run" / HISTORY_FILE).read_text())
    chosen = select_epoch(history)
    assert card.training["best_epoch"] == chosen["epoch"]
    assert card.val_metrics["auc"] == pytest.approx(chosen["val_auc"], abs=1e-6)  # what was saved
    assert chosen["val_auc"] > 0.9  # the classes separate (1.0 in most runs here)
    assert min(row["val_loss"] for row in history) < card.training["init_val_loss"]
    assert ModelCard.load(tmp_path / "run").weights_source.startswith("package ")

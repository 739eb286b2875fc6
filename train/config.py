"""The training recipe: one dataclass whose defaults are both ``TrainConfig()`` and the defaults of
``cxr train`` (the CLI reads them from here). Light on purpose: no torch import."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """A training recipe. The defaults are the recipe measured in the README."""

    arch: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    image_size: int = 64
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    #: Learning rate of pretrained layers as a fraction of ``lr`` (the new head gets ``lr``; from
    #: scratch every layer does).
    backbone_lr: float = 1.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    #: Decay of the exponential moving average of the weights that is evaluated and exported
    #: (0 turns it off: the raw weights are used).
    ema_decay: float = 0.998
    seed: int = 0
    device: str = "auto"
    target_sensitivity: float = 0.95

    def __post_init__(self) -> None:
        checks = {
            "--image-size must be at least 16": self.image_size >= 16,
            "--epochs must be at least 1": self.epochs >= 1,
            "--batch-size must be at least 2": self.batch_size >= 2,
            "--lr must be positive": self.lr > 0,
            "--backbone-lr must be in (0, 1]": 0 < self.backbone_lr <= 1,
            "--weight-decay must not be negative": self.weight_decay >= 0,
            "--label-smoothing must be in [0, 1)": 0 <= self.label_smoothing < 1,
            "--ema-decay must be in [0, 1)": 0 <= self.ema_decay < 1,
            "--target-sensitivity must be in (0, 1]": 0 < self.target_sensitivity <= 1,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))

"""``cxr train``: fine-tune an ImageNet backbone on chest X-rays."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cxr.client.options import fail
from cxr.train.config import TrainConfig
from cxr.train.data import DatasetError

console = Console(stderr=True)
#: ``cxr train``'s defaults are the recipe's: one fact, kept in :class:`TrainConfig`.
DEFAULTS = TrainConfig()


def train_command(
    data: Annotated[Path, typer.Option("--data", help="Kermany-style folder or MedMNIST .npz.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory to write.")],
    arch: Annotated[
        str, typer.Option(help="efficientnet_lite0 (timm) or a torchvision backbone.")
    ] = DEFAULTS.arch,
    pretrained: Annotated[
        str,
        typer.Option(
            help="imagenet (torchvision cache, offline package, else download), none, or a FILE."
        ),
    ] = DEFAULTS.pretrained,
    image_size: Annotated[
        int, typer.Option(help="Model input side, pixels.")
    ] = DEFAULTS.image_size,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = DEFAULTS.epochs,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = DEFAULTS.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle AdamW).")] = DEFAULTS.lr,
    backbone_lr: Annotated[
        float, typer.Option(help="Learning rate of the pretrained layers, as a fraction of --lr.")
    ] = DEFAULTS.backbone_lr,
    weight_decay: Annotated[
        float, typer.Option(help="AdamW weight decay.")
    ] = DEFAULTS.weight_decay,
    label_smoothing: Annotated[
        float, typer.Option(help="Label smoothing of the class-weighted cross-entropy.")
    ] = DEFAULTS.label_smoothing,
    ema_decay: Annotated[
        float, typer.Option(help="Weight moving-average decay (0: off).")
    ] = DEFAULTS.ema_decay,
    seed: Annotated[int, typer.Option(help="Random seed (reproducible runs).")] = DEFAULTS.seed,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = DEFAULTS.device,
    target_sensitivity: Annotated[
        float, typer.Option(help="Operating threshold: sensitivity to reach on validation.")
    ] = DEFAULTS.target_sensitivity,
) -> None:
    """Fine-tune an ImageNet backbone; write weights, model card and training curves."""
    try:
        config = TrainConfig(
            arch=arch,
            pretrained=pretrained,
            image_size=image_size,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            backbone_lr=backbone_lr,
            weight_decay=weight_decay,
            label_smoothing=label_smoothing,
            ema_decay=ema_decay,
            seed=seed,
            device=device,
            target_sensitivity=target_sensitivity,
        )
    except ValueError as err:
        raise fail(str(err)) from err
    from cxr.train.models import PretrainedWeightsError
    from cxr.train.trainer import train

    try:
        card = train(data, out, config)
    except (DatasetError, PretrainedWeightsError, ValueError) as err:
        raise fail(str(err)) from err
    metrics = card.val_metrics
    console.print(
        f"[green]done[/green] in {card.training['seconds']} s: val AUC {metrics['auc']:.4f} "
        f"(95% CI {metrics['auc_ci'][0]:.4f}-{metrics['auc_ci'][1]:.4f}), threshold "
        f"{card.threshold:.4f} -> sensitivity {metrics['sensitivity']:.3f}, specificity "
        f"{metrics['specificity']:.3f}, accuracy {metrics['accuracy']:.3f}. Run: {out}",
        highlight=False,
    )

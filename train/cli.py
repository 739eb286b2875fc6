"""``cxr data``, ``cxr train`` and ``cxr evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cxr.train.config import TrainConfig
from cxr.train.data import DatasetError

console = Console(stderr=True)
#: ``cxr train``'s defaults are the recipe's: one fact, kept in :class:`TrainConfig`.
DEFAULTS = TrainConfig()
data_app = typer.Typer(no_args_is_help=True, help="Make or inspect datasets.")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print an error and return the Exit to raise."""
    console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


@data_app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Option("--out", help="Output folder (Kermany-style).")],
    count: Annotated[int, typer.Option(help="Images in all splits together.")] = 600,
    image_size: Annotated[int, typer.Option(help="Side of the square images, pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write SYNTHETIC X-ray-like images as OUT/{train,val,test}/{NORMAL,PNEUMONIA}/*.png."""
    from cxr.train.synth import write_synthetic_dataset

    try:
        write_synthetic_dataset(out, count, image_size, seed)
    except ValueError as err:
        raise fail(str(err)) from err
    console.print(f"wrote {count} synthetic images to {out} (labelled SYNTHETIC; not radiographs)")


@data_app.command("info")
def info_command(data: Annotated[Path, typer.Argument(help="Dataset folder or .npz.")]) -> None:
    """Show a dataset's format, splits and class counts."""
    from cxr.train.data import SPLIT_NAMES, detect_format, load_split

    try:
        kind = detect_format(data)
    except DatasetError as err:
        raise fail(str(err)) from err
    table = Table("split", "images", "classes", "skipped files", title=f"{data} ({kind})")
    for split in SPLIT_NAMES:
        try:
            part = load_split(data, split, 32)
        except DatasetError as err:
            table.add_row(split, "-", str(err), "")
            continue
        table.add_row(
            split, str(len(part)), json.dumps(part.class_counts()), str(len(part.skipped))
        )
    Console().print(table)


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


def evaluate_command(
    model: Annotated[str, typer.Argument(help="Run dir, .onnx file, or served model name.")],
    data: Annotated[Path, typer.Option("--data", help="Dataset folder or .npz.")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics JSON.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for ROC/PR/confusion PNGs.")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Override the operating threshold.")
    ] = None,
    url: Annotated[str | None, typer.Option(help="HOST:PORT of a server: MODEL is served.")] = None,
    heatmaps: Annotated[
        Path | None,
        typer.Option(
            help="Folder for heatmap overlays of a sample of true positives, false positives "
            "and false negatives (TP_*, FP_*, FN_*).",
            metavar="DIR",
        ),
    ] = None,
) -> None:
    """Sensitivity, specificity, AUC (95% bootstrap CI) and more at the operating threshold."""
    from cxr.client.overlay import heatmap_folder
    from cxr.train.evaluate import EvaluationError, evaluate

    if heatmaps is not None:  # a bad folder fails before the evaluation, not after it
        try:
            heatmap_folder(heatmaps)
        except ValueError as err:
            raise fail(f"--heatmaps: {err}") from err
    try:
        report = evaluate(model, data, split, threshold, url, heatmaps)
    except (DatasetError, EvaluationError, ValueError) as err:
        raise fail(str(err)) from err
    metrics = report.metrics
    table = Table("metric", "value", title=f"{model} on {data} [{split}]")
    for key, value in metrics.items():
        if key == "confusion_matrix":
            continue
        shown = (
            f"{value[0]:.4f} - {value[1]:.4f}"
            if key == "auc_ci" and value[0] is not None
            else f"{value:.4f}"
            if isinstance(value, float)
            else str(value)
        )
        table.add_row(key, shown)
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    table.add_row("confusion [[TN FP] [FN TP]]", f"[[{tn} {fp}] [{fn} {tp}]]")
    Console().print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(metrics, indent=2) + "\n")
    if plots:
        report.write_plots(plots)
    if heatmaps is not None:
        counts = ", ".join(f"{kind} {len(paths)}" for kind, paths in report.overlays.items())
        console.print(f"heatmap overlays ({counts}) in {heatmaps}")

"""The training loop: class-balanced loss, radiograph augmentation, a warmed-up weight average,
selection on validation AUC, and an operating threshold chosen for a target sensitivity."""

from __future__ import annotations

import json
import math
import platform
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cxr.train import metrics
from cxr.train.card import CURVES_FILE, HISTORY_FILE, WEIGHTS_FILE, ModelCard
from cxr.train.config import TrainConfig
from cxr.train.data import TrainingData, detect_format, fingerprint, load_training_data
from cxr.train.models import (
    TIMM_ARCHS,
    TriageNet,
    build_model,
    head_linear,
    normalisation,
    pretrained_weights,
)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to PyTorch")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch so a run repeats on the same machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image random affine (rotation, scale, shift) and brightness/contrast jitter.

    No flips: a mirrored chest moves the heart to the wrong side. ``images`` are float 0..255.
    """
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        r = torch.rand(n, generator=generator, device=images.device)
        return low + (high - low) * r

    angle = uniform(-8, 8) * math.pi / 180
    scale = uniform(0.9, 1.1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin, uniform(-0.06, 0.06)], dim=1),
            torch.stack([sin, cos, uniform(-0.06, 0.06)], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
    contrast = uniform(0.85, 1.15).view(n, 1, 1, 1)
    brightness = uniform(-12, 12).view(n, 1, 1, 1)
    mean = moved.mean(dim=(2, 3), keepdim=True)
    return ((moved - mean) * contrast + mean + brightness).clamp(0, 255)


@torch.no_grad()
def predict_probs(model: TriageNet, images: np.ndarray, device: torch.device, batch: int = 256):
    """Class probabilities for uint8 images ``[N, 1, S, S]`` as a float32 NumPy array."""
    model.eval()
    outputs = []
    for start in range(0, len(images), batch):
        chunk = torch.from_numpy(images[start : start + batch]).to(device)
        with _autocast(device):
            outputs.append(model(chunk).float().cpu())
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, 0), np.float32)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train(data_path: Path, out: Path, config: TrainConfig) -> ModelCard:
    """Train a model on ``data_path`` and write weights, card, history and curves to ``out``."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    started, cpu_started = time.perf_counter(), time.process_time()
    detect_format(data_path)  # a missing dataset is named first, then missing weights
    console = Console(stderr=True, highlight=False)
    weights = pretrained_weights(config.arch, config.pretrained, console.print)  # before the data
    data = load_training_data(data_path, config.image_size, config.seed)
    model = build_model(config.arch, len(data.train.classes), weights.state).to(device)
    out.mkdir(parents=True, exist_ok=True)
    backbone_lr = config.backbone_lr if weights.state is not None else 1.0  # scratch: one rate
    at_init = _validate(model, data, device)
    console.print(
        f"before training: val loss {at_init['val_loss']:.3f}  val AUC {at_init['val_auc']:.4f}"
    )
    history = _fit(model, data, config, backbone_lr, device, out)
    model.load_state_dict(torch.load(out / WEIGHTS_FILE, map_location=device, weights_only=True))
    scores = metrics.triage_scores(predict_probs(model, data.val.images, device))
    mean, std = normalisation(config.arch)
    positives = (data.val.labels != 0).astype(np.int64)
    threshold = metrics.threshold_for_sensitivity(positives, scores, config.target_sensitivity)
    card = ModelCard(
        arch=config.arch,
        classes=data.train.classes,
        image_size=config.image_size,
        threshold=threshold,
        normalisation={"mean": mean, "std": std, "input_scale": 255.0},
        target_sensitivity=config.target_sensitivity,
        val_metrics=metrics.binary_metrics(positives, scores, threshold),
        val_source=data.val_source,
        weights_source=weights.source,
        data=_describe_data(data_path, data),
        training={
            **asdict(config),
            "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu_started, 1),
            "device": str(device),
            "best_epoch": select_epoch(history)["epoch"],
            "init_val_loss": at_init["val_loss"],
            "init_val_auc": at_init["val_auc"],
        },
        versions=_versions(config.arch),
    )
    card.save(out)
    _write_curves(history, out)
    return card


def weight_average(model: TriageNet, decay: float) -> AveragedModel:
    """PyTorch's :class:`AveragedModel`: an exponential moving average of the weights and the
    batch-norm statistics whose decay warms up as ``min(decay, (1 + t) / (10 + t))`` after ``t``
    updates, so a run of any length averages its own trained steps, not the initialisation."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], t: torch.Tensor):
        steps = int(t)
        get_ema_multi_avg_fn(min(decay, (1 + steps) / (10 + steps)))(averaged, current, t)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def param_groups(model: TriageNet, lr: float, backbone_lr: float) -> list[dict]:
    """Optimizer groups: the new classifier head at ``lr``, the rest at ``lr * backbone_lr``."""
    head = head_linear(model.backbone)
    head_ids = {id(p) for p in head.parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [{"params": list(head.parameters()), "lr": lr}]
    if body:
        groups.append({"params": body, "lr": lr * backbone_lr})
    return groups


def _fit(
    model: TriageNet,
    data: TrainingData,
    config: TrainConfig,
    backbone_lr: float,
    device: torch.device,
    out: Path,
) -> list[dict]:
    train_x = torch.from_numpy(data.train.images)
    train_y = torch.from_numpy(data.train.labels)
    counts = torch.bincount(train_y, minlength=len(data.train.classes)).float()
    class_weights = (counts.sum() / (len(counts) * counts.clamp(min=1))).to(device)
    groups = param_groups(model, config.lr, backbone_lr)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay, foreach=True)
    steps_per_epoch = max(1, len(train_y) // config.batch_size)  # full batches only (batch norm)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in groups],
        total_steps=config.epochs * steps_per_epoch,
        pct_start=0.15,
    )
    average = weight_average(model, config.ema_decay) if config.ema_decay > 0 else None
    selected = average.module if average else model
    generator = torch.Generator().manual_seed(config.seed)
    aug_generator = torch.Generator(device=device).manual_seed(config.seed)
    history: list[dict] = []
    started = time.perf_counter()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("training", total=config.epochs * steps_per_epoch, status="")
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(len(train_y), generator=generator)
            total_loss = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * config.batch_size : (step + 1) * config.batch_size]
                images = augment(train_x[idx].to(device).float(), aug_generator)
                labels = train_y[idx].to(device)
                with _autocast(device):
                    logits = model.logits(images)
                loss = F.cross_entropy(
                    logits.float(),
                    labels,
                    weight=class_weights,
                    label_smoothing=config.label_smoothing,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if average:
                    average.update_parameters(model)
                step_loss = loss.item()  # one device sync per step
                total_loss += step_loss
                progress.update(
                    task,
                    advance=1,
                    description=f"epoch {epoch}/{config.epochs}",
                    status=f"loss {step_loss:.3f}",
                )
            row = {"epoch": epoch, "train_loss": total_loss / steps_per_epoch}
            row.update(_validate(selected, data, device))
            row["seconds"] = round(time.perf_counter() - started, 1)
            history.append(row)
            if select_epoch(history) is row:
                torch.save(selected.state_dict(), out / WEIGHTS_FILE)
            status = (
                f"loss {row['train_loss']:.3f}  val loss {row['val_loss']:.3f}  "
                f"val AUC {row['val_auc']:.4f} (best {select_epoch(history)['val_auc']:.4f})"
            )
            progress.update(task, status=status)
            progress.console.print(f"epoch {epoch}/{config.epochs}: {status}  {row['seconds']} s")
    (out / HISTORY_FILE).write_text(json.dumps(history, indent=2) + "\n")
    return history


def _validate(model: TriageNet, data: TrainingData, device: torch.device) -> dict[str, float]:
    """Validation loss (cross-entropy of the probabilities) and triage ROC AUC."""
    probs = predict_probs(model, data.val.images, device)
    picked = probs[np.arange(len(probs)), data.val.labels]
    positives = (data.val.labels != 0).astype(np.int64)
    return {
        "val_loss": float(-np.log(np.clip(picked, 1e-7, None)).mean()),
        "val_auc": metrics.roc_auc(positives, metrics.triage_scores(probs)),
    }


def select_epoch(history: list[dict]) -> dict:
    """The checkpoint-selection rule, the only place it is stated: the epoch with the highest
    validation AUC; among equal AUCs the lowest validation loss; among those the earliest."""
    return max(history, key=lambda row: (row["val_auc"], -row["val_loss"], -row["epoch"]))


def _describe_data(path: Path, data: TrainingData) -> dict:
    return {
        "path": str(path),
        "fingerprint": fingerprint(data.train, data.val),
        "train_counts": data.train.class_counts(),
        "val_counts": data.val.class_counts(),
        "skipped_files": data.train.skipped + data.val.skipped,
    }


def _versions(arch: str) -> dict[str, str]:
    import torchvision

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
    }
    if arch in TIMM_ARCHS:
        import timm

        versions["timm"] = timm.__version__
    return versions


def _write_curves(history: list[dict], out: Path) -> None:
    from cxr.train.plots import plot_training_curves

    plot_training_curves(history, out / CURVES_FILE)

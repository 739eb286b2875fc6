"""The images the accuracy gate compares variants on, and the acquisition shifts applied to them.

Which images (the first that applies):

1. ``--gate-data PATH`` (its ``--gate-split``, default its validation split);
2. the slice of the training data the card says training held back (``card.data["gate_holdout"]``:
   ``{"split": "train", "indices": [...]}``, indices into that split of ``card.data["path"]``);
3. otherwise a slice derived here, deterministically: a stratified :data:`HOLDOUT_FRACTION` of the
   run's training split, drawn with a seed made of the card's data fingerprint and training seed.
   Training did not select on it (checkpoint and threshold are chosen on validation), but unless
   training held it back it *was fitted on it*: the report says so, and FP32 may look better there
   than on new data. Pass ``--gate-data`` for truly unseen images.

Each set is compared clean and under label-preserving perturbations that mimic acquisition shift
(:data:`PERTURBATIONS`), every one a paired comparison on the same images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.train.card import ModelCard
from cxr.train.data import Split, TrainingData, load_split, load_training_data, stratified_split

#: Share of each class of the training split derived as the gate slice when the card records none.
HOLDOUT_FRACTION = 0.2
#: Label-preserving acquisition shifts compared besides the clean images.
PERTURBATIONS = ("exposure", "contrast", "noise", "geometry")
#: Strength of each perturbation (per image, drawn uniformly in +-range or as stated).
EXPOSURE_GAIN = 0.2  # pixel values scaled by 1 +- 0.2 (under / over exposure)
CONTRAST_GAIN = 0.3  # deviations from the image mean scaled by 1 +- 0.3
NOISE_SIGMA = 6.0  # grey levels of Gaussian noise (quantum / detector noise)
ROTATION_DEG, SCALE, SHIFT = 5.0, 0.05, 0.04  # +-degrees, 1 +- scale, +- fraction of the side


@dataclass
class GateSet:
    """Labelled images, clean and perturbed, with where they came from."""

    labels: np.ndarray  # int64 [N]
    conditions: dict[str, np.ndarray]  # condition -> uint8 [N, 1, S, S], "clean" first
    source: str
    kind: str  # "gate-data", "held back by training", "derived"
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def perturb(images: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """``images`` (uint8 [N, 1, S, S]) under the acquisition shift ``kind``, reproducibly."""
    rng = np.random.default_rng(seed)
    n = len(images)
    pixels = images.astype(np.float32)

    def signs_times(strength: float) -> np.ndarray:
        # Half the images one way, half the other, each at a random strength up to ``strength``.
        magnitude = rng.uniform(strength / 2, strength, n)
        return (np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * magnitude).reshape(n, 1, 1, 1)

    if kind == "exposure":
        out = pixels * (1.0 + signs_times(EXPOSURE_GAIN))
    elif kind == "contrast":
        mean = pixels.mean(axis=(2, 3), keepdims=True)
        out = (pixels - mean) * (1.0 + signs_times(CONTRAST_GAIN)) + mean
    elif kind == "noise":
        out = pixels + rng.normal(0.0, NOISE_SIGMA, pixels.shape)
    elif kind == "geometry":
        out = _affine(pixels, rng)
    else:
        raise ValueError(f"unknown perturbation {kind!r}; choose from {', '.join(PERTURBATIONS)}")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _affine(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small rotation, scaling and shift (border pixels repeated), as a slightly different
    patient position or detector distance would give."""
    import torch
    import torch.nn.functional as F

    n = len(pixels)
    angle = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG, n))
    scale = rng.uniform(1 - SCALE, 1 + SCALE, n)
    shift = rng.uniform(-2 * SHIFT, 2 * SHIFT, (n, 2))  # affine_grid spans -1..1: twice the side
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    rows = [np.stack([cos, -sin, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)]
    theta = np.stack(rows, 1)
    source = torch.from_numpy(pixels)
    grid = F.affine_grid(torch.from_numpy(theta).float(), list(source.shape), align_corners=False)
    return F.grid_sample(source, grid, padding_mode="border", align_corners=False).numpy()


def with_perturbations(
    labels: np.ndarray, images: np.ndarray, seed: int, kinds: tuple[str, ...], **info
) -> GateSet:
    """A gate set of ``images`` clean and under each perturbation of ``kinds``."""
    conditions = {"clean": images}
    for kind in kinds:
        conditions[kind] = perturb(images, kind, seed + 1 + PERTURBATIONS.index(kind))
    return GateSet(labels, conditions, **info)


def derive_seed(card: ModelCard, seed: int) -> int:
    """Seed of the derived slice: the data fingerprint (hex) mixed with the training seed."""
    fingerprint = str(card.data.get("fingerprint") or "")
    try:
        from_data = int(fingerprint[:8], 16)
    except ValueError:
        from_data = 0
    return (from_data + seed) % 2**32


def base_images(
    card: ModelCard,
    seed: int,
    gate_data: Path | None,
    gate_split: str | None,
    run_data: TrainingData | None,
    run_source: str,
) -> tuple[Split, str, str, list[str]]:
    """(images, source, kind, notes) of the gate before perturbation (see the module text)."""
    size = card.image_size
    if gate_data is not None:
        if gate_split is None:
            split, source = load_training_data(gate_data, size, seed).val, "validation split"
        else:
            split, source = load_split(gate_data, gate_split, size), f"{gate_split} split"
        return split, f"{gate_data} {source}", "gate-data", []
    if run_data is None:
        raise ValueError("no gate data: pass --gate-data, or a card naming its training data")
    record = card.data.get("gate_holdout")
    if record:
        split = load_split(Path(card.data["path"]), record.get("split", "train"), size)
        indices = np.asarray(record.get("indices", []), np.int64)
        if not len(indices) or indices.min() < 0 or indices.max() >= len(split):
            raise ValueError(
                f"card.data.gate_holdout: indices must lie in 0..{len(split) - 1} of the "
                f"{record.get('split', 'train')} split of {card.data['path']}"
            )
        source = f"{run_source}: the {len(indices)} images training held back (card)"
        return split.subset(indices), source, "held back by training", []
    derived = derive_seed(card, seed)
    _, held = stratified_split(run_data.train.labels, HOLDOUT_FRACTION, derived)
    source = (
        f"{run_source}: a stratified {HOLDOUT_FRACTION:.0%} of the training split "
        f"(seed {derived}: data fingerprint + training seed)"
    )
    notes = [
        "the card records no held-back slice, so this slice was derived from the training split: "
        "training did not select on it, but the model was fitted on it; pass --gate-data for "
        "images it has never seen"
    ]
    return run_data.train.subset(held), source, "derived", notes

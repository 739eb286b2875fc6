"""The gate set: which images (--gate-data, the card's held-back slice, a derived slice) and the
acquisition shifts applied to them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr.convert.gateset import (
    HOLDOUT_FRACTION,
    PERTURBATIONS,
    base_images,
    derive_seed,
    perturb,
    with_perturbations,
)
from cxr.convert.pipeline import ConvertOptions
from cxr.train.card import ModelCard
from cxr.train.data import load_split, load_training_data


def smooth_images(count: int = 40, size: int = 32) -> np.ndarray:
    """Chest-like smooth images: a bright body on a dark background, mid-grey on average."""
    y, x = np.mgrid[0:size, 0:size] / size
    body = 60 + 140 * np.exp(-(((x - 0.5) / 0.35) ** 2 + ((y - 0.5) / 0.4) ** 2))
    rng = np.random.default_rng(0)
    images = body[None] * rng.uniform(0.8, 1.0, (count, 1, 1))
    return np.clip(images, 0, 255).astype(np.uint8)[:, None]


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_perturbations_are_reproducible_small_and_keep_the_format(kind: str) -> None:
    images = smooth_images()
    shifted = perturb(images, kind, seed=5)
    assert shifted.dtype == np.uint8 and shifted.shape == images.shape
    assert np.array_equal(shifted, perturb(images, kind, seed=5))
    assert not np.array_equal(shifted, images)
    change = np.abs(shifted.astype(float) - images).mean(axis=(1, 2, 3))
    assert change.max() < 40  # label-preserving: a shift, not a different image
    correlation = [
        np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(images, shifted, strict=True)
    ]
    assert min(correlation) > 0.9


def test_exposure_brightens_half_and_darkens_half() -> None:
    images = smooth_images()
    ratio = perturb(images, "exposure", 1).mean(axis=(1, 2, 3)) / images.mean(axis=(1, 2, 3))
    assert np.all(ratio[::2] > 1.05) and np.all(ratio[1::2] < 0.95)
    assert np.all(np.abs(ratio - 1) < 0.21)


def test_contrast_keeps_the_mean_and_changes_the_spread() -> None:
    images = smooth_images()
    shifted = perturb(images, "contrast", 1).astype(float)
    assert np.allclose(shifted.mean(axis=(1, 2, 3)), images.mean(axis=(1, 2, 3)), atol=1.5)
    spread = shifted.std(axis=(1, 2, 3)) / images.std(axis=(1, 2, 3))
    assert np.all(spread[::2] > 1.1) and np.all(spread[1::2] < 0.9)


def test_unknown_perturbation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown perturbation 'blur'"):
        perturb(smooth_images(), "blur", 0)


def test_gate_set_holds_the_same_labels_for_every_condition() -> None:
    images = smooth_images()
    labels = np.arange(len(images)) % 2
    gate_set = with_perturbations(labels, images, 3, PERTURBATIONS, source="s", kind="gate-data")
    assert list(gate_set.conditions) == ["clean", *PERTURBATIONS]
    assert all(len(v) == len(labels) for v in gate_set.conditions.values())
    assert gate_set.conditions["clean"] is images and len(gate_set) == len(labels)


def card_for(data: Path, **data_record) -> ModelCard:
    return ModelCard(
        arch="resnet18",
        classes=["NORMAL", "PNEUMONIA"],
        image_size=32,
        threshold=0.5,
        normalisation={},
        data={"path": str(data), **data_record},
    )


def test_derived_slice_is_stratified_reproducible_and_says_it_was_fitted(
    synthetic_data: Path,
) -> None:
    run_data = load_training_data(synthetic_data, 32, 0)
    card = card_for(synthetic_data, fingerprint="00ab12cd9f")
    split, source, kind, notes = base_images(card, 0, None, None, run_data, "data")
    again = base_images(card, 0, None, None, run_data, "data")[0]
    assert kind == "derived" and split.sources == again.sources
    assert set(split.sources) <= set(run_data.train.sources)
    for label in (0, 1):
        total = int((run_data.train.labels == label).sum())
        assert int((split.labels == label).sum()) == max(1, round(total * HOLDOUT_FRACTION))
    assert "fitted" in notes[0] and "--gate-data" in notes[0]
    assert f"seed {derive_seed(card, 0)}" in source
    other = base_images(
        card_for(synthetic_data, fingerprint="ffff0000"), 0, None, None, run_data, ""
    )
    assert other[0].sources != split.sources  # another dataset fingerprint, another slice


def test_the_cards_held_back_slice_is_used_when_recorded(synthetic_data: Path) -> None:
    run_data = load_training_data(synthetic_data, 32, 0)
    card = card_for(synthetic_data, gate_holdout={"split": "train", "indices": [0, 2, 4]})
    split, source, kind, notes = base_images(card, 0, None, None, run_data, "data")
    assert kind == "held back by training" and notes == []
    train = load_split(synthetic_data, "train", 32)
    assert split.sources == [train.sources[i] for i in (0, 2, 4)]
    assert "3 images training held back" in source
    bad = card_for(synthetic_data, gate_holdout={"split": "train", "indices": [10**6]})
    with pytest.raises(ValueError, match="gate_holdout: indices must lie in"):
        base_images(bad, 0, None, None, run_data, "data")


def test_gate_data_and_its_split_override(synthetic_data: Path) -> None:
    card = card_for(synthetic_data)
    split, source, kind, _ = base_images(card, 0, synthetic_data, "test", None, "")
    assert kind == "gate-data" and source.endswith("test split")
    assert all("/test/" in s for s in split.sources)
    val, source, _, _ = base_images(card, 0, synthetic_data, None, None, "")
    assert source.endswith("validation split") and len(val)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gate_split": "val"}, "--gate-split needs --gate-data"),
        ({"perturbations": ("blur",)}, "--perturb: unknown"),
        ({"calib_method": "best"}, "--calib-method 'best'"),
    ],
)
def test_bad_gate_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConvertOptions(**options).check()

"""Datasets: Kermany-style folders, MedMNIST ``.npz`` files, and the image files inside them.

Every format becomes the same :class:`Split`: uint8 images ``[N, 1, S, S]`` made with the shared
decoding code (:mod:`client.imaging`), integer labels, and the class names in output order. The
normal class always comes first, so the triage score is ``1 - P(class 0)`` for any number of
classes. Files that cannot be decoded are skipped and listed, never fatal for the others.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.client.contract import DEFAULT_CLASSES, NEGATIVE_CLASS
from cxr.client.imaging import ImageDecodeError, load_model_input, to_model_input

SPLIT_NAMES = ("train", "val", "test")
#: A validation split smaller than this (or than the carved one would be) is replaced by one
#: carved from train: Kermany's has 16 images.
MIN_VAL_IMAGES = 100
#: Share of every class of train held out when validation is carved.
VAL_FRACTION = 0.1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""}


class DatasetError(ValueError):
    """A dataset that cannot be used, with a message naming the path and what is wrong."""


@dataclass
class Split:
    """One split of a dataset, decoded and resized for the model."""

    images: np.ndarray  # uint8 [N, 1, S, S]
    labels: np.ndarray  # int64 [N]
    classes: list[str]
    sources: list[str] = field(default_factory=list)  # a path (or "npz:split:index") per image
    skipped: list[str] = field(default_factory=list)  # "path: reason" for files that failed

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts, strict=True)}

    def subset(self, indices: np.ndarray, keep_skipped: bool = False) -> Split:
        """A new split holding the given rows (and this split's skipped files if asked)."""
        return Split(
            self.images[indices],
            self.labels[indices],
            self.classes,
            [self.sources[i] for i in indices] if self.sources else [],
            list(self.skipped) if keep_skipped else [],
        )


def order_classes(names: Sequence[str]) -> list[str]:
    """Sort class names with the normal class first (index 0), the rest alphabetically."""
    ordered = sorted(names, key=lambda n: (n.upper() != NEGATIVE_CLASS, n))
    return ordered


def detect_format(path: Path) -> str:
    """Return ``"npz"`` or ``"folders"``; raise :class:`DatasetError` otherwise."""
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if path.is_file():
        if path.suffix == ".npz":
            return "npz"
        raise DatasetError(f"{path}: not a dataset (expected a MedMNIST .npz or a folder)")
    if (path / "train").is_dir():
        return "folders"
    raise DatasetError(
        f"{path}: not a Kermany-style folder (expected {path}/train/<CLASS>/* images) "
        "nor a MedMNIST .npz file"
    )


def load_split(path: Path, split: str, image_size: int) -> Split:
    """Load one split (``train``, ``val`` or ``test``) of a dataset at ``image_size``."""
    if split not in SPLIT_NAMES:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_NAMES)}")
    if detect_format(path) == "npz":
        return _load_npz_split(path, split, image_size)
    return _load_folder_split(path, split, image_size)


@dataclass
class TrainingData:
    """Train and validation splits, with how the validation split was obtained."""

    train: Split
    val: Split
    val_source: str


def load_training_data(path: Path, image_size: int, seed: int = 0) -> TrainingData:
    """Load train and val; carve a stratified validation split from train when val is missing,
    lacks a class, or is smaller than both :data:`MIN_VAL_IMAGES` and the carved split."""
    train = load_split(path, "train", image_size)
    if len(train) == 0:
        raise DatasetError(f"{path}: the train split has no readable images")
    present = np.unique(train.labels)
    if len(present) < 2:
        raise DatasetError(f"{path}: the train split has only one class ({train.class_counts()})")
    if not has_split(path, "val"):
        reason = "missing"
    else:
        val = load_split(path, "val", image_size)
        missing = sorted(set(present.tolist()) - set(val.labels.tolist()))
        enough = min(MIN_VAL_IMAGES, round(len(train) * VAL_FRACTION))
        if len(val) >= enough and not missing:
            return TrainingData(train, val, "val split of the dataset")
        reason = (
            f"only {len(val)} images"
            if len(val) < enough
            else f"no {', '.join(train.classes[i] for i in missing)} images"
        )
    train_idx, val_idx = stratified_split(train.labels, VAL_FRACTION, seed)
    return TrainingData(
        train.subset(train_idx, keep_skipped=True),
        train.subset(val_idx),
        f"carved from train: stratified {VAL_FRACTION:.0%}, seed {seed} (dataset val {reason})",
    )


def has_split(path: Path, split: str) -> bool:
    """Whether the dataset at ``path`` (already detected) has a ``split``."""
    if detect_format(path) == "npz":
        with _open_npz(path) as archive:
            return f"{split}_images" in archive.files
    return (path / split).is_dir()


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with ``fraction`` of every class held out (at least one each)."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_held = max(1, round(len(members) * fraction))
        held.append(members[:n_held])
        keep.append(members[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def fingerprint(*splits: Split) -> str:
    """SHA-256 (first 16 hex digits) over the decoded images and labels: format-independent."""
    digest = hashlib.sha256()
    for split in splits:
        digest.update(np.ascontiguousarray(split.images).tobytes())
        digest.update(split.labels.astype(np.int64).tobytes())
        digest.update(",".join(split.classes).encode())
    return digest.hexdigest()[:16]


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DatasetError(f"{path}: unreadable .npz file ({err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path}: not an .npz archive (a single .npy array)")
    return archive


def npz_classes(labels: Sequence[np.ndarray]) -> list[str]:
    """Class names of MedMNIST-style labels (0 = normal): NORMAL/PNEUMONIA when binary, else
    NORMAL, CLASS_1, ... up to the largest label in any split."""
    largest = max((int(a.max()) for a in labels if a.size), default=1)
    if largest <= 1:
        return list(DEFAULT_CLASSES)
    return [NEGATIVE_CLASS, *(f"CLASS_{i}" for i in range(1, largest + 1))]


def _load_npz_split(path: Path, split: str, image_size: int) -> Split:
    with _open_npz(path) as archive:
        keys = set(archive.files)
        images_key, labels_key = f"{split}_images", f"{split}_labels"
        if images_key not in keys or labels_key not in keys:
            available = sorted({k.rsplit("_", 1)[0] for k in keys if k.endswith("_images")})
            raise DatasetError(
                f"{path}: no {split!r} split (needs {images_key} and {labels_key}; "
                f"splits present: {', '.join(available) or 'none'})"
            )
        try:
            images = archive[images_key]
            all_labels = {k: archive[k].reshape(-1) for k in keys if k.endswith("_labels")}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise DatasetError(f"{path}: unreadable array in the .npz file ({err})") from err
    labels = all_labels[labels_key]
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels):
        raise DatasetError(
            f"{path}: {images_key} must be uint8 [N, H, W] with one label each "
            f"(got {images.dtype} {images.shape}, {len(labels)} labels)"
        )
    for key, values in all_labels.items():
        if values.dtype.kind not in "iub" or (values.size and values.min() < 0):
            raise DatasetError(
                f"{path}: {key} must be non-negative integer class indices (0 = normal), "
                f"got {values.dtype} with minimum {values.min() if values.size else 'n/a'}"
            )
    resized = (
        np.stack([to_model_input(image, image_size) for image in images])
        if len(images)
        else (np.zeros((0, 1, image_size, image_size), np.uint8))
    )
    return Split(
        resized,
        labels.astype(np.int64),
        npz_classes(list(all_labels.values())),
        [f"npz:{split}:{i}" for i in range(len(labels))],
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _class_folders(root: Path) -> list[str]:
    return [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "__"))]


def _load_folder_split(path: Path, split: str, image_size: int) -> Split:
    root = path / split
    if not root.is_dir():
        raise DatasetError(f"{path}: no {split!r} split (folder {root} is missing)")
    train_root = path / "train"
    classes = order_classes(_class_folders(train_root))
    if len(classes) < 2:
        raise DatasetError(
            f"{train_root}: needs one sub-folder per class (at least 2), found {classes or 'none'}"
        )
    if classes[0].upper() != NEGATIVE_CLASS:
        raise DatasetError(
            f"{train_root}: needs a {NEGATIVE_CLASS} class folder (the negative class of triage), "
            f"found {classes}"
        )
    unknown = sorted(set(_class_folders(root)) - set(classes))
    if unknown:
        raise DatasetError(f"{root}: class folders {unknown} are not in train's classes {classes}")
    files = [(f, label) for label, name in enumerate(classes) for f in _image_files(root / name)]
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        decoded = list(pool.map(lambda item: _decode_file(item[0], image_size), files))
    images, labels, sources, skipped = [], [], [], []
    for (file, label), result in zip(files, decoded, strict=True):
        if isinstance(result, str):
            skipped.append(f"{file}: {result}")
            continue
        images.append(result)
        labels.append(label)
        sources.append(str(file))
    stacked = np.stack(images) if images else np.zeros((0, 1, image_size, image_size), np.uint8)
    return Split(stacked, np.asarray(labels, np.int64), classes, sources, skipped)


def _decode_file(file: Path, image_size: int) -> np.ndarray | str:
    try:
        return load_model_input(file.read_bytes(), image_size)
    except ImageDecodeError as err:
        return str(err)
    except OSError as err:
        return f"unreadable file: {err.strerror or err}"

"""Clinical evaluation metrics for binary pneumonia triage (pure numpy).

Conventions used throughout:

* ``labels`` are 0/1 (or bool); 1 is the positive class (pneumonia).
* ``scores`` are the positive-class probability (any real-valued score works).
* A prediction is positive when ``score >= threshold``.
* Degenerate inputs never crash the evaluation: an AUC over a single-class label set is
  ``float("nan")``, and :func:`binary_metrics` reports undefined values as ``None`` so its
  result is valid JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "binary_metrics",
    "bootstrap_auc_ci",
    "confusion_matrix",
    "pointing_game",
    "precision_recall_curve",
    "roc_auc",
    "roc_curve",
    "threshold_for_sensitivity",
    "triage_scores",
]

# Replicates processed per vectorised chunk in the bootstrap (bounds peak memory).
_BOOT_CHUNK = 128


def triage_scores(probs: NDArray[np.floating]) -> NDArray[np.floating]:
    """The urgent score per image: 1 - P(normal class), i.e. P(pneumonia) for binary models."""
    return 1.0 - probs[:, 0]


def _binary_inputs(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.bool_], NDArray]:
    """Validate and convert to (bool labels, float64 scores), both 1-D and equal length."""
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} != {s.size}")
    if y.dtype != np.bool_:
        if y.size and not np.isin(y, (0, 1)).all():
            bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
            raise ValueError(f"labels must be binary 0/1; found e.g. {bad.tolist()}")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return y, s


def _average_ranks(values: NDArray) -> NDArray[np.float64]:
    """1-based ranks of ``values`` with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # Start index of each run of equal values in the sorted array.
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], sorted_vals.size]  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Binary ROC AUC via the Mann-Whitney U statistic with average ranks for ties.

    Equals P(score_pos > score_neg) + 0.5 * P(score_pos == score_neg).
    Returns ``float("nan")`` when only one class (or nothing) is present.
    """
    y, s = _binary_inputs(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(s)[y].sum()
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _cumulative_counts(
    y: NDArray[np.bool_], s: NDArray
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """(tp, fp, thresholds) at each distinct score, thresholds in decreasing order."""
    order = np.argsort(-s, kind="mergesort")
    s_desc = s[order]
    y_desc = y[order]
    # Last index of each run of equal scores: predictions flip there.
    last = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    tp = np.cumsum(y_desc, dtype=np.int64)[last]
    fp = (last + 1) - tp
    return tp, fp, s_desc[last]


def roc_curve(
    labels: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """ROC curve points ``(fpr, tpr, thresholds)``.

    ``thresholds`` are the distinct scores in decreasing order, preceded by ``inf`` so the
    curve starts at (0, 0); point ``i`` is the operating point of ``score >= thresholds[i]``.
    The curve ends at (1, 1). With no positives ``tpr`` is all NaN (with no negatives ``fpr``).
    """
    y, s = _binary_inputs(labels, scores)
    tp, fp, thr = _cumulative_counts(y, s)
    tp = np.r_[0, tp]
    fp = np.r_[0, fp]
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    tpr = tp / n_pos if n_pos else np.full(tp.shape, np.nan)
    fpr = fp / n_neg if n_neg else np.full(fp.shape, np.nan)
    return fpr.astype(np.float64), tpr.astype(np.float64), np.r_[np.inf, thr]


def precision_recall_curve(
    labels: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Precision-recall points ``(precision, recall, thresholds)``.

    One point per distinct score, ``thresholds`` in decreasing order (recall increasing);
    point ``i`` is the operating point of ``score >= thresholds[i]``, so precision is always
    defined. With no positives ``recall`` is all NaN.
    """
    y, s = _binary_inputs(labels, scores)
    tp, fp, thr = _cumulative_counts(y, s)
    n_pos = int(y.sum())
    precision = tp / (tp + fp)
    recall = tp / n_pos if n_pos else np.full(tp.shape, np.nan)
    return precision.astype(np.float64), recall.astype(np.float64), thr


def bootstrap_auc_ci(
    labels: ArrayLike,
    scores: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` confidence interval for the ROC AUC.

    Resampling is stratified (positives and negatives resampled separately, keeping their
    counts) so every replicate has both classes. Deterministic for a given ``seed``.
    Returns ``(nan, nan)`` when only one class is present.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y, s = _binary_inputs(labels, scores)
    # Map scores to bins of distinct values; a replicate's AUC then only needs per-bin counts:
    # AUC = sum_v pos(v) * (neg(< v) + 0.5 * neg(v)) / (n_pos * n_neg).
    uniq, bins = np.unique(s, return_inverse=True)
    pos_bins = bins[y]
    neg_bins = bins[~y]
    n_pos, n_neg, n_uniq = pos_bins.size, neg_bins.size, uniq.size
    if n_pos == 0 or n_neg == 0:
        return float("nan"), float("nan")

    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, _BOOT_CHUNK):
        m = min(_BOOT_CHUNK, n_boot - start)
        offset = (np.arange(m) * n_uniq)[:, None]
        pos_draw = pos_bins[rng.integers(0, n_pos, size=(m, n_pos))] + offset
        neg_draw = neg_bins[rng.integers(0, n_neg, size=(m, n_neg))] + offset
        pos_cnt = np.bincount(pos_draw.ravel(), minlength=m * n_uniq).reshape(m, n_uniq)
        neg_cnt = np.bincount(neg_draw.ravel(), minlength=m * n_uniq).reshape(m, n_uniq)
        neg_below = np.cumsum(neg_cnt, axis=1) - neg_cnt
        wins = (pos_cnt * (neg_below + 0.5 * neg_cnt)).sum(axis=1)
        aucs[start : start + m] = wins / (n_pos * n_neg)
    lo, hi = np.quantile(aucs, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def confusion_matrix(
    labels: ArrayLike, predicted: ArrayLike, n_classes: int = 2
) -> NDArray[np.int64]:
    """``n_classes x n_classes`` count matrix; rows = true class, columns = predicted class."""
    y = np.asarray(labels).ravel()
    p = np.asarray(predicted).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predicted differ in length: {y.size} != {p.size}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    y = y.astype(np.int64) if y.dtype == np.bool_ else y
    p = p.astype(np.int64) if p.dtype == np.bool_ else p
    for name, arr in (("labels", y), ("predicted", p)):
        is_int = np.issubdtype(arr.dtype, np.integer)
        if arr.size and not is_int and not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} must be integer class indices")
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(f"{name} must lie in [0, {n_classes - 1}]")
    idx = y.astype(np.int64) * n_classes + p.astype(np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(num: int, den: int) -> float | None:
    """``num / den`` as a float, or ``None`` when undefined (``den == 0``)."""
    return float(num / den) if den else None


def _finite_or_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def binary_metrics(
    labels: ArrayLike,
    positive_scores: ArrayLike,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Operating-point and ranking metrics at ``threshold`` (positive when score >= threshold).

    Keys: ``n, auc, auc_ci, accuracy, sensitivity, specificity, precision, f1, threshold,
    confusion_matrix``. Values are plain Python ints/floats/lists (``json.dumps``-safe);
    ``confusion_matrix`` is ``[[tn, fp], [fn, tp]]`` and ``auc_ci`` is ``[lo, hi]``.
    Undefined values are ``None``: AUC and its CI with a single class, sensitivity with no
    positives, specificity with no negatives, precision when nothing is predicted positive,
    F1 when there are neither positives nor positive predictions, accuracy when ``n == 0``.
    """
    y, s = _binary_inputs(labels, positive_scores)
    pred = s >= threshold
    cm = confusion_matrix(y, pred, n_classes=2)
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    lo, hi = bootstrap_auc_ci(y, s, n_boot=n_boot, seed=seed)
    return {
        "n": int(y.size),
        "auc": _finite_or_none(roc_auc(y, s)),
        "auc_ci": [_finite_or_none(lo), _finite_or_none(hi)],
        "accuracy": _ratio(tp + tn, y.size),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "threshold": float(threshold),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def threshold_for_sensitivity(labels: ArrayLike, scores: ArrayLike, target: float = 0.95) -> float:
    """Highest threshold whose sensitivity (``score >= threshold``) is at least ``target``.

    Taking the highest such threshold maximises specificity at the required sensitivity.
    The result is always one of the positive scores. Raises ``ValueError`` when there are
    no positives or ``target`` is outside (0, 1].
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y, s = _binary_inputs(labels, scores)
    pos_desc = np.sort(s[y])[::-1]
    n_pos = pos_desc.size
    if n_pos == 0:
        raise ValueError("cannot choose a threshold for a target sensitivity: no positive labels")
    # Smallest k with k / n_pos >= target (same arithmetic a caller would use to check it).
    k = np.arange(1, n_pos + 1)
    k_min = int(k[np.argmax(k / n_pos >= target)])
    return float(pos_desc[k_min - 1])


#: Tolerance of the pointing game (Zhang et al., "Top-down neural attention by excitation
#: backprop", ECCV 2016): 15 pixels at 224, as a fraction of the image's side.
POINTING_TOLERANCE = 15 / 224
#: Points per side of the grid over which the pointing game's baselines are measured.
_POINTING_GRID = 64


def pointing_game(
    points: Sequence[tuple[float, float]],
    findings: Sequence[Sequence[tuple[float, float, float]]],
    tolerance: float = POINTING_TOLERANCE,
) -> dict[str, float | int | None]:
    """The pointing game of heatmap peaks against findings drawn as discs.

    ``points``: per image, its map's peak (x, y); ``findings``: per image, its findings' discs
    (x, y, r); all as fractions of the image's side. A hit: the peak within ``r + tolerance`` of
    a finding's centre. Returns the score (hits / images) and two baselines: ``chance``, the
    expected score of a uniformly random point, and ``prior``, the score of the best single point
    for all these images (on a grid; what a map that ignores the image could reach at best).
    """
    if len(points) != len(findings):
        raise ValueError(f"{len(points)} peaks for {len(findings)} images")
    axis = (np.arange(_POINTING_GRID) + 0.5) / _POINTING_GRID
    grid_x, grid_y = np.meshgrid(axis, axis)
    hits, chance, prior = 0, 0.0, np.zeros_like(grid_x)
    for (x, y), discs in zip(points, findings, strict=True):
        disc = np.asarray(discs, np.float64).reshape(-1, 3)
        reach = disc[:, 2] + tolerance
        hits += bool(np.any(np.hypot(x - disc[:, 0], y - disc[:, 1]) <= reach))
        near = np.hypot(grid_x[..., None] - disc[:, 0], grid_y[..., None] - disc[:, 1]) <= reach
        covered = near.any(axis=-1)
        chance += float(covered.mean())
        prior += covered
    n = len(points)
    return {
        "pointing_game": hits / n if n else None,
        "pointing_game_chance": chance / n if n else None,
        "pointing_game_prior": float(prior.max()) / n if n else None,
        "pointing_game_images": n,
    }

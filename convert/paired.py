"""Paired comparison of a variant with FP32 on the same images (pure numpy).

* AUC difference with DeLong's paired confidence interval (DeLong, DeLong and Clarke-Pearson 1988,
  in Sun and Xu's fast form, 2014): both AUCs are computed on the same images, so their covariance
  is subtracted and a variant that ranks like FP32 gets a narrow interval.
* Sensitivity and specificity at the operating threshold: the paired difference of two
  proportions with Tango's score interval (Tango 1998), which stays honest with few or no
  discordant images (a Wald interval would be [0, 0] then).
* Decision flips, both ways: FP32 urgent -> variant routine, and routine -> urgent.

Every difference is ``variant - FP32``: a negative value is a loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

from cxr.train.metrics import roc_auc

#: Two-sided confidence level of every interval.
CONFIDENCE = 0.95


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _tango_z(gain: int, loss: int, n: int, delta: float) -> float:
    """Tango's score statistic for a difference ``delta`` of paired proportions."""
    a = 2.0 * n
    b = -gain - loss + (2.0 * n - gain + loss) * delta
    c = -loss * delta * (1.0 - delta)
    q = (math.sqrt(max(0.0, b * b - 4.0 * a * c)) - b) / (2.0 * a)
    spread = n * (2.0 * q + delta * (1.0 - delta))
    return (
        (gain - loss - n * delta) / math.sqrt(spread)
        if spread > 0
        else math.copysign(math.inf, gain - loss - n * delta)
    )


def _root(gain: int, loss: int, n: int, inside: float, outside: float, z: float) -> float:
    """The point between ``inside`` (|statistic| <= z) and ``outside`` where it reaches z."""
    for _ in range(60):
        middle = (inside + outside) / 2.0
        if abs(_tango_z(gain, loss, n, middle)) <= z:
            inside = middle
        else:
            outside = middle
    return inside


def paired_proportion_diff(
    reference: ArrayLike, candidate: ArrayLike, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """``(p_candidate - p_reference, lower, upper)`` for paired 0/1 outcomes on the same items,
    with Tango's score interval (Tango 1998). ``NaN`` triple when empty.

    Only the discordant items move it; with none of them among ``n`` it is
    ``+-z^2 / (n + z^2)``, not the empty interval a Wald interval would give.
    """
    ref = np.asarray(reference, dtype=bool).ravel()
    cand = np.asarray(candidate, dtype=bool).ravel()
    if ref.shape != cand.shape:
        raise ValueError(f"paired outcomes differ in length: {ref.size} != {cand.size}")
    n = ref.size
    if n == 0:
        return math.nan, math.nan, math.nan
    gain, loss = int(np.sum(cand & ~ref)), int(np.sum(ref & ~cand))
    diff, z = (gain - loss) / n, _z(confidence)
    edge = 1.0 - 1e-12
    lower = _root(gain, loss, n, diff, -edge, z)
    upper = _root(gain, loss, n, diff, edge, z)
    return diff, lower, upper


def _delong_components(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, ...]:
    """DeLong's structural components of one score: V10 per positive, V01 per negative."""
    # For each positive: share of negatives below it (ties count half), and vice versa.
    neg_sorted = np.sort(negatives)
    pos_sorted = np.sort(positives)
    below = np.searchsorted(neg_sorted, positives, "left")
    equal = np.searchsorted(neg_sorted, positives, "right") - below
    v10 = (below + 0.5 * equal) / negatives.size
    above = positives.size - np.searchsorted(pos_sorted, negatives, "right")
    equal = np.searchsorted(pos_sorted, negatives, "right") - np.searchsorted(
        pos_sorted, negatives, "left"
    )
    v01 = (above + 0.5 * equal) / positives.size
    return v10, v01


def delong_auc_diff(
    labels: ArrayLike,
    reference: ArrayLike,
    candidate: ArrayLike,
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """``(AUC_candidate - AUC_reference, lower, upper)`` with DeLong's paired interval."""
    y = np.asarray(labels).ravel().astype(bool)
    scores = [np.asarray(s, dtype=np.float64).ravel() for s in (reference, candidate)]
    if any(s.shape != y.shape for s in scores):
        raise ValueError("labels and both score arrays must have the same length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos < 2 or n_neg < 2:
        return math.nan, math.nan, math.nan
    parts = [_delong_components(s[y], s[~y]) for s in scores]
    aucs = [float(v10.mean()) for v10, _ in parts]
    v10 = np.stack([p[0] for p in parts])
    v01 = np.stack([p[1] for p in parts])
    cov = np.cov(v10) / n_pos + np.cov(v01) / n_neg
    variance = max(0.0, float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))
    diff = aucs[1] - aucs[0]
    half = _z(confidence) * math.sqrt(variance)
    return diff, diff - half, diff + half


@dataclass
class Difference:
    """A paired difference ``variant - FP32`` with its interval."""

    fp32: float | None
    variant: float | None
    diff: float | None
    lower: float | None
    upper: float | None


@dataclass
class PairedResult:
    """A variant against FP32 on one set of images."""

    n: int
    positives: int
    negatives: int
    auc: Difference
    sensitivity: Difference
    specificity: Difference
    #: FP32 urgent, variant routine (a missed urgent study if FP32 was right), and the reverse.
    flips_urgent_to_routine: int
    flips_routine_to_urgent: int
    max_abs_score_diff: float

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def _none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _difference(fp32: float, variant: float, triple: tuple[float, float, float]) -> Difference:
    return Difference(_none(fp32), _none(variant), *(_none(v) for v in triple))


def compare(
    labels: ArrayLike,
    fp32_scores: ArrayLike,
    variant_scores: ArrayLike,
    threshold: float,
    confidence: float = CONFIDENCE,
) -> PairedResult:
    """Paired AUC, sensitivity and specificity differences and the flips at ``threshold``
    (urgent when score >= threshold); labels are 0 (normal) / 1 (abnormal)."""
    y = np.asarray(labels).ravel().astype(bool)
    ref = np.asarray(fp32_scores, dtype=np.float64).ravel()
    cand = np.asarray(variant_scores, dtype=np.float64).ravel()
    ref_urgent, cand_urgent = ref >= threshold, cand >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    auc = _difference(
        roc_auc(y, ref) if n_pos and n_neg else math.nan,
        roc_auc(y, cand) if n_pos and n_neg else math.nan,
        delong_auc_diff(y, ref, cand, confidence),
    )
    sens = _difference(
        ref_urgent[y].mean() if n_pos else math.nan,
        cand_urgent[y].mean() if n_pos else math.nan,
        paired_proportion_diff(ref_urgent[y], cand_urgent[y], confidence),
    )
    spec = _difference(
        (~ref_urgent[~y]).mean() if n_neg else math.nan,
        (~cand_urgent[~y]).mean() if n_neg else math.nan,
        paired_proportion_diff(~ref_urgent[~y], ~cand_urgent[~y], confidence),
    )
    return PairedResult(
        n=int(y.size),
        positives=n_pos,
        negatives=n_neg,
        auc=auc,
        sensitivity=sens,
        specificity=spec,
        flips_urgent_to_routine=int(np.sum(ref_urgent & ~cand_urgent)),
        flips_routine_to_urgent=int(np.sum(~ref_urgent & cand_urgent)),
        max_abs_score_diff=float(np.max(np.abs(cand - ref))) if y.size else 0.0,
    )


def best_case_loss_bound(n: int, confidence: float = CONFIDENCE) -> float:
    """Upper bound of the loss of a proportion over ``n`` paired items when the variant flips
    none of them: the smallest bound that set can ever show (``z^2 / (n + z^2)``).

    A limit below it cannot be passed on that set, whatever the variant.
    """
    z2 = _z(confidence) ** 2
    return z2 / (n + z2) if n else math.inf

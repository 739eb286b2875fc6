"""Accuracy gate: a reduced-precision variant is published only if it keeps FP32's accuracy,
judged by paired statistics on the same images (:mod:`convert.paired`).

A variant is refused when, on the clean gate images or under any acquisition shift, the *upper
bound* of its 95% interval of loss against FP32 exceeds a limit: AUC :data:`AUC_DROP_LIMIT`,
sensitivity at the operating threshold :data:`SENSITIVITY_DROP_LIMIT`, specificity
:data:`SPECIFICITY_DROP_LIMIT`. A variant is not given the benefit of the doubt: a gate set too
small to bound the loss passes nothing, and the report says so (:func:`adequacy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.convert import paired
from cxr.convert.gateset import GateSet
from cxr.runtime.sessions import ort_session, run_probs
from cxr.train import metrics

AUC_DROP_LIMIT = 0.005
SENSITIVITY_DROP_LIMIT = 0.01
#: A lost specificity point is a normal study sent to the urgent queue: it costs reading time, not
#: a missed pneumonia, so twice the sensitivity limit; and no looser, because the loss that made
#: this gate necessary (INT8 on PneumoniaMNIST, about two points) must be refused.
SPECIFICITY_DROP_LIMIT = 0.02
LIMITS = {
    "auc": AUC_DROP_LIMIT,
    "sensitivity": SENSITIVITY_DROP_LIMIT,
    "specificity": SPECIFICITY_DROP_LIMIT,
}
#: FP32 AUC at or above which the set is too easy to see a ranking loss.
SATURATED_AUC = 0.995


def check_gate_labels(labels: np.ndarray, source: str) -> None:
    """Refuse gate data that cannot measure AUC and sensitivity (one class only, or empty)."""
    positives = int((labels != 0).sum())
    if positives == 0 or positives == len(labels):
        raise ValueError(
            f"{source}: the accuracy gate needs both normal and abnormal images "
            f"({len(labels)} images, {positives} abnormal)"
        )


def model_scores(path: Path, gate_set: GateSet) -> dict[str, np.ndarray]:
    """Triage scores of the ONNX at ``path`` on every condition of ``gate_set``."""
    session = ort_session(path)
    return {
        name: metrics.triage_scores(run_probs(session, images))
        for name, images in gate_set.conditions.items()
    }


@dataclass
class Assessment:
    """A variant against FP32 on every condition of the gate set."""

    results: dict[str, paired.PairedResult]
    refusals: list[str]
    #: Largest upper bound of loss / its limit over conditions and metrics: <= 1 passes.
    worst: float

    @property
    def passed(self) -> bool:
        """Whether no limit is exceeded."""
        return not self.refusals

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "conditions": {name: r.as_dict() for name, r in self.results.items()},
            "refusals": self.refusals,
            "worst_loss_over_limit": self.worst,
        }


def assess(
    labels: np.ndarray,
    fp32: dict[str, np.ndarray],
    variant: dict[str, np.ndarray],
    threshold: float,
) -> Assessment:
    """Compare ``variant``'s scores with ``fp32``'s, condition by condition, against the limits."""
    positives = (labels != 0).astype(np.int64)
    results, refusals, worst = {}, [], 0.0
    for name, reference in fp32.items():
        result = paired.compare(positives, reference, variant[name], threshold)
        results[name] = result
        for metric, limit in LIMITS.items():
            diff = getattr(result, metric)
            if diff.lower is None:
                refusals.append(f"{name}: {metric} difference undefined on this set")
                worst = max(worst, float("inf"))
                continue
            loss_bound = -diff.lower
            worst = max(worst, loss_bound / limit)
            if loss_bound > limit:
                refusals.append(
                    f"{name}: {metric} loss up to {loss_bound:.4f} (point estimate "
                    f"{0.0 - diff.diff:.4f}, limit {limit})"
                )
    return Assessment(results, refusals, worst)


def decidable(labels: np.ndarray) -> bool:
    """Whether a variant that flips nothing could pass on these labels (enough of each class)."""
    positives = labels != 0
    return paired.best_case_loss_bound(int(positives.sum())) <= SENSITIVITY_DROP_LIMIT and (
        paired.best_case_loss_bound(int((~positives).sum())) <= SPECIFICITY_DROP_LIMIT
    )


def adequacy(labels: np.ndarray, fp32: dict[str, np.ndarray], threshold: float) -> list[str]:
    """Why the gate set cannot decide (too few images of a class, saturated): empty when fit."""
    positives = labels != 0
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    found = []
    for metric, count, limit in (
        ("sensitivity", n_pos, SENSITIVITY_DROP_LIMIT),
        ("specificity", n_neg, SPECIFICITY_DROP_LIMIT),
    ):
        bound = paired.best_case_loss_bound(count)
        if bound > limit:
            found.append(
                f"too small: with {count} {'abnormal' if metric == 'sensitivity' else 'normal'} "
                f"images the {metric} loss bound is at least {bound:.4f} even with no flip, above "
                f"the limit {limit}: no variant can pass; use a larger --gate-data"
            )
    saturated = {
        name: auc
        for name, scores in fp32.items()
        if (auc := metrics.roc_auc(positives, scores)) >= SATURATED_AUC
    }
    if saturated:
        listed = ", ".join(f"{name} {auc:.4f}" for name, auc in saturated.items())
        every = (
            " (every condition: use a harder --gate-data)" if len(saturated) == len(fp32) else ""
        )
        found.append(
            f"too easy: FP32 AUC >= {SATURATED_AUC} on {listed}{every}; a ranking loss barely "
            "shows there"
        )
    near = int(np.sum(np.abs(fp32["clean"] - threshold) < 0.05))
    if near == 0:
        found.append(
            "too easy: no clean image scores within 0.05 of the threshold, so no decision can "
            "flip there"
        )
    return found

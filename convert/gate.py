"""Accuracy gate: a reduced-precision variant is published only if it keeps FP32's accuracy.

Every variant runs (onnxruntime, CPU) on the same labelled images as FP32; it is refused when its
ROC AUC drops by more than :data:`AUC_DROP_LIMIT` or its sensitivity at the card's operating
threshold by more than :data:`SENSITIVITY_DROP_LIMIT`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.runtime import ort_session, run_probs
from train import metrics

AUC_DROP_LIMIT = 0.005
SENSITIVITY_DROP_LIMIT = 0.01
#: Bootstrap replicates for the AUC confidence interval in the report.
BOOTSTRAP = 200


@dataclass
class Evaluation:
    """One variant's results on the gate images."""

    probs: np.ndarray  # [N, C]
    decisions: np.ndarray  # bool [N]: flagged positive at the threshold
    metrics: dict  # train.metrics.binary_metrics


def check_gate_labels(labels: np.ndarray, source: str) -> None:
    """Refuse gate data that cannot measure AUC and sensitivity (one class only, or empty)."""
    positives = int((labels != 0).sum())
    if positives == 0 or positives == len(labels):
        raise ValueError(
            f"{source}: the accuracy gate needs both normal and abnormal images "
            f"({len(labels)} images, {positives} abnormal)"
        )


def evaluate(path: Path, images: np.ndarray, labels: np.ndarray, threshold: float) -> Evaluation:
    """Run the ONNX at ``path`` on ``images`` and compute the triage metrics at ``threshold``."""
    probs = run_probs(ort_session(path), images)
    scores = metrics.triage_scores(probs)
    positives = (labels != 0).astype(np.int64)
    return Evaluation(
        probs,
        scores >= threshold,
        metrics.binary_metrics(positives, scores, threshold, n_boot=BOOTSTRAP),
    )


def agreement(reference: Evaluation, candidate: Evaluation) -> float:
    """Share of images on which both make the same decision at the threshold."""
    return float(np.mean(reference.decisions == candidate.decisions))


def refusals(reference: Evaluation, candidate: Evaluation) -> list[str]:
    """Why ``candidate`` fails the gate against ``reference`` (empty: it passes)."""
    found = []
    auc_drop = reference.metrics["auc"] - candidate.metrics["auc"]
    if auc_drop > AUC_DROP_LIMIT:
        found.append(f"AUC drops by {auc_drop:.4f} (limit {AUC_DROP_LIMIT})")
    sens_drop = reference.metrics["sensitivity"] - candidate.metrics["sensitivity"]
    if sens_drop > SENSITIVITY_DROP_LIMIT:
        found.append(
            f"sensitivity at threshold {candidate.metrics['threshold']:.4f} drops by "
            f"{sens_drop:.4f} (limit {SENSITIVITY_DROP_LIMIT})"
        )
    return found

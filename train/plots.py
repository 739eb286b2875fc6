"""Evaluation and training plots written as PNG files.

matplotlib is imported lazily inside each function and only the object-oriented API with
the Agg canvas is used (no ``pyplot``), so no global figure state is created or leaked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from cxr.train.metrics import precision_recall_curve, roc_auc, roc_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_confusion_matrix", "plot_precision_recall", "plot_roc", "plot_training_curves"]


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A standalone Agg-backed figure, independent of pyplot's figure manager."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, format="png", bbox_inches="tight")
    finally:
        fig.clear()
    return out


def plot_roc(
    labels: ArrayLike,
    scores: ArrayLike,
    path: str | Path,
    title: str = "ROC curve",
) -> Path:
    """ROC curve with the chance diagonal and the AUC in the legend; returns the PNG path."""
    fpr, tpr, _ = roc_curve(labels, scores)
    auc = roc_auc(labels, scores)
    fig = _new_figure((5.0, 5.0))
    ax = fig.add_subplot()
    label = "AUC undefined (one class)" if math.isnan(auc) else f"AUC = {auc:.3f}"
    ax.plot(fpr, tpr, lw=2, label=label)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        title=title,
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_precision_recall(
    labels: ArrayLike,
    scores: ArrayLike,
    path: str | Path,
    title: str = "Precision-recall curve",
) -> Path:
    """Precision-recall curve with the prevalence baseline; returns the PNG path."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    prevalence = float(np.mean(np.asarray(labels, dtype=np.float64))) if np.size(labels) else 0.0
    fig = _new_figure((5.0, 5.0))
    ax = fig.add_subplot()
    # Start the step curve at recall 0 with the first point's precision.
    if precision.size:
        recall = np.r_[0.0, recall]
        precision = np.r_[precision[0], precision]
    ax.step(recall, precision, where="post", lw=2, label="model")
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence = {prevalence:.2f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return _save(fig, path)


def plot_confusion_matrix(
    matrix: ArrayLike,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix",
) -> Path:
    """Heat-map of a confusion matrix (rows true, columns predicted) annotated with counts
    and row percentages; returns the PNG path."""
    cm = np.asarray(matrix)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"matrix shape {cm.shape} does not match {k} class names")
    row_tot = cm.sum(axis=1, keepdims=True)
    row_frac = np.divide(cm, row_tot, out=np.zeros(cm.shape), where=row_tot > 0)
    fig = _new_figure((1.5 * k + 2.5, 1.5 * k + 1.5))
    ax = fig.add_subplot()
    im = ax.imshow(row_frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}\n{100 * row_frac[i, j]:.1f}%",
                ha="center",
                va="center",
                color="white" if row_frac[i, j] > 0.5 else "black",
            )
    ax.set(
        xticks=range(k),
        yticks=range(k),
        xticklabels=list(class_names),
        yticklabels=list(class_names),
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    return _save(fig, path)


def _column(history: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    """History column as floats, missing/None entries as NaN (so the line just breaks)."""
    return np.array(
        [np.nan if row.get(key) is None else float(row[key]) for row in history], dtype=float
    )


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Two panels from per-epoch rows ``{epoch, train_loss, val_loss, val_auc}``:
    train/val loss and validation AUC; returns the PNG path."""
    epochs = _column(history, "epoch")
    fig = _new_figure((10.0, 4.0))
    ax_loss, ax_auc = fig.subplots(1, 2)
    ax_loss.plot(epochs, _column(history, "train_loss"), marker="o", label="train")
    ax_loss.plot(epochs, _column(history, "val_loss"), marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    val_auc = _column(history, "val_auc")
    ax_auc.plot(epochs, val_auc, marker="o", color="tab:green")
    if np.isfinite(val_auc).any():
        best = int(np.nanargmax(val_auc))
        ax_auc.scatter(
            [epochs[best]], [val_auc[best]], s=120, facecolors="none", edgecolors="red", zorder=3
        )
        ax_auc.annotate(
            f"best {val_auc[best]:.3f}",
            (epochs[best], val_auc[best]),
            textcoords="offset points",
            xytext=(0, -15),
            ha="center",
        )
    ax_auc.set(xlabel="epoch", ylabel="AUC", title="Validation ROC AUC")
    ax_auc.grid(alpha=0.3)
    return _save(fig, path)

"""Evaluate a model (run directory, ONNX file or served model) on a dataset split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.train import metrics
from cxr.train.card import RunDirError
from cxr.train.data import load_split


class EvaluationError(ValueError):
    """The model to evaluate cannot be loaded or reached."""


@dataclass
class Report:
    """Metrics of one evaluation, with what is needed to plot them."""

    metrics: dict[str, Any]
    labels: np.ndarray  # 1 = not normal (pneumonia)
    scores: np.ndarray  # 1 - P(normal)
    classes: list[str]
    predicted: np.ndarray  # argmax class per image

    def write_plots(self, folder: Path) -> list[Path]:
        """ROC, precision-recall and confusion-matrix PNGs."""
        from cxr.train.plots import plot_confusion_matrix, plot_precision_recall, plot_roc

        folder.mkdir(parents=True, exist_ok=True)
        matrix = np.asarray(self.metrics["confusion_matrix"])
        return [
            plot_roc(self.labels, self.scores, folder / "roc.png"),
            plot_precision_recall(self.labels, self.scores, folder / "precision_recall.png"),
            plot_confusion_matrix(matrix, ["normal", "pneumonia"], folder / "confusion_matrix.png"),
        ]


@dataclass
class Predictor:
    """Probabilities for uint8 images, with the model's size, classes and threshold."""

    image_size: int
    classes: list[str]
    threshold: float
    predict: Any  # Callable[[np.ndarray], np.ndarray]


def open_predictor(model: str, url: str | None, threshold: float | None = None) -> Predictor:
    """A predictor for a run directory, an ONNX file, or (with ``url``) a served model.

    ``threshold`` overrides the model's operating threshold (and stands in for it when an ONNX
    file carries no model card).
    """
    if url:
        predictor = _served(url, model)
    elif Path(model).is_dir():
        predictor = _run_dir(Path(model))
    elif Path(model).suffix == ".onnx" and Path(model).is_file():
        predictor = _onnx(Path(model), threshold)
    else:
        raise EvaluationError(
            f"{model}: not a run directory nor an .onnx file "
            "(for a served model pass --url HOST:PORT and the model name)"
        )
    if threshold is not None:
        predictor.threshold = threshold
    return predictor


def _run_dir(path: Path) -> Predictor:
    import torch

    from cxr.train.models import load_trained
    from cxr.train.trainer import predict_probs

    try:
        model, card = load_trained(path)
    except RunDirError as err:
        raise EvaluationError(str(err)) from err
    device = torch.device("cpu")
    return Predictor(
        card.image_size,
        card.classes,
        card.threshold,
        lambda images: predict_probs(model, images, device),
    )


def _onnx(path: Path, threshold: float | None) -> Predictor:
    from cxr.runtime.sessions import onnx_card, onnx_image_size, ort_session, run_probs

    try:
        session = ort_session(path)
        image_size = onnx_image_size(session)
    except Exception as err:  # onnxruntime raises its own types for a bad file
        raise EvaluationError(f"{path}: cannot load ONNX model ({err})") from err
    card = onnx_card(session) or {}
    if "threshold" not in card and threshold is None:
        raise EvaluationError(f"{path}: no model card in its metadata; pass --threshold")
    return Predictor(
        image_size,
        card.get("classes", []),
        card.get("threshold", threshold),
        lambda images: run_probs(session, images),
    )


def _served(url: str, model: str) -> Predictor:
    from cxr.client import TriageClient, TriageError

    client = TriageClient(url, model)
    try:
        info = client.model_info()
    except TriageError as err:
        raise EvaluationError(f"{url} {model}: {err}") from err

    def predict(images: np.ndarray) -> np.ndarray:
        results = client.predict(list(images))
        failed = [r for r in results if not r.ok]
        if failed:
            raise EvaluationError(f"{len(failed)} requests failed, first: {failed[0].message}")
        return np.array([list(r.probabilities.values()) for r in results], np.float32)

    return Predictor(info.image_size, info.classes, info.threshold, predict)


def evaluate(
    model: str, data: Path, split: str, threshold: float | None = None, url: str | None = None
) -> Report:
    """Run ``model`` over ``split`` of ``data`` and compute the clinical metrics."""
    predictor = open_predictor(model, url, threshold)
    part = load_split(data, split, predictor.image_size)
    if len(part) == 0:
        raise EvaluationError(f"{data} [{split}]: no readable images")
    probs = predictor.predict(part.images)
    labels = (part.labels != 0).astype(np.int64)
    scores = metrics.triage_scores(probs)
    return Report(
        metrics.binary_metrics(labels, scores, predictor.threshold),
        labels,
        scores,
        predictor.classes,
        probs.argmax(axis=1),
    )

"""Evaluate a model (run directory, ONNX file or served model) on a dataset split."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    #: Heatmap overlays written (``heatmaps``): outcome (TP, FP, FN) -> paths.
    overlays: dict[str, list[Path]] = field(default_factory=dict)

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
    #: ``HEATMAP`` [N, h, w] for uint8 images (Callable[[np.ndarray], np.ndarray]).
    heatmaps: Any = None


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

    from cxr.train.models import HeatmapUnsupportedError, cam_weights, load_trained
    from cxr.train.trainer import predict_probs

    try:
        model, card = load_trained(path)
    except RunDirError as err:
        raise EvaluationError(str(err)) from err
    device = torch.device("cpu")

    def heatmaps(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.probs_and_heatmap(torch.from_numpy(images))[1].numpy()

    try:
        cam_weights(model.backbone)
    except HeatmapUnsupportedError:
        heatmaps = None  # type: ignore[assignment]
    return Predictor(
        card.image_size,
        card.classes,
        card.threshold,
        lambda images: predict_probs(model, images, device),
        heatmaps,
    )


def _onnx(path: Path, threshold: float | None) -> Predictor:
    from cxr.client.contract import HEATMAP
    from cxr.runtime.sessions import (
        onnx_card,
        onnx_image_size,
        ort_session,
        run_heatmaps,
        run_probs,
    )

    try:
        session = ort_session(path)
        image_size = onnx_image_size(session)
    except Exception as err:  # onnxruntime raises its own types for a bad file
        raise EvaluationError(f"{path}: cannot load ONNX model ({err})") from err
    card = onnx_card(session) or {}
    outputs = {o.name for o in session.get_outputs()}
    if "threshold" not in card and threshold is None:
        raise EvaluationError(f"{path}: no model card in its metadata; pass --threshold")
    return Predictor(
        image_size,
        card.get("classes", []),
        card.get("threshold", threshold),
        lambda images: run_probs(session, images),
        (lambda images: run_heatmaps(session, images)) if HEATMAP in outputs else None,
    )


def _served(url: str, model: str) -> Predictor:
    from cxr.client import TriageClient, TriageError

    client = TriageClient(url, model)
    try:
        info = client.model_info()
    except TriageError as err:
        raise EvaluationError(f"{url} {model}: {err}") from err

    def answered(triage: TriageClient, images: np.ndarray) -> list:
        results = triage.predict(list(images))
        failed = [r for r in results if not r.ok]
        if failed:
            raise EvaluationError(f"{len(failed)} requests failed, first: {failed[0].message}")
        return results

    def predict(images: np.ndarray) -> np.ndarray:
        results = answered(client, images)
        return np.array([list(r.probabilities.values()) for r in results], np.float32)

    def heatmaps(images: np.ndarray) -> np.ndarray:
        with TriageClient(url, model, heatmaps=True) as triage:
            try:
                return np.stack([r.heatmap for r in answered(triage, images)])
            except TriageError as err:
                raise EvaluationError(f"{url} {model}: {err}") from err

    return Predictor(info.image_size, info.classes, info.threshold, predict, heatmaps)


def evaluate(
    model: str,
    data: Path,
    split: str,
    threshold: float | None = None,
    url: str | None = None,
    heatmaps: Path | None = None,
) -> Report:
    """Run ``model`` over ``split`` of ``data`` and compute the clinical metrics; with
    ``heatmaps`` (a folder), write heatmap overlays of a sample of each outcome
    (:func:`write_outcome_overlays`) and add the pointing game where the images record their
    findings (:func:`pointing`)."""
    predictor = open_predictor(model, url, threshold)
    part = load_split(data, split, predictor.image_size)
    if len(part) == 0:
        raise EvaluationError(f"{data} [{split}]: no readable images")
    probs = predictor.predict(part.images)
    labels = (part.labels != 0).astype(np.int64)
    scores = metrics.triage_scores(probs)
    report = Report(
        metrics.binary_metrics(labels, scores, predictor.threshold),
        labels,
        scores,
        predictor.classes,
        probs.argmax(axis=1),
    )
    if heatmaps is not None:
        sources = part.sources or [f"{split}:{i}" for i in range(len(part))]
        report.overlays = write_outcome_overlays(
            heatmaps, predictor, part.images, sources, labels, scores
        )
        report.metrics.update(pointing(predictor, part.images, part.sources, labels))
    return report


#: Images per call for heatmaps computed over a whole split.
HEATMAP_BATCH = 64


def pointing(
    predictor: Predictor, images: np.ndarray, sources: list[str], labels: np.ndarray
) -> dict[str, Any]:
    """The pointing game (:func:`metrics.pointing_game`) of the model's heatmap peaks
    (:func:`~cxr.client.overlay.hot_spot`) over the positive images whose files record where
    their findings were drawn (PNGs of ``cxr data synth``); empty when none does."""
    from cxr.client.overlay import hot_spot
    from cxr.train.synth import read_opacities

    chosen, findings = [], []
    for i in np.flatnonzero(labels == 1):
        source = Path(sources[i]) if sources else None
        drawn = read_opacities(source) if source and source.suffix.lower() == ".png" else None
        if drawn:
            chosen.append(i)
            findings.append([(o.x, o.y, o.r) for o in drawn])
    if not chosen:
        return {}
    maps = [
        heatmap
        for start in range(0, len(chosen), HEATMAP_BATCH)
        for heatmap in predictor.heatmaps(images[chosen[start : start + HEATMAP_BATCH]])
    ]
    peaks = [hot_spot(heatmap, images.shape[-1]) for heatmap in maps]
    return metrics.pointing_game(peaks, findings)


#: Overlays per outcome that ``cxr evaluate --heatmaps`` writes at most.
OVERLAYS_PER_OUTCOME = 8


def write_outcome_overlays(
    folder: Path,
    predictor: Predictor,
    images: np.ndarray,
    sources: list[str],
    labels: np.ndarray,
    scores: np.ndarray,
) -> dict[str, list[Path]]:
    """Heatmap overlays of up to :data:`OVERLAYS_PER_OUTCOME` true positives, false positives
    and false negatives each (a seeded random sample), named ``TP_...``, ``FP_...``, ``FN_...``
    in ``folder``."""
    from cxr.client.overlay import heatmap_folder, write_overlay

    try:
        heatmap_folder(folder)
    except ValueError as err:
        raise EvaluationError(f"--heatmaps: {err}") from err
    if predictor.heatmaps is None:
        raise EvaluationError(
            "--heatmaps: this model has no HEATMAP (a backbone without an exact class "
            "activation map, or an ONNX exported before heatmaps)"
        )
    urgent = scores >= predictor.threshold
    outcomes = {"TP": urgent & (labels == 1), "FP": urgent & (labels == 0)}
    outcomes["FN"] = ~urgent & (labels == 1)
    rng = np.random.default_rng(0)
    written: dict[str, list[Path]] = {}
    for outcome, mask in outcomes.items():
        found = np.flatnonzero(mask)
        chosen = np.sort(rng.permutation(found)[:OVERLAYS_PER_OUTCOME])
        maps = predictor.heatmaps(images[chosen]) if len(chosen) else []
        written[outcome] = [
            write_overlay(
                folder,
                f"{outcome}_{sources[i]}",
                images[i, 0],
                heatmap,
                float(scores[i]),
                predictor.threshold,
                bool(urgent[i]),
            )
            for i, heatmap in zip(chosen, maps, strict=True)
        ]
    return written

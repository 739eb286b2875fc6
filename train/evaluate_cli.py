"""``cxr evaluate``: clinical metrics of a trained run or an ONNX model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cxr.client.options import fail
from cxr.train.data import DatasetError

console = Console(stderr=True)


def evaluate_command(
    model: Annotated[str, typer.Argument(help="Run dir, .onnx file, or served model name.")],
    data: Annotated[Path, typer.Option("--data", help="Dataset folder or .npz.")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics JSON.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for ROC/PR/confusion PNGs.")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Override the operating threshold.")
    ] = None,
    url: Annotated[str | None, typer.Option(help="HOST:PORT of a server: MODEL is served.")] = None,
    heatmaps: Annotated[
        Path | None,
        typer.Option(
            help="Folder for heatmap overlays of a sample of true positives, false positives "
            "and false negatives (TP_*, FP_*, FN_*).",
            metavar="DIR",
        ),
    ] = None,
) -> None:
    """Sensitivity, specificity, AUC (95% bootstrap CI) and more at the operating threshold."""
    from cxr.client.overlay import heatmap_folder
    from cxr.train.evaluate import EvaluationError, evaluate

    if heatmaps is not None:  # a bad folder fails before the evaluation, not after it
        try:
            heatmap_folder(heatmaps)
        except ValueError as err:
            raise fail(f"--heatmaps: {err}") from err
    try:
        report = evaluate(model, data, split, threshold, url, heatmaps)
    except (DatasetError, EvaluationError, ValueError) as err:
        raise fail(str(err)) from err
    metrics = report.metrics
    table = Table("metric", "value", title=f"{model} on {data} [{split}]")
    for key, value in metrics.items():
        if key == "confusion_matrix":
            continue
        shown = (
            f"{value[0]:.4f} - {value[1]:.4f}"
            if key == "auc_ci" and value[0] is not None
            else f"{value:.4f}"
            if isinstance(value, float)
            else str(value)
        )
        table.add_row(key, shown)
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    table.add_row("confusion [[TN FP] [FN TP]]", f"[[{tn} {fp}] [{fn} {tp}]]")
    Console().print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(metrics, indent=2) + "\n")
    if plots:
        report.write_plots(plots)
    if heatmaps is not None:
        counts = ", ".join(f"{kind} {len(paths)}" for kind, paths in report.overlays.items())
        console.print(f"heatmap overlays ({counts}) in {heatmaps}")

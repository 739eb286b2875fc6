"""``cxr convert``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def convert_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `cxr train`.")],
    repo: Annotated[Path, typer.Option(help="Triton model repository to publish into.")] = Path(
        "model_repository"
    ),
    precision: Annotated[
        str,
        typer.Option(
            help="Variants, comma-separated: fp32 (always made: the reference), int8 (CPU "
            "onnxruntime + TensorRT input), fp16 (TensorRT input)."
        ),
    ] = "fp32,int8,fp16",
    calib_data: Annotated[
        Path | None,
        typer.Option(
            help="Dataset (folder or .npz) whose train split calibrates INT8 "
            "(default: the run's training data)."
        ),
    ] = None,
    calib_size: Annotated[int, typer.Option(help="Calibration images (at most).")] = 512,
    calib_method: Annotated[
        str,
        typer.Option(
            help="INT8 calibration: minmax, entropy, percentile, or auto (each tried; the gate "
            "chooses)."
        ),
    ] = "auto",
    gate_data: Annotated[
        Path | None,
        typer.Option(
            help="Dataset (folder or .npz) the gate compares on (default: the slice of the "
            "training data the card records as held back, else one derived from it)."
        ),
    ] = None,
    gate_split: Annotated[
        str | None,
        typer.Option(help="Split of --gate-data to gate on: train, val or test (default: val)."),
    ] = None,
    perturb: Annotated[
        str,
        typer.Option(
            help="Acquisition shifts gated besides the clean images, comma-separated: exposure, "
            "contrast, noise, geometry; or none."
        ),
    ] = "exposure,contrast,noise,geometry",
    precision_search: Annotated[
        bool,
        typer.Option(
            "--precision-search/--no-precision-search",
            help="When INT8 fails the gate, keep the fewest layers in float that make it pass.",
        ),
    ] = True,
    tensorrt: Annotated[
        str,
        typer.Option(
            help="auto: build engines where TensorRT and a GPU are present, else prepare their "
            "inputs; on: build or fail; off: no TensorRT variants."
        ),
    ] = "auto",
    max_batch: Annotated[int, typer.Option(help="Largest batch of the TensorRT profile.")] = 64,
    allow_accuracy_drop: Annotated[
        bool,
        typer.Option("--allow-accuracy-drop", help="Publish variants that fail the accuracy gate."),
    ] = False,
    report_dir: Annotated[
        Path | None, typer.Option(help="Folder for convert_report.json/.md (default: RUN_DIR).")
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Folder for the ONNX files made (default: RUN_DIR/onnx).")
    ] = None,
    bench_seconds: Annotated[
        float, typer.Option(help="Seconds of speed measurement per CPU variant and batch; 0: none.")
    ] = 1.0,
) -> None:
    """Export the run to ONNX, make INT8/FP16 variants and TensorRT engines, gate them against FP32
    (paired, on images training did not select on, clean and shifted), repair a failing INT8 per
    layer, and publish those that pass into the repository."""
    from cxr.convert.pipeline import ConversionError, ConvertOptions, convert_run
    from cxr.convert.quantize import QuantizationError
    from cxr.convert.report import markdown

    options = ConvertOptions(
        precisions=_split(precision),
        calib_data=calib_data,
        calib_size=calib_size,
        calib_method=calib_method.lower(),
        gate_data=gate_data,
        gate_split=gate_split.lower() if gate_split else None,
        perturbations=() if perturb.strip().lower() == "none" else _split(perturb),
        precision_search=precision_search,
        tensorrt=tensorrt.lower(),
        max_batch=max_batch,
        allow_accuracy_drop=allow_accuracy_drop,
        report_dir=report_dir,
        bench_seconds=bench_seconds,
    )
    try:
        report = convert_run(run_dir, repo, work_dir, options)
    except (ConversionError, QuantizationError, ValueError) as err:
        # ValueError covers RunDirError (bad run directory) and DatasetError (bad data).
        console.print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(2) from err
    typer.echo(markdown(report))
    for path in report["files"]:
        console.print(f"wrote {path}", highlight=False)
    refused = [v["model"] for v in report["variants"] if not v["published"]]
    if refused:
        console.print(
            f"[yellow]not published (accuracy gate):[/yellow] {', '.join(refused)}", highlight=False
        )

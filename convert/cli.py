"""``cxr convert``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def convert_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `cxr train`.")],
    repo: Annotated[Path, typer.Option(help="Triton model repository to publish into.")] = Path(
        "model_repository"
    ),
) -> None:
    """Export the run to ONNX, check it against PyTorch, and publish it into the repository."""
    from convert.pipeline import ConversionError, convert_run
    from train.card import RunDirError

    try:
        report = convert_run(run_dir, repo)
    except (RunDirError, ConversionError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(2) from err
    console.print(json.dumps(report, indent=2))

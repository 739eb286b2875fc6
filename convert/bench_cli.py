"""``cxr bench``: benchmark commands.

``bench_app`` holds one command per thing measured. To add one from another module::

    from cxr.bench.cli import bench_app, print_rows

    @bench_app.command("serve")
    def serve_command(...) -> None: ...

and point ``cxr.cli.SUBCOMMANDS["bench"]`` at that module (importing it registers both commands).
Nothing heavy is imported here at module level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

bench_app = typer.Typer(no_args_is_help=True, help="In-process and served benchmarks.")
console = Console(stderr=True)


def parse_batches(text: str) -> list[int]:
    """``"1,8"`` -> ``[1, 8]``; a clear error for anything else."""
    try:
        batches = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise typer.BadParameter(f"expected positive integers separated by commas, got {text!r}")
    return batches


def print_rows(title: str, rows: list[dict]) -> None:
    """Print benchmark rows (dicts with the same keys) as a table on stdout."""
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key, justify="right")
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    Console().print(table)


@bench_app.command("onnx")
def onnx_command(
    model: Annotated[Path, typer.Argument(help="ONNX classifier (IMAGE uint8 in, PROBS out).")],
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8",
    seconds: Annotated[float, typer.Option(min=0.1, help="Seconds to measure per batch.")] = 5.0,
    threads: Annotated[
        int | None, typer.Option(min=1, help="onnxruntime intra-op threads (default: all cores).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
) -> None:
    """Images/s and latency percentiles (p50/p95/p99) of an ONNX model in onnxruntime (CPU)."""
    from cxr.runtime.speed import bench_onnx

    batches = parse_batches(batch)
    if not model.is_file():
        console.print(f"[red]error:[/red] {model}: no such file", highlight=False)
        raise typer.Exit(2)
    try:
        rows = bench_onnx(model, batches, seconds, threads)
    except Exception as err:  # onnxruntime raises its own types for a bad model
        console.print(f"[red]error:[/red] {model}: cannot benchmark ({err})", highlight=False)
        raise typer.Exit(2) from err
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        print_rows(f"{model} (onnxruntime CPU, in-process)", rows)


#: The start-up measured by ``cxr bench startup``: the light client's CLI answering ``--help``.
STARTUP_COMMAND = ("client", "predict", "--help")


@bench_app.command("startup")
def startup_command(
    runs: Annotated[int, typer.Option(min=1, help="Timed runs after one untimed warm-up.")] = 5,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
) -> None:
    """Wall time of ``cxr client predict --help`` in a fresh interpreter (target: < 0.5 s)."""
    import statistics
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "cxr", *STARTUP_COMMAND]
    timings = []
    for run in range(runs + 1):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            console.print(f"[red]error:[/red] {' '.join(command)} failed:\n{done.stderr}")
            raise typer.Exit(2)
        if run:  # the first run only warms the file cache
            timings.append(time.perf_counter() - started)
    row = {
        "command": "cxr " + " ".join(STARTUP_COMMAND),
        "runs": runs,
        "min_s": round(min(timings), 3),
        "median_s": round(statistics.median(timings), 3),
        "max_s": round(max(timings), 3),
    }
    if json_out:
        typer.echo(json.dumps(row, indent=2))
    else:
        print_rows("start-up (fresh interpreter, warm file cache)", [row])

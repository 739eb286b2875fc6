"""``cxr bench``: every benchmark command, each a thin wrapper over the module that measures
(:mod:`cxr.runtime.speed`, :mod:`cxr.bench.serve`, :mod:`cxr.bench.decode`,
:mod:`cxr.bench.gateway`).

Nothing heavy is imported at module level: each command imports what it measures when it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cxr.client.options import JsonOut, fail

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
    """Print benchmark rows (dicts with the same keys) as a table on stdout: a column per key, or,
    where that is wider than the terminal, a column per row (nothing cut short)."""
    out = Console()
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key, justify="right")
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    if out.measure(table, options=out.options.update_width(10_000)).maximum > out.width:
        table = Table(title=title, show_header=False)
        table.add_column()
        for _ in rows:
            table.add_column(justify="right")
        for key in rows[0]:
            table.add_row(key, *(str(row[key]) for row in rows))
    out.print(table)


@bench_app.command("onnx")
def onnx_command(
    model: Annotated[Path, typer.Argument(help="ONNX classifier (IMAGE uint8 in, PROBS out).")],
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8",
    seconds: Annotated[float, typer.Option(min=0.1, help="Seconds to measure per batch.")] = 5.0,
    threads: Annotated[
        int | None, typer.Option(min=1, help="onnxruntime intra-op threads (default: all cores).")
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Images/s and latency percentiles (p50/p95/p99) of an ONNX model in onnxruntime (CPU)."""
    from cxr.runtime.speed import bench_onnx

    batches = parse_batches(batch)
    if not model.is_file():
        raise fail(f"{model}: no such file")
    try:
        rows = bench_onnx(model, batches, seconds, threads)
    except Exception as err:  # onnxruntime raises its own types for a bad model
        raise fail(f"{model}: cannot benchmark ({err})") from err
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        print_rows(f"{model} (onnxruntime CPU, in-process)", rows)


#: The start-up measured by ``cxr bench startup``: the light client's CLI answering ``--help``.
STARTUP_COMMAND = ("client", "predict", "--help")


@bench_app.command("startup")
def startup_command(
    runs: Annotated[int, typer.Option(min=1, help="Timed runs after one untimed warm-up.")] = 5,
    json_out: JsonOut = False,
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
            raise fail(f"{' '.join(command)} failed:\n{done.stderr}")
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


@bench_app.command("serve")
def serve_bench_command(
    repo: Annotated[Path, typer.Argument(help="Model repository folder.")] = Path(
        "model_repository"
    ),
    model: Annotated[str, typer.Option(help="Classifier to serve.")] = "pneumonia_int8",
    concurrency: Annotated[int, typer.Option(min=1, help="Concurrent batch-1 requests.")] = 8,
    seconds: Annotated[float, typer.Option(min=0.5, help="Seconds per measurement.")] = 10.0,
    clients: Annotated[int, typer.Option(min=1, help="gRPC channels the loops share.")] = 1,
    instances: Annotated[int | None, typer.Option(min=1, help="Override: instances.")] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=(
                "Override: onnxruntime threads per instance (default: every core while the"
                " other instances idle, a share while they run)."
            ),
        ),
    ] = None,
    delay_us: Annotated[
        int | None, typer.Option(min=0, help="Override: max_queue_delay_microseconds.")
    ] = None,
    omp_threads: Annotated[
        int | None, typer.Option(min=1, help="OMP_NUM_THREADS of the server (default 1).")
    ] = None,
    spin: Annotated[
        bool | None,
        typer.Option(help="Override: onnxruntime intra-op spinning (both sides use the same)."),
    ] = None,
    build: Annotated[
        bool,
        typer.Option(help="First publish an untrained ResNet-18 (FP32 and INT8) into REPO."),
    ] = False,
    image_size: Annotated[int, typer.Option(min=32, help="Image size of --build.")] = 224,
    repeats: Annotated[
        int, typer.Option(min=1, help="Alternate in-process and served this many times.")
    ] = 1,
    heatmaps: Annotated[
        bool, typer.Option(help="Served requests ask for HEATMAP besides PROBS.")
    ] = False,
    json_out: JsonOut = False,
) -> None:
    """Served throughput (concurrency N, batch-1 requests over gRPC) against in-process
    onnxruntime (batch N), and served p99 at concurrency 1 against in-process batch-1 p50."""
    from cxr.bench.serve import Overrides, bench_serve, build_bench_repo

    if build:
        names = build_bench_repo(repo, "resnet18", image_size)
        console.print(f"published {', '.join(names)} into {repo}", highlight=False)
    if not (repo / model).is_dir():
        raise fail(f"{repo}: no model {model}")
    overrides = Overrides(instances, threads, delay_us, omp_threads, spin)
    try:
        report = bench_serve(
            repo, model, concurrency, seconds, clients, overrides, repeats, heatmaps
        )
    except (ValueError, RuntimeError) as err:
        raise fail(str(err)) from err
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    print_rows(f"{model}: onnxruntime in-process, {report['onnx']}", report["inprocess"])
    print_rows(
        f"{model}: served, batch-1 requests over gRPC asking for {', '.join(report['outputs'])} "
        f"({report['response_bytes']} bytes per response), {report['scheduling']}",
        report["served"],
    )
    ratio, cpu, gap = (
        report[k] for k in ("throughput_ratio", "cpu_efficiency_ratio", "p99_gap_ms")
    )
    typer.echo(
        f"throughput served@{concurrency} / in-process batch {concurrency}: {ratio:.3f} "
        f"(target >= {report['throughput_ratio_target']})\n"
        f"CPU per image in-process batch {concurrency} / served@{concurrency} (server + client): "
        f"{cpu:.3f} (the throughput ratio a CPU-bound, otherwise idle machine would see)\n"
        f"p99 served@1 - p50 in-process batch 1: {gap:+.2f} ms "
        f"(target <= {report['p99_gap_target_ms']} ms); what serving adds at batch 1: "
        f"p50 {report['p50_added_ms']:+.2f} ms, p99 {report['p99_added_ms']:+.2f} ms"
    )


@bench_app.command("gateway")
def gateway_bench_command(
    repo: Annotated[Path, typer.Argument(help="Model repository folder.")] = Path(
        "model_repository"
    ),
    count: Annotated[int, typer.Option("-n", "--count", min=1, help="Radiographs.")] = 200,
    associations: Annotated[int, typer.Option("-k", min=1, help="Parallel associations.")] = 4,
    size: Annotated[int, typer.Option(min=64, help="Radiograph side in pixels.")] = 2048,
    workers: Annotated[int, typer.Option(min=1, help="The gateway's triage threads.")] = 2,
    concurrency: Annotated[int, typer.Option(min=1, help="cxr client predict's.")] = 8,
    build: Annotated[
        bool, typer.Option(help="First publish an untrained ResNet-18 224 into REPO.")
    ] = False,
    json_out: JsonOut = False,
) -> None:
    """The DICOM gateway end to end (C-STORE in, SR stored at a local SCP) against
    ``cxr client predict`` on the same images and server."""
    try:
        from cxr.bench.gateway import bench_gateway
        from cxr.bench.serve import build_bench_repo
    except ImportError as err:
        raise fail(f"needs the gateway extra ({err})") from err
    if build:
        build_bench_repo(repo, "resnet18", 224)
    try:
        report = bench_gateway(repo, count, associations, size, workers, concurrency)
    except RuntimeError as err:
        raise fail(str(err)) from err
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(
        f"{count} radiographs {size}x{size} over {associations} associations: "
        f"ingest {report['ingest_per_s']:.1f}/s; C-STORE -> SR stored p50 "
        f"{report['latency_p50_ms']:.0f} ms, p99 {report['latency_p99_ms']:.0f} ms\n"
        f"gateway end to end {report['gateway_per_s']:.1f} img/s "
        f"({report['gateway_ms_per_image']:.1f} ms/image) vs cxr client predict "
        f"--concurrency {concurrency} {report['client_per_s']:.1f} img/s "
        f"({report['client_ms_per_image']:.1f} ms/image): the gateway adds "
        f"{report['added_cost']:+.1%} (target <= +10%)"
    )


@bench_app.command("decode")
def decode_command(
    size: Annotated[int, typer.Option(min=8, help="Model input side (px).")] = 224,
    syntax: Annotated[
        list[str] | None,
        typer.Option(help="Transfer syntax to include (repeatable; default: every one)."),
    ] = None,
    count: Annotated[int, typer.Option(min=1, help="Images per syntax (12/16-bit, MONO1/2).")] = 4,
    repeat: Annotated[int, typer.Option(min=1, help="Timed decodes per image (median).")] = 3,
    json_out: JsonOut = False,
) -> None:
    """ms/image and decoded MP/s (one core) of ``load_model_input`` and of the reference
    (pydicom pixel_array + modality/VOI LUT + Pillow resize) on generated 2000-3000 px DICOMs,
    with the speed-up, how far each is from just reading the file, and the fast path on the same
    pixels uncompressed (ceiling: the speed-up if the codec cost nothing)."""
    from cxr.bench.decode import bench_decode, machine
    from cxr.bench.decode_corpus import SYNTAXES, can_encode

    names = syntax or list(SYNTAXES)
    unknown = sorted(set(names) - set(SYNTAXES))
    if unknown:
        raise typer.BadParameter(f"unknown syntax {unknown}; choose from {', '.join(SYNTAXES)}")
    skipped = {name: why for name in names if (why := can_encode(name))}
    for name, why in skipped.items():
        console.print(f"[yellow]skipping {name}: {why}[/yellow]")
    rows = bench_decode([n for n in names if n not in skipped], size, count, repeat, console.print)
    if json_out:
        typer.echo(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    elif rows:
        title = f"decode to {size}x{size}, one core, median of {repeat} interleaved; {machine()}"
        print_rows(title, rows)

"""``cxr bench serve``, registered on the ``cxr bench`` app of :mod:`convert.bench_cli`.

Importing this module gives ``bench_app`` with every benchmark command (``onnx``, ``serve`` and
``decode``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cxr.bench.cli import bench_app, console, print_rows
from cxr.server import bench_decode  # noqa: F401  (registers ``cxr bench decode``)

__all__ = ["bench_app"]


@bench_app.command("serve")
def serve_command(
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
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON, not tables.")] = False,
) -> None:
    """Served throughput (concurrency N, batch-1 requests over gRPC) against in-process
    onnxruntime (batch N), and served p99 at concurrency 1 against in-process batch-1 p50."""
    from cxr.bench.serve import Overrides, bench_serve, build_bench_repo

    if build:
        names = build_bench_repo(repo, "resnet18", image_size)
        console.print(f"published {', '.join(names)} into {repo}", highlight=False)
    if not (repo / model).is_dir():
        console.print(f"[red]error:[/red] {repo}: no model {model}", highlight=False)
        raise typer.Exit(2)
    overrides = Overrides(instances, threads, delay_us, omp_threads, spin)
    try:
        report = bench_serve(
            repo, model, concurrency, seconds, clients, overrides, repeats, heatmaps
        )
    except (ValueError, RuntimeError) as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(2) from err
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
def gateway_command(
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
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The DICOM gateway end to end (C-STORE in, SR stored at a local SCP) against
    ``cxr client predict`` on the same images and server."""
    try:
        from cxr.bench.gateway import bench_gateway
        from cxr.bench.serve import build_bench_repo
    except ImportError as err:
        console.print(f"[red]error:[/red] needs the gateway extra ({err})", highlight=False)
        raise typer.Exit(2) from err
    if build:
        build_bench_repo(repo, "resnet18", 224)
    try:
        report = bench_gateway(repo, count, associations, size, workers, concurrency)
    except RuntimeError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(2) from err
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

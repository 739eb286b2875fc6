"""``cxr loadtest run|ui|baseline|sweep``."""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cxr.client.options import Url, fail
from cxr.loadtest.memory import ProcessGoneError, RssReport, RssSampler
from cxr.loadtest.runner import (
    REQUEST_NAMES,
    Payload,
    RunResult,
    RunSettings,
    Slo,
    Stats,
    locust_base_command,
    locust_env,
    parse_duration,
    run_locust,
)

loadtest_app = typer.Typer(no_args_is_help=True, help="Locust load tests over gRPC.")
console = Console(stderr=True, highlight=False)
out = Console(highlight=False)

Model = Annotated[
    str | None, typer.Option(help="Model; the ensemble means its deployed classifier.")
]
Users = Annotated[int, typer.Option(help="Concurrent users (closed loop).", min=1)]
Duration = Annotated[str, typer.Option(help="Measured time, e.g. 20s, 10m.")]
Warmup = Annotated[str, typer.Option(help="Full-load time before measuring (discarded).")]
StatFraction = Annotated[
    float, typer.Option(help="Share of STAT (priority 1) requests.", min=0.0, max=1.0)
]
Images = Annotated[
    Path | None, typer.Option(help="Folder of real images as payloads (default: synthetic).")
]
Timeout = Annotated[float, typer.Option(help="Request deadline, seconds.", min=0.001)]
PayloadOption = Annotated[
    Payload,
    typer.Option(
        help="decoded: model inputs to the classifier; encoded: the files to the ensemble "
        "(the server decodes them)."
    ),
]


def seconds(option: str, text: str, positive: bool = True) -> float:
    """A duration option in seconds (zero allowed unless ``positive``), or a clear error."""
    try:
        value = parse_duration(text)
    except ValueError as err:
        raise fail(f"{option}: {err}") from err
    if positive and value <= 0:
        raise fail(f"{option}: {text!r} must be longer than zero")
    return value


def check_images(images: Path | None) -> None:
    """Fail early, clearly, on an ``--images`` folder that offers nothing to send."""
    if images is not None:
        from cxr.loadtest.payloads import image_files

        try:
            image_files(images)
        except ValueError as err:
            raise fail(str(err)) from err


def print_result(result: RunResult, title: str) -> None:
    """Requests/s, p50/p95/p99 per priority, failures, and the distinct errors."""
    table = Table(
        "requests", "count", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms", title=title
    )
    for name in REQUEST_NAMES:
        s = result.stats.get(name)
        if s is not None and s.requests:
            table.add_row(
                name,
                str(s.requests),
                str(s.failures),
                f"{s.rps:.1f}",
                f"{s.p50:.0f}",
                f"{s.p95:.0f}",
                f"{s.p99:.0f}",
            )
    out.print(table)
    for name, error, count in result.errors[:5]:
        out.print(f"  {count} x {name}: {error[:300]}")


def conclude(breaches: list[str]) -> None:
    """Print the breaches and exit 1 if there are any."""
    for breach in breaches:
        console.print(f"[red]SLO breached:[/red] {breach}")
    if breaches:
        raise typer.Exit(1)
    console.print("[green]SLOs met[/green]")


@loadtest_app.command("run")
def run_command(
    url: Url = "localhost:8001",
    model: Model = None,
    users: Users = 8,
    spawn_rate: Annotated[
        float | None,
        typer.Option(min=0.001, help="Users started per second (default: all at once)."),
    ] = None,
    duration: Duration = "60s",
    warmup: Warmup = "2s",
    stat_fraction: StatFraction = 0.1,
    images: Images = None,
    payload: PayloadOption = "decoded",
    timeout: Timeout = 10.0,
    html: Annotated[Path | None, typer.Option(help="Locust HTML report.")] = None,
    csv_prefix: Annotated[Path | None, typer.Option("--csv", help="Locust CSV prefix.")] = None,
    slo_p99_ms: Annotated[float, typer.Option(help="p99 objective, all requests.")] = 250.0,
    slo_stat_p99_ms: Annotated[float, typer.Option(help="p99 objective, STAT requests.")] = 50.0,
    max_error_rate: Annotated[float, typer.Option(help="Highest error rate allowed.")] = 0.001,
    server_pid: Annotated[
        int | None, typer.Option(help="Sample the RSS of this server process and its children.")
    ] = None,
    rss_warmup: Annotated[
        str | None, typer.Option(help="Time before the RSS baseline (default: a fifth of the run).")
    ] = None,
    max_rss_growth: Annotated[
        float, typer.Option(help="Highest RSS growth after warm-up (0.05 = 5 %).")
    ] = 0.05,
) -> None:
    """Headless load test; prints a summary and exits 1 when an SLO is breached.

    Statistics cover DURATION only: the spawn phase and WARMUP are discarded. With --server-pid it
    is also a soak test: the server's memory must not grow more than --max-rss-growth.
    """
    check_images(images)
    settings = RunSettings(
        url=url,
        model=model,
        users=users,
        spawn_rate=spawn_rate,
        duration=seconds("--duration", duration),
        stat_fraction=stat_fraction,
        images=images,
        payload=payload,
        html=html,
        csv_prefix=csv_prefix,
        timeout=timeout,
        warmup=seconds("--warmup", warmup, positive=False),
    )
    breaches = []
    if server_pid is None:
        result = _run(settings)
    else:
        base = seconds("--rss-warmup", rss_warmup, positive=False) if rss_warmup else None
        result, memory = _soak(settings, server_pid, base)
        if memory.growth > max_rss_growth:
            breaches.append(f"server RSS grew {memory.growth:.1%} > {max_rss_growth:.1%}")
    title = f"{users} users, {settings.duration:g} s measured against {url}"
    print_result(result, title)
    conclude(Slo(slo_p99_ms, slo_stat_p99_ms, max_error_rate).breaches(result.stats) + breaches)


def _soak(settings: RunSettings, pid: int, warmup: float | None) -> tuple[RunResult, RssReport]:
    """A run while sampling the server's RSS; growth is judged after ``warmup`` seconds from the
    start (default: a fifth of the run)."""
    try:
        sampler = RssSampler(pid)
    except ProcessGoneError as err:
        raise fail(f"--server-pid: {err}") from err
    with sampler:
        result = _run(settings)
    warmup = settings.run_time() / 5 if warmup is None else warmup
    try:
        memory = sampler.report(warmup)
    except ValueError as err:
        raise fail(f"--server-pid {pid}: {err}") from err
    mib = 1024 * 1024
    out.print(
        f"server RSS ({memory.processes} processes, {len(memory.samples)} samples): "
        f"{memory.baseline / mib:.0f} MiB after {warmup:.0f} s warm-up -> "
        f"{memory.final / mib:.0f} MiB at the end ({memory.growth:+.1%}), "
        f"peak {memory.peak / mib:.0f} MiB"
    )
    return result, memory


def _run(settings: RunSettings) -> RunResult:
    try:
        return run_locust(settings)
    except (RuntimeError, FileNotFoundError) as err:
        raise fail(str(err)) from err


@loadtest_app.command("ui")
def ui_command(
    url: Url = "localhost:8001",
    model: Model = None,
    stat_fraction: StatFraction = 0.1,
    images: Images = None,
    timeout: Timeout = 10.0,
    web_host: Annotated[str, typer.Option(help="Dashboard address.")] = "127.0.0.1",
    web_port: Annotated[int, typer.Option(help="Dashboard port.")] = 8089,
) -> None:
    """The Locust web dashboard against a running server."""
    check_images(images)
    settings = RunSettings(
        url=url,
        model=model,
        stat_fraction=stat_fraction,
        images=images,
        timeout=timeout,
        warmup=0.0,
    )
    command = [*locust_base_command(url), "--web-host", web_host, "--web-port", str(web_port)]
    console.print(f"Locust dashboard: http://{web_host}:{web_port}")
    # Locust takes this process over: Ctrl-C and SIGTERM reach it directly, nothing is orphaned.
    os.execve(sys.executable, command, locust_env(settings))


@loadtest_app.command("baseline")
def baseline_command(
    url: Url = "localhost:8001",
    model: Model = None,
    users: Users = 8,
    duration: Duration = "10s",
    warmup: Warmup = "2s",
    stat_fraction: StatFraction = 0.1,
    images: Images = None,
    timeout: Timeout = 10.0,
    compare: Annotated[
        bool, typer.Option(help="Also run Locust with the same settings; print the ratio.")
    ] = False,
    rounds: Annotated[
        int, typer.Option(help="With --compare: alternate baseline and Locust this often.", min=1)
    ] = 1,
) -> None:
    """Closed-loop asyncio tritonclient generator: the reference rate for Locust."""
    from cxr.loadtest.baseline import BaselineSettings, discover, run_baseline

    check_images(images)
    settings = BaselineSettings(
        url=url,
        model=model,
        users=users,
        duration=seconds("--duration", duration),
        warmup=seconds("--warmup", warmup, positive=False),
        stat_fraction=stat_fraction,
        images=images,
        timeout=timeout,
    )
    locust_settings = RunSettings(**dataclasses.asdict(settings))  # the same fields, for Locust
    ratios = []
    target = None  # read from the server once, for every round
    for _ in range(rounds if compare else 1):
        try:
            target = target or discover(settings)
            result = run_baseline(settings, target)
        except Exception as err:
            raise fail(f"baseline against {url}: {err}") from err
        print_result(result, f"asyncio baseline: {users} users, {settings.duration:g} s")
        if not compare:
            return
        locust = _run(locust_settings)
        print_result(locust, f"Locust: {users} users, {settings.duration:g} s")
        ratios.append(_rate(locust) / _rate(result) if _rate(result) else math.nan)
        out.print(f"Locust / baseline requests/s: {ratios[-1]:.2f}")
    if len(ratios) > 1:
        out.print(f"median over {len(ratios)} rounds: {statistics.median(ratios):.2f}")


def _rate(result: RunResult) -> float:
    total: Stats | None = result.stats.get("Aggregated")
    return total.rps if total else 0.0


def _cell(value: object) -> str:
    """A sweep table value as printed: whole numbers, yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.0f}" if isinstance(value, float) else str(value)


def _ints(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise fail(f"{option}: {text!r} is not a comma-separated list of integers") from err
    if not values or min(values) < 0:
        raise fail(f"{option}: give one or more non-negative integers, e.g. 1,2")
    return values


@loadtest_app.command("sweep")
def sweep_command(
    repo: Annotated[Path, typer.Option(help="Model repository to tune.")] = Path(
        "model_repository"
    ),
    model: Annotated[
        str, typer.Option(help="Classifier to tune; the ensemble means its deployed one.")
    ] = "pneumonia",
    slo_p99_ms: Annotated[float, typer.Option(help="p99 objective the best must meet.")] = 250.0,
    batch_sizes: Annotated[str, typer.Option(help="max_batch_size values.")] = "8,32",
    delays_us: Annotated[str, typer.Option(help="max_queue_delay_microseconds values.")] = "0,2000",
    instances: Annotated[str, typer.Option(help="Instance counts.")] = "1,2",
    threads: Annotated[
        str, typer.Option(help="onnxruntime threads per instance; 0 = adaptive (the default).")
    ] = "0,1",
    users: Annotated[str, typer.Option(help="Concurrencies measured per configuration.")] = "8",
    duration: Duration = "8s",
    warmup: Warmup = "2s",
    stat_fraction: StatFraction = 0.1,
    images: Images = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for sweep.csv, sweep.png.")] = Path(
        "sweep"
    ),
    dry_run: Annotated[
        bool, typer.Option(help="Print the best configuration instead of writing it.")
    ] = False,
) -> None:
    """Try each configuration on a real server; write the best that meets the p99 objective."""
    from cxr.loadtest import sweep
    from cxr.loadtest.baseline import BaselineSettings
    from cxr.server.repository import CONFIG_FILE, classifier_config, config_text, scheduling_of

    check_images(images)
    grid = sweep.Grid(
        _ints("--batch-sizes", batch_sizes),
        _ints("--delays-us", delays_us),
        _ints("--instances", instances),
        _ints("--threads", threads),
    )
    if min(grid.batch_sizes) < 1 or min(grid.instances) < 1:
        raise fail("--batch-sizes and --instances must be at least 1")
    concurrencies = _ints("--users", users)
    if min(concurrencies) < 1:
        raise fail("--users must be at least 1")
    try:
        clf = sweep.find_classifier(repo, model)
    except (ValueError, OSError) as err:
        raise fail(str(err)) from err
    configurations = grid.configurations(scheduling_of(repo / clf.name / CONFIG_FILE))
    settings = BaselineSettings(
        duration=seconds("--duration", duration),
        warmup=seconds("--warmup", warmup, positive=False),
        stat_fraction=stat_fraction,
        images=images,
    )
    console.print(
        f"sweeping {len(configurations)} configurations of {clf.name} "
        f"x {len(concurrencies)} concurrencies"
    )

    def progress(point: sweep.Point) -> None:
        s = point.stats
        figures = f"{s.rps:.1f} req/s, p99 {s.p99:.0f} ms" if s else f"failed: {point.error}"
        console.print(f"  {point.label}: {figures}")

    points = sweep.run_sweep(repo, clf, configurations, concurrencies, settings, progress)
    best = sweep.best_point(points, slo_p99_ms)
    rows = sweep.table_rows(points, slo_p99_ms)
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep.write_table(rows, out_dir / sweep.TABLE_FILE)
    sweep.plot(points, slo_p99_ms, best, out_dir / sweep.PLOT_FILE)
    table = Table(*sweep.HEADERS, title=f"sweep of {clf.name} (p99 SLO {slo_p99_ms:g} ms)")
    for row in rows:
        table.add_row(*(_cell(row[c]) for c in sweep.COLUMNS[: len(sweep.HEADERS)]))
    out.print(table)
    console.print(f"table {out_dir / sweep.TABLE_FILE}, plot {out_dir / sweep.PLOT_FILE}")
    if best is None:
        console.print(f"[red]no configuration met p99 <= {slo_p99_ms:g} ms without errors[/red]")
        raise typer.Exit(1)
    out.print(f"best: {best.label}: {best.stats.rps:.1f} req/s, p99 {best.stats.p99:.0f} ms")
    if dry_run:
        out.print(config_text(classifier_config(clf, best.scheduling)))
        return
    path = sweep.apply_best(repo, clf, best.scheduling)
    console.print(f"[green]wrote[/green] {path}")

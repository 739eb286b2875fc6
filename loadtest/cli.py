"""``cxr loadtest run|ui|sweep``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from loadtest.runner import LOCUSTFILE, RunSettings, Slo, locust_env, run_locust

loadtest_app = typer.Typer(no_args_is_help=True, help="Locust load tests over gRPC.")
console = Console(stderr=True, highlight=False)


@loadtest_app.command("run")
def run_command(
    url: Annotated[str, typer.Option(help="Server gRPC HOST:PORT.")] = "localhost:8001",
    model: Annotated[str | None, typer.Option(help="Model (default: deployed classifier).")] = None,
    users: Annotated[int, typer.Option(help="Concurrent users (closed loop).")] = 8,
    spawn_rate: Annotated[float, typer.Option(help="Users started per second.")] = 8.0,
    duration: Annotated[str, typer.Option(help="Run time, e.g. 20s, 10m.")] = "60s",
    stat_fraction: Annotated[float, typer.Option(help="Share of STAT requests.")] = 0.1,
    images: Annotated[Path | None, typer.Option(help="Folder of real images as payloads.")] = None,
    html: Annotated[Path | None, typer.Option(help="Locust HTML report.")] = None,
    csv_prefix: Annotated[Path | None, typer.Option("--csv", help="Locust CSV prefix.")] = None,
    slo_p99_ms: Annotated[float, typer.Option(help="p99 objective, all requests.")] = 250.0,
    slo_stat_p99_ms: Annotated[float, typer.Option(help="p99 objective, STAT requests.")] = 50.0,
    max_error_rate: Annotated[float, typer.Option(help="Highest error rate allowed.")] = 0.001,
) -> None:
    """Headless load test; prints a summary and exits 1 when an SLO is breached."""
    if not 0 <= stat_fraction <= 1:
        console.print("[red]error:[/red] --stat-fraction must be between 0 and 1")
        raise typer.Exit(2)
    if images is not None and not images.is_dir():
        console.print(f"[red]error:[/red] --images {images}: not a folder")
        raise typer.Exit(2)
    settings = RunSettings(
        url, model, users, spawn_rate, duration, stat_fraction, images, html, csv_prefix
    )
    try:
        stats, _ = run_locust(settings)
    except (RuntimeError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    table = Table(
        "requests",
        "count",
        "failures",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        title=f"{users} users, {duration} against {url}",
    )
    for name in ("stat", "routine", "Aggregated"):
        if name in stats:
            s = stats[name]
            table.add_row(
                name,
                str(s.requests),
                str(s.failures),
                f"{s.rps:.1f}",
                f"{s.p50:.0f}",
                f"{s.p95:.0f}",
                f"{s.p99:.0f}",
            )
    Console().print(table)
    breaches = Slo(slo_p99_ms, slo_stat_p99_ms, max_error_rate).breaches(stats)
    for breach in breaches:
        console.print(f"[red]SLO breached:[/red] {breach}")
    if breaches:
        raise typer.Exit(1)
    console.print("[green]SLOs met[/green]")


@loadtest_app.command("ui")
def ui_command(
    url: Annotated[str, typer.Option(help="Server gRPC HOST:PORT.")] = "localhost:8001",
    web_host: Annotated[str, typer.Option(help="Dashboard address.")] = "127.0.0.1",
    web_port: Annotated[int, typer.Option(help="Dashboard port.")] = 8089,
    images: Annotated[Path | None, typer.Option(help="Folder of real images as payloads.")] = None,
) -> None:
    """The Locust web dashboard against a running server."""
    env = locust_env(RunSettings(url=url, images=images))
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--host",
        url,
        "--web-host",
        web_host,
        "--web-port",
        str(web_port),
    ]
    console.print(f"Locust dashboard: http://{web_host}:{web_port}")
    raise typer.Exit(subprocess.call(command, env=env, cwd=os.getcwd()))

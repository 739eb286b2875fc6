"""``cxr serve``, ``cxr repo build|check`` and ``cxr certs dev``."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, soft_wrap=True)
repo_app = typer.Typer(no_args_is_help=True, help="Build and check the Triton model repository.")
certs_app = typer.Typer(no_args_is_help=True, help="Throw-away TLS certificates for testing.")
DEFAULT_REPO = Path("model_repository")


def fail(message: str) -> typer.Exit:
    """Print an error and return the Exit(2) to raise."""
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(2)


@repo_app.command("build")
def build_command(
    repo: Annotated[Path, typer.Argument(help="Model repository folder.")] = DEFAULT_REPO,
    deploy: Annotated[
        str | None, typer.Option(help="Variant the ensemble routes to (default: int8, else fp32).")
    ] = None,
) -> None:
    """Rewrite every config from the models present (cards read from the ONNX metadata)."""
    from cxr.server.repository import classifiers_in, deployable, publish_classifier, publish_front

    classifiers = classifiers_in(repo)
    if not classifiers:
        raise fail(f"{repo}: no classifier ONNX found (run `cxr convert RUN_DIR --repo {repo}`)")
    for clf in classifiers:
        publish_classifier(repo, clf)
    try:
        deployed = deployable([c for c in classifiers if not c.tensorrt], deploy)
    except ValueError as err:
        raise fail(str(err)) from err
    publish_front(repo, deployed)
    console.print(f"wrote {len(classifiers)} classifier(s); ensemble routes to {deployed.name}")


@repo_app.command("check")
def check_command(
    repo: Annotated[Path, typer.Argument(help="Model repository folder.")] = DEFAULT_REPO,
    gpu_cc: Annotated[
        str | None, typer.Option(help="GPU compute capability engines must match, e.g. 9.0.")
    ] = None,
    tensorrt_version: Annotated[
        str | None,
        typer.Option(help="TensorRT version engines must match (default: the installed one)."),
    ] = None,
    engines: Annotated[
        bool,
        typer.Option(help="Check TensorRT models; --no-engines: the embedded CPU server's view."),
    ] = True,
) -> None:
    """Check configs, files, ONNX I/O, the ensemble and engines; exit 1 listing every problem."""
    from cxr.server.check import check_repository

    problems = check_repository(repo, gpu_cc, tensorrt_version, engines)
    for problem in problems:
        console.print(f"[red]x[/red] {escape(str(problem))}", highlight=False)
    if problems:
        console.print(f"{len(problems)} problem(s) in {repo}", highlight=False)
        raise typer.Exit(1)
    console.print(f"[green]ok[/green] {repo}", highlight=False)


class _SignalledError(Exception):
    """SIGINT or SIGTERM arrived."""


def _signalled(*_: object) -> None:
    raise _SignalledError


def serve_command(
    repo: Annotated[Path, typer.Option(help="Model repository folder.")] = DEFAULT_REPO,
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback unless told).")
    ] = "127.0.0.1",
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    http_port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    admin_key: Annotated[
        str | None,
        typer.Option(
            envvar="CXR_ADMIN_KEY",
            help="Key of the admin protocols (model repository, shared memory, statistics, "
            "trace, logging): gRPC header triton-grpc-protocol-admin-key, HTTP header admin-key.",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="Server certificate (PEM): gRPC TLS.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM).")] = None,
    tls_ca: Annotated[
        Path | None, typer.Option(help="CA of client certificates: mutual TLS.")
    ] = None,
    open_admin: Annotated[
        bool,
        typer.Option(
            "--open-admin",
            help="Open the admin protocols without a key (loopback only; for development).",
        ),
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Serve on a non-loopback --host without TLS and an admin key."
        ),
    ] = False,
    model_control: Annotated[
        str,
        typer.Option(
            help="none: models loaded at start, load/unload refused; explicit: the admin key "
            "may load and unload models.",
        ),
    ] = "none",
    metrics_host: Annotated[
        str, typer.Option(help="Address of the Prometheus metrics (no authentication).")
    ] = "127.0.0.1",
) -> None:
    """Run the embedded Triton server until Ctrl-C or SIGTERM."""
    from cxr.server.triton import TLS, ServerConfig, ServerError, TritonServer

    if (tls_cert is None) != (tls_key is None):
        raise fail("--tls-cert and --tls-key go together")
    if tls_ca is not None and tls_cert is None:
        raise fail("--tls-ca (mutual TLS) needs --tls-cert and --tls-key")
    for path in (tls_cert, tls_key, tls_ca):
        if path is not None and not path.is_file():
            raise fail(f"{path}: no such file")
    tls = TLS(tls_cert, tls_key, tls_ca) if tls_cert and tls_key else None
    config = ServerConfig(
        repo,
        host,
        grpc_port,
        http_port,
        metrics_port,
        admin_key,
        tls,
        open_admin=open_admin,
        insecure=insecure,
        model_control=model_control,
        metrics_host=metrics_host,
    )
    server = TritonServer(config)
    # A signal while the server starts or serves stops it: never an orphaned tritonserver.
    previous = {s: signal.signal(s, _signalled) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        _report(server)
        while server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
        raise fail(f"tritonserver exited ({server.process.returncode}):\n{server.log_tail()}")
    except (ServerError, ImportError) as err:
        raise fail(str(err)) from err
    except _SignalledError:
        console.print("stopping")
    finally:
        for signum in previous:  # stopping takes its own bounded time: let nothing cut it short
            signal.signal(signum, signal.SIG_IGN)
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    console.print("stopped")


def _report(server: Any) -> None:
    """Print every model's state and the endpoints."""
    from cxr.client.network import is_loopback

    config = server.config
    for name, reason in (server.plan.skipped if server.plan else {}).items():
        console.print(f"[yellow]skipped[/yellow] {name}: {escape(reason)}", highlight=False)
    for name, (state, reason) in server.model_states.items():
        colour = "green" if state == "READY" else "red"
        console.print(f"[{colour}]{state}[/{colour}] {name} {escape(reason)}", highlight=False)
    if server.failed_models():
        console.print(
            "[yellow]warning:[/yellow] the models above that are not READY failed to load; "
            "the others serve, but /v2/health/ready stays false (strict readiness) until "
            "they are fixed (`cxr repo check`) or removed",
            highlight=False,
        )
    missing = [
        what
        for what, given in (("TLS", config.tls), ("an admin key", config.admin_key))
        if not given
    ]
    if missing and not is_loopback(config.host):  # only reached with --insecure
        console.print(
            f"[yellow]warning:[/yellow] --insecure: {escape(config.host)} is served without "
            f"{' and '.join(missing)}",
            highlight=False,
        )
    tls = config.tls
    scheme = "grpc" if tls is None else f"grpcs (TLS{', client certificates' if tls.ca else ''})"
    console.print(
        f"serving {config.repo} (pid {server.process.pid})\n"
        f"  {scheme}: {server.grpc_url}\n"
        f"  http: {server.http_url}{' (loopback only: no TLS on HTTP)' if tls else ''}\n"
        f"  metrics: {server.metrics_url}\n"
        f"  admin protocols: {_admin_state(config)}\n"
        f"  models: {_control_state(config)}\n"
        "Ctrl-C to stop.",
        highlight=False,
    )


def _admin_state(config: Any) -> str:
    if config.admin_key:
        return "restricted by key"
    if config.open_admin:
        return "OPEN without a key (--open-admin, loopback)"
    return "closed (no admin key; --admin-key or --open-admin to use them)"


def _control_state(config: Any) -> str:
    if config.model_control == "explicit":
        return "loaded at start; the admin key may load and unload (--model-control explicit)"
    return "loaded at start; load and unload requests are refused"


@certs_app.command("dev")
def certs_dev_command(
    out: Annotated[Path, typer.Argument(help="Folder for the CA, server and client files.")],
    host: Annotated[list[str] | None, typer.Option(help="Server host names / IPs.")] = None,
) -> None:
    """Make a throw-away CA with server and client certificates (for tests, never production)."""
    from cxr.server.certs import make_dev_certs

    certs = make_dev_certs(out, tuple(host or ("localhost", "127.0.0.1")))
    for name, path in vars(certs).items():
        console.print(f"{name}: {path}")
    os.sync()

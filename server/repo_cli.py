"""``cxr repo build|check``: build and check the Triton model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cxr.client.options import fail

console = Console(stderr=True, soft_wrap=True)
repo_app = typer.Typer(no_args_is_help=True, help="Build and check the Triton model repository.")
DEFAULT_REPO = Path("model_repository")


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

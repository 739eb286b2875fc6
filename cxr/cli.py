"""Root of the ``cxr`` command.

Sub-commands live beside the code they drive (``client.cli``, ``train.cli``, ...) and are imported
only when named on the command line, so ``cxr client predict --help`` never pays for torch or onnx,
and a client-only install can run ``cxr client`` while the other commands explain which extra to
install.
"""

from __future__ import annotations

import importlib
import sys

import typer

# name -> (module, attribute, extra that provides it, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str | None, str]] = {
    "data": ("cxr.train.cli", "data_app", "train", "Make or inspect datasets (synthetic X-rays)."),
    "train": ("cxr.train.cli", "train_command", "train", "Fine-tune an ImageNet backbone."),
    "evaluate": ("cxr.train.cli", "evaluate_command", "train", "Clinical metrics for a model."),
    "convert": (
        "cxr.convert.cli",
        "convert_command",
        "convert",
        "ONNX, INT8/FP16, TensorRT, gate.",
    ),
    "bench": ("cxr.bench.cli", "bench_app", "convert", "In-process and served benchmarks."),
    "repo": ("cxr.server.cli", "repo_app", None, "Build and check the Triton model repository."),
    "serve": ("cxr.server.cli", "serve_command", "serve", "Run the embedded Triton server."),
    "certs": ("cxr.server.cli", "certs_app", "certs", "Throw-away TLS certificates for testing."),
    "client": (
        "cxr.client.cli",
        "client_app",
        None,
        "Predict, health and model listing over gRPC.",
    ),
    "gateway": ("cxr.gateway.cli", "gateway_app", "gateway", "DICOM gateway: C-STORE in, SR out."),
    "loadtest": ("cxr.loadtest.cli", "loadtest_app", "loadtest", "Locust load tests and sweeps."),
}

app = typer.Typer(
    name="cxr",
    help="cxr-triage: chest X-ray pneumonia triage on NVIDIA Triton.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def root() -> None:
    """cxr-triage: chest X-ray pneumonia triage on NVIDIA Triton."""


def _load(name: str) -> None:
    module_name, attribute, extra, help_text = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        hint = f" Install it with: pip install 'cxr-triage[{extra}]'" if extra else ""
        typer.echo(f"cxr {name}: a dependency is missing ({err.name or err}).{hint}", err=True)
        raise SystemExit(2) from err
    target = getattr(module, attribute)
    if isinstance(target, typer.Typer):
        app.add_typer(target, name=name, help=help_text)
    else:
        app.command(name=name, help=help_text)(target)


def _register_placeholders() -> None:
    """List every sub-command in ``cxr --help`` without importing any of them."""
    for name, (_, _, _, help_text) in SUBCOMMANDS.items():

        def placeholder() -> None:  # pragma: no cover - replaced before it can run
            raise SystemExit(2)

        app.command(name=name, help=help_text, context_settings={"ignore_unknown_options": True})(
            placeholder
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``cxr`` console script."""
    args = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in args if not arg.startswith("-")), None)
    if chosen in SUBCOMMANDS:
        _load(chosen)
    else:
        _register_placeholders()
    app(args=args, prog_name="cxr")

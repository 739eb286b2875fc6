"""``cxr client predict|health|models``.

Exit codes: 0 every input succeeded, 1 some inputs failed (each has its error row), 2 usage or
connection errors (nothing was sent).
"""

from __future__ import annotations

import asyncio
import glob
from pathlib import Path
from typing import Annotated, Any

import typer

client_app = typer.Typer(no_args_is_help=True, help="Triage over gRPC, health, model listing.")
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def fail(message: str) -> typer.Exit:
    """Print an error and return the Exit(2) to raise."""
    _stderr().print(f"[red]error:[/red] {message}")
    return typer.Exit(EXIT_USAGE)


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files, folders (recursive, hidden files skipped) and globs, in a stable order, once each."""
    found: list[str] = []
    for pattern in patterns:
        matches = (
            sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        )
        if not matches:
            found.append(pattern)  # reported as a per-input error: no such file
        for match in matches:
            path = Path(match)
            if path.is_dir():
                found += sorted(
                    str(p)
                    for p in path.rglob("*")
                    if not p.is_dir() and not any(part.startswith(".") for part in p.parts[-1:])
                )
            else:
                found.append(match)
    return list(dict.fromkeys(found))


def _tls_kwargs(
    ssl: bool, root_cert: Path | None, client_cert: Path | None, client_key: Path | None
) -> dict[str, Any]:
    if (client_cert is None) != (client_key is None):
        raise fail("--client-cert and --client-key go together")
    if not ssl and (root_cert or client_cert):
        raise fail("certificates given without --ssl")
    for path in (root_cert, client_cert, client_key):
        if path is not None and not path.is_file():
            raise fail(f"{path}: no such file")
    return {
        "ssl": ssl,
        "root_certificates": str(root_cert) if root_cert else None,
        "certificate_chain": str(client_cert) if client_cert else None,
        "private_key": str(client_key) if client_key else None,
    }


UrlOption = Annotated[str, typer.Option(help="Server gRPC HOST:PORT.")]
SslOption = Annotated[bool, typer.Option("--ssl", help="Use TLS.")]
RootCertOption = Annotated[Path | None, typer.Option(help="CA certificate (PEM).")]
ClientCertOption = Annotated[Path | None, typer.Option(help="Client certificate: mutual TLS.")]
ClientKeyOption = Annotated[Path | None, typer.Option(help="Client private key (PEM).")]
TimeoutOption = Annotated[float, typer.Option(help="Deadline per request, seconds (retries in).")]


@client_app.command("predict")
def predict_command(
    paths: Annotated[list[str], typer.Argument(help="Files, folders or globs (PNG, JPEG, DICOM).")],
    url: UrlOption = "localhost:8001",
    model: Annotated[str | None, typer.Option(help="Model (default: the deployed one).")] = None,
    priority: Annotated[str, typer.Option(help="routine or stat.")] = "routine",
    fmt: Annotated[str, typer.Option("--format", help="table, json, jsonl or csv.")] = "table",
    out: Annotated[Path | None, typer.Option(help="Write results here instead of stdout.")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 8,
    resume: Annotated[bool, typer.Option(help="Skip inputs already done in --out.")] = False,
    server_preprocess: Annotated[
        bool, typer.Option(help="Send files to the ensemble (server decodes).")
    ] = False,
    ssl: SslOption = False,
    root_cert: RootCertOption = None,
    client_cert: ClientCertOption = None,
    client_key: ClientKeyOption = None,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Triage images: one row per input, a result or a specific error."""
    from client.results import FORMATS, RowWriter, read_rows, row_ok

    if fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if priority not in ("routine", "stat"):
        raise fail(f"--priority must be routine or stat, not {priority!r}")
    if concurrency < 1:
        raise fail("--concurrency must be at least 1")
    if resume and (out is None or fmt == "table"):
        raise fail("--resume needs --out with --format jsonl, csv or json")
    tls = _tls_kwargs(ssl, root_cert, client_cert, client_key)
    inputs = expand_inputs(paths)
    kept = [row for row in read_rows(out, fmt) if row_ok(row)] if resume and out else []
    done = {row["source"] for row in kept}
    kept = [row for row in kept if row["source"] in set(inputs)]
    todo = [source for source in inputs if source not in done]
    writer = RowWriter(fmt, out, list({row["source"]: row for row in kept}.values()))
    try:
        failures = asyncio.run(
            _run(todo, writer, url, model, priority, concurrency, server_preprocess, timeout, tls)
        )
    finally:
        writer.close(order=inputs)
    if out is not None:
        _stderr().print(
            f"{len(inputs)} inputs: {len(kept)} already done, {len(todo)} sent, "
            f"{failures} failed -> {out}"
        )
    raise typer.Exit(EXIT_SOME_FAILED if failures else EXIT_OK)


async def _run(
    todo: list[str],
    writer,
    url: str,
    model: str | None,
    priority: str,
    concurrency: int,
    server_preprocess: bool,
    timeout: float,
    tls: dict[str, Any],
) -> int:
    from rich.progress import Progress

    from client.async_client import AsyncTriageClient
    from client.protocol import TriageError

    failures = 0
    async with AsyncTriageClient(
        url, model, server_preprocess=server_preprocess, priority=priority, timeout=timeout, **tls
    ) as triage:
        try:
            await triage.model_info()
        except TriageError as err:
            raise fail(f"cannot use {url}: {err}") from err
        with Progress(console=_stderr(), transient=True, disable=len(todo) < 20) as progress:
            task = progress.add_task("triage", total=len(todo))
            async for _, result in triage.predict_stream(todo, concurrency=concurrency):
                writer.write(result)
                failures += not result.ok
                progress.advance(task)
    return failures


@client_app.command("health")
def health_command(
    url: UrlOption = "localhost:8001",
    ssl: SslOption = False,
    root_cert: RootCertOption = None,
    client_cert: ClientCertOption = None,
    client_key: ClientKeyOption = None,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Is the server live and ready? Exit 0 when ready, 1 when not, 2 when unreachable."""
    from client.protocol import TriageError
    from client.sync_client import TriageClient

    tls = _tls_kwargs(ssl, root_cert, client_cert, client_key)
    with TriageClient(url, timeout=timeout, **tls) as triage:
        try:
            live, ready = triage.is_live(), triage.is_ready()
            meta = triage.server_metadata()
        except TriageError as err:
            raise fail(f"{url}: {err}") from err
    print(f"{url}: {meta.get('name')} {meta.get('version')} live={live} ready={ready}")
    raise typer.Exit(EXIT_OK if ready else EXIT_SOME_FAILED)


@client_app.command("models")
def models_command(
    url: UrlOption = "localhost:8001",
    admin_key: Annotated[
        str | None, typer.Option(envvar="CXR_ADMIN_KEY", help="Admin key, for the index.")
    ] = None,
    ssl: SslOption = False,
    root_cert: RootCertOption = None,
    client_cert: ClientCertOption = None,
    client_key: ClientKeyOption = None,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Models, versions, ready state, inputs and outputs."""
    from rich.console import Console
    from rich.table import Table

    from client.protocol import TriageError
    from client.sync_client import TriageClient

    tls = _tls_kwargs(ssl, root_cert, client_cert, client_key)
    headers = {"admin-key": admin_key} if admin_key else None
    table = Table("model", "version", "state", "inputs", "outputs")
    with TriageClient(url, timeout=timeout, headers=headers, **tls) as triage:
        try:
            index = triage.repository_index()
        except TriageError as err:
            raise fail(
                f"{url}: cannot list models ({err}); pass --admin-key if the server "
                "restricts the model-repository protocol"
            ) from err
        for entry in index:
            name, state = entry["name"], entry.get("state", "")
            inputs = outputs = ""
            if state == "READY":
                meta = triage.model_metadata(name)
                inputs = ", ".join(
                    f"{t['name']} {t['datatype']} {t['shape']}" for t in meta["inputs"]
                )
                outputs = ", ".join(
                    f"{t['name']} {t['datatype']} {t['shape']}" for t in meta["outputs"]
                )
            table.add_row(
                name, entry.get("version", ""), state or entry.get("reason", ""), inputs, outputs
            )
    Console().print(table)

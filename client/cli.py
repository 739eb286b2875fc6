"""``cxr client predict|health|models``.

Exit codes: 0 every input succeeded, 1 some inputs failed (each has its error row), 2 usage or
connection errors (nothing was sent), ``--out`` held by another run, or an I/O error writing it
(the rows written so far are kept).
"""

from __future__ import annotations

import contextlib
import glob
import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from cxr.client.choices import Format, Priority
from cxr.client.options import (
    ClientCert,
    ClientKey,
    RootCert,
    Ssl,
    Url,
    fail,
    tls_kwargs,
)

if TYPE_CHECKING:
    from rich.console import Console

    from cxr.client.protocol import Prediction
    from cxr.client.results import RowWriter
    from cxr.client.sync_client import TriageClient

client_app = typer.Typer(no_args_is_help=True, help="Triage over gRPC, health, model listing.")
EXIT_OK, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)  # messages stay one line each


def expand_inputs(patterns: list[str], exclude: tuple[Path, ...] = ()) -> list[str]:
    """Files, folders (recursive; hidden files and folders skipped) and globs, in a stable
    order, once each. A path that matches nothing is kept: its row says ``not_found``."""
    skip = {os.path.abspath(path) for path in exclude}
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else []
        for match in matches or [pattern]:
            if os.path.isdir(match):
                found += _walk(match)
            else:
                found.append(os.path.normpath(match))
    return [path for path in dict.fromkeys(found) if os.path.abspath(path) not in skip]


def _walk(folder: str) -> list[str]:
    """Every non-folder entry under ``folder`` (symlinked folders are not followed); a folder
    that cannot be listed is kept as an input, so its row says why."""
    found: list[str] = []
    unreadable: list[str] = []
    for root, dirs, files in os.walk(folder, onerror=lambda err: unreadable.append(err.filename)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.normpath(os.path.join(root, f)) for f in files if not f.startswith(".")]
    return sorted(found) + [os.path.normpath(path) for path in unreadable]


def _log_to(console: Console) -> None:
    """Show the client's warnings (server unreachable, reachable again) on ``console``, one line
    each, above the progress bar."""
    import logging

    from rich.markup import escape

    class ConsoleHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            console.print(f"[yellow]warning:[/yellow] {escape(record.getMessage())}")

    logger = logging.getLogger("client")
    logger.handlers[:] = [ConsoleHandler()]
    logger.setLevel(logging.WARNING)


TimeoutOption = Annotated[
    float, typer.Option(min=0.001, help="Deadline per request, seconds (retries in).")
]


@client_app.command("predict")
def predict_command(
    paths: Annotated[list[str], typer.Argument(help="Files, folders or globs (PNG, JPEG, DICOM).")],
    url: Url = "localhost:8001",
    model: Annotated[str | None, typer.Option(help="Model (default: the deployed one).")] = None,
    priority: Annotated[Priority, typer.Option(help="Triage priority.")] = "routine",
    fmt: Annotated[Format, typer.Option("--format", help="Row format.")] = "table",
    out: Annotated[Path | None, typer.Option(help="Write results here instead of stdout.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 8,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Decoding processes (default: one per core).")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Keep the successes already in --out for unchanged inputs; redo the rest."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an --out that already holds results.")
    ] = False,
    server_preprocess: Annotated[
        bool, typer.Option(help="Send files to the ensemble (server decodes).")
    ] = False,
    heatmaps: Annotated[
        Path | None,
        typer.Option(
            help="Ask for the heatmap too; write per input DIR/NAME.heatmap.png (the model "
            "input with the map overlaid), named in the row's heatmap_file.",
            metavar="DIR",
        ),
    ] = None,
    ssl: Ssl = False,
    root_cert: RootCert = None,
    client_cert: ClientCert = None,
    client_key: ClientKey = None,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Triage images: one row per input, a result or a specific error.

    With --out, each row's source is the input's path relative to the folder of --out, and
    carries the SHA-256 of the bytes that were triaged (and heatmap_file, relative to it too).
    """
    import asyncio

    from cxr.client.results import (
        COLUMNS,
        HEATMAP_COLUMN,
        HEATMAP_COLUMNS,
        HOT_SPOT_COLUMNS,
        OutputError,
        ResumeError,
        RowWriter,
        claim_output,
        content_digest,
        read_rows,
        release_output,
        resume_plan,
    )

    if resume and (out is None or fmt == "table"):
        raise fail("--resume needs --out with --format jsonl, csv or json")
    if resume and overwrite:
        raise fail("--resume and --overwrite exclude each other")
    tls = tls_kwargs(ssl, root_cert, client_cert, client_key)
    columns = COLUMNS
    if heatmaps is not None:
        from cxr.client.overlay import heatmap_folder

        try:
            heatmaps = heatmap_folder(heatmaps)
        except ValueError as err:
            raise fail(f"--heatmaps: {err}") from err
        columns = HEATMAP_COLUMNS
    lock = None
    if out is not None:
        try:  # held until this process ends: no second run writes the same file
            out, lock = claim_output(out, resume, overwrite)
        except (OutputError, OSError) as err:
            raise fail(str(err)) from err
    try:
        inputs = expand_inputs(paths, exclude=(out,) if out else ())
        if not inputs:
            raise fail(f"no input files in {' '.join(paths)}")
        base = out.parent if out else None
        # Rows name inputs relative to the folder of --out: the same file is the same row from
        # any working directory.
        named = {(os.path.relpath(os.path.abspath(p), base) if base else p): p for p in inputs}
        try:
            rows = read_rows(out, fmt, columns) if resume and out else []
            digests = {name: content_digest(Path(p)) if rows else None for name, p in named.items()}
            kept, todo = resume_plan(rows, digests)
        except ResumeError as err:
            raise fail(f"cannot --resume: {err}") from err

        console = _stderr()
        _log_to(console)
        failures: Counter[str] = Counter()
        writer: RowWriter | None = None
        elapsed: list[float] = []

        async def run() -> None:
            nonlocal writer
            from cxr.client.async_client import AsyncTriageClient
            from cxr.client.protocol import TriageError

            options = {
                "server_preprocess": server_preprocess,
                "priority": priority,
                "heatmaps": heatmaps is not None,
                "decode_workers": workers,
                **tls,
            }
            async with AsyncTriageClient(url, model, timeout=timeout, **options) as triage:
                try:
                    await triage.model_info()
                except TriageError as err:
                    raise fail(f"cannot use {url}: {err}") from err
                # Only now: a failed start leaves --out as it was.
                writer = RowWriter(fmt, out, kept, columns)
                started = time.monotonic()
                files = [named[name] for name in todo]
                with _progress(console, len(todo)) as progress:
                    task = progress.add_task("triage", total=len(todo), failed=0)
                    async for i, result in triage.predict_stream(files, concurrency=concurrency):
                        extra = {}
                        if heatmaps is not None and result.ok:
                            written, spot = _write_overlay(heatmaps, todo[i], result)
                            extra[HEATMAP_COLUMN] = os.path.relpath(written, base or ".")
                            extra.update(zip(HOT_SPOT_COLUMNS, spot, strict=True))
                        writer.write(result, source=todo[i], **extra)
                        if not result.ok:
                            failures[result.code] += 1
                        progress.update(task, advance=1, failed=failures.total())
                elapsed.append(time.monotonic() - started)

        try:
            asyncio.run(run())
            if writer is not None:
                writer.close(order=list(named))
        except KeyboardInterrupt:
            _close_quietly(writer, list(named))
            console.print("interrupted: every finished row is kept; --resume continues the run")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as err:  # disk full, I/O error: the rows written so far stay
            _close_quietly(writer, list(named))
            where = err.filename or out or "the output"
            raise fail(
                f"cannot write {where}: {err.strerror or err}; the finished rows are kept, "
                "--resume continues the run"
            ) from None
        _summary(console, len(inputs), len(inputs) - len(todo), len(todo), failures, out, elapsed)
        raise typer.Exit(EXIT_SOME_FAILED if failures else EXIT_OK)
    finally:
        if out is not None and lock is not None:
            release_output(out, lock)


def _write_overlay(
    folder: Path, source: str, prediction: Prediction
) -> tuple[Path, tuple[float, float]]:
    """Write the heatmap overlay of one prediction into ``folder``; its path and hot spot."""
    from cxr.client.overlay import hot_spot, write_overlay

    assert prediction.heatmap is not None and prediction.image is not None
    path = write_overlay(
        folder,
        source,
        prediction.image,
        prediction.heatmap,
        prediction.pneumonia_probability,
        prediction.threshold,
        prediction.urgent,
    )
    return path, hot_spot(prediction.heatmap, prediction.image.shape[-1])


def _close_quietly(writer: RowWriter | None, order: list[str]) -> None:
    """Close ``writer`` after an interruption or an I/O error, ignoring a second I/O error."""
    if writer is not None:
        with contextlib.suppress(OSError):
            writer.close(order=order)


def _progress(console: Console, total: int):
    """A progress bar on stderr for long runs (hidden when short or not on a terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("triage"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=total < 20 or not console.is_terminal,
    )


def _summary(
    console: Console,
    total: int,
    kept: int,
    sent: int,
    failures: Counter[str],
    out: Path | None,
    elapsed: list[float],
) -> None:
    """One line on stderr: what was done, what failed and why, what to do next."""
    from rich.markup import escape

    line = f"{total} inputs: {kept + sent - failures.total()} ok"
    if kept:
        line += f" ({kept} already done)"
    if failures:
        reasons = ", ".join(f"{code} {count}" for code, count in failures.most_common())
        line += f", [red]{failures.total()} failed[/red] ({reasons})"
    if elapsed and sent:
        line += f"; {sent} triaged in {elapsed[0]:.1f} s ({sent / max(elapsed[0], 1e-9):.0f}/s)"
    console.print(line + (f" -> {escape(str(out))}" if out else ""))
    from cxr.client.protocol import RETRYABLE

    # Codes that may succeed when tried again later (``--resume``): what the client retries,
    # and requests that ran out of their deadline doing so.
    transient = sum(failures[code] for code in (*RETRYABLE, "deadline_exceeded"))
    if transient and out is not None:
        console.print(
            f"{transient} failed because of the server (unreachable, busy or too slow): "
            "run again with --resume to retry them"
        )


@client_app.command("health")
def health_command(
    url: Url = "localhost:8001",
    model: Annotated[
        str | None, typer.Option(help="Model that must be ready (default: the ensemble).")
    ] = None,
    ssl: Ssl = False,
    root_cert: RootCert = None,
    client_cert: ClientCert = None,
    client_key: ClientKey = None,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Is the server live and ready, and the model? Exit 0 ready, 1 not ready, 2 unreachable."""
    from cxr.client import contract
    from cxr.client.protocol import TriageError
    from cxr.client.sync_client import TriageClient

    model = model or contract.ENSEMBLE_MODEL
    tls = tls_kwargs(ssl, root_cert, client_cert, client_key)
    with TriageClient(url, timeout=timeout, **tls) as triage:
        try:
            live, ready = triage.is_live(), triage.is_ready()
            model_ready = triage.is_ready(model)
            meta = triage.server_metadata()
        except TriageError as err:
            raise fail(f"{url}: {err}") from err
    print(
        f"{url}: {meta.get('name')} {meta.get('version')} live={live} ready={ready} "
        f"{model}={'ready' if model_ready else 'NOT READY'}"
    )
    raise typer.Exit(EXIT_OK if ready and model_ready else EXIT_SOME_FAILED)


@client_app.command("models")
def models_command(
    url: Url = "localhost:8001",
    admin_key: Annotated[
        str | None,
        typer.Option(envvar="CXR_ADMIN_KEY", help="Admin key: lists the whole repository."),
    ] = None,
    fmt: Annotated[Literal["table", "json"], typer.Option("--format")] = "table",
    ssl: Ssl = False,
    root_cert: RootCert = None,
    client_cert: ClientCert = None,
    client_key: ClientKey = None,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Models, versions, ready state, inputs and outputs.

    The repository index is an admin call: without the key of a server that restricts it, the
    models of the ``pneumonia`` ensemble are listed instead.
    """
    import json

    from cxr.client.core import admin_headers
    from cxr.client.network import is_loopback, url_host
    from cxr.client.protocol import TriageError
    from cxr.client.sync_client import TriageClient

    tls = tls_kwargs(ssl, root_cert, client_cert, client_key)
    if admin_key and not ssl and not is_loopback(url_host(url)):
        raise fail(f"--admin-key to {url} needs --ssl: the key is never sent in clear")
    with TriageClient(url, timeout=timeout, headers=admin_headers(admin_key), **tls) as triage:
        try:
            models, note = _list_models(triage, admin_key)
        except TriageError as err:
            raise fail(f"{url}: cannot list models ({err})") from err
    if fmt == "json":
        print(json.dumps(models, indent=2))
    else:
        _models_table(models)
    if note:
        _stderr().print(note)


def _list_models(triage: TriageClient, admin_key: str | None) -> tuple[list[dict], str]:
    """Every model with its state, inputs and outputs, and a note when the list is partial."""
    from cxr.client import contract
    from cxr.client.protocol import TriageError

    note = ""
    try:
        index = triage.repository_index()
    except TriageError as err:
        if err.code != "unauthorized":
            raise
        if admin_key:
            raise TriageError(err.code, f"the admin key was refused ({err.message})") from err
        note = (
            "the server restricts the repository index: listing the models of the "
            f"{contract.ENSEMBLE_MODEL!r} ensemble only (pass --admin-key for all)"
        )
        ensemble = triage.model_config(contract.ENSEMBLE_MODEL)
        steps = ensemble.get("ensemble_scheduling", {}).get("step", [])
        names = [contract.ENSEMBLE_MODEL, *(step["model_name"] for step in steps)]
        index = [
            {"name": name, "state": "READY" if triage.is_ready(name) else "UNAVAILABLE"}
            for name in dict.fromkeys(names)
        ]
    models = []
    for entry in index:
        name = entry["name"]
        state = entry.get("state") or "UNLOADED"  # the index gives no state to unloaded models
        ready = state == "READY"
        model = {
            "name": name,
            "versions": [entry["version"]] if entry.get("version") else [],
            "state": state,
            "reason": entry.get("reason", ""),
            "inputs": [],
            "outputs": [],
        }
        if ready:
            meta = triage.model_metadata(name)
            model["versions"] = meta.get("versions", model["versions"])
            for kind in ("inputs", "outputs"):
                model[kind] = [
                    {"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]}
                    for t in meta.get(kind, [])
                ]
        models.append(model)
    return models, note


def _models_table(models: list[dict]) -> None:
    from rich.table import Table

    from cxr.client.results import print_table

    def tensors(items: list[dict]) -> str:
        return "\n".join(f"{t['name']} {t['datatype']} [{','.join(t['shape'])}]" for t in items)

    table = Table("model", "versions", "state", "inputs", "outputs")
    for m in models:
        state = m["state"] + (f" ({m['reason']})" if m["reason"] else "")
        table.add_row(
            m["name"], ",".join(m["versions"]), state, tensors(m["inputs"]), tensors(m["outputs"])
        )
    print_table(table)

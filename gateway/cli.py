"""``cxr gateway`` (run the DICOM gateway) and ``cxr gateway status``."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

gateway_app = typer.Typer(help="DICOM gateway: C-STORE in, triage, Structured Reports out.")
EXIT_USAGE = 2


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def _titles(text: str | None) -> list[str]:
    return [title.strip() for title in (text or "").split(",") if title.strip()]


@gateway_app.callback(invoke_without_command=True)
def gateway(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="Triton gRPC HOST:PORT.")] = None,
    spool: Annotated[Path | None, typer.Option(help="Spool folder (created if missing).")] = None,
    ae_title: Annotated[str, typer.Option(help="The gateway's AE title.")] = "CXR_TRIAGE",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="DICOM port to listen on.")] = 11112,
    forward: Annotated[
        str | None, typer.Option(help="Send the reports to AE@HOST:PORT (e.g. the PACS).")
    ] = None,
    allow_ae: Annotated[
        str | None, typer.Option(help="Comma-separated calling AE titles allowed (default: any).")
    ] = None,
    stat_ae: Annotated[
        str | None, typer.Option(help="Comma-separated calling AE titles whose images are STAT.")
    ] = None,
    results: Annotated[
        Path | None, typer.Option(help="JSON-lines results log (default: SPOOL/results.jsonl).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Served model (default: the ensemble's).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Triage threads.")] = 2,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds per triage request.")] = 10.0,
    ssl: Annotated[bool, typer.Option(help="TLS to the triage server.")] = False,
    root_cert: Annotated[Path | None, typer.Option(help="CA certificate (PEM).")] = None,
    client_cert: Annotated[Path | None, typer.Option(help="Client certificate (PEM).")] = None,
    client_key: Annotated[Path | None, typer.Option(help="Client key (PEM).")] = None,
) -> None:
    """Receive radiographs over DICOM, triage them, send Structured Reports on."""
    if ctx.invoked_subcommand is not None:
        return
    if not url or not spool:
        raise _fail("cxr gateway needs --url HOST:PORT and --spool DIR")
    from cxr.gateway.forward import Destination

    try:
        destination = Destination.parse(forward) if forward else None
    except ValueError as err:
        raise _fail(str(err)) from err
    if not 0 < len(ae_title.strip()) <= 16:
        raise _fail(f"--ae-title must have 1-16 characters, not {ae_title!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for chatty in ("pynetdicom", "highdicom"):  # lines per association / per report
        logging.getLogger(chatty).setLevel(logging.WARNING)

    def make_client():
        from cxr.client.sync_client import TriageClient

        def read(path: Path | None) -> str | None:
            return path.read_text() if path else None

        return TriageClient(
            url,
            model,
            timeout=timeout,
            ssl=ssl,
            root_certificates=read(root_cert),
            private_key=read(client_key),
            certificate_chain=read(client_cert),
        )

    from cxr.gateway.service import Gateway

    service = Gateway(
        spool_dir=spool,
        results=results or spool / "results.jsonl",
        make_client=make_client,
        ae_title=ae_title.strip(),
        destination=destination,
        allow_ae=_titles(allow_ae),
        stat_ae=_titles(stat_ae),
        workers=workers,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        service.start(host, port)
    except OSError as err:
        service.close()
        raise _fail(f"cannot listen on {host}:{port}: {err}") from err
    except ValueError as err:  # e.g. a malformed --url or certificate
        service.close()
        raise _fail(str(err)) from err
    typer.echo(
        f"cxr gateway: {ae_title} listening on {host}:{port}, spool {spool}"
        + (f", reports to {destination}" if destination else ""),
        err=True,
    )
    stop.wait()
    service.close()


@gateway_app.command("status")
def status(
    spool: Annotated[Path, typer.Option(help="The gateway's spool folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Received, triaged, forwarded, pending and failed instances in a spool."""
    from cxr.gateway.status import MEANINGS, summary

    try:
        counts = summary(spool)
    except FileNotFoundError as err:
        raise _fail(str(err)) from err
    if as_json:
        typer.echo(json.dumps(counts))
        return
    for name, meaning in MEANINGS.items():
        typer.echo(f"{name:>15} {counts[name]:>8}  {meaning}")

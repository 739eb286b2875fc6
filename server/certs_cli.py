"""``cxr certs dev``: throw-away TLS certificates for testing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)
certs_app = typer.Typer(no_args_is_help=True, help="Throw-away TLS certificates for testing.")


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

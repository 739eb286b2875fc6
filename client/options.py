"""What every ``cxr`` command shares on its command line: the error exit, the server address,
TLS to the server and JSON output, defined once (each command module imports them).

Imports only Typer and Rich, so the light client's start-up stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

#: Exit status of a usage error, a bad input or an unreachable server.
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` on stderr (one line, no markup read) and return the Exit to
    raise."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[red]error:[/red] {escape(message)}"
    )
    return typer.Exit(code)


Url = Annotated[str, typer.Option(help="Server gRPC HOST:PORT.")]
Ssl = Annotated[bool, typer.Option("--ssl", help="Use TLS to the server.")]
RootCert = Annotated[Path | None, typer.Option(help="CA certificate (PEM).")]
ClientCert = Annotated[Path | None, typer.Option(help="Client certificate: mutual TLS.")]
ClientKey = Annotated[Path | None, typer.Option(help="Client private key (PEM).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")]


def tls_kwargs(
    ssl: bool, root_cert: Path | None, client_cert: Path | None, client_key: Path | None
) -> dict[str, Any]:
    """The TLS keyword arguments of :class:`~cxr.client.TriageClient` for the ``--ssl``,
    ``--root-cert``, ``--client-cert`` and ``--client-key`` options, checked (raises the exit of
    :func:`fail` on a missing file or an incomplete pair)."""
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

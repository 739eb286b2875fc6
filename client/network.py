"""Addresses: which hosts are this machine (the server and the client use the same rule)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` included; other names may resolve
    to anything, so they are not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_host(url: str) -> str:
    """The host of a gRPC ``HOST:PORT`` (``[v6]:PORT`` included)."""
    return url.rsplit(":", 1)[0] if url.count(":") == 1 or url.startswith("[") else url

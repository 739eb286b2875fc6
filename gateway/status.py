"""``cxr gateway status``: what the spool holds, counted by state."""

from __future__ import annotations

from pathlib import Path

from cxr.gateway.spool import STATE_FILE, Spool

#: Each count and what it means, in display order.
MEANINGS = {
    "received": "distinct instances spooled (SOP Instance UID + content)",
    "duplicates": "identical re-sends recognised and not triaged again",
    "triaged": "instances with a result",
    "failed": "instances refused as bad input (an error row in the results log)",
    "pending": "instances waiting for the triage server",
    "forwarded": "reports accepted by the --forward destination",
    "outbox": "reports waiting to be sent",
    "forward_failed": "reports the destination refused, or that could not be built",
    "not_forwarded": "reports kept in the spool (no --forward)",
}


def summary(root: Path) -> dict[str, int]:
    """The counts of the spool at ``root`` (FileNotFoundError when it is not a spool)."""
    if not (Path(root) / STATE_FILE).is_file():
        raise FileNotFoundError(f"{root} is not a gateway spool (no {STATE_FILE})")
    spool = Spool(root)
    try:
        return spool.counts()
    finally:
        spool.close()

"""The running gateway: spool, receiver, triage workers and forwarder wired together."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cxr.gateway import scp
from cxr.gateway.forward import Destination, Forwarder
from cxr.gateway.results import ResultsLog
from cxr.gateway.spool import Spool
from cxr.gateway.triage import TriageWorkers

if TYPE_CHECKING:
    from cxr.client.sync_client import TriageClient

log = logging.getLogger("gateway")


class Gateway:
    """Start with :meth:`start`, stop with :meth:`close`; what is in flight stays spooled."""

    def __init__(
        self,
        spool_dir: Path,
        results: Path,
        make_client: Callable[[], TriageClient],
        ae_title: str,
        destination: Destination | None = None,
        allow_ae: list[str] | None = None,
        stat_ae: list[str] | None = None,
        workers: int = 2,
    ) -> None:
        self.spool = Spool(spool_dir)
        self.spool.discard_partial_writes()
        self.results = ResultsLog(results)
        for _key, row in self.spool.unlogged():  # results recorded just before a crash
            self.results.append(row)
            self.spool.mark_logged(row["key"])
        self.forwarder = Forwarder(self.spool, destination, ae_title) if destination else None
        self.triage = TriageWorkers(
            self.spool,
            self.results,
            make_client,
            ae_title,
            forwarding=destination is not None,
            on_report=self.forwarder.wakeup.set if self.forwarder else lambda: None,
            workers=workers,
        )
        self.ae = scp.build_ae(ae_title, allow_ae or [])
        self.handler = scp.store_handler(self.spool, stat_ae or [], self.triage.wakeup.set)
        self.server = None

    def start(self, host: str, port: int) -> None:
        """Triage what the spool holds, send what the outbox holds, and listen."""
        self.triage.start()
        if self.forwarder:
            self.forwarder.start()
        self.server = scp.start(self.ae, host, port, self.handler)

    def close(self) -> None:
        """Stop listening, finish the instances in hand, close the spool."""
        if self.server is not None:
            self.server.shutdown()
        self.triage.close()
        if self.forwarder:
            self.forwarder.close()
        self.results.close()
        self.spool.close()

"""Sending reports on: a C-STORE SCU that drains the spool's outbox into ``--forward``.

The destination being unreachable is retried with exponential backoff for as long as the gateway
runs, and the outbox outlives a restart. A report the destination refuses (a failure status) is
tried again a few times, then marked failed with the status, never dropped silently.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

from cxr.client.protocol import Backoff
from cxr.gateway.spool import Spool

log = logging.getLogger("gateway")

#: Refusals (failure statuses) before a report is marked failed.
GIVE_UP_AFTER = 5
#: Reports sent per association.
BATCH = 64
_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Destination:
    """Where reports go: ``AE@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``AE@HOST:PORT`` (ValueError with what is wrong)."""
        match = _DESTINATION.match(text.strip())
        if not match or not 0 < int(match["port"]) < 65536:
            raise ValueError(
                f"--forward must be AE@HOST:PORT (an AE title of 1-16 characters, a port "
                f"1-65535), not {text!r}"
            )
        return cls(match["ae"], match["host"], int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class Forwarder:
    """A thread that sends the outbox to ``destination`` whenever woken (and every second)."""

    def __init__(self, spool: Spool, destination: Destination, ae_title: str) -> None:
        self.spool = spool
        self.destination = destination
        self.ae_title = ae_title
        self.wakeup = threading.Event()
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forward", daemon=True)

    def start(self) -> None:
        """Start sending."""
        self._thread.start()

    def close(self) -> None:
        """Stop (what is not sent stays in the outbox)."""
        self.stop.set()
        self.wakeup.set()
        if self._thread.ident is not None:  # started
            self._thread.join()

    def _run(self) -> None:
        backoff, failures = Backoff(initial=0.5, maximum=30.0), 0
        while not self.stop.is_set():
            keys = self.spool.outbox()
            if not keys:
                self.wakeup.wait(1.0)
                self.wakeup.clear()
                continue
            try:
                self.send(keys[:BATCH])
                failures = 0
            except Exception as err:  # the thread must outlive any failure: retried later
                delay = backoff.delay(failures)
                failures += 1
                log.warning(
                    "%d report(s) wait for %s (%s); next try in %.1f s",
                    len(keys),
                    self.destination,
                    err,
                    delay,
                )
                self.stop.wait(delay)

    def send(self, keys: list[str]) -> None:
        """Send the reports of ``keys`` over one association (ConnectionError when it fails)."""
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pynetdicom import AE
        from pynetdicom.sop_class import ComprehensiveSRStorage
        from pynetdicom.status import code_to_category

        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(ComprehensiveSRStorage)
        assoc = ae.associate(
            self.destination.host, self.destination.port, ae_title=self.destination.ae_title
        )
        if not assoc.is_established:
            raise ConnectionError(f"no association with {self.destination}")
        try:
            for key in keys:
                if self.stop.is_set():
                    return
                try:
                    report = pydicom.dcmread(self.spool.report_path(key))
                except (OSError, InvalidDicomError) as err:  # not the destination's fault
                    self.spool.refused(key, f"report unreadable: {err}", give_up_after=1)
                    continue
                try:
                    status = assoc.send_c_store(report)
                except RuntimeError as err:  # pynetdicom: the association dropped
                    raise ConnectionError(f"{self.destination}: {err}") from err
                if "Status" not in status:
                    raise ConnectionError(f"{self.destination} did not answer a C-STORE")
                category = code_to_category(status.Status)
                if category in ("Success", "Warning"):
                    self.spool.forwarded(key)
                else:
                    error = f"{self.destination} refused the report: status 0x{status.Status:04X}"
                    log.warning("%s (instance %s)", error, key)
                    self.spool.refused(key, error, GIVE_UP_AFTER)
        finally:
            if assoc.is_established:
                assoc.release()

"""Triage workers: take spooled instances (STAT first), predict through the client library, write
the report and the results-log row.

An instance whose input is bad (a decoder reason code) gets an error row and is done; any other
failure (server down, busy, deadline, model missing) leaves it in the spool, retried with backoff
until the server answers.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cxr.client.decode_errors import DECODE_CODES
from cxr.client.dicom_read import read_bounded
from cxr.client.protocol import Backoff, Failure, TriageError
from cxr.gateway import spool as spooling
from cxr.gateway.results import ResultsLog
from cxr.gateway.sr import Algorithm, build_report

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from cxr.client.protocol import Prediction
    from cxr.client.sync_client import TriageClient

log = logging.getLogger("gateway")

#: Failures caused by the input itself: final (an error row), never retried.
INPUT_ERRORS = DECODE_CODES | {"invalid_argument"}


def model_card_fingerprint(client: TriageClient) -> str:
    """SHA-256 (16 hex digits) of the served classifier's config parameters (its model card)."""
    name = client.model_info().name
    parameters = client.model_config(name).get("parameters", {})
    card = {key: value.get("string_value", "") for key, value in sorted(parameters.items())}
    return hashlib.sha256(json.dumps(card, sort_keys=True).encode()).hexdigest()[:16]


def read_header(data: bytes) -> Dataset | None:
    """The instance's header (no pixels), read with the client's bounds (element count,
    inflation, attribute sizes), or None when it cannot be parsed or is a bomb."""
    try:
        return read_bounded(data, keywords=None)
    except Exception:
        return None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class TriageWorkers:
    """``workers`` threads, each with its own :class:`client.TriageClient`."""

    def __init__(
        self,
        spool: spooling.Spool,
        results: ResultsLog,
        make_client: Callable[[], TriageClient],
        ae_title: str,
        forwarding: bool,
        on_report: Callable[[], None],
        workers: int = 2,
    ) -> None:
        self.spool = spool
        self.results = results
        self.make_client = make_client
        self.ae_title = ae_title
        self.forwarding = forwarding
        self.on_report = on_report
        self.wakeup = threading.Event()
        self.stop = threading.Event()
        self.workers = workers
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the workers (their clients are made here, so a bad URL fails the start)."""
        clients = [self.make_client() for _ in range(self.workers)]
        for n, client in enumerate(clients):
            thread = threading.Thread(target=self._run, args=(client,), name=f"triage-{n}")
            thread.daemon = True
            self._threads.append(thread)
            thread.start()

    def close(self) -> None:
        """Stop after the instances in hand."""
        self.stop.set()
        self.wakeup.set()
        for thread in self._threads:
            thread.join()

    def _run(self, client: TriageClient) -> None:
        backoff, failures = Backoff(initial=0.2, maximum=5.0), 0
        algorithm: Algorithm | None = None
        try:
            while not self.stop.is_set():
                item = self.spool.claim()
                if item is None:
                    self.wakeup.wait(1.0)
                    self.wakeup.clear()
                    continue
                try:
                    done = self._predict(client, item)
                    if done is not None:
                        prediction, data = done
                        if algorithm is None or algorithm.version != prediction.version:
                            algorithm = Algorithm(
                                prediction.model,
                                prediction.version,
                                prediction.threshold,
                                model_card_fingerprint(client),
                            )
                        self._finish(item, data, prediction, algorithm)
                    failures = 0
                except Exception as err:
                    self.spool.release(item.key)
                    if isinstance(err, TriageError):
                        log.warning("triage of %s waits: %s", item.key, err)
                    else:
                        log.exception("triage of %s failed unexpectedly; retrying", item.key)
                    self.stop.wait(backoff.delay(failures))
                    failures += 1
        finally:
            client.close()

    def _predict(
        self, client: TriageClient, item: spooling.Item
    ) -> tuple[Prediction, bytes] | None:
        """The prediction and the instance's bytes, None after writing an error row, or raise a
        retryable TriageError."""
        try:
            data = item.path.read_bytes()
        except OSError as err:
            result: Prediction | Failure = Failure(item.key, "unreadable", f"spool file: {err}")
            data = b""
        else:
            result = client.predict([data], priority=item.priority)[0]
        if isinstance(result, Failure):
            if result.code not in INPUT_ERRORS:
                raise TriageError(result.code, result.message)
            header = read_header(data)
            row = self._row(item, header) | {
                "ok": False,
                "error_code": result.code,
                "error": result.message,
            }
            self._record(item.key, row, None)
            return None
        return result, data

    def _finish(
        self, item: spooling.Item, data: bytes, prediction: Prediction, algorithm: Algorithm
    ) -> None:
        header = read_header(data)
        row = self._row(item, header) | {
            "ok": True,
            "urgent": prediction.urgent,
            "label": prediction.label,
            "pneumonia_probability": prediction.pneumonia_probability,
            "threshold": prediction.threshold,
            "model": prediction.model,
            "version": prediction.version,
            "model_card_fingerprint": algorithm.fingerprint,
        }
        sr_error = None
        try:
            report = build_report(header, item.digest, prediction, algorithm, self.ae_title)
            buffer = io.BytesIO()
            report.save_as(buffer, enforce_file_format=True)
            spooling.write_durably(self.spool.report_path(item.key), buffer.getvalue())
            row["report_uid"] = str(report.SOPInstanceUID)
            sr_state = spooling.SR_PENDING if self.forwarding else spooling.SR_KEPT
        except (AttributeError, TypeError, ValueError) as err:  # a header highdicom cannot use
            sr_state, sr_error = spooling.SR_FAILED, f"no report: {err}"
            log.warning("instance %s: %s", item.key, sr_error)
        self._record(item.key, row | {"report": sr_state}, sr_state, sr_error)
        if sr_state == spooling.SR_PENDING:
            self.on_report()

    def _row(self, item: spooling.Item, header: Dataset | None) -> dict[str, Any]:
        study = str(header.get("StudyInstanceUID", "")) if header is not None else ""
        return {
            "key": item.key,
            "sop": spooling.uid_hash(item.sop_uid),
            "study": spooling.uid_hash(study),
            "digest": item.digest[:16],
            "priority": item.priority,
            "received_at": _iso(item.received_at),
            "triaged_at": _iso(time.time()),
        }

    def _record(
        self, key: str, row: dict[str, Any], sr_state: str | None, sr_error: str | None = None
    ) -> None:
        self.spool.finish(key, row, sr_state, sr_error)
        self.results.append(row)
        self.spool.mark_logged(key)

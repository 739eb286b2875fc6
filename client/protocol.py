"""What the sync and asyncio clients share: results, model discovery, error codes and retries.

Nothing here does I/O: the clients drive :class:`Attempts` (one call's retry loop) and
:class:`Outage` (the client's view of whether the server is reachable) with their own sleep.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from cxr.client import contract
from cxr.client.decode_errors import DECODE_CODES

log = logging.getLogger("client")

#: Error codes worth another try: the server is unreachable (restarting), or its queue is full or
#: a request waited in it past the queue timeout (Triton answers both with UNAVAILABLE).
RETRYABLE = frozenset({"unavailable", "server_busy"})
#: Triton's messages for a full queue and for a request rejected after its queue timeout.
BUSY_MESSAGES = ("exceeds maximum queue size", "request timeout expired")
#: A decoding error reported by the server's ``preprocess`` model: ``"..., <code>: <message>"``,
#: with one of the decoder's codes (``cxr.client.decode_errors.ImageDecodeError``).
_SERVER_DECODE_ERROR = re.compile(r"(?:^|, )([a-z][a-z0-9_]*): (.*)$", re.DOTALL)


@dataclass
class Prediction:
    """One successful triage result."""

    source: str
    label: str
    probabilities: dict[str, float]
    pneumonia_probability: float
    urgent: bool
    threshold: float
    model: str
    version: str
    latency_ms: float
    #: SHA-256 of the input's bytes (files and bytes; empty for in-memory images).
    sha256: str = ""
    #: With ``heatmaps=True``: ``HEATMAP`` float32 [h, w] (0..1), the class activation map of the
    #: triage class, and the uint8 model input [S, S] it lies on (decoded on the client).
    heatmap: np.ndarray | None = field(default=None, repr=False, compare=False)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)
    ok: bool = field(default=True, init=False)

    def as_row(self) -> dict[str, Any]:
        """Flat dict for JSON/CSV output (the arrays left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _ARRAYS}


#: Fields of :class:`Prediction` that hold arrays, not row values.
_ARRAYS = ("heatmap", "image")


@dataclass
class Failure:
    """One input that got no result, with a specific, machine-readable reason."""

    source: str
    code: str
    message: str
    #: SHA-256 of the input's bytes when they could be read.
    sha256: str = ""
    ok: bool = field(default=False, init=False)

    def as_row(self) -> dict[str, Any]:
        """Flat dict for JSON/CSV output."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


Result = Prediction | Failure


class TriageError(RuntimeError):
    """A request that failed; ``code`` is stable, e.g. ``unavailable`` or ``server_busy``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.args[0]}"


@dataclass
class ModelInfo:
    """What the client needs to know about the model it sends to (read from its config)."""

    name: str
    image_size: int
    classes: list[str]
    threshold: float
    server_preprocess: bool
    #: Whether requests ask for ``HEATMAP`` too.
    heatmaps: bool = False

    @classmethod
    def from_configs(
        cls,
        name: str,
        classifier: dict[str, Any],
        server_preprocess: bool,
        heatmaps: bool = False,
    ) -> ModelInfo:
        """Build from the JSON config of the classifier that produces ``PROBS``; ``heatmaps``
        needs its ``HEATMAP`` output (a ``bad_model`` error when it has none)."""
        outputs = {o.get("name") for o in classifier.get("output", [])}
        if heatmaps and contract.HEATMAP not in outputs:
            raise TriageError(
                "bad_model",
                f"model {classifier.get('name')!r} has no {contract.HEATMAP} output (exported "
                "before heatmaps, or a backbone without an exact activation map): convert it "
                "again with this version, or ask without heatmaps",
            )
        params = {k: v.get("string_value", "") for k, v in classifier.get("parameters", {}).items()}
        missing = [k for k in (contract.PARAM_THRESHOLD, contract.PARAM_CLASSES) if k not in params]
        images = [i for i in classifier.get("input", []) if i.get("name") == contract.IMAGE]
        if missing or len(images) != 1:
            raise TriageError(
                "bad_model",
                f"model {classifier.get('name')!r} is not a cxr-triage classifier (its config "
                f"lacks {f'parameters {missing}' if missing else f'an input {contract.IMAGE}'})",
            )
        return cls(
            name=name,
            image_size=int(images[0]["dims"][-1]),
            classes=params[contract.PARAM_CLASSES].split(","),
            threshold=float(params[contract.PARAM_THRESHOLD]),
            server_preprocess=server_preprocess,
            heatmaps=heatmaps,
        )


def config_parameter(config: dict[str, Any], key: str) -> str | None:
    """A string parameter of a model config (JSON form), or None."""
    return config.get("parameters", {}).get(key, {}).get("string_value")


def deployed_classifier(ensemble_config: dict[str, Any]) -> str:
    """The classifier the ensemble routes to, from its parameters or its last step."""
    name = config_parameter(ensemble_config, contract.PARAM_DEPLOYED_MODEL)
    if name:
        return name
    steps = ensemble_config.get("ensemble_scheduling", {}).get("step", [])
    if not steps:
        raise TriageError("bad_model", f"{ensemble_config.get('name')!r} is not an ensemble")
    return steps[-1]["model_name"]


def to_prediction(
    source: str, probs: np.ndarray, info: ModelInfo, version: str, latency_ms: float
) -> Prediction:
    """Interpret one row of ``PROBS``: urgent when 1 - P(normal) reaches the threshold."""
    row = [float(p) for p in np.asarray(probs, dtype=np.float64).reshape(-1)]
    if len(row) != len(info.classes):
        raise TriageError(
            "bad_response", f"{len(row)} probabilities for {len(info.classes)} classes"
        )
    score = 1.0 - row[0]
    urgent = score >= info.threshold
    # The label follows the operating point: the most likely abnormal class when urgent.
    label = info.classes[1 + int(np.argmax(row[1:]))] if urgent else info.classes[0]
    return Prediction(
        source=source,
        label=label,
        probabilities=dict(zip(info.classes, row, strict=True)),
        pneumonia_probability=score,
        urgent=urgent,
        threshold=info.threshold,
        model=info.name,
        version=version,
        latency_ms=latency_ms,
    )


def classify_error(err: Exception) -> TriageError:
    """Map a tritonclient exception onto a stable code and a plain message.

    Triton answers a full queue (``Exceeds maximum queue size``) and a request rejected after its
    queue timeout (``Request timeout expired``) with UNAVAILABLE, like a server that is down: the
    message tells them apart (``server_busy`` vs ``unavailable``). A restricted admin protocol is
    UNAVAILABLE too, and is ``unauthorized``. Decoding errors of the server's ``preprocess`` keep
    their decoder code (``not_an_image``, ``truncated`` ...).
    """
    status = str(getattr(err, "status", lambda: None)() or "").removeprefix("StatusCode.")
    message = str(getattr(err, "message", lambda: None)() or err)
    lowered = message.lower()
    decode = _SERVER_DECODE_ERROR.search(message)
    if any(busy in lowered for busy in BUSY_MESSAGES):
        return TriageError("server_busy", f"server busy: {message}")
    if "protocol is restricted" in lowered or status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return TriageError("unauthorized", message)
    if status == "RESOURCE_EXHAUSTED":
        too_large = "larger than max" in lowered
        return TriageError("too_large" if too_large else "server_busy", message)
    if status == "UNAVAILABLE":
        return TriageError("unavailable", f"server unreachable: {message}")
    if status == "DEADLINE_EXCEEDED":
        return TriageError("deadline_exceeded", f"no answer within the deadline ({message})")
    if status in ("INVALID_ARGUMENT", "INTERNAL") and decode and decode[1] in DECODE_CODES:
        return TriageError(decode[1], decode[2])
    if status == "INVALID_ARGUMENT":
        return TriageError("invalid_argument", message)
    if status == "NOT_FOUND" or "unknown model" in lowered:
        return TriageError("model_not_found", message)
    return TriageError("server_error", f"{status or type(err).__name__}: {message}")


@dataclass
class Backoff:
    """Exponential backoff with full jitter; retries go on until the call's deadline."""

    initial: float = 0.05
    maximum: float = 2.0

    def delay(self, attempt: int) -> float:
        """Sleep before retry number ``attempt`` (0-based)."""
        return random.uniform(0, min(self.maximum, self.initial * 2**attempt))


class Outage:
    """The client's view of the server being reachable, shared by all its calls.

    While the server is unreachable every call retries with backoff within its own deadline; once
    it has been unreachable for longer than one deadline, further calls fail at once (code
    ``unavailable``) instead of each waiting out a deadline, except one probe every
    ``probe_every`` seconds, which finds the server when it is back.
    """

    def __init__(self, probe_every: float = 2.0) -> None:
        self.since: float | None = None
        self.probe_every = probe_every
        self._last_probe = 0.0
        self._gave_up = False

    def failed(self, error: TriageError, limit: float) -> None:
        """Note a failed call (``limit``: its deadline); only an unreachable server counts."""
        if error.code == "unavailable" and self.since is None:
            self.since = time.monotonic()
            self._gave_up = False
            log.warning("%s; retrying with backoff for up to %g s per request", error, limit)

    def succeeded(self) -> None:
        """Note an answer from the server."""
        if self.since is not None:
            log.warning("server reachable again after %.1f s", time.monotonic() - self.since)
            self.since = None

    def admit(self, limit: float) -> None:
        """Raise ``unavailable`` when the server has been down longer than ``limit`` seconds and
        it is not time for a probe."""
        if self.since is None:
            return
        now = time.monotonic()
        down = now - self.since
        if down <= limit:
            return
        if now - self._last_probe >= self.probe_every:
            self._last_probe = now
            return
        if not self._gave_up:
            self._gave_up = True
            log.warning(
                "server unreachable for %.0f s: requests now fail at once as 'unavailable' "
                "(one probe every %g s)",
                down,
                self.probe_every,
            )
        raise TriageError(
            "unavailable",
            f"server unreachable for {down:.0f} s, longer than one request deadline ({limit:g} s)",
        )


class Attempts:
    """The retry loop of one call, without I/O.

    Before each try, :meth:`budget` gives the seconds left (or raises); after a failed try,
    :meth:`retry_after` gives the sleep before the next one (or raises the classified error).
    """

    def __init__(self, timeout: float, backoff: Backoff, outage: Outage) -> None:
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.backoff = backoff
        self.outage = outage
        self.tries = 0
        self.last: TriageError | None = None

    def budget(self) -> float:
        """Seconds left for the next try."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            if self.last is not None:
                raise self._gave_up(self.last)
            message = f"no time left in the {self.timeout:g} s deadline"
            raise TriageError("deadline_exceeded", message)
        self.outage.admit(self.timeout)
        self.tries += 1
        return remaining

    def retry_after(self, err: Exception) -> float:
        """Classify a failed try: the delay before retrying it, or raise."""
        error = classify_error(err)
        self.outage.failed(error, self.timeout)
        if error.code not in RETRYABLE:
            raise error from err
        self.last = error
        delay = self.backoff.delay(self.tries - 1)
        if time.monotonic() + delay >= self.deadline:
            raise self._gave_up(error) from err
        log.debug("try %d failed (%s); retrying in %.2f s", self.tries, error.code, delay)
        return delay

    def succeeded(self) -> None:
        """Note that the call got its answer."""
        self.outage.succeeded()

    def _gave_up(self, error: TriageError) -> TriageError:
        elapsed = time.monotonic() - self.started
        return TriageError(
            error.code, f"{error.message} (gave up after {self.tries} tries in {elapsed:.1f} s)"
        )

"""What the sync and asyncio clients share: results, model discovery, requests, retries."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from client import contract

#: gRPC status codes worth another try: the server is restarting, or its queue is full.
RETRYABLE = {"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED"}


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
    ok: bool = field(default=True, init=False)

    def as_row(self) -> dict[str, Any]:
        """Flat dict for JSON/CSV output."""
        return asdict(self)


@dataclass
class Failure:
    """One input that got no result, with a specific, machine-readable reason."""

    source: str
    code: str
    message: str
    ok: bool = field(default=False, init=False)

    def as_row(self) -> dict[str, Any]:
        """Flat dict for JSON/CSV output."""
        return asdict(self)


Result = Prediction | Failure


class TriageError(RuntimeError):
    """A request that failed; ``code`` is stable, e.g. ``unavailable`` or ``server_busy``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class ModelInfo:
    """What the client needs to know about the model it sends to (read from its config)."""

    name: str
    image_size: int
    classes: list[str]
    threshold: float
    server_preprocess: bool

    @classmethod
    def from_configs(cls, name: str, classifier: dict[str, Any], server_preprocess: bool):
        """Build from the JSON config of the classifier that produces ``PROBS``."""
        params = {k: v.get("string_value", "") for k, v in classifier.get("parameters", {}).items()}
        missing = [k for k in (contract.PARAM_THRESHOLD, contract.PARAM_CLASSES) if k not in params]
        if missing:
            raise TriageError(
                "bad_model",
                f"model {classifier.get('name')!r} is not a cxr-triage classifier "
                f"(its config lacks parameters {missing})",
            )
        (image,) = [i for i in classifier["input"] if i["name"] == contract.IMAGE]
        return cls(
            name=name,
            image_size=int(image["dims"][-1]),
            classes=params[contract.PARAM_CLASSES].split(","),
            threshold=float(params[contract.PARAM_THRESHOLD]),
            server_preprocess=server_preprocess,
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
    """Map a tritonclient exception onto a stable code and a plain message."""
    status = getattr(err, "status", lambda: None)() or ""
    message = getattr(err, "message", lambda: str(err))() or str(err)
    lowered = message.lower()
    if (
        "maximum queue size" in lowered
        or "timeout expired" in lowered
        or "RESOURCE_EXHAUSTED" in status
    ):
        code = "server_busy"
    elif "DEADLINE_EXCEEDED" in status or "deadline exceeded" in lowered:
        code = "deadline_exceeded"
    elif "UNAVAILABLE" in status:
        code = "unavailable"
    elif "INVALID_ARGUMENT" in status:
        code = "invalid_argument"
    elif "UNAUTHENTICATED" in status or "PERMISSION_DENIED" in status:
        code = "unauthorized"
    elif "NOT_FOUND" in status or "unknown model" in lowered:
        code = "model_not_found"
    else:
        code = "server_error"
    return TriageError(code, f"{code}: {message}")


def is_retryable(err: Exception) -> bool:
    """Whether a failed call may succeed if tried again (server restarting or busy)."""
    status = getattr(err, "status", lambda: None)() or ""
    if status in RETRYABLE:
        return True
    return classify_error(err).code == "server_busy"


@dataclass
class Backoff:
    """Exponential backoff with full jitter, bounded by a total deadline."""

    retries: int = 4
    initial: float = 0.1
    maximum: float = 2.0

    def delays(self) -> Iterator[float]:
        """Sleep lengths before each retry."""
        for attempt in range(self.retries):
            yield random.uniform(0, min(self.maximum, self.initial * 2**attempt))

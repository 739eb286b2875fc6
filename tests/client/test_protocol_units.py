"""The client's I/O-free core, without a server: error classification, backoff, the retry loop of
one call (:class:`Attempts`), the shared outage view (:class:`Outage`), model discovery and
request building. A clock that the test moves stands in for ``time.monotonic``."""

from __future__ import annotations

import typing
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from cxr.client import contract
from cxr.client.choices import Priority
from cxr.client.core import PreparedRequest, discovery, prepare, priority_level
from cxr.client.protocol import (
    Attempts,
    Backoff,
    Failure,
    ModelInfo,
    Outage,
    TriageError,
    classify_error,
    to_prediction,
)

CLASSES = ["NORMAL", "PNEUMONIA"]


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("cxr.client.protocol.time.monotonic", fake)
    return fake


def triton_error(status: str, message: str) -> InferenceServerException:
    return InferenceServerException(message, status=f"StatusCode.{status}")


def classifier_config(name: str = "pneumonia_int8", size: int = 32) -> dict[str, Any]:
    params = {contract.PARAM_THRESHOLD: "0.4", contract.PARAM_CLASSES: ",".join(CLASSES)}
    return {
        "name": name,
        "input": [{"name": contract.IMAGE, "dims": [1, size, size]}],
        "parameters": {key: {"string_value": value} for key, value in params.items()},
    }


ENSEMBLE = {
    "name": contract.ENSEMBLE_MODEL,
    "platform": "ensemble",
    "parameters": {contract.PARAM_DEPLOYED_MODEL: {"string_value": "pneumonia_int8"}},
}


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        ("UNAVAILABLE", "failed to connect to all addresses", "unavailable"),
        ("UNAVAILABLE", "Exceeds maximum queue size", "server_busy"),
        ("UNAVAILABLE", "Request timeout expired", "server_busy"),
        ("UNAVAILABLE", "This protocol is restricted, expecting header 'x'", "unauthorized"),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", "deadline_exceeded"),
        ("RESOURCE_EXHAUSTED", "Received message larger than max (9 vs. 4)", "too_large"),
        ("INVALID_ARGUMENT", "in ensemble 'pneumonia', truncated: file ends early", "truncated"),
        ("INVALID_ARGUMENT", "unexpected shape for input 'IMAGE'", "invalid_argument"),
        ("NOT_FOUND", "Request for unknown model: 'x' is not found", "model_not_found"),
        ("INTERNAL", "something else", "server_error"),
    ],
)
def test_classify_error(status: str, message: str, code: str) -> None:
    error = classify_error(triton_error(status, message))
    assert error.code == code, error
    assert isinstance(error, TriageError) and error.message


def test_backoff_is_full_jitter_capped_at_the_maximum() -> None:
    backoff = Backoff(initial=0.1, maximum=0.5)
    for attempt, cap in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.5), (10, 0.5)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= cap


def test_attempts_retry_retryable_errors_within_the_deadline(clock: Clock) -> None:
    attempts = Attempts(timeout=10, backoff=Backoff(initial=0.1, maximum=0.1), outage=Outage())
    assert attempts.budget() == 10
    delay = attempts.retry_after(triton_error("UNAVAILABLE", "Exceeds maximum queue size"))
    assert 0 <= delay <= 0.1
    clock.now += 4
    assert attempts.budget() == pytest.approx(6) and attempts.tries == 2


def test_attempts_raise_a_final_error_at_once(clock: Clock) -> None:
    attempts = Attempts(timeout=10, backoff=Backoff(), outage=Outage())
    attempts.budget()
    with pytest.raises(TriageError) as caught:
        attempts.retry_after(triton_error("INVALID_ARGUMENT", "bad shape"))
    assert caught.value.code == "invalid_argument"


def test_attempts_give_up_at_the_deadline_with_the_last_error(clock: Clock) -> None:
    attempts = Attempts(timeout=1, backoff=Backoff(initial=0.01, maximum=0.01), outage=Outage())
    attempts.budget()
    attempts.retry_after(triton_error("UNAVAILABLE", "Request timeout expired"))
    clock.now += 2
    with pytest.raises(TriageError) as caught:
        attempts.budget()
    assert caught.value.code == "server_busy"
    assert "gave up after 1 tries in 2.0 s" in str(caught.value)


def test_attempts_do_not_sleep_past_the_deadline(clock: Clock) -> None:
    attempts = Attempts(timeout=1, backoff=Backoff(initial=5, maximum=5), outage=Outage())
    attempts.budget()
    clock.now += 0.999
    with pytest.raises(TriageError) as caught:  # any delay of up to 5 s ends past the deadline
        for _ in range(50):
            attempts.retry_after(triton_error("UNAVAILABLE", "connection refused"))
    assert caught.value.code == "unavailable"


def test_outage_fails_fast_after_one_deadline_and_probes(clock: Clock) -> None:
    outage = Outage(probe_every=2)
    down = TriageError("unavailable", "server unreachable")
    outage.failed(down, limit=5)
    outage.admit(5)  # down for 0 s: admitted
    clock.now += 6  # down longer than a deadline
    outage.admit(5)  # the first call after that is the probe
    with pytest.raises(TriageError) as caught:
        outage.admit(5)
    assert caught.value.code == "unavailable"
    clock.now += 2
    outage.admit(5)  # the next probe
    outage.succeeded()
    outage.admit(5)
    outage.admit(5)  # reachable again: everyone admitted


def test_only_an_unreachable_server_starts_an_outage(clock: Clock) -> None:
    outage = Outage()
    outage.failed(TriageError("server_busy", "queue full"), limit=1)
    clock.now += 100
    outage.admit(1)
    assert outage.since is None


def test_discovery_follows_the_ensemble_to_its_classifier() -> None:
    steps = discovery(None, server_preprocess=False)
    assert next(steps) == contract.ENSEMBLE_MODEL
    assert steps.send(ENSEMBLE) == "pneumonia_int8"
    with pytest.raises(StopIteration) as done:
        steps.send(classifier_config())
    info = done.value.value
    assert (info.name, info.image_size, info.classes, info.threshold) == (
        "pneumonia_int8",
        32,
        CLASSES,
        0.4,
    )


def test_discovery_with_server_preprocess_sends_to_the_ensemble() -> None:
    steps = discovery(None, server_preprocess=True)
    next(steps)
    steps.send(ENSEMBLE)
    with pytest.raises(StopIteration) as done:
        steps.send(classifier_config())
    assert done.value.value.name == contract.ENSEMBLE_MODEL


def test_discovery_refuses_server_preprocess_on_a_classifier() -> None:
    steps = discovery("pneumonia_fp32", server_preprocess=True)
    assert next(steps) == "pneumonia_fp32"
    with pytest.raises(TriageError) as caught:
        steps.send(classifier_config("pneumonia_fp32"))
    assert caught.value.code == "bad_model"


def test_a_config_without_the_card_is_not_a_classifier() -> None:
    with pytest.raises(TriageError) as caught:
        ModelInfo.from_configs("x", {"name": "x", "input": []}, server_preprocess=False)
    assert caught.value.code == "bad_model" and "parameters" in str(caught.value)


def test_prepare_decodes_locally_into_one_uint8_request() -> None:
    info = ModelInfo("pneumonia_int8", 32, CLASSES, 0.4, server_preprocess=False)
    image = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    request = prepare(image, 3, info)
    assert isinstance(request, PreparedRequest)
    assert request.model == "pneumonia_int8" and request.source == "array:3"
    (tensor,) = request.inputs
    assert tensor.name() == contract.IMAGE and tensor.shape() == [1, 1, 32, 32]
    assert tensor.datatype() == contract.IMAGE_TRITON_DTYPE
    assert [output.name() for output in request.outputs] == [contract.PROBS]


def test_prepare_sends_encoded_bytes_to_the_server_when_asked() -> None:
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(buffer, format="PNG")
    info = ModelInfo(contract.ENSEMBLE_MODEL, 32, CLASSES, 0.4, server_preprocess=True)
    request = prepare(buffer.getvalue(), 0, info)
    assert isinstance(request, PreparedRequest)
    (tensor,) = request.inputs
    assert tensor.name() == contract.IMAGE_BYTES and tensor.shape() == [1, 1]


def test_prepare_turns_a_bad_input_into_a_failure() -> None:
    info = ModelInfo("pneumonia_int8", 32, CLASSES, 0.4, server_preprocess=False)
    result = prepare(b"GIF89a not a radiograph", 0, info)
    assert isinstance(result, Failure) and result.code == "not_an_image"


def test_prediction_follows_the_operating_threshold() -> None:
    info = ModelInfo("m", 32, CLASSES, 0.4, server_preprocess=False)
    urgent = to_prediction("a", np.array([0.55, 0.45]), info, "1", 1.0)
    routine = to_prediction("b", np.array([0.65, 0.35]), info, "1", 1.0)
    assert (urgent.urgent, urgent.label) == (True, "PNEUMONIA")
    assert (routine.urgent, routine.label) == (False, "NORMAL")
    with pytest.raises(TriageError):
        to_prediction("c", np.array([1.0]), info, "1", 1.0)


@pytest.mark.parametrize(("name", "level"), [("stat", 1), ("routine", 2)])
def test_priority_levels(name: str, level: int) -> None:
    assert priority_level(name) == level == contract.PRIORITIES[name]
    assert name in typing.get_args(Priority)  # the CLI's --priority choices


def test_unknown_priority() -> None:
    with pytest.raises(ValueError, match="priority must be one of"):
        priority_level("urgent")

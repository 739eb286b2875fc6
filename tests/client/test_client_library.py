"""``TriageClient`` and ``AsyncTriageClient`` against a real tritonserver: every input kind, model
discovery, the operating threshold, priorities, deadlines, bad inputs, health and metadata."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxr.client import AsyncTriageClient, Failure, Prediction, TriageClient, TriageError, contract
from cxr.client.protocol import Backoff
from cxr.server.repository import CONFIG_FILE, read_config


def model_config(repo: Path, name: str):
    """A model's config as written in the repository (the client must read the same)."""
    return read_config(repo / name / CONFIG_FILE)


def deployed(repo: Path) -> str:
    ensemble = model_config(repo, contract.ENSEMBLE_MODEL)
    return ensemble.parameters[contract.PARAM_DEPLOYED_MODEL].string_value


def test_model_info_is_read_from_the_deployed_model_config(triton, model_repo: Path) -> None:
    classifier = model_config(model_repo, deployed(model_repo))
    with TriageClient(triton.grpc_url) as client:
        info = client.model_info()
    assert info.name == deployed(model_repo)
    assert info.threshold == float(classifier.parameters[contract.PARAM_THRESHOLD].string_value)
    assert info.classes == classifier.parameters[contract.PARAM_CLASSES].string_value.split(",")
    assert info.image_size == classifier.input[0].dims[-1]
    with TriageClient(triton.grpc_url, server_preprocess=True) as client:
        assert client.model_info().name == contract.ENSEMBLE_MODEL


def test_every_input_kind_gives_the_same_prediction(
    triton, xray_pngs: list[Path], phi_dicom: Path
) -> None:
    path = xray_pngs[-1]  # phi_dicom holds the same pixels
    pixels = np.asarray(Image.open(path).convert("L"))
    inputs = [
        str(path),
        path,
        path.read_bytes(),
        pixels,
        Image.open(path),
        pydicom.dcmread(phi_dicom),
        phi_dicom,  # DICOM file without extension
        phi_dicom.read_bytes(),
    ]
    with TriageClient(triton.grpc_url) as client:
        results = client.predict(inputs)
    assert all(isinstance(r, Prediction) for r in results), results
    sop = "sop:" + hashlib.sha256(b"1.2.826.0.1.3680043.8.498.4711").hexdigest()[:16]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert [r.source for r in results] == [
        str(path),
        str(path),
        f"bytes:{digest}",
        "array:3",
        "image:4",
        sop,
        str(phi_dicom),
        results[7].source,
    ]
    assert results[7].source.startswith("bytes:")
    reference = results[0].pneumonia_probability
    for result in results:
        assert result.pneumonia_probability == pytest.approx(reference, abs=1e-5), result


@pytest.mark.parametrize("kind", ["path", "array", "pil", "dataset"])
def test_server_preprocessing_agrees_with_local(
    triton, xray_pngs: list[Path], phi_dicom: Path, kind: str
) -> None:
    path = xray_pngs[-1]
    value = {
        "path": path,
        "array": np.asarray(Image.open(path).convert("L")),
        "pil": Image.open(path),
        "dataset": pydicom.dcmread(phi_dicom),
    }[kind]
    with TriageClient(triton.grpc_url) as local:
        (here,) = local.predict(value)
    with TriageClient(triton.grpc_url, server_preprocess=True) as remote:
        (there,) = remote.predict(value)
    assert here.ok and there.ok, (here, there)
    assert there.model == contract.ENSEMBLE_MODEL
    assert here.model == deployed(triton.config.repo)
    assert there.pneumonia_probability == pytest.approx(here.pneumonia_probability, abs=1e-5)


def test_prediction_fields_follow_the_operating_threshold(triton, xray_pngs: list[Path]) -> None:
    with TriageClient(triton.grpc_url) as client:
        results = client.predict(xray_pngs)
        threshold = client.model_info().threshold
    for result, path in zip(results, xray_pngs, strict=True):
        assert result.ok and result.source == str(path)
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert result.pneumonia_probability == pytest.approx(
            1 - result.probabilities[contract.NEGATIVE_CLASS]
        )
        assert result.threshold == threshold
        assert result.urgent == (result.pneumonia_probability >= threshold)
        expected = contract.POSITIVE_CLASS if result.urgent else contract.NEGATIVE_CLASS
        assert result.label == expected
        assert result.version == "1" and result.latency_ms > 0
    # the synthetic model separates these: NORMAL ones first, then PNEUMONIA ones
    assert [r.urgent for r in results] == [False] * 3 + [True] * 3


def test_accepted_variants_including_inverted_monochrome1(triton, good_variants: dict) -> None:
    with TriageClient(triton.grpc_url) as client:
        results = dict(
            zip(good_variants, client.predict(list(good_variants.values())), strict=True)
        )
    assert all(r.ok for r in results.values()), results
    # MONOCHROME1 stores inverted pixels: read right, it is the same image as MONOCHROME2
    assert results["monochrome1.dcm"].pneumonia_probability == pytest.approx(
        results["monochrome2.dcm"].pneumonia_probability, abs=1e-5
    )
    assert results["rgb.png"].pneumonia_probability == pytest.approx(
        results["monochrome2.dcm"].pneumonia_probability, abs=1e-5
    )


def test_bad_inputs_fail_one_by_one(triton, bad_inputs: dict, xray_pngs: list[Path]) -> None:
    paths = [*bad_inputs, xray_pngs[0], Path("/no/such/file.png"), 42]
    with TriageClient(triton.grpc_url, server_preprocess=False) as client:
        results = client.predict(paths)
    codes = [r.code if isinstance(r, Failure) else "ok" for r in results]
    assert codes == [*bad_inputs.values(), "ok", "not_found", "unsupported_type"]
    assert all(r.ok or r.message for r in results)


def test_bad_inputs_with_server_preprocessing(triton, bad_inputs: dict) -> None:
    """The server's decoder reports the same codes (read back from its error message)."""
    with TriageClient(triton.grpc_url, server_preprocess=True) as client:
        results = client.predict(list(bad_inputs))
    assert [r.code for r in results] == list(bad_inputs.values())


def test_priorities_are_accepted(triton, xray_pngs: list[Path]) -> None:
    with TriageClient(triton.grpc_url, priority="stat") as client:
        stat = client.predict(xray_pngs[:2])
        routine = client.predict(xray_pngs[:2], priority="routine")
        with pytest.raises(ValueError, match="priority"):
            client.predict(xray_pngs[:1], priority="urgent")
    assert all(r.ok for r in stat + routine)
    for a, b in zip(stat, routine, strict=True):
        assert a.pneumonia_probability == pytest.approx(b.pneumonia_probability, abs=1e-5)


def test_a_deadline_too_short_is_deadline_exceeded(
    busy_server, slow_model: str, xray_pngs: list[Path]
) -> None:
    # The slow model holds a lone request for 3 s: a 0.3 s deadline expires whatever the speed.
    with TriageClient(busy_server.grpc_url, model=slow_model) as client:
        client.model_info()
        (result,) = client.predict(xray_pngs[0], timeout=0.3)
    assert isinstance(result, Failure) and result.code == "deadline_exceeded", result


def test_unreachable_server_retries_until_the_deadline(unused_port: int) -> None:
    backoff = Backoff(initial=0.05, maximum=0.2)
    started = time.monotonic()
    with (
        TriageClient(f"127.0.0.1:{unused_port}", timeout=1.5, backoff=backoff) as client,
        pytest.raises(TriageError) as caught,
    ):
        client.model_info()
    elapsed = time.monotonic() - started
    assert caught.value.code == "unavailable"
    assert "gave up after" in str(caught.value) and "tries" in str(caught.value)
    # It retried for (about) the whole 1.5 s deadline; 30 s only catches a hang.
    assert 0.5 < elapsed < 30, elapsed


def test_health_and_metadata(triton) -> None:
    # The repository index is an admin call: the server's own key opens it (closed by default).
    with TriageClient(triton.grpc_url, headers=triton.admin_headers) as client:
        assert client.is_live() and client.is_ready()
        assert client.is_ready(contract.ENSEMBLE_MODEL)
        assert client.server_metadata()["name"] == "triton"
        meta = client.model_metadata(contract.ENSEMBLE_MODEL)
        assert [t["name"] for t in meta["inputs"]] == [contract.IMAGE_BYTES]
        index = {m["name"]: m.get("state") for m in client.repository_index()}
        assert index[contract.ENSEMBLE_MODEL] == "READY"
        with pytest.raises(TriageError) as caught:
            client.model_metadata("no_such_model")
        assert caught.value.code == "model_not_found"


def test_async_client_matches_sync_in_input_order(
    triton, xray_pngs: list[Path], bad_inputs: dict
) -> None:
    inputs = [*xray_pngs, *bad_inputs, *reversed(xray_pngs)]

    async def run() -> list:
        async with AsyncTriageClient(triton.grpc_url, decode_workers=2) as client:
            assert await client.is_ready() and await client.is_live()
            return await client.predict(inputs, concurrency=4)

    results = asyncio.run(run())
    with TriageClient(triton.grpc_url) as client:
        expected = client.predict(inputs)
    assert [r.source for r in results] == [r.source for r in expected]
    assert [r.ok for r in results] == [r.ok for r in expected]
    for a, b in zip(results, expected, strict=True):
        if a.ok:
            assert a.pneumonia_probability == pytest.approx(b.pneumonia_probability, abs=1e-5)
        else:
            assert a.code == b.code


def test_async_client_refuses_no_decoding_processes() -> None:
    with pytest.raises(ValueError, match="decode_workers must be at least 1, not 0"):
        AsyncTriageClient("localhost:1", decode_workers=0)


class _KillsItsDecoder:
    """An input whose unpickling ends the decoding process that receives it."""

    def __reduce__(self) -> tuple:
        return os._exit, (3,)


def test_a_decoding_process_that_dies_fails_only_its_input(triton, xray_pngs: list[Path]) -> None:
    inputs = [*xray_pngs[:3], _KillsItsDecoder(), *xray_pngs[:3]]

    async def run() -> list:
        async with AsyncTriageClient(triton.grpc_url, decode_workers=2) as client:
            return await client.predict(inputs, concurrency=4)

    results = asyncio.run(run())
    # The inputs in flight with it were decoded again, each in a process of its own.
    assert [r.ok for r in results] == [True] * 3 + [False] + [True] * 3
    assert results[3].code == "decode_failed" and "died" in results[3].message


def test_predict_accepts_any_iterable(triton, xray_pngs: list[Path]) -> None:
    with TriageClient(triton.grpc_url) as client:
        results = client.predict(path for path in xray_pngs[:2])
    assert [r.source for r in results] == [str(p) for p in xray_pngs[:2]]


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        ("INVALID_ARGUMENT", "in ensemble 'pneumonia', multi_frame: 2 frames", "multi_frame"),
        ("INTERNAL", "in ensemble 'pneumonia', decode_failed: KeyError: 3", "decode_failed"),
        ("INTERNAL", "Failed to process the request(s), message: Stub is not healthy", None),
        ("UNAVAILABLE", "This protocol is restricted, expecting header 'x'", "unauthorized"),
        ("RESOURCE_EXHAUSTED", "Received message larger than max (9 vs. 4)", "too_large"),
        ("RESOURCE_EXHAUSTED", "out of memory", "server_busy"),
        ("UNAVAILABLE", "failed to connect to all addresses", "unavailable"),
    ],
)
def test_error_codes_of_other_server_answers(status: str, message: str, code: str | None) -> None:
    from tritonclient.utils import InferenceServerException

    from cxr.client.protocol import classify_error

    error = classify_error(InferenceServerException(message, f"StatusCode.{status}"))
    assert error.code == (code or "server_error")
    assert message.rsplit(": ", maxsplit=1)[-1] in error.message

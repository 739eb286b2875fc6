"""A real server: classifier variants with uint8 tensors, the ensemble with PNG and DICOM bytes,
batching that isolates a bad item, priorities, queues that reject, the classification extension,
warmup, bad tensors, metrics."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from cxr.client import contract
from cxr.client.contract import GRPC_ADMIN_HEADER
from cxr.client.imaging import load_model_input
from cxr.runtime.sessions import ort_session
from cxr.server.repository import CONFIG_FILE, ONNX_FILE, VERSION, read_config

#: Bound on any single call of these tests: nothing may hang.
DEADLINE_S = 30


def image_input(images: np.ndarray, dtype: str = "UINT8", name: str = contract.IMAGE) -> Any:
    """A classifier input tensor."""
    tensor = grpcclient.InferInput(name, list(images.shape), dtype)
    tensor.set_data_from_numpy(images)
    return tensor


def bytes_input(items: list[bytes], module: Any = grpcclient) -> Any:
    """An ensemble input tensor: one encoded file per batch item."""
    array = np.array([[item] for item in items], dtype=np.object_)
    tensor = module.InferInput(contract.IMAGE_BYTES, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Random uint8 model inputs [count, 1, size, size]."""
    return np.random.default_rng(seed).integers(0, 256, (count, 1, size, size), dtype=np.uint8)


def classifiers(repo: Path) -> list[str]:
    """The CPU classifier variants of the converted repository (not the test's queue copies)."""
    return [
        contract.classifier_model(v)
        for v in contract.CPU_VARIANTS
        if (repo / contract.classifier_model(v)).is_dir()
    ]


@pytest.fixture
def statistics(admin_key: str) -> Any:
    """``statistics(client, model)``: model statistics (an admin call: sent with the key)."""

    def read(client: Any, model: str) -> dict:
        headers = {GRPC_ADMIN_HEADER: admin_key}
        stats = client.get_inference_statistics(model, headers=headers, as_json=True)
        return stats["model_stats"][0]

    return read


def in_process(repo: Path, model: str, images: np.ndarray) -> np.ndarray:
    """``PROBS`` of the model's own ONNX in onnxruntime."""
    session = ort_session(repo / model / VERSION / ONNX_FILE, 1)
    return session.run([contract.PROBS], {contract.IMAGE: images})[0]


def test_every_cpu_model_loaded(served: Any, served_repo: Path) -> None:
    states = {name: state for name, (state, _) in served.model_states.items()}
    expected = {p.name for p in served_repo.iterdir() if (p / CONFIG_FILE).is_file()}
    assert states == dict.fromkeys(expected, "READY")
    assert contract.classifier_model("fp32") in states and contract.ENSEMBLE_MODEL in states


def test_each_variant_answers_uint8_batches_like_onnxruntime(
    grpc: Any, served_repo: Path, image_size: int
) -> None:
    images = random_images(3, image_size)
    for model in classifiers(served_repo):
        probs = grpc.infer(model, [image_input(images)], client_timeout=DEADLINE_S).as_numpy(
            contract.PROBS
        )
        assert probs.shape == (3, 2) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probs, in_process(served_repo, model, images), atol=1e-5)


def test_concurrent_requests_batched_together_get_their_own_rows(
    served: Any, grpc: Any, served_repo: Path, image_size: int, queues: Any, statistics: Any
) -> None:
    """Requests of different sizes joined into one batch: each answer is its own images'."""
    model = queues.full  # long batching delay: requests sent together are one batch
    sizes = [1, 2, 1, 2, 1, 1]
    batches = [random_images(n, image_size, seed=i) for i, n in enumerate(sizes)]

    async def send() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(served.grpc_url) as client:
            calls = [
                client.infer(model, [image_input(b)], client_timeout=DEADLINE_S) for b in batches
            ]
            return [r.as_numpy(contract.PROBS) for r in await asyncio.gather(*calls)]

    before = statistics(grpc, model)
    answers = asyncio.run(send())
    after = statistics(grpc, model)
    expected = in_process(served_repo, model, np.concatenate(batches))
    np.testing.assert_allclose(np.concatenate(answers), expected, atol=1e-5)
    assert [len(a) for a in answers] == sizes
    assert int(after["execution_count"]) - int(before["execution_count"]) == 1


def test_ensemble_decodes_png_and_dicom_like_the_client(
    grpc: Any, served_repo: Path, deployed: str, samples_dir: Path, image_size: int
) -> None:
    files = sorted(p for p in samples_dir.iterdir() if p.suffix in (".png", ".dcm"))
    assert {p.suffix for p in files} == {".png", ".dcm"}
    data = [p.read_bytes() for p in files]
    result = grpc.infer(contract.ENSEMBLE_MODEL, [bytes_input(data)], client_timeout=DEADLINE_S)
    probs = result.as_numpy(contract.PROBS)
    local = np.stack([load_model_input(d, image_size) for d in data])
    np.testing.assert_allclose(probs, in_process(served_repo, deployed, local), atol=1e-5)


def test_a_malformed_item_fails_only_its_own_request_in_a_batch(
    served: Any, grpc: Any, samples_dir: Path, statistics: Any
) -> None:
    good = (samples_dir / "nih_00000001_000.png").read_bytes()
    payloads = [good, good, b"GIF89a not a radiograph", good, good[: len(good) // 3], good]

    async def send() -> list[Any]:
        async with aioclient.InferenceServerClient(served.grpc_url) as client:
            calls = [
                client.infer(
                    contract.ENSEMBLE_MODEL,
                    [bytes_input([p], aioclient)],
                    client_timeout=DEADLINE_S,
                )
                for p in payloads
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

    before = statistics(grpc, contract.PREPROCESS_MODEL)
    results = asyncio.run(send())
    after = statistics(grpc, contract.PREPROCESS_MODEL)
    failed = {i: r for i, r in enumerate(results) if isinstance(r, Exception)}
    assert sorted(failed) == [2, 4], results
    assert all(isinstance(e, InferenceServerException) for e in failed.values())
    assert "INVALID_ARGUMENT" in failed[2].status() and "not_an_image" in failed[2].message()
    assert "truncated" in failed[4].message() or "corrupt" in failed[4].message()
    for index, result in enumerate(results):
        if index not in failed:
            assert result.as_numpy(contract.PROBS).shape == (1, 2)
    # They really were one batch of preprocess (the test repository's batching delay is long).
    assert int(after["inference_count"]) - int(before["inference_count"]) == len(payloads)
    assert int(after["execution_count"]) - int(before["execution_count"]) == 1


@pytest.mark.parametrize("priority", [0, contract.PRIORITY_STAT, contract.PRIORITY_ROUTINE])
def test_stat_and_routine_priorities_are_accepted(
    grpc: Any, deployed: str, samples_dir: Path, image_size: int, priority: int
) -> None:
    png = (samples_dir / "nih_00027426_000.png").read_bytes()
    ensemble = grpc.infer(
        contract.ENSEMBLE_MODEL, [bytes_input([png])], priority=priority, client_timeout=DEADLINE_S
    )
    assert ensemble.as_numpy(contract.PROBS).shape == (1, 2)
    direct = grpc.infer(
        deployed,
        [image_input(random_images(1, image_size))],
        priority=priority,
        client_timeout=DEADLINE_S,
    )
    assert direct.as_numpy(contract.PROBS).shape == (1, 2)


def test_classification_extension_returns_labelled_classes(
    grpc: Any, served_repo: Path, deployed: str, image_size: int
) -> None:
    model = deployed
    images = random_images(2, image_size)
    result = grpc.infer(
        model,
        [image_input(images)],
        outputs=[grpcclient.InferRequestedOutput(contract.PROBS, class_count=2)],
        client_timeout=DEADLINE_S,
    )
    rows = result.as_numpy(contract.PROBS)
    assert rows.shape == (2, 2)
    probs = in_process(served_repo, model, images)
    for row, expected in zip(rows, probs, strict=True):
        entries = [item.decode().split(":") for item in row]
        assert {label for _, _, label in entries} == set(contract.DEFAULT_CLASSES)
        for value, index, label in entries:
            assert contract.DEFAULT_CLASSES[int(index)] == label
            assert float(value) == pytest.approx(expected[int(index)], abs=1e-5)
        assert float(entries[0][0]) >= float(entries[1][0])  # sorted, most likely first


def test_warmup_ran_before_any_request(grpc: Any, served_repo: Path, statistics: Any) -> None:
    """Each classifier ran its zero-filled warmup batches (1 and max_batch_size) at load: no
    test sends a batch of max_batch_size, so that batch size in the statistics is the warmup."""
    for model in classifiers(served_repo):
        config = read_config(served_repo / model / CONFIG_FILE)
        assert {w.batch_size for w in config.model_warmup} == {1, config.max_batch_size}
        sizes = {int(b["batch_size"]) for b in statistics(grpc, model)["batch_stats"]}
        assert config.max_batch_size in sizes, (model, sizes)


BAD_TENSORS = {
    "wrong_shape": lambda s: image_input(np.zeros((1, 1, s + 1, s), np.uint8)),
    "flat_shape": lambda s: image_input(np.zeros((1, s * s), np.uint8)),
    "wrong_dtype": lambda s: image_input(np.zeros((1, 1, s, s), np.float32), "FP32"),
    "batch_above_maximum": lambda s: image_input(np.zeros((65, 1, s, s), np.uint8)),
    "empty_batch": lambda s: image_input(np.zeros((0, 1, s, s), np.uint8)),
    "unknown_input": lambda s: image_input(np.zeros((1, 1, s, s), np.uint8), name="PIXELS"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_bad_tensors_are_invalid_argument_and_the_server_stays_ready(
    grpc: Any, served_repo: Path, deployed: str, image_size: int, case: str
) -> None:
    model = deployed
    assert read_config(served_repo / model / CONFIG_FILE).max_batch_size < 65
    with pytest.raises(InferenceServerException) as caught:
        grpc.infer(model, [BAD_TENSORS[case](image_size)], client_timeout=DEADLINE_S)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
    assert model in caught.value.message() or "IMAGE" in caught.value.message()
    assert grpc.is_server_ready() and grpc.is_model_ready(model)
    good = grpc.infer(model, [image_input(random_images(1, image_size))])
    assert good.as_numpy(contract.PROBS).shape == (1, 2)


def test_bad_tensors_to_the_ensemble_are_invalid_argument(grpc: Any) -> None:
    for tensor in (
        bytes_input([]),  # an empty batch
        image_input(np.zeros((1, 1), np.uint8), name=contract.IMAGE_BYTES),  # wrong dtype
    ):
        with pytest.raises(InferenceServerException) as caught:
            grpc.infer(contract.ENSEMBLE_MODEL, [tensor], client_timeout=DEADLINE_S)
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
    assert grpc.is_server_ready()


def _burst(url: str, model: str, count: int, size: int, priority: int) -> list[Any]:
    async def send() -> list[Any]:
        async with aioclient.InferenceServerClient(url) as client:
            calls = [
                client.infer(
                    model,
                    [image_input(random_images(1, size, seed=i))],
                    priority=priority,
                    client_timeout=DEADLINE_S,
                )
                for i in range(count)
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

    return asyncio.run(asyncio.wait_for(send(), DEADLINE_S))


@pytest.mark.parametrize("priority", [contract.PRIORITY_ROUTINE, contract.PRIORITY_STAT])
def test_a_full_queue_rejects_as_busy_and_nothing_hangs(
    served: Any, grpc: Any, image_size: int, queues: Any, priority: int
) -> None:
    # Twice what the instances (2 x max batch 8) and the queue (8) can hold at once.
    results = _burst(served.grpc_url, queues.full, 6 * queues.full_size, image_size, priority)
    rejected = [r for r in results if isinstance(r, Exception)]
    served_ok = [r for r in results if not isinstance(r, Exception)]
    assert len(served_ok) >= queues.full_size and rejected, results
    for error in rejected:
        assert error.status() == "StatusCode.UNAVAILABLE", error
        assert "Exceeds maximum queue size" in error.message()
    assert grpc.is_server_ready()


@pytest.mark.parametrize("priority", [contract.PRIORITY_ROUTINE, contract.PRIORITY_STAT])
def test_queue_timeouts_reject_rather_than_hang(
    served: Any, image_size: int, queues: Any, priority: int
) -> None:
    started = time.monotonic()
    results = _burst(served.grpc_url, queues.timeout, 4, image_size, priority)
    assert time.monotonic() - started < DEADLINE_S
    assert all(isinstance(r, InferenceServerException) for r in results), results
    for error in results:
        assert error.status() == "StatusCode.UNAVAILABLE", error
        assert "Request timeout expired" in error.message()


def test_prometheus_metrics_are_served(served: Any, grpc: Any, deployed: str) -> None:
    model = deployed
    with urllib.request.urlopen(served.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    assert f'nv_inference_request_success{{model="{model}",version="1"}}' in text
    assert "nv_inference_queue_duration_us" in text

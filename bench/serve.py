"""Served against in-process: a classifier behind the embedded Triton, and the same ONNX run
directly in onnxruntime.

The served side is the load test's closed-loop generator (:mod:`cxr.loadtest.baseline`):
``concurrency`` asyncio loops over gRPC, each sending one batch-1 request, waiting for the answer
and sending the next. The model is served from a
temporary repository that holds only it (its config with the scheduling asked for), so nothing
else runs in the server. CPU time of server and client is measured as well as wall time: on a
busy machine it is the figure that still says what serving costs.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxr.client.contract import HEATMAP, PROBS
from cxr.server.backend.config import PARAM_MODEL_FILE, PARAM_SPIN, PARAM_THREADS, intra_op_threads
from cxr.server.repository import (
    CONFIG_FILE,
    LABELS_FILE,
    PYTHON_MODEL_FILE,
    VERSION,
    config_text,
    read_config,
    scheduling_of,
)

#: The figures the issue asks for: served throughput at this concurrency against in-process
#: throughput at the same batch, and served p99 at concurrency 1 against in-process batch-1 p50.
THROUGHPUT_RATIO_TARGET = 0.9
P99_GAP_TARGET_MS = 3.0
#: Deadline of one benchmark request: a stalled server shows as errors, not as a hang.
REQUEST_TIMEOUT_S = 30.0


@dataclass
class Overrides:
    """Scheduling to serve the benchmarked model with; ``None`` keeps the repository's value."""

    instances: int | None = None
    threads: int | None = None
    max_queue_delay_us: int | None = None
    omp_threads: int | None = None
    spin: bool | None = None


@dataclass
class LoadResult:
    """What the closed loop measured. CPU time is the server's (every process of its session:
    tritonserver and its stubs) and the load generator's, during the measured window."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None

    @property
    def cpu_ms_per_image(self) -> float | None:
        """Server and client CPU per image: what throughput costs, however busy the machine."""
        if self.server_cpu_s is None or self.client_cpu_s is None:
            return None
        return round(1000.0 * (self.server_cpu_s + self.client_cpu_s) / self.requests, 3)

    def as_row(self) -> dict:
        """The fields and the CPU per image, for a report."""
        return {**asdict(self), "cpu_ms_per_image": self.cpu_ms_per_image}


def closed_loop(
    url: str,
    model: str,
    image: np.ndarray,
    concurrency: int,
    seconds: float,
    clients: int = 1,
    server_pid: int | None = None,
    outputs: tuple[str, ...] = (PROBS,),
) -> LoadResult:
    """Batch-1 requests of ``image`` [1, 1, S, S] asking for ``outputs`` from ``concurrency``
    loops over ``clients`` gRPC channels for ``seconds`` after a short warm-up (the load test's
    own generator, with no STAT share). With ``server_pid`` (a server on this machine) the CPU
    time of its processes and of this one over the measured window too."""
    from cxr.loadtest.baseline import BaselineSettings, metered_baseline
    from cxr.loadtest.memory import cpu_seconds
    from cxr.loadtest.payloads import target_of

    settings = BaselineSettings(
        url,
        model,
        users=concurrency,
        duration=seconds,
        warmup=min(2.0, seconds / 4),
        stat_fraction=0.0,
        timeout=REQUEST_TIMEOUT_S,
    )

    def meter() -> tuple[float, float]:
        return cpu_seconds(server_pid or 0), time.process_time()

    target = target_of(model, [image], outputs)
    meter_or_none = meter if server_pid else None
    result, spent = metered_baseline(settings, target, meter_or_none, min(clients, concurrency))
    stats = result.stats["Aggregated"]
    answered = stats.requests - stats.failures
    if not answered:
        first = result.errors[0][1] if result.errors else "no answer"
        raise RuntimeError(f"no request to {model} at {url} succeeded (first error: {first})")
    server_cpu, client_cpu = spent or (None, None)
    return LoadResult(
        concurrency,
        answered,
        stats.failures,
        round(seconds, 2),
        round(answered / seconds, 2),
        round(stats.p50, 3),
        round(stats.p99, 3),
        None if server_cpu is None else round(server_cpu, 2),
        None if client_cpu is None else round(client_cpu, 2),
    )


def response_bytes(url: str, model: str, image: np.ndarray, outputs: tuple[str, ...]) -> int:
    """Size of the serialized gRPC response to one request asking for ``outputs``."""
    import tritonclient.grpc as grpcclient

    from cxr.loadtest.payloads import target_of

    target = target_of(model, [image], outputs)
    with grpcclient.InferenceServerClient(url) as client:
        reply = client.infer(
            model, target.inputs[0], outputs=target.outputs, client_timeout=REQUEST_TIMEOUT_S
        )
    return reply.get_response().ByteSize()


def bench_repository(repo: Path, model: str, overrides: Overrides, out: Path) -> tuple[Path, Path]:
    """Write a repository at ``out`` holding only ``model`` of ``repo`` with ``overrides``
    applied; return it and the ONNX file the model runs."""
    source = repo / model
    config = read_config(source / CONFIG_FILE)
    if config.backend != "python" or PARAM_MODEL_FILE not in config.parameters:
        raise ValueError(f"{model}: not an onnxruntime (Python backend) classifier of {repo}")
    onnx_path = (source / VERSION / config.parameters[PARAM_MODEL_FILE].string_value).resolve()
    if not onnx_path.is_file():
        raise ValueError(f"{model}: model file {onnx_path} is missing")
    if overrides.instances is not None:
        config.instance_group[0].count = overrides.instances
    if overrides.threads is not None:
        config.parameters[PARAM_THREADS].string_value = str(overrides.threads)
    if overrides.max_queue_delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = overrides.max_queue_delay_us
    if overrides.spin is not None:
        config.parameters[PARAM_SPIN].string_value = str(int(overrides.spin))
    folder = out / model
    (folder / VERSION).mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(config_text(config))
    (folder / LABELS_FILE).write_bytes((source / LABELS_FILE).read_bytes())
    (folder / VERSION / PYTHON_MODEL_FILE).write_bytes(
        (source / VERSION / PYTHON_MODEL_FILE).read_bytes()
    )
    (folder / VERSION / onnx_path.name).symlink_to(onnx_path)
    return out, onnx_path


def served_scheduling(repo: Path, model: str) -> dict[str, int]:
    """Instances, onnxruntime threads (as the model will use them here: alone and while other
    instances run), spinning, queue delay and max batch size of ``model`` in ``repo``."""
    tuned = scheduling_of(repo / model / CONFIG_FILE)
    alone, shared = intra_op_threads(str(tuned.threads), tuned.instances)
    return {
        "instances": tuned.instances,
        "threads_alone": alone,
        "threads_shared": shared,
        "spin": int(tuned.spin),
        "max_queue_delay_us": tuned.max_queue_delay_us,
        "max_batch_size": tuned.max_batch_size,
    }


def inprocess(onnx_path: Path, batch: int, seconds: float, spin: bool) -> dict:
    """``bench_onnx`` of one batch size on all cores, with the CPU time it took per image
    (session creation included: a slight overestimate)."""
    from cxr.runtime.speed import WARMUP_RUNS, bench_onnx

    cpu = time.process_time()
    (row,) = bench_onnx(onnx_path, [batch], seconds, None, spin)
    cpu = time.process_time() - cpu
    return {
        **row,
        "cpu_ms_per_image": round(1000.0 * cpu / ((row["runs"] + WARMUP_RUNS) * batch), 3),
    }


def bench_serve(
    repo: Path,
    model: str,
    concurrency: int = 8,
    seconds: float = 10.0,
    clients: int = 1,
    overrides: Overrides | None = None,
    repeats: int = 1,
    heatmaps: bool = False,
) -> dict:
    """Served (concurrency ``concurrency`` and 1, batch-1 requests, asking for ``HEATMAP`` too
    with ``heatmaps``) against in-process onnxruntime (batch ``concurrency`` and 1, all cores)
    for ``model`` of ``repo``, alternating the two ``repeats`` times (medians reported). Returns
    a report."""
    from cxr.server.triton import ServerConfig, TritonServer

    overrides = overrides or Overrides()
    inproc_rows: list[dict] = []
    served_rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as scratch:
        served_repo, onnx_path = bench_repository(repo, model, overrides, Path(scratch) / "repo")
        size = int(read_config(served_repo / model / CONFIG_FILE).input[0].dims[-1])
        image = np.random.default_rng(0).integers(0, 256, (1, 1, size, size), dtype=np.uint8)
        scheduling = served_scheduling(served_repo, model)
        spin = bool(scheduling["spin"])  # the same on both sides
        image = np.random.default_rng(0).integers(0, 256, (1, 1, size, size), dtype=np.uint8)
        outputs = (PROBS, HEATMAP) if heatmaps else (PROBS,)
        config = ServerConfig.on_free_ports(served_repo)
        previous_omp = os.environ.get("OMP_NUM_THREADS")
        if overrides.omp_threads is not None:
            os.environ["OMP_NUM_THREADS"] = str(overrides.omp_threads)
        try:
            with TritonServer(config) as server:
                if server.failed_models():
                    raise RuntimeError(f"{model} did not load: {server.failed_models()}")
                assert server.process is not None
                reply_bytes = response_bytes(server.grpc_url, model, image, outputs)
                for repeat in range(repeats):
                    for level in (concurrency, 1):  # the server idles while in-process runs
                        row = inprocess(onnx_path, level, seconds, spin)
                        inproc_rows.append({"repeat": repeat, **row})
                        before = _counts(server.grpc_url, model, server.admin_headers)
                        load = closed_loop(
                            server.grpc_url,
                            model,
                            image,
                            level,
                            seconds,
                            clients if level > 1 else 1,
                            server.process.pid,  # tritonserver and its stubs
                            outputs,
                        )
                        images, runs = np.subtract(
                            _counts(server.grpc_url, model, server.admin_headers), before
                        )
                        served_rows.append(
                            {
                                "repeat": repeat,
                                **load.as_row(),
                                "mean_batch": round(float(images) / max(1, runs), 2),
                            }
                        )
        finally:
            if overrides.omp_threads is not None:
                _restore_env("OMP_NUM_THREADS", previous_omp)
    return {
        "model": model,
        "onnx": str(onnx_path),
        "cpu_count": os.cpu_count(),
        "scheduling": scheduling,
        "omp_num_threads": overrides.omp_threads or os.environ.get("OMP_NUM_THREADS", "1"),
        "grpc_clients": min(clients, concurrency),
        "outputs": list(outputs),
        "response_bytes": reply_bytes,
        "seconds": seconds,
        "inprocess": inproc_rows,
        "served": served_rows,
        **_ratios(inproc_rows, served_rows, concurrency),
    }


def _counts(url: str, model: str, headers: dict[str, str]) -> tuple[int, int]:
    """Images inferred and model executions so far (Triton's statistics, warm-up included; an
    admin call, sent with ``headers``)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, headers=headers, as_json=True)[
            "model_stats"
        ][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def _ratios(inproc: list[dict], served: list[dict], concurrency: int) -> dict:
    """Medians over the repeats of the figures the issue sets targets for."""

    def pick(rows: list[dict], key: str, level: int, field: str) -> list[float]:
        return [row[field] for row in rows if row[key] == level]

    loaded = pick(served, "concurrency", concurrency, "images_per_s")
    batch = pick(inproc, "batch", concurrency, "images_per_s")
    served_cpu = pick(served, "concurrency", concurrency, "cpu_ms_per_image")
    inproc_cpu = pick(inproc, "batch", concurrency, "cpu_ms_per_image")
    p99 = pick(served, "concurrency", 1, "p99_ms")
    p50 = pick(inproc, "batch", 1, "p50_ms")
    served_p50 = pick(served, "concurrency", 1, "p50_ms")
    inproc_p99 = pick(inproc, "batch", 1, "p99_ms")
    return {
        "throughput_ratio": round(float(np.median(np.divide(loaded, batch))), 3),
        "throughput_ratio_target": THROUGHPUT_RATIO_TARGET,
        "cpu_efficiency_ratio": round(float(np.median(np.divide(inproc_cpu, served_cpu))), 3),
        "p99_gap_ms": round(float(np.median(np.subtract(p99, p50))), 3),
        "p99_gap_target_ms": P99_GAP_TARGET_MS,
        # Like for like, for a machine whose own jitter is more than the target: what serving
        # adds at the median and at the 99th percentile of batch-1 latency.
        "p50_added_ms": round(float(np.median(np.subtract(served_p50, p50))), 3),
        "p99_added_ms": round(float(np.median(np.subtract(p99, inproc_p99))), 3),
    }


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def build_bench_repo(repo: Path, arch: str = "resnet18", image_size: int = 224) -> list[str]:
    """Publish an untrained ``arch`` at ``image_size`` as FP32 and INT8 into ``repo`` through
    ``cxr convert``'s own pipeline (INT8 calibrated on synthetic radiographs, published whatever
    the gate says): a model to measure speed with, never to diagnose with."""
    import torch

    from cxr.client.contract import DEFAULT_CLASSES
    from cxr.convert.pipeline import ConvertOptions, convert_run
    from cxr.train.card import WEIGHTS_FILE, ModelCard
    from cxr.train.models import GRAY_MEAN, GRAY_STD, build_model
    from cxr.train.synth import write_synthetic_dataset

    work = repo / ".bench-work"  # a dot-folder: the server and `cxr repo check` skip it
    data = write_synthetic_dataset(work / "data", count=96, image_size=image_size, seed=0)
    run = work / "run"
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_model(arch, len(DEFAULT_CLASSES)).state_dict(), run / WEIGHTS_FILE)
    ModelCard(
        arch=arch,
        classes=list(DEFAULT_CLASSES),
        image_size=image_size,
        threshold=0.5,
        normalisation={"mean": GRAY_MEAN, "std": GRAY_STD},
        data={"path": str(data)},
        training={"note": "untrained: benchmark model", "seed": 0},
    ).save(run)
    options = ConvertOptions(
        precisions=("fp32", "int8"),
        calib_size=64,
        calib_method="minmax",
        perturbations=(),
        precision_search=False,
        tensorrt="off",
        allow_accuracy_drop=True,  # untrained: the gate has nothing to protect
        bench_seconds=0,
    )
    return list(convert_run(run, repo, work / "onnx", options)["published"])

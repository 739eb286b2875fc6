"""Locust user that triages over Triton gRPC with tritonclient.

gevent must patch gRPC before tritonclient is imported, or Locust gets no concurrency at all:
``init_gevent()`` runs first, at import. Settings come from environment variables (set by
``cxr loadtest run``) so the same file serves headless runs, the web UI and distributed workers:

- ``CXR_MODEL``: model to call (default: the ensemble's deployed classifier)
- ``CXR_IMAGES``: folder of real images, decoded once at start with the shared code
- ``CXR_STAT_FRACTION``: share of requests sent as STAT (priority 1), default 0.1
- ``CXR_TIMEOUT``: request deadline in seconds, default 10
"""

from __future__ import annotations

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from locust import User, between, events, task  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from client import contract  # noqa: E402
from client.imaging import ImageDecodeError, load_model_input  # noqa: E402
from client.protocol import deployed_classifier  # noqa: E402

PAYLOAD_LIMIT = 256


def _host(host: str | None) -> str:
    return (host or "localhost:8001").removeprefix("grpc://").removeprefix("http://")


def load_payloads(folder: str | None, size: int, seed: int = 0) -> list[np.ndarray]:
    """Model inputs [1,1,S,S]: real images from ``folder`` or synthetic noise."""
    if folder:
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())[:PAYLOAD_LIMIT]
        images = []
        for path in files:
            try:
                images.append(load_model_input(path.read_bytes(), size)[None])
            except ImageDecodeError:
                continue
        if not images:
            raise RuntimeError(f"CXR_IMAGES={folder}: no decodable images")
        return images
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (1, 1, size, size), dtype=np.uint8) for _ in range(16)]


class TritonGrpcUser(User):
    """One simulated client: closed loop of single-image requests, STAT and routine mixed."""

    wait_time = between(0, 0)
    host = "localhost:8001"

    def on_start(self) -> None:
        self.client = grpcclient.InferenceServerClient(_host(self.host))
        model = os.environ.get("CXR_MODEL") or contract.ENSEMBLE_MODEL
        config = self.client.get_model_config(model, as_json=True)["config"]
        if config.get("platform") == "ensemble":
            model = deployed_classifier(config)
            config = self.client.get_model_config(model, as_json=True)["config"]
        self.model = model
        size = int(config["input"][0]["dims"][-1])
        self.payloads = load_payloads(os.environ.get("CXR_IMAGES"), size)
        self.stat_fraction = float(os.environ.get("CXR_STAT_FRACTION", "0.1"))
        self.timeout = float(os.environ.get("CXR_TIMEOUT", "10"))
        self.outputs = [grpcclient.InferRequestedOutput(contract.PROBS)]

    def on_stop(self) -> None:
        self.client.close()

    @task
    def triage(self) -> None:
        stat = random.random() < self.stat_fraction
        name = "stat" if stat else "routine"
        image = random.choice(self.payloads)
        tensor = grpcclient.InferInput(contract.IMAGE, list(image.shape), "UINT8")
        tensor.set_data_from_numpy(image)
        priority = contract.PRIORITY_STAT if stat else contract.PRIORITY_ROUTINE
        started = time.perf_counter()
        exception = None
        try:
            self.client.infer(
                self.model,
                [tensor],
                outputs=self.outputs,
                priority=priority,
                client_timeout=self.timeout,
            )
        except InferenceServerException as err:
            exception = err
        events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=image.nbytes,
            exception=exception,
            context={},
        )

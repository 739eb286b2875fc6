"""Locust user that triages over Triton gRPC with tritonclient.

gevent must patch gRPC before tritonclient is imported, or Locust gets no concurrency at all:
``init_gevent()`` runs first, at import. Under gevent, gRPC waits for each call's completion in a
thread of gevent's hub pool (10 threads by default), so the pool grows with the users: with fewer
threads than calls in flight, finished calls wait in line behind unfinished ones, every latency
includes that wait, and STAT answers queue behind routine ones on the client.

Settings come from environment variables (set by ``cxr loadtest run``) so the same file serves
headless runs, the web UI and distributed workers:

- ``CXR_MODEL``: model to call (default: the ensemble's deployed classifier)
- ``CXR_IMAGES``: folder of real images, decoded once per process with the shared code
- ``CXR_PAYLOAD``: ``decoded`` (default: uint8 model inputs to the classifier) or ``encoded``
  (the files to the ensemble: the server decodes every request)
- ``CXR_STAT_FRACTION``: share of requests sent as STAT (priority 1), default 0.1
- ``CXR_TIMEOUT``: request deadline in seconds, default 10
- ``CXR_WARMUP``: seconds after spawning completes before statistics are reset, default 0

Every call is reported through ``events.request`` under the name ``stat`` or ``routine``; a
failed call (server error, deadline, no connection) is counted as a failure, never raised.
"""

from __future__ import annotations

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import atexit  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from gevent.lock import Semaphore  # noqa: E402
from locust import User, constant, events, task  # noqa: E402
from locust.runners import WorkerRunner  # noqa: E402

from cxr.client import contract  # noqa: E402
from cxr.client.protocol import classify_error  # noqa: E402
from cxr.loadtest.payloads import Target, prepare_target  # noqa: E402

DEFAULT_HOST = "localhost:8001"
#: Pause of a user whose server could not be reached, before it tries again.
RECONNECT_DELAY = 1.0
#: Threads beyond one per user in gevent's hub pool (gRPC completion waits and name lookups).
SPARE_THREADS = 4
#: One target per (host, model, images, payload) and process: payloads are prepared once, not
#: per user.
_targets: dict[tuple[str, str | None, str | None, str], Target] = {}
_targets_lock = Semaphore()


def _host(host: str | None) -> str:
    return (host or DEFAULT_HOST).removeprefix("grpc://").removeprefix("http://")


def _shared_target(client: Any, host: str, timeout: float) -> Target:
    model = os.environ.get("CXR_MODEL") or None
    images = os.environ.get("CXR_IMAGES") or None
    payload = os.environ.get("CXR_PAYLOAD") or "decoded"
    key = (host, model, images, payload)
    with _targets_lock:
        if key not in _targets:
            folder = Path(images) if images else None
            _targets[key] = prepare_target(client, model, folder, timeout, payload)
        return _targets[key]


@events.init.add_listener
def _reset_after_warmup(environment: Any, **_: Any) -> None:
    """Discard the statistics of the first CXR_WARMUP seconds of full load (master/local)."""
    warmup = float(os.environ.get("CXR_WARMUP") or 0)
    if warmup <= 0 or isinstance(environment.runner, WorkerRunner):
        return

    def later(**_: Any) -> None:
        gevent.spawn_later(warmup, environment.runner.stats.reset_all)

    environment.events.spawning_complete.add_listener(later)


@events.quit.add_listener
def _exit_without_finalizers(exit_code: int, **_: Any) -> None:
    """Leave without running object finalizers once Locust has written its reports.

    Measured: under gevent, a gRPC object finalized by the interpreter's last garbage collection
    can deadlock on a gRPC mutex (stack: Py_FinalizeEx -> gc -> cygrpc -> pthread_mutex_lock),
    and Locust never exits. ``quit`` fires last; the exit handler registered here runs first.
    """

    def leave() -> None:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)

    atexit.register(leave)


class TritonGrpcUser(User):
    """One simulated client: closed loop of single-image requests, STAT and routine mixed."""

    wait_time = constant(0)
    host = DEFAULT_HOST

    users = 0  # running in this process

    def on_start(self) -> None:
        TritonGrpcUser.users += 1
        pool = gevent.get_hub().threadpool
        pool.maxsize = max(pool.maxsize, TritonGrpcUser.users + SPARE_THREADS)
        self.endpoint = _host(self.host)
        self.client = grpcclient.InferenceServerClient(self.endpoint)
        self.target: Target | None = None
        self.stat_fraction = float(os.environ.get("CXR_STAT_FRACTION") or 0.1)
        self.timeout = float(os.environ.get("CXR_TIMEOUT") or 10)

    def on_stop(self) -> None:
        TritonGrpcUser.users -= 1
        self.client.close()

    def _fire(self, name: str, started: float, length: int, error: Exception | None) -> None:
        events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=error,
            context={},
        )

    def _connect(self) -> Target | None:
        started = time.perf_counter()
        try:
            return _shared_target(self.client, self.endpoint, self.timeout)
        except Exception as err:
            self._fire("connect", started, 0, classify_error(err))
            gevent.sleep(RECONNECT_DELAY)
            return None

    @task
    def triage(self) -> None:
        """Send one image, STAT with probability CXR_STAT_FRACTION, else routine."""
        if self.target is None:
            self.target = self._connect()
            if self.target is None:
                return
        stat = random.random() < self.stat_fraction
        started = time.perf_counter()
        error = None
        try:
            self.client.infer(
                self.target.model,
                random.choice(self.target.inputs),
                outputs=self.target.outputs,
                priority=contract.PRIORITY_STAT if stat else contract.PRIORITY_ROUTINE,
                client_timeout=self.timeout,
            )
        except Exception as err:
            error = classify_error(err)  # a stable code and the server's words, not a bare repr
        self._fire("stat" if stat else "routine", started, self.target.payload_bytes, error)

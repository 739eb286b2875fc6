"""``cxr loadtest run|baseline|ui`` against the real embedded server: statistics, Locust's CSV and
HTML, SLO exit codes, STAT and routine names, failures counted (never a crash), the closed-loop
baseline, the web dashboard, and the distributed master/worker interface docker-compose uses."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cxr.loadtest.baseline import BaselineSettings, run_baseline
from cxr.loadtest.runner import LOCUSTFILE, read_failures, read_stats
from cxr.server.triton import free_port

SHORT = ("--users", "3", "--duration", "4s", "--warmup", "1s")


def test_headless_run_writes_stats_csv_html_and_meets_generous_slos(
    triton, loadtest_cli, generous, payload_dir: Path, tmp_path: Path
) -> None:
    prefix, html = tmp_path / "out" / "run", tmp_path / "out" / "report.html"
    done = loadtest_cli(
        "run", "--url", triton.grpc_url, *SHORT, "--stat-fraction", "0.5",
        "--images", str(payload_dir), "--csv", str(prefix), "--html", str(html), *generous,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SLOs met" in done.stderr
    stats = read_stats(prefix)
    assert stats["stat"].requests > 0 and stats["routine"].requests > 0
    total = stats["Aggregated"]
    assert total.requests == stats["stat"].requests + stats["routine"].requests
    assert total.failures == 0 and total.rps > 0 and 0 < total.p50 <= total.p99
    assert read_failures(prefix) == []
    for name in ("stat", "routine", "Aggregated"):
        assert name in done.stdout
    assert "<html" in html.read_text().lower()


def _preprocess_successes(triton) -> int:
    """Requests the server's ``preprocess`` model has decoded (its Prometheus counter)."""
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    found = re.search(r'nv_inference_request_success\{model="preprocess",version="1"\} (\d+)', text)
    return int(found.group(1)) if found else 0


def test_encoded_payloads_are_decoded_by_the_server(
    triton, loadtest_cli, generous, payload_dir: Path, tmp_path: Path
) -> None:
    before = _preprocess_successes(triton)
    prefix = tmp_path / "encoded"
    done = loadtest_cli(
        "run", "--url", triton.grpc_url, *SHORT, "--payload", "encoded",
        "--images", str(payload_dir), "--csv", str(prefix), *generous,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    total = read_stats(prefix)["Aggregated"]
    assert total.requests > 0 and total.failures == 0
    # Every request went through the ensemble's decoder (warm-up requests too).
    assert _preprocess_successes(triton) - before >= total.requests


def test_impossible_slo_exits_1_naming_the_breach(triton, loadtest_cli) -> None:
    done = loadtest_cli(
        "run", "--url", triton.grpc_url, *SHORT, "--slo-p99-ms", "0.01",
        "--slo-stat-p99-ms", "60000",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SLO breached: p99" in done.stderr
    assert "STAT p99" not in done.stderr
    assert "Aggregated" in done.stdout


def test_request_timeouts_are_counted_as_failures(
    slow_server, loadtest_cli, tmp_path: Path
) -> None:
    # The server holds every request for 3 s: a 0.3 s deadline expires whatever the speed.
    prefix = tmp_path / "timeouts"
    done = loadtest_cli(
        "run", "--url", slow_server.grpc_url, *SHORT, "--timeout", "0.3", "--csv", str(prefix),
        "--slo-p99-ms", "60000", "--slo-stat-p99-ms", "60000",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SLO breached: error rate" in done.stderr
    total = read_stats(prefix)["Aggregated"]
    assert total.requests > 0 and total.failures > 0
    assert any("deadline" in error.lower() for _, error, _ in read_failures(prefix))


def test_unknown_model_is_reported_not_crashed(triton, loadtest_cli, generous) -> None:
    done = loadtest_cli(
        "run", "--url", triton.grpc_url, *SHORT, "--model", "no_such_model", *generous
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "connect" in done.stdout and "no_such_model" in done.stdout
    assert "Traceback" not in done.stderr


def test_bad_options_are_specific_errors(loadtest_cli, tmp_path: Path) -> None:
    done = loadtest_cli("run", "--duration", "soon")
    assert done.returncode == 2 and "invalid duration 'soon'" in done.stderr
    done = loadtest_cli("run", "--images", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "not a folder" in done.stderr
    done = loadtest_cli("run", "--stat-fraction", "1.5")
    assert done.returncode == 2 and "stat-fraction" in done.stderr
    done = loadtest_cli("run", "--server-pid", "999999999")
    assert done.returncode == 2 and "no process 999999999" in done.stderr
    done = loadtest_cli("run", "--payload", "pixels")
    assert done.returncode == 2 and "'pixels' is not one of 'decoded', 'encoded'" in done.stderr


def test_baseline_generator_measures_the_same_mix(triton) -> None:
    settings = BaselineSettings(triton.grpc_url, users=3, duration=2, warmup=0.5, stat_fraction=0.5)
    result = run_baseline(settings)
    stat, routine, total = (result.stats[n] for n in ("stat", "routine", "Aggregated"))
    assert stat.requests > 0 and routine.requests > 0
    assert total.requests == stat.requests + routine.requests and total.failures == 0
    assert total.rps == total.requests / 2 and result.errors == []


def test_baseline_compare_runs_both_generators(triton, loadtest_cli) -> None:
    done = loadtest_cli(
        "baseline", "--url", triton.grpc_url, "--users", "2", "--duration", "2s", "--warmup",
        "1s", "--compare",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "asyncio baseline: 2 users" in done.stdout and "Locust: 2 users" in done.stdout
    ratio = float(done.stdout.split("Locust / baseline requests/s:")[1].split()[0])
    assert ratio > 0


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return reply.read().decode()
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def test_ui_serves_the_locust_dashboard(triton) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cxr", "loadtest", "ui", "--url", triton.grpc_url,
         "--web-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        page = wait_for_http(f"http://127.0.0.1:{port}/", process)
        assert "locust" in page.lower()
    finally:
        process.terminate()
        process.wait(30)


def test_distributed_master_and_worker_with_the_compose_environment(triton, tmp_path: Path) -> None:
    """What docker-compose runs: a master and a worker, settings only from CXR_* variables."""
    env = {**os.environ, "CXR_MODEL": "", "CXR_IMAGES": "", "CXR_STAT_FRACTION": "0.5",
           "CXR_TIMEOUT": "10"}  # fmt: skip
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        master_port = probe.getsockname()[1]
    locust = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    master = subprocess.Popen(
        [*locust, "--master", "--headless", "--expect-workers", "1", "-u", "2", "-r", "2",
         "-t", "4s", "--host", triton.grpc_url, "--master-bind-host", "127.0.0.1",
         "--master-bind-port", str(master_port), "--csv", str(tmp_path / "dist"),
         "--only-summary", "--exit-code-on-error", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    worker = subprocess.Popen(
        [*locust, "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _, master_log = master.communicate(timeout=90)
        assert master.returncode == 0, master_log[-3000:]
        worker.wait(30)
    finally:
        for process in (master, worker):
            if process.poll() is None:
                process.kill()
                process.wait()
    stats = read_stats(tmp_path / "dist")
    assert stats["stat"].requests > 0 and stats["routine"].requests > 0
    assert stats["Aggregated"].failures == 0

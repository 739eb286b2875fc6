"""The soak test, short: a run with ``--server-pid`` samples the RSS of the real tritonserver and
its Python-backend stubs, and holds the run to zero errors and bounded memory growth."""

from __future__ import annotations

import re

import pytest


@pytest.mark.slow
def test_short_soak_zero_errors_and_bounded_rss(triton, loadtest_cli, generous) -> None:
    assert triton.process is not None
    done = loadtest_cli(
        "run", "--url", triton.grpc_url, "--users", "2", "--duration", "12s", "--warmup", "2s",
        "--server-pid", str(triton.process.pid), "--rss-warmup", "5s",
        "--max-rss-growth", "0.05", *generous,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"server RSS \((\d+) processes, (\d+) samples\): (\d+) MiB", done.stdout)
    assert found, done.stdout
    processes, samples, baseline = (int(g) for g in found.groups())
    assert processes >= 2  # tritonserver and at least one stub
    assert samples >= 12 and baseline > 50

"""``cxr loadtest sweep`` on a tiny grid against real servers: the table, the plot, and the best
configuration written into the repository as a valid config (the ensemble following it)."""

from __future__ import annotations

import csv
from pathlib import Path

from cxr.client import contract
from cxr.loadtest.sweep import PLOT_FILE, TABLE_FILE
from cxr.server.repository import CONFIG_FILE, PARAM_THREADS, read_config

CLASSIFIER = contract.classifier_model("fp32")
TINY = ("--delays-us", "0", "--instances", "1", "--threads", "1", "--users", "2",
        "--duration", "2s", "--warmup", "1s")  # fmt: skip


def test_sweep_writes_the_best_configuration(own_repo: Path, loadtest_cli, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    ensemble_path = own_repo / contract.ENSEMBLE_MODEL / CONFIG_FILE
    deployed = read_config(ensemble_path).parameters[contract.PARAM_DEPLOYED_MODEL].string_value
    done = loadtest_cli(
        "sweep", "--repo", str(own_repo), "--model", contract.ENSEMBLE_MODEL,
        "--slo-p99-ms", "60000", "--batch-sizes", "4,8", *TINY, "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with (out / TABLE_FILE).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["batch"]) for r in rows] == [4, 8]
    assert all(r["meets_slo"] == "True" and float(r["req_s"]) > 0 for r in rows), rows
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = max(rows, key=lambda r: float(r["req_s"]))
    assert f"best: b{best['batch']} d0 i1 t1 u2" in done.stdout
    assert f"sweeping 2 configurations of {deployed}" in done.stderr

    config = read_config(own_repo / deployed / CONFIG_FILE)
    assert config.max_batch_size == int(best["batch"])
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [g.count for g in config.instance_group] == [1]
    assert config.parameters[PARAM_THREADS].string_value == "1"
    assert config.dynamic_batching.priority_levels == 2
    assert {w.batch_size for w in config.model_warmup} == {1, int(best["batch"])}
    # The ensemble routes to it, so its max batch size follows (Triton refuses a larger one).
    ensemble = read_config(ensemble_path)
    assert ensemble.max_batch_size == config.max_batch_size


def test_sweep_without_a_passing_point_changes_nothing(
    own_repo: Path, loadtest_cli, tmp_path: Path
) -> None:
    before = (own_repo / CLASSIFIER / CONFIG_FILE).read_text()
    done = loadtest_cli(
        "sweep", "--repo", str(own_repo), "--model", CLASSIFIER, "--slo-p99-ms", "0.01",
        "--batch-sizes", "4", *TINY, "--out", str(tmp_path / "sweep"),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no configuration met p99 <= 0.01 ms" in done.stderr
    assert (own_repo / CLASSIFIER / CONFIG_FILE).read_text() == before
    assert (tmp_path / "sweep" / TABLE_FILE).is_file()


def test_sweep_errors_are_specific(own_repo: Path, loadtest_cli) -> None:
    done = loadtest_cli("sweep", "--repo", str(own_repo), "--model", "nope")
    assert done.returncode == 2 and "no CPU classifier 'nope'" in done.stderr
    done = loadtest_cli("sweep", "--repo", str(own_repo), "--batch-sizes", "8,x")
    assert done.returncode == 2 and "--batch-sizes" in done.stderr
    done = loadtest_cli("sweep", "--repo", str(own_repo), "--instances", "0")
    assert done.returncode == 2 and "at least 1" in done.stderr

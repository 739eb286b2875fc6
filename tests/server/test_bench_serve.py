"""``cxr bench serve`` and its parts work (what they measure is a benchmark, not a test)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cxr.bench.cli import bench_app
from cxr.bench.serve import Overrides, bench_repository, closed_loop, served_scheduling
from cxr.server.repository import CONFIG_FILE, VERSION, read_config


def test_closed_loop_measures_the_served_model(served: Any, deployed: str, image_size: int) -> None:
    image = np.zeros((1, 1, image_size, image_size), np.uint8)
    result = closed_loop(served.grpc_url, deployed, image, 4, 1.0, clients=2)
    assert result.errors == 0 and result.requests > 0
    assert result.concurrency == 4 and result.images_per_s > 0
    assert 0 < result.p50_ms <= result.p99_ms


def test_closed_loop_counts_errors_and_refuses_nonsense(served: Any, image_size: int) -> None:
    image = np.zeros((1, 1, image_size + 1, image_size), np.uint8)  # the wrong shape
    with pytest.raises(RuntimeError, match=r"no request to pneumonia_fp32 .* succeeded"):
        closed_loop(served.grpc_url, "pneumonia_fp32", image, 2, 0.5)
    with pytest.raises(ValueError, match="must be positive"):
        closed_loop(served.grpc_url, "pneumonia_fp32", image, 0, 1.0)


def test_bench_repository_holds_only_the_model_with_overrides(
    cpu_repo: Path, deployed: str, tmp_path: Path
) -> None:
    model = deployed
    overrides = Overrides(instances=2, max_queue_delay_us=0)
    repo, onnx_path = bench_repository(cpu_repo, model, overrides, tmp_path / "bench")
    assert [p.name for p in repo.iterdir()] == [model]
    assert (repo / model / VERSION / onnx_path.name).resolve() == onnx_path
    scheduling = served_scheduling(repo, model)
    assert scheduling["instances"] == 2 and scheduling["max_queue_delay_us"] == 0
    assert scheduling["threads_alone"] >= scheduling["threads_shared"] >= 1
    original = read_config(cpu_repo / model / CONFIG_FILE)
    assert scheduling["max_batch_size"] == original.max_batch_size
    with pytest.raises(ValueError, match="not an onnxruntime"):
        bench_repository(cpu_repo, "pneumonia", overrides, tmp_path / "other")


def test_bench_serve_command_prints_both_sides_and_the_ratio(cpu_repo: Path, deployed: str) -> None:
    model = deployed
    args = ["serve", str(cpu_repo), "--model", model, "--seconds", "0.5", "--concurrency", "2"]
    done = CliRunner().invoke(bench_app, [*args, "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert [row["batch"] for row in report["inprocess"]] == [2, 1]
    assert [row["concurrency"] for row in report["served"]] == [2, 1]
    assert all(row["errors"] == 0 for row in report["served"])
    assert all(row["cpu_ms_per_image"] > 0 for row in report["inprocess"] + report["served"])
    assert report["throughput_ratio"] > 0 and report["cpu_efficiency_ratio"] > 0
    assert report["scheduling"]["instances"] >= 1


def test_bench_app_has_both_commands() -> None:
    done = CliRunner().invoke(bench_app, ["--help"])
    assert done.exit_code == 0
    assert "onnx" in done.stdout and "serve" in done.stdout
    missing = CliRunner().invoke(bench_app, ["serve", "/nonexistent", "--model", "pneumonia_x"])
    assert missing.exit_code == 2

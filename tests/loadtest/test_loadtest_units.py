"""The load-test pieces that need no server: durations, SLO judgement, Locust's CSV, the sweep's
grid and choice, payload folders, and RSS sampling of a real process tree."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cxr.client.imaging import load_model_input
from cxr.loadtest.memory import ProcessGoneError, RssReport, RssSample, RssSampler, process_tree
from cxr.loadtest.payloads import image_files, load_files, load_payloads
from cxr.loadtest.runner import (
    RunSettings,
    Slo,
    Stats,
    locust_command,
    parse_duration,
    read_failures,
    read_stats,
)
from cxr.loadtest.sweep import Grid, Point, best_point
from cxr.server.repository import (
    Classifier,
    Scheduling,
    classifier_config,
    config_text,
    scheduling_of,
)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("20s", 20), ("10m", 600), ("1h30m", 5400), ("0s", 0)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10x", "5 m s", "-3s"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def stats(name: str, requests: int, failures: int, p99: float) -> Stats:
    return Stats(name, requests, failures, rps=10.0, p50=p99 / 4, p95=p99 / 2, p99=p99)


def test_slo_met_and_each_breach_named() -> None:
    slo = Slo(p99_ms=100, stat_p99_ms=20, max_error_rate=0.01)
    good = {"stat": stats("stat", 10, 0, 15), "Aggregated": stats("Aggregated", 100, 0, 90)}
    assert slo.breaches(good) == []
    bad = {"stat": stats("stat", 10, 0, 25), "Aggregated": stats("Aggregated", 100, 5, 120)}
    found = slo.breaches(bad)
    assert len(found) == 3
    assert found[0].startswith("p99 120 ms > 100 ms")
    assert found[1].startswith("STAT p99 25 ms > 20 ms")
    assert "5 of 100 requests failed" in found[2]


def test_slo_without_requests_or_percentile_is_breached() -> None:
    assert Slo().breaches({}) == ["no request completed"]
    assert Slo().breaches({"Aggregated": stats("Aggregated", 0, 0, 1)}) == ["no request completed"]
    nan = {"Aggregated": stats("Aggregated", 3, 0, math.nan)}
    assert Slo().breaches(nan)[0].startswith("p99 nan")


def test_stats_from_latencies() -> None:
    s = Stats.from_latencies("routine", list(range(1, 101)), failures=2, seconds=4)
    assert (s.requests, s.failures, s.rps) == (100, 2, 25)
    assert s.p50 == pytest.approx(50.5) and s.p99 == pytest.approx(99.01)
    assert s.error_rate == 0.02
    assert math.isnan(Stats.from_latencies("stat", [], 0, 1).p99)


def test_read_locust_csv(tmp_path: Path) -> None:
    prefix = tmp_path / "run"
    header = (
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
        "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
        "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
    )
    Path(f"{prefix}_stats.csv").write_text(
        f"{header}\n"
        "grpc,stat,10,0,5,6,1,20,4096,2.0,0.0,5,6,7,8,9,12,15,18,20,20,20\n"
        ",Aggregated,110,1,9,10,1,90,4096,22.0,0.2,9,10,11,12,20,40,60,80,90,90,90\n"
    )
    Path(f"{prefix}_failures.csv").write_text(
        "Method,Name,Error,Occurrences\ngrpc,routine,deadline,1\ngrpc,stat,refused,4\n"
    )
    found = read_stats(prefix)
    assert found["stat"].requests == 10 and found["stat"].p99 == 18
    assert found["Aggregated"].failures == 1 and found["Aggregated"].rps == 22.0
    assert read_failures(prefix) == [("stat", "refused", 4), ("routine", "deadline", 1)]
    with pytest.raises(FileNotFoundError, match="wrote no statistics"):
        read_stats(tmp_path / "missing")


def test_locust_command_excludes_spawn_and_warmup_from_the_statistics(tmp_path: Path) -> None:
    settings = RunSettings(users=10, spawn_rate=4, duration=20, warmup=3)
    command = locust_command(settings, tmp_path / "p")
    assert "--reset-stats" in command and "--headless" in command
    # 2.5 s spawning + 3 s warm-up + 20 s measured, rounded up.
    assert command[command.index("-t") + 1] == "26s"
    assert command[command.index("-r") + 1] == "4"
    assert RunSettings(users=10).run_time() == 62  # default: all users at once, 2 s warm-up


def test_grid_configurations_keep_the_queue_policies() -> None:
    base = Scheduling(max_queue_size=99, stat_timeout_us=123)
    found = Grid([8, 32], [0, 500], [1], [1, 2]).configurations(base)
    assert len(found) == 8
    assert {(s.max_batch_size, s.max_queue_delay_us, s.threads) for s in found} == {
        (b, d, t) for b in (8, 32) for d in (0, 500) for t in (1, 2)
    }
    assert {(s.max_queue_size, s.stat_timeout_us) for s in found} == {(99, 123)}


def test_best_point_is_the_fastest_within_the_slo_without_errors() -> None:
    base = Scheduling()
    points = [
        Point(base, 4, Stats("Aggregated", 100, 0, 50.0, 5, 8, 90)),
        Point(base, 8, Stats("Aggregated", 200, 0, 80.0, 5, 8, 140)),  # best
        Point(base, 16, Stats("Aggregated", 300, 0, 120.0, 5, 8, 400)),  # too slow
        Point(base, 16, Stats("Aggregated", 300, 2, 130.0, 5, 8, 100)),  # errors
        Point(base, 4, error="server did not start"),
    ]
    assert best_point(points, slo_p99_ms=150) is points[1]
    assert best_point(points, slo_p99_ms=10) is None


def test_scheduling_round_trips_through_the_config(model_repo: Path, tmp_path: Path) -> None:
    path = model_repo / "pneumonia_fp32" / "config.pbtxt"
    found = scheduling_of(path)
    assert found.max_batch_size >= 1 and found.instances >= 1 and found.threads >= 0
    assert found.max_queue_size > 0 and found.stat_timeout_us > 0
    clf = Classifier("fp32", path, {"image_size": 32, "classes": ["A", "B"], "threshold": 0.5,
                                    "arch": "resnet18"})  # fmt: skip
    (tmp_path / "config.pbtxt").write_text(config_text(classifier_config(clf, found)))
    assert scheduling_of(tmp_path / "config.pbtxt") == found


def test_payloads_from_a_folder_skip_what_is_not_an_image(payload_dir: Path) -> None:
    images = load_payloads(payload_dir, 32)
    assert len(images) == 4
    assert {(i.shape, i.dtype) for i in images} == {((1, 1, 32, 32), np.dtype(np.uint8))}
    synthetic = load_payloads(None, 16)
    assert len(synthetic) > 1 and synthetic[0].shape == (1, 1, 16, 16)


def test_encoded_payloads_are_the_decodable_files_pixels_only(payload_dir: Path) -> None:
    files = load_files(payload_dir, 32)
    assert len(files) == 4  # notes.txt skipped
    assert all(data.startswith(b"\x89PNG") for data in files)
    synthetic = load_files(None, 16)
    assert len(synthetic) > 1 and load_model_input(synthetic[0], 16).shape == (1, 16, 16)


def test_payload_folder_errors_are_specific(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a folder"):
        image_files(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="holds no files"):
        image_files(tmp_path)
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(ValueError, match="no decodable image"):
        load_payloads(tmp_path, 32)


def test_rss_report_growth_after_warmup() -> None:
    mib = 1 << 20
    samples = [RssSample(float(t), (100 + (50 if t < 5 else t - 5)) * mib, 3) for t in range(25)]
    report = RssReport(5.0, samples)
    # The warm-up spike is ignored; after it, 100 -> 119 MiB in 1 MiB steps (medians of 2).
    assert report.baseline == int(100.5 * mib)
    assert report.final == int(118.5 * mib)
    assert report.growth == pytest.approx(118.5 / 100.5 - 1)
    assert report.peak == 119 * mib and report.processes == 3
    with pytest.raises(ValueError, match="no RSS sample"):
        RssReport(1.0, [])


def test_rss_sampler_sums_a_process_tree_and_sees_it_grow() -> None:
    # A parent whose child allocates 80 MiB after half a second: the sampler must count both.
    child = "import time; time.sleep(0.5); b = bytearray(80 << 20); time.sleep(30)"
    parent = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(30)"
    )
    process = subprocess.Popen([sys.executable, "-c", parent])
    try:
        time.sleep(0.3)
        with RssSampler(process.pid, interval=0.1) as sampler:
            time.sleep(2.0)
        tree = process_tree(process.pid)
        assert len(tree) == 2 and tree[0] == process.pid
        report = sampler.report(warmup=0.0)
        assert report.processes == 2
        assert report.final - report.baseline > 60 << 20
    finally:
        for pid in process_tree(process.pid)[1:]:
            os.kill(pid, signal.SIGKILL)
        process.kill()
        process.wait()
    with pytest.raises(ProcessGoneError):
        RssSampler(process.pid)

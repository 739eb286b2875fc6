"""``cxr convert`` errors for bad run directories and options, and ``cxr bench onnx``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxr.convert.pipeline import ConvertOptions


def cxr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cxr", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def broken_copy(tiny_run: Path, tmp_path: Path, how: str) -> Path:
    """A copy of ``tiny_run`` damaged in one way."""
    run = tmp_path / f"run_{how}"
    shutil.copytree(tiny_run, run)
    card_path = run / "card.json"
    card = json.loads(card_path.read_text())
    if how == "no_card":
        card_path.unlink()
    elif how == "no_weights":
        (run / "model.pt").unlink()
    elif how == "other_contract":
        card["contract"]["input"] = "PIXELS FP32 [N,3,S,S]"
        card_path.write_text(json.dumps(card))
    elif how == "malformed_card":
        card_path.write_text("{not json")
    elif how == "other_arch":
        card["arch"] = "resnet34"
        card_path.write_text(json.dumps(card))
    return run


BROKEN_RUNS = [
    ("missing", "run directory not found"),
    ("no_card", "no card.json"),
    ("other_contract", "another tensor contract"),
    ("no_weights", "no model.pt"),
    ("malformed_card", "malformed model card"),
    ("other_arch", "weights do not match resnet34"),
]


@pytest.mark.parametrize(("how", "message"), BROKEN_RUNS[:3])
def test_bad_run_dir_is_exit_2_naming_the_path(
    tiny_run: Path, tmp_path: Path, how: str, message: str
) -> None:
    run = tmp_path / "nowhere" if how == "missing" else broken_copy(tiny_run, tmp_path, how)
    done = cxr("convert", str(run), "--repo", str(tmp_path / "repo"))
    assert done.returncode == 2, done.stderr
    flat = " ".join(done.stderr.split())
    assert message in flat and str(run) in flat.replace(" ", ""), flat
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(("how", "message"), BROKEN_RUNS[3:])
def test_bad_run_dir_is_a_run_dir_error_naming_the_path(
    tiny_run: Path, tmp_path: Path, how: str, message: str
) -> None:
    from cxr.convert.pipeline import convert_run
    from cxr.train.card import RunDirError

    run = broken_copy(tiny_run, tmp_path, how)
    with pytest.raises(RunDirError, match=message) as caught:
        convert_run(run, tmp_path / "repo")
    assert str(run) in str(caught.value)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"precisions": ("fp32", "int4")}, "--precision"),
        ({"precisions": ()}, "--precision"),
        ({"calib_method": "median"}, "--calib-method"),
        ({"tensorrt": "maybe"}, "--tensorrt"),
        ({"max_batch": 0}, "--max-batch"),
        ({"calib_size": 0}, "--calib-size"),
        ({"gate_data": Path("/no/such/data.npz")}, "dataset not found: /no/such/data.npz"),
    ],
)
def test_bad_options_are_named(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConvertOptions(**changes).check()


def test_bad_option_is_exit_2_before_any_work(tiny_run: Path, tmp_path: Path) -> None:
    done = cxr("convert", str(tiny_run), "--repo", str(tmp_path / "repo"), "--precision", "int4")
    assert done.returncode == 2 and "--precision" in done.stderr, done.stderr
    assert not (tmp_path / "repo").exists() and not (tiny_run / "onnx").exists()


def test_bench_onnx_prints_throughput_and_latency(converted: dict) -> None:
    (int8,) = [v for v in converted["variants"] if v["variant"] == "int8"]
    done = cxr("bench", "onnx", int8["file"], "--batch", "1,4", "--seconds", "0.2", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["batch"] for r in rows] == [1, 4]
    for row in rows:
        assert row["images_per_s"] > 0 and row["runs"] >= 1
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    table = cxr("bench", "onnx", int8["file"], "--batch", "2", "--seconds", "0.1")
    assert table.returncode == 0 and "images_per_s" in table.stdout and "p99_ms" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/model.onnx"], "no such file"),
        (["{model}", "--batch", "1,x"], "positive integers"),
        (["{model}", "--batch", "0"], "positive integers"),
    ],
)
def test_bench_onnx_errors(converted: dict, args: list[str], message: str) -> None:
    model = converted["variants"][0]["file"]
    done = cxr("bench", "onnx", *(a.format(model=model) for a in args))
    assert done.returncode == 2 and message in " ".join(done.stderr.split()), done.stderr


def test_bench_onnx_refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    done = cxr("bench", "onnx", str(bogus), "--seconds", "0.1")
    assert done.returncode == 2 and "cannot benchmark" in done.stderr

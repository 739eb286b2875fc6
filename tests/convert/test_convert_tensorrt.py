"""TensorRT: engines where TensorRT and a GPU are present; prepared inputs (never a silent skip)
where they are not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr.convert import tensorrt
from cxr.convert.pipeline import ConversionError, ConvertOptions, convert_run
from cxr.server.repository import CONFIG_FILE, read_config

MISSING = tensorrt.unavailable()


def test_engine_inputs_and_configs_are_prepared(converted: dict) -> None:
    repo = Path(converted["repo"])
    for name in ("trt_int8", "trt_fp16"):
        folder = repo / f"pneumonia_{name}"
        config = read_config(folder / CONFIG_FILE)
        assert config.platform == "tensorrt_plan" and config.max_batch_size == 64
        assert (folder / "model.onnx").is_file()  # beside the version folder, for `engines`
        (record,) = [v for v in converted["variants"] if v["variant"] == name]
        assert record["published"]
        if MISSING:
            assert not record["engine"]["built"]
            assert MISSING in record["engine"]["status"]
            assert "docker compose run --rm engines" in record["engine"]["status"]
            assert not (folder / "1" / "model.plan").exists()
    if MISSING:
        assert converted["tensorrt"]["unavailable"] == MISSING


@pytest.mark.skipif(MISSING is None, reason="TensorRT is present here: `--tensorrt on` can build")
def test_tensorrt_on_without_tensorrt_is_an_error(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="--tensorrt on"):
        convert_run(tiny_run, tmp_path / "repo", options=ConvertOptions(tensorrt="on"))
    assert not (tmp_path / "repo").exists()


@pytest.mark.tensorrt
@pytest.mark.skipif(MISSING is not None, reason=f"TensorRT engines cannot be built: {MISSING}")
@pytest.mark.parametrize("name", ["trt_fp16", "trt_int8"])
def test_engine_is_built_with_its_stamp(converted: dict, name: str, tmp_path: Path) -> None:
    (record,) = [v for v in converted["variants"] if v["variant"] == name]
    assert record["engine"]["built"], record["engine"]
    plan = Path(record["engine"]["plan"])
    assert plan.stat().st_size > 0
    stamp = json.loads(plan.with_name("model.plan.json").read_text())
    assert stamp["onnx_sha256"] == tensorrt.sha256(plan.parent.parent / "model.onnx")
    for key in ("tensorrt_version", "compute_capability", "built_at", "max_batch"):
        assert stamp[key], key
    assert (plan.parent.parent / "timing.cache").is_file()

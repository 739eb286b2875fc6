"""The accuracy gate in ``cxr convert``: refusal of a variant that loses accuracy, repair by
per-layer precision, the override, the default gate set, and the report files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from cxr.client.contract import ENSEMBLE_MODEL, PARAM_DEPLOYED_MODEL
from cxr.convert import gate
from cxr.convert.pipeline import ConvertOptions, convert_run
from cxr.runtime.sessions import CARD_METADATA_KEY
from cxr.server.repository import CONFIG_FILE, read_config


def test_gate_data_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both normal and abnormal"):
        gate.check_gate_labels(np.zeros(10, np.int64), "somewhere")


def _deployed(repo: Path) -> str:
    config = read_config(repo / ENSEMBLE_MODEL / CONFIG_FILE)
    return config.parameters[PARAM_DEPLOYED_MODEL].string_value


def _int8(report: dict) -> dict:
    (found,) = [v for v in report["variants"] if v["variant"] == "int8"]
    return found


def _embedded_card(path: Path) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    (raw,) = [p.value for p in model.metadata_props if p.key == CARD_METADATA_KEY]
    return json.loads(raw)


def test_badly_calibrated_int8_is_repaired_by_keeping_layers_in_float(
    trained_run: Path, flat_grey_data: Path, margin_gate_data: Path, tmp_path: Path
) -> None:
    # Calibrated on flat grey images, INT8 clips every real activation range: refused. Keeping
    # every quantized layer in float is FP32 again, so a passing set of layers exists and the
    # search must return one, smaller than all of them, that passes.
    repo = tmp_path / "model_repository"
    options = ConvertOptions(
        precisions=("fp32", "int8"),
        calib_data=flat_grey_data,
        calib_method="minmax",
        gate_data=margin_gate_data,
        perturbations=(),
        tensorrt="off",
        report_dir=tmp_path / "report",
        bench_seconds=0.2,
    )
    report = convert_run(trained_run, repo, tmp_path / "work", options)
    int8 = _int8(report)
    assert int8["full_int8"]["gate"] == "refused" and int8["full_int8"]["refusals"]
    assert int8["gate"] == "pass" and int8["published"], int8["refusals"]
    layers = int8["float_layers"]
    search = int8["precision_search"]
    assert search["passed"] and layers == search["keep_float"]
    assert 0 < len(layers) < len(search["sensitivity"])
    assert set(layers) <= set(search["sensitivity"])
    # The published model carries the list in its card, and those layers have float weights.
    published = repo / "pneumonia_int8" / "1" / "model.onnx"
    card = _embedded_card(published)
    assert card["precision"] == {
        "calibration_method": "minmax",
        "float_layers": layers,
        "float_layer_labels": int8["float_layer_labels"],
    }
    assert all(label.split()[0] in ("Conv", "Add", "MaxPool", "ReduceMean", "Gemm",
                                    "GlobalAveragePool", "Relu", "Flatten")
               for label in int8["float_layer_labels"]), int8["float_layer_labels"]  # fmt: skip
    nodes = {n.name: n for n in onnx.load(str(published)).graph.node}
    initializers = {t.name for t in onnx.load(str(published)).graph.initializer}
    for name in layers:
        if nodes[name].op_type in ("Conv", "Gemm", "MatMul"):
            assert nodes[name].input[1] in initializers, name  # not a DequantizeLinear output
    assert _deployed(repo) == "pneumonia_int8"
    # Speed of the repaired model beside the fully quantized one and FP32.
    assert [row["batch"] for row in int8["speed"]] == [1, 8]
    assert [row["batch"] for row in int8["full_int8"]["speed"]] == [1, 8]
    markdown = (tmp_path / "report" / "convert_report.md").read_text()
    assert f"Layers kept in float ({len(layers)}): " in markdown
    assert "Fully quantized (minmax): refused" in markdown


def test_without_search_the_gate_refuses_and_the_override_publishes(
    trained_run: Path, flat_grey_data: Path, margin_gate_data: Path, tmp_path: Path
) -> None:
    options = ConvertOptions(
        precisions=("fp32", "int8"),
        calib_data=flat_grey_data,
        calib_method="minmax",
        gate_data=margin_gate_data,
        perturbations=(),
        precision_search=False,
        tensorrt="off",
        report_dir=tmp_path / "strict",
        bench_seconds=0,
    )
    report = convert_run(trained_run, tmp_path / "strict" / "repo", tmp_path / "work", options)
    int8 = _int8(report)
    assert int8["gate"] == "refused" and int8["precision_search"] is None
    assert any(r.startswith("clean: ") and "limit" in r for r in int8["refusals"]), int8
    assert report["gate"]["precision_search"] == "off (--no-precision-search)"
    assert not int8["published"] and not (tmp_path / "strict" / "repo" / "pneumonia_int8").exists()
    assert _deployed(tmp_path / "strict" / "repo") == "pneumonia_fp32"
    assert "| refused | no |" in (tmp_path / "strict" / "convert_report.md").read_text()

    # The same through the command line, with the override.
    root = tmp_path / "allowed"
    done = subprocess.run(
        [sys.executable, "-m", "cxr", "convert", str(trained_run), "--precision", "fp32,int8",
         "--tensorrt", "off", "--calib-data", str(flat_grey_data), "--calib-method", "minmax",
         "--gate-data", str(margin_gate_data), "--perturb", "none", "--no-precision-search",
         "--bench-seconds", "0", "--repo", str(root / "repo"), "--report-dir", str(root),
         "--work-dir", str(root / "work"), "--allow-accuracy-drop"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| refused | yes |" in done.stdout
    int8 = _int8(json.loads((root / "convert_report.json").read_text()))
    assert int8["gate"] == "refused" and int8["published"]
    assert "--allow-accuracy-drop" in int8["status"]
    assert _deployed(root / "repo") == "pneumonia_int8"


def test_default_gate_set_is_a_derived_slice_shifted_and_says_what_it_can_decide(
    trained_run: Path, tmp_path: Path
) -> None:
    options = ConvertOptions(
        precisions=("fp32", "int8"),
        calib_method="minmax",
        tensorrt="off",
        report_dir=tmp_path,
        bench_seconds=0,
    )
    report = convert_run(trained_run, tmp_path / "repo", tmp_path / "work", options)
    gate_info = report["gate"]
    assert gate_info["kind"] == "derived"
    assert gate_info["conditions"] == ["clean", "exposure", "contrast", "noise", "geometry"]
    assert "a stratified 20% of the training split" in gate_info["source"]
    assert "without the gate slice" in report["calibration"]["source"]
    notes = " | ".join(gate_info["notes"])
    assert "fitted on it" in notes
    # The session's synthetic data is small: no variant can pass, and the report says why.
    assert gate_info["positives"] < 381 and "too small" in notes
    assert gate_info["precision_search"].startswith("skipped: the gate set is too small")
    int8 = _int8(report)
    assert int8["gate"] == "refused" and not int8["published"]
    assert set(int8["paired"]["conditions"]) == set(gate_info["conditions"])
    markdown = (tmp_path / "convert_report.md").read_text()
    assert "accuracy gate set (derived)" in markdown and "gate set note: too small" in markdown
    for condition in gate_info["conditions"]:
        assert f"| {condition} | {gate_info['images']} |" in markdown


def test_report_files_describe_every_variant(converted: dict) -> None:
    paths = [Path(p) for p in converted["files"]]
    assert [p.name for p in paths] == ["convert_report.json", "convert_report.md"]
    written = json.loads(paths[0].read_text())
    assert written["published"] == converted["published"]
    names = [v["variant"] for v in written["variants"]]
    assert names == ["fp32", "int8", "trt_int8", "trt_fp16"]
    for record in written["variants"]:
        for key in ("size_bytes", "auc", "sensitivity", "specificity", "agreement_with_fp32"):
            assert record[key] is not None, (record["variant"], key)
    fp32 = written["variants"][0]
    assert fp32["agreement_with_fp32"] == 1.0 and fp32["gate"] == "reference"
    assert [row["batch"] for row in fp32["speed"]] == [1, 8]
    assert all(row["images_per_s"] > 0 for row in fp32["speed"])
    assert written["parity"][0]["ok"] and written["parity"][0]["max_abs_diff"] <= 1e-4
    assert written["calibration"]["images"] > 0 and written["gate"]["images"] > 0
    assert written["gate"]["kind"] == "gate-data" and written["gate"]["conditions"] == ["clean"]
    for record in written["variants"][1:]:
        clean = record["paired"]["conditions"]["clean"]
        assert clean["n"] == written["gate"]["images"]
        for metric in ("auc", "sensitivity", "specificity"):
            diff = clean[metric]
            assert diff["lower"] <= diff["diff"] <= diff["upper"], (record["variant"], metric)
    markdown = paths[1].read_text()
    assert "| variant | size (MB) | AUC | sensitivity | specificity | agreement with FP32 |" in (
        markdown
    )
    assert "| condition | n | AUC diff [95% CI] | sensitivity diff [95% CI] |" in markdown
    for name in names:
        assert f"| pneumonia_{name} |" in markdown
    for name in names[1:]:
        assert f"### pneumonia_{name}" in markdown
    assert "proxy" in markdown

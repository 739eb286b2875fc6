"""The accuracy gate: thresholds, refusal of a variant that loses accuracy, the override, and the
report files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client.contract import ENSEMBLE_MODEL, PARAM_DEPLOYED_MODEL
from convert import gate
from convert.pipeline import ConvertOptions, convert_run
from server.repository import CONFIG_FILE, read_config


def evaluation(auc: float, sensitivity: float, decisions: list[bool]) -> gate.Evaluation:
    flags = np.asarray(decisions)
    return gate.Evaluation(
        np.zeros((len(flags), 2), np.float32),
        flags,
        {"auc": auc, "sensitivity": sensitivity, "threshold": 0.3},
    )


@pytest.mark.parametrize(
    ("auc", "sensitivity", "refused"),
    [
        (0.950, 0.900, []),
        (0.9451, 0.8901, []),  # within both limits
        (0.944, 0.900, ["AUC"]),
        (0.950, 0.889, ["sensitivity"]),
        (0.900, 0.800, ["AUC", "sensitivity"]),
        (0.990, 1.000, []),  # better than the reference
    ],
)
def test_refusals_follow_the_limits(auc: float, sensitivity: float, refused: list[str]) -> None:
    reference = evaluation(0.95, 0.90, [True, False])
    reasons = gate.refusals(reference, evaluation(auc, sensitivity, [True, False]))
    assert [r.split()[0] for r in reasons] == refused


def test_agreement_is_the_share_of_equal_decisions() -> None:
    a = evaluation(1, 1, [True, True, False, False])
    b = evaluation(1, 1, [True, False, False, True])
    assert gate.agreement(a, b) == 0.5 and gate.agreement(a, a) == 1.0


def test_gate_data_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both normal and abnormal"):
        gate.check_gate_labels(np.zeros(10, np.int64), "somewhere")


def _deployed(repo: Path) -> str:
    config = read_config(repo / ENSEMBLE_MODEL / CONFIG_FILE)
    return config.parameters[PARAM_DEPLOYED_MODEL].string_value


def test_gate_refuses_a_badly_calibrated_int8_and_the_override_publishes_it(
    trained_run: Path, flat_grey_data: Path, tmp_path: Path
) -> None:
    # Calibrated on flat grey images, INT8 clips every real activation range.
    repo = tmp_path / "strict" / "model_repository"
    options = ConvertOptions(
        precisions=("fp32", "int8"),
        calib_data=flat_grey_data,
        tensorrt="off",
        report_dir=tmp_path / "strict" / "report",
        bench_seconds=0,
    )
    report = convert_run(trained_run, repo, tmp_path / "strict" / "work", options)
    (int8,) = [v for v in report["variants"] if v["variant"] == "int8"]
    assert int8["gate"] == "refused" and not int8["published"], int8
    assert int8["refusals"] and "limit" in int8["refusals"][0]
    assert not (repo / "pneumonia_int8").exists()
    assert report["published"] == ["pneumonia_fp32"] and _deployed(repo) == "pneumonia_fp32"
    markdown = (tmp_path / "strict" / "report" / "convert_report.md").read_text()
    assert "| pneumonia_int8 |" in markdown and "| refused | no |" in markdown

    # The same through the command line, with the override.
    root = tmp_path / "allowed"
    done = subprocess.run(
        [sys.executable, "-m", "cxr", "convert", str(trained_run), "--repo", str(root / "repo"),
         "--precision", "fp32,int8", "--tensorrt", "off", "--calib-data", str(flat_grey_data),
         "--allow-accuracy-drop", "--bench-seconds", "0", "--report-dir", str(root),
         "--work-dir", str(root / "work")],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| pneumonia_int8 |" in done.stdout and "| refused | yes |" in done.stdout
    report = json.loads((root / "convert_report.json").read_text())
    (int8,) = [v for v in report["variants"] if v["variant"] == "int8"]
    assert int8["gate"] == "refused" and int8["published"]
    assert "--allow-accuracy-drop" in int8["status"]
    assert (root / "repo" / "pneumonia_int8" / "1" / "model.onnx").is_file()
    assert _deployed(root / "repo") == "pneumonia_int8"


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
    markdown = paths[1].read_text()
    assert "| variant | size (MB) | AUC | sensitivity | specificity | agreement with FP32 |" in (
        markdown
    )
    for name in names:
        assert f"| pneumonia_{name} |" in markdown
    assert "proxy" in markdown

"""``cxr evaluate`` on a run directory, an ONNX file and a served model: the clinical metrics as
a table, as JSON with exactly the agreed keys, and as ROC / PR / confusion-matrix PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxr.client import contract
from cxr.train.card import ModelCard
from cxr.train.evaluate import evaluate

KEYS = {
    "n",
    "auc",
    "auc_ci",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "threshold",
    "confusion_matrix",
}
PLOTS = {"roc.png", "precision_recall.png", "confusion_matrix.png"}


@pytest.fixture(scope="module")
def onnx_file(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained run exported by conversion's ONNX exporter (model card in its metadata)."""
    from cxr.convert.export import export_onnx
    from cxr.train.models import load_trained

    model, card = load_trained(trained_run)
    return export_onnx(model, card, tmp_path_factory.mktemp("onnx") / "model.onnx")


def _test_images(data: Path) -> int:
    return len(list((data / "test").rglob("*.png")))


def test_run_dir_table_json_and_plots(
    cxr, trained_run: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    out, plots = tmp_path / "metrics.json", tmp_path / "plots"
    done = cxr("evaluate", trained_run, "--data", synthetic_data, "--json", out, "--plots", plots)
    assert done.code == 0, done.err
    for row in ("sensitivity", "specificity", "auc_ci", "confusion [[TN FP] [FN TP]]"):
        assert row in done.out
    result = json.loads(out.read_text())
    assert set(result) == KEYS
    assert result["n"] == _test_images(synthetic_data) == sum(map(sum, result["confusion_matrix"]))
    assert result["threshold"] == ModelCard.load(trained_run).threshold
    assert result["auc"] > 0.9
    assert result["auc_ci"][0] <= result["auc"] <= result["auc_ci"][1]
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    assert result["sensitivity"] == tp / (tp + fn)
    assert result["specificity"] == tn / (tn + fp)
    assert result["accuracy"] == (tp + tn) / result["n"]
    assert {p.name for p in plots.iterdir()} == PLOTS
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots.iterdir())


def test_threshold_override(trained_run: Path, synthetic_data: Path) -> None:
    everyone = evaluate(str(trained_run), synthetic_data, "test", threshold=0.0).metrics
    assert everyone["threshold"] == 0.0
    assert everyone["sensitivity"] == 1.0 and everyone["specificity"] == 0.0
    (tn, _), (fn, _) = everyone["confusion_matrix"]
    assert tn == fn == 0


def test_onnx_file_gives_the_same_metrics(
    cxr, onnx_file: Path, trained_run: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "onnx.json"
    done = cxr("evaluate", onnx_file, "--data", synthetic_data, "--split", "val", "--json", out)
    assert done.code == 0, done.err
    from_onnx = json.loads(out.read_text())
    from_torch = evaluate(str(trained_run), synthetic_data, "val").metrics
    assert set(from_onnx) == KEYS
    assert from_onnx["n"] == from_torch["n"]
    assert from_onnx["threshold"] == from_torch["threshold"]  # read from the embedded card
    assert from_onnx["auc"] == pytest.approx(from_torch["auc"], abs=1e-3)


def test_onnx_without_a_card_needs_a_threshold(
    cxr, onnx_file: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    import onnx

    from cxr.runtime.sessions import CARD_METADATA_KEY

    proto = onnx.load(str(onnx_file))
    kept = [p for p in proto.metadata_props if p.key != CARD_METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    done = cxr("evaluate", bare, "--data", synthetic_data, "--split", "val")
    assert done.code == 2 and done.err_names(bare, "pass --threshold")
    out = tmp_path / "bare.json"
    done = cxr("evaluate", bare, "--data", synthetic_data, "--threshold", "0.25", "--json", out)
    assert done.code == 0, done.err
    assert json.loads(out.read_text())["threshold"] == 0.25


def test_served_model_gives_the_same_metrics(
    triton, trained_run: Path, synthetic_data: Path
) -> None:
    served = evaluate(
        contract.classifier_model("fp32"), synthetic_data, "test", url=triton.grpc_url
    ).metrics
    local = evaluate(str(trained_run), synthetic_data, "test").metrics
    assert served["n"] == local["n"]
    assert served["threshold"] == pytest.approx(local["threshold"])
    assert served["auc"] == pytest.approx(local["auc"], abs=1e-3)


@pytest.mark.parametrize(
    ("model", "message"),
    [("no/such/run", "not a run directory nor an .onnx file"), ("model.onnx", "")],
)
def test_unusable_models_exit_2(cxr, synthetic_data: Path, tmp_path: Path, model, message) -> None:
    path = tmp_path / model
    if path.suffix == ".onnx":
        path.write_bytes(b"not onnx")
        message = "cannot load ONNX model"
    done = cxr("evaluate", path, "--data", synthetic_data)
    assert done.code == 2 and done.err_names(path, message), done.err


def test_missing_split_and_run_dir_without_card(cxr, trained_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "trainval.npz"
    np.savez(data, train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.zeros((2, 1)))
    done = cxr("evaluate", trained_run, "--data", data)
    assert done.code == 2 and done.err_names(data, "no 'test' split")
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    done = cxr("evaluate", empty, "--data", data)
    assert done.code == 2 and done.err_names(empty, "no card.json")


@pytest.mark.parametrize("source", ["run_dir", "onnx", "served"])
def test_heatmaps_overlay_a_sample_of_each_outcome(
    request, trained_run: Path, synthetic_data: Path, tmp_path: Path, source: str
) -> None:
    """At threshold 0 every image is urgent: true positives and false positives, no false
    negative; the session's model itself makes no error on the test split."""
    from cxr.train.evaluate import OVERLAYS_PER_OUTCOME

    model, url = str(trained_run), None
    if source == "onnx":
        model = str(request.getfixturevalue("onnx_file"))
    elif source == "served":
        model, url = contract.classifier_model("fp32"), request.getfixturevalue("triton").grpc_url
    folder = tmp_path / "maps"
    everyone = evaluate(model, synthetic_data, "test", 0.0, url, folder)
    own = evaluate(model, synthetic_data, "test", None, url, tmp_path / "own")
    counts = {kind: len(paths) for kind, paths in everyone.overlays.items()}
    assert counts == {"TP": OVERLAYS_PER_OUTCOME, "FP": OVERLAYS_PER_OUTCOME, "FN": 0}
    assert {kind: len(paths) for kind, paths in own.overlays.items()} == {
        "TP": OVERLAYS_PER_OUTCOME, "FP": 0, "FN": 0
    }  # fmt: skip
    written = sorted(folder.iterdir())
    assert written == sorted(p for paths in everyone.overlays.values() for p in paths)
    assert all(
        p.name[:3] in ("TP_", "FP_") and p.read_bytes().startswith(b"\x89PNG") for p in written
    )


def test_heatmaps_into_a_file_exit_2_before_evaluating(
    cxr, trained_run: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"x")
    done = cxr("evaluate", trained_run, "--data", synthetic_data, "--heatmaps", taken)
    message = " ".join(done.err.split())  # the console wraps long lines
    assert done.code == 2 and "--heatmaps:" in message and "is a file, not a folder" in message
    assert "sensitivity" not in done.out and taken.read_bytes() == b"x"

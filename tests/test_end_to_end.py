"""The thin end-to-end path: synthetic data -> train -> convert -> a real tritonserver ->
the client over gRPC (locally decoded uint8, and encoded files through the ensemble)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr.client import TriageClient, contract


def test_training_reached_a_useful_model(trained_run: Path) -> None:
    card = json.loads((trained_run / "card.json").read_text())
    assert card["val_metrics"]["auc"] > 0.9
    assert card["classes"] == ["NORMAL", "PNEUMONIA"]


def test_server_loaded_every_cpu_model_and_explains_the_rest(triton) -> None:
    states = {name: state for name, (state, _) in triton.model_states.items()}
    assert states == {
        contract.ENSEMBLE_MODEL: "READY",
        contract.PREPROCESS_MODEL: "READY",
        contract.classifier_model("fp32"): "READY",
        contract.classifier_model("int8"): "READY",
    }
    # TensorRT variants are prepared for GPU servers; the embedded server says why it skips them.
    for name, reason in triton.plan.skipped.items():
        assert name.startswith(contract.CLASSIFIER_PREFIX + "trt_"), name
        assert "GPU" in reason


@pytest.mark.parametrize("server_preprocess", [False, True])
def test_predictions_match_labels(triton, synthetic_data: Path, server_preprocess: bool) -> None:
    files = (
        sorted((synthetic_data / "test" / "PNEUMONIA").glob("*.png"))[:6]
        + sorted((synthetic_data / "test" / "NORMAL").glob("*.png"))[:6]
    )
    with TriageClient(triton.grpc_url, server_preprocess=server_preprocess, timeout=30) as client:
        results = client.predict(files)
    assert [r.source for r in results] == [str(f) for f in files]
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    truth = [f.parent.name for f in files]
    correct = sum(r.label == t for r, t in zip(results, truth, strict=True))
    assert correct >= 10, [(r.source, r.label, r.pneumonia_probability) for r in results]
    # Locally decoded images go straight to the variant the ensemble routes to (INT8 on CPU).
    expected_model = (
        contract.ENSEMBLE_MODEL if server_preprocess else contract.classifier_model("int8")
    )
    assert {r.model for r in results} == {expected_model}

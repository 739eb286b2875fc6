"""Automatic per-layer precision on a hand-made ONNX whose one layer INT8 ruins: the gate
refuses the fully quantized model, and the search keeps exactly that layer in float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cxr.client.contract import IMAGE, PROBS
from cxr.convert import gate
from cxr.convert.calibrate import make_int8
from cxr.convert.gateset import with_perturbations
from cxr.convert.precision import search
from cxr.convert.quantize import CalibrationReader, prepare, quantize_int8, quantized_layers

SIDE = 4
LEFT = (np.arange(SIDE * SIDE) % SIDE) < SIDE // 2


def hand_made(path: Path) -> Path:
    """``IMAGE`` 4x4 -> urgent when the left half is brighter than the right.

    ``layer_e`` (identity) and ``layer_a`` (left - right, small) quantize harmlessly;
    ``layer_b`` adds a constant 1000 to an output channel nobody reads, so its uint8 output range
    is ~0..1000 and the signal channel beside it (|x| < 8) rounds to a few levels around 0: INT8
    there destroys the ranking. ``head`` and ``softmax`` are kept in float by the converter."""
    a = np.zeros((16, 3), np.float32)
    a[LEFT, 1], a[~LEFT, 1] = 0.02, -0.02
    a[:, 2] = 0.02
    b = np.zeros((3, 2), np.float32)
    b[1, 1] = 50.0
    weights = {
        "E": np.eye(16, dtype=np.float32),
        "A": a,
        "B": b,
        "bias": np.array([1000.0, 0.0], np.float32),
        "C": np.array([[0, 0], [0, 1]], np.float32),
        "shape": np.array([0, -1], np.int64),
        "scale": np.float32(1 / 255),
    }
    nodes = [
        helper.make_node("Cast", [IMAGE], ["f"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Mul", ["f", "scale"], ["x4"], name="scale"),
        helper.make_node("Reshape", ["x4", "shape"], ["x"], name="flat"),
        helper.make_node("MatMul", ["x", "E"], ["e"], name="layer_e"),
        helper.make_node("MatMul", ["e", "A"], ["h"], name="layer_a"),
        helper.make_node("Gemm", ["h", "B", "bias"], ["g"], name="layer_b"),
        helper.make_node("MatMul", ["g", "C"], ["logits"], name="head"),
        helper.make_node("Softmax", ["logits"], [PROBS], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "hand_made",
        [helper.make_tensor_value_info(IMAGE, TensorProto.UINT8, ["N", 1, SIDE, SIDE])],
        [helper.make_tensor_value_info(PROBS, TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The hand-made model, prepared, with calibration images and a gate set whose images are
    at least 0.5 grey-level sums from the decision boundary (so harmless rounding flips none)."""
    work = tmp_path_factory.mktemp("hand")
    fp32 = hand_made(work / "fp32.onnx")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3000, 1, SIDE, SIDE), dtype=np.uint8)
    flat = images.reshape(len(images), -1).astype(np.float64) / 255
    margin = flat[:, LEFT].sum(1) - flat[:, ~LEFT].sum(1)
    keep = np.abs(margin) >= 0.5
    labels = (margin[keep] > 0).astype(np.int64)
    gate_set = with_perturbations(labels, images[keep], 0, (), source="hand", kind="gate-data")
    reference = gate.model_scores(fp32, gate_set)

    def judge(path: Path) -> gate.Assessment:
        return gate.assess(labels, reference, gate.model_scores(path, gate_set), 0.5)

    return {
        "work": work,
        "fp32": fp32,
        "prepared": prepare(fp32, work / "prepared.onnx"),
        "reader": CalibrationReader(images[:256]),
        "judge": judge,
        "positives": int(labels.sum()),
        "negatives": int(len(labels) - labels.sum()),
    }


def test_the_gate_set_can_decide(case: dict) -> None:
    # Enough images of each class that a variant without flips can pass every limit.
    assert case["positives"] >= 400 and case["negatives"] >= 400


def test_search_keeps_exactly_the_destructive_layer_in_float(case: dict) -> None:
    work, prepared, reader = case["work"], case["prepared"], case["reader"]
    cache = work / "minmax.json"
    full = quantize_int8(prepared, work / "full.onnx", reader, "cpu", "minmax", cache)
    refused = case["judge"](full)
    assert not refused.passed
    assert any(r.startswith("clean: auc") for r in refused.refusals), refused.refusals
    layers = [n for n in quantized_layers(onnx.load(str(full))) if n != "head"]
    assert layers == ["layer_e", "layer_a", "layer_b"]

    def quantizer(keep: tuple[str, ...], dst: Path) -> Path:
        return quantize_int8(prepared, dst, reader, "cpu", "minmax", cache, keep)

    found = search(layers, quantizer, case["judge"], work / "search")
    assert found.passed and found.keep_float == ("layer_b",)
    assert max(found.sensitivity, key=found.sensitivity.get) == "layer_b"
    assert (
        found.sensitivity["layer_b"]
        > 1.0
        >= max(found.sensitivity["layer_e"], found.sensitivity["layer_a"])
    )
    assert found.assessment.passed
    nodes = {n.name: n for n in onnx.load(str(found.path)).graph.node}
    assert nodes["layer_b"].input[1] == "B"  # float weights, read directly
    for name in ("layer_e", "layer_a"):  # int8 weights, dequantized
        producer = [n for n in nodes.values() if nodes[name].input[1] in n.output]
        assert [n.op_type for n in producer] == ["DequantizeLinear"], name


def test_make_int8_tries_every_method_and_repairs_the_best(case: dict) -> None:
    work = case["work"] / "make"
    work.mkdir()
    result = make_int8(
        case["prepared"],
        work,
        "int8",
        "cpu",
        case["reader"],
        ("minmax", "entropy", "percentile"),
        case["judge"],
        repair=True,
    )
    # Half the values of layer_b's output are the constant 1000: no method's range clips it.
    assert {m: a.passed for m, a in result.tried.items()} == dict.fromkeys(
        ("minmax", "entropy", "percentile"), False
    )
    assert result.assessment.passed and result.keep_float == ("layer_b",)
    assert (
        result.path != result.full_path
        and result.full_path.name == f"model_int8_{result.method}.onnx"
    )
    assert result.precision() == {
        "calibration_method": result.method,
        "float_layers": list(result.keep_float),
        "float_layer_labels": ["Gemm B"],
    }


def test_without_repair_a_failing_model_stays_refused(case: dict) -> None:
    work = case["work"] / "norepair"
    work.mkdir()
    result = make_int8(
        case["prepared"], work, "int8", "cpu", case["reader"], ("minmax",), case["judge"], False
    )
    assert not result.assessment.passed and result.search is None and result.keep_float == ()

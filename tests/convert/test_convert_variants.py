"""INT8 (CPU and TensorRT flavours) and FP16 variants of the session's trained run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cxr.client.contract import HEATMAP, IMAGE, PROBS
from cxr.convert.quantize import CalibrationReader, _stride, float_nodes
from cxr.runtime.sessions import ort_session, run_probs


def images(count: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 1, 32, 32), dtype=np.uint8)


def variant(report: dict, name: str) -> dict:
    (found,) = [v for v in report["variants"] if v["variant"] == name]
    return found


def load(report: dict, name: str) -> onnx.ModelProto:
    return onnx.load(variant(report, name)["file"])


def zero_points(model: onnx.ModelProto) -> list[np.ndarray]:
    """Zero-point tensors of every QuantizeLinear / DequantizeLinear node."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [
        inits[node.input[2]]
        for node in model.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2
    ]


def test_int8_variants_pass_the_gate_and_cpu_int8_is_published(converted: dict) -> None:
    for name in ("int8", "trt_int8"):
        record = variant(converted, name)
        assert record["gate"] == "pass", record["refusals"]
        assert record["agreement_with_fp32"] >= 0.95
    assert variant(converted, "int8")["published"]
    assert "pneumonia_int8" in converted["published"]
    assert converted["deployed"] == "pneumonia_int8"


@pytest.mark.parametrize("name", ["int8", "trt_int8"])
def test_int8_inserts_qdq_but_keeps_pre_and_post_processing_in_float(
    converted: dict, name: str
) -> None:
    model = load(converted, name)
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= 20
    consumers = [n for n in model.graph.node if IMAGE in n.input]
    assert [n.op_type for n in consumers] == ["Cast"]  # uint8 input: cast, not quantized
    producer = {o: n for n in model.graph.node for o in n.output}
    softmax = producer[PROBS]
    assert softmax.op_type == "Softmax"
    head = producer[softmax.input[0]]  # the classifier head gives float logits to Softmax
    assert head.op_type == "Gemm"
    assert all(producer[i].op_type != "DequantizeLinear" for i in head.input if i in producer)
    probs, heatmap = model.graph.output
    assert probs.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert heatmap.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert float_nodes(model)  # still found on the quantized graph


def test_cpu_flavour_has_uint8_activations_and_int8_per_channel_weights(converted: dict) -> None:
    model = load(converted, "int8")
    dtypes = {zp.dtype for zp in zero_points(model)} - {np.dtype(np.int32)}  # int32: biases
    assert dtypes == {np.dtype(np.uint8), np.dtype(np.int8)}
    conv_weights = _conv_weight_scales(model)
    assert conv_weights and all(scale.size > 1 for scale in conv_weights)  # per channel


def test_tensorrt_flavour_is_symmetric_int8(converted: dict) -> None:
    model = load(converted, "trt_int8")
    points = [zp for zp in zero_points(model) if zp.dtype != np.int32]  # int32: biases
    assert points and all(zp.dtype == np.int8 for zp in points)
    assert all(not zp.any() for zp in points)  # zero point 0 everywhere
    assert all(scale.size > 1 for scale in _conv_weight_scales(model))


def _conv_weight_scales(model: onnx.ModelProto) -> list[np.ndarray]:
    """Scales of the DequantizeLinear nodes that feed a Conv its weights (every Conv but the
    heatmap's, which stays in float)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    kept = set(float_nodes(model))
    assert [n.op_type for n in model.graph.node if n.name in kept].count("Conv") == 1
    scales = []
    for conv in (n for n in model.graph.node if n.op_type == "Conv" and n.name not in kept):
        dq = producer.get(conv.input[1])
        assert dq is not None and dq.op_type == "DequantizeLinear", conv.name
        assert inits[dq.input[0]].dtype == np.int8
        scales.append(inits[dq.input[1]])
    return scales


def test_fp16_has_float16_weights_and_float32_uint8_io(converted: dict) -> None:
    model = load(converted, "trt_fp16")
    onnx.checker.check_model(model, full_check=True)
    float_types = {
        t.data_type
        for t in model.graph.initializer
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    }
    assert float_types == {onnx.TensorProto.FLOAT16}
    (image,), (probs, heatmap) = model.graph.input, model.graph.output
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert probs.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert heatmap.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    probs_out = run_probs(ort_session(Path(variant(converted, "trt_fp16")["file"])), images(8))
    assert probs_out.dtype == np.float32
    record = variant(converted, "trt_fp16")
    assert record["gate"] == "pass" and record["max_abs_diff_vs_fp32"] < 1e-2


def test_variants_carry_the_model_card(converted: dict) -> None:
    from cxr.runtime.sessions import CARD_METADATA_KEY

    for record in converted["variants"]:
        meta = {p.key for p in onnx.load(record["file"]).metadata_props}
        assert CARD_METADATA_KEY in meta, record["variant"]


def test_every_variant_carries_the_heatmap_and_its_agreement_is_reported(converted: dict) -> None:
    assert [p["output"] for p in converted["parity"]] == [PROBS, HEATMAP]
    assert all(p["ok"] for p in converted["parity"])
    for record in converted["variants"]:
        outputs = {o.name for o in onnx.load(record["file"]).graph.output}
        assert outputs == {PROBS, HEATMAP}, record["variant"]
        agreement = record.get("heatmap_vs_fp32")
        if record["variant"] == "fp32":
            assert agreement is None
        else:  # the session model's map is 1x1: one cell, the same peak everywhere
            assert agreement["images"] > 0 and agreement["same_peak"] == 1.0


def test_float_nodes_are_the_normalisation_the_head_the_heatmap_and_softmax(
    converted: dict,
) -> None:
    model = load(converted, "fp32")
    kinds = {n.name: n.op_type for n in model.graph.node}
    kept = [kinds[name] for name in float_nodes(model)]
    assert kept[:3] == ["Cast", "Mul", "Sub"] and kept[-2:] == ["Softmax", "Gemm"]
    # Between them, the heatmap's path: its 1x1 convolution (the only Conv kept), ReLU, scaling.
    assert kept.count("Conv") == 1
    assert set(kept[3:-2]) <= {"Conv", "Relu", "MaxPool", "Neg", "Sub", "Clip", "Div", "Squeeze"}


def test_calibration_reader_serves_equal_batches_in_ranges() -> None:
    reader = CalibrationReader(np.zeros((40, 1, 8, 8), np.uint8), batch=16)
    assert (len(reader), reader.count) == (2, 32)  # equal batches: the remainder is left out
    assert [len(reader.get_next()[IMAGE]) for _ in range(2)] == [16, 16]
    assert reader.get_next() is None
    reader.set_range(1, 2)
    assert len(reader.get_next()[IMAGE]) == 16 and reader.get_next() is None
    reader.rewind()
    assert len(reader.get_next()[IMAGE]) == 16
    small = CalibrationReader(np.zeros((10, 1, 8, 8), np.uint8), batch=16)
    assert (len(small), small.count) == (1, 10)
    assert [_stride(n) for n in (1, 4, 6, 7, 32)] == [1, 4, 3, 1, 4]


def test_int8_is_smaller_than_fp32(converted: dict) -> None:
    sizes = {v["variant"]: v["size_bytes"] for v in converted["variants"]}
    assert sizes["int8"] < sizes["fp32"] / 3
    assert sizes["trt_fp16"] < sizes["fp32"] * 0.6
    assert Path(variant(converted, "int8")["file"]).is_file()

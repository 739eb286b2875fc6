"""FP16 conversion on a hand-built graph of the contract's shape, without training or a server:
float16 weights and arithmetic, the uint8 ``IMAGE`` cast untouched, float32 ``PROBS``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from cxr.client import contract
from cxr.convert.fp16 import convert_fp16


def contract_graph(path: Path) -> Path:
    """``IMAGE`` uint8 [N,4] -> Cast -> MatMul(W) + B -> Softmax -> ``PROBS`` float32 [N,2]."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.normal(size=(4, 2)) / 255).astype(np.float32), "W")
    bias = numpy_helper.from_array(np.array([0.1, -0.1], np.float32), "B")
    nodes = [
        helper.make_node("Cast", [contract.IMAGE], ["x"], to=TensorProto.FLOAT, name="cast_in"),
        helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul"),
        helper.make_node("Add", ["y", "B"], ["z"], name="add"),
        helper.make_node("Softmax", ["z"], [contract.PROBS], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "contract",
        [helper.make_tensor_value_info(contract.IMAGE, TensorProto.UINT8, ["N", 4])],
        [helper.make_tensor_value_info(contract.PROBS, TensorProto.FLOAT, ["N", 2])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def run(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([contract.PROBS], {contract.IMAGE: images})[0]


def test_fp16_keeps_the_contract_and_the_answers(tmp_path: Path) -> None:
    src = contract_graph(tmp_path / "fp32.onnx")
    dst = convert_fp16(src, tmp_path / "out" / "fp16.onnx")
    half = onnx.load(str(dst))
    io = {v.name: v.type.tensor_type.elem_type for v in [*half.graph.input, *half.graph.output]}
    assert io == {contract.IMAGE: TensorProto.UINT8, contract.PROBS: TensorProto.FLOAT}
    assert {i.name: i.data_type for i in half.graph.initializer} == {
        "W": TensorProto.FLOAT16,
        "B": TensorProto.FLOAT16,
    }
    cast_in = next(n for n in half.graph.node if n.name == "cast_in")
    assert helper.get_attribute_value(cast_in.attribute[0]) == TensorProto.FLOAT
    images = np.random.default_rng(1).integers(0, 256, size=(8, 4), dtype=np.uint8)
    probs = run(dst, images)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, run(src, images), atol=2e-3)

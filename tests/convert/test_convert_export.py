"""FP32 export: contract I/O, dynamic batch, opset, checker, card metadata, parity with PyTorch
(``PROBS`` and ``HEATMAP``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from cxr.client.contract import HEATMAP, IMAGE, PROBS
from cxr.convert.export import OPSET, contract_problems, export_onnx, torch_parity
from cxr.runtime.sessions import onnx_card, ort_session, run_probs


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    from cxr.train.models import load_trained

    model, card = load_trained(tiny_run)
    path = export_onnx(model, card, tmp_path_factory.mktemp("export") / "model.onnx")
    return model, card, path


def test_export_follows_the_contract(exported) -> None:
    _, card, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= OPSET >= 19
    (image,) = proto.graph.input
    probs, heatmap = proto.graph.output
    assert (image.name, probs.name, heatmap.name) == (IMAGE, PROBS, HEATMAP)
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert probs.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert heatmap.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # ResNet-18 reduces 32 px by 32: a 1x1 last feature map.
    assert [d.dim_value for d in heatmap.type.tensor_type.shape.dim[1:]] == [1, 1]
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [1, card.image_size, card.image_size]
    assert onnx_card(ort_session(path))["threshold"] == card.threshold


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch_runs_and_sums_to_one(exported, batch: int) -> None:
    _, card, path = exported
    images = np.random.default_rng(batch).integers(0, 256, (batch, 1, 32, 32), dtype=np.uint8)
    probs = run_probs(ort_session(path), images)
    assert probs.shape == (batch, len(card.classes)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_parity_with_pytorch_on_real_images(exported, synthetic_data: Path) -> None:
    from cxr.train.data import load_split

    model, card, path = exported
    images = load_split(synthetic_data, "val", card.image_size).images[:16]
    probs, heatmap = torch_parity(model, path, images)
    assert probs.output == PROBS and probs.images == len(images) == 16
    assert probs.ok and probs.max_abs_diff <= 1e-4
    assert heatmap.output == HEATMAP and heatmap.ok


def test_contract_problems_name_a_wrong_dtype(exported) -> None:
    _, _, path = exported
    proto = onnx.load(str(path))
    assert contract_problems(proto) == []
    proto.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    proto.graph.input[0].name = "PIXELS"
    assert contract_problems(proto) == [
        "IMAGE: missing (expected UINT8)",
        "PROBS: FLOAT16 (expected FLOAT)",
    ]

"""The Python-backend models' ``execute`` on in-memory requests, without a server.

Triton's stub provides ``triton_python_backend_utils``: its Python half (which finds a request's
input tensors) is loaded from the nvidia-pytriton wheel as it is, and its C++ half (``Tensor``,
``InferenceResponse``, ``TritonError``, ``Logger``) is stood in for by the small classes below,
with the same constructor and accessors the models use.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, save
from PIL import Image

from cxr.client import contract
from cxr.server.backend.config import PARAM_MODEL_FILE, PARAM_SPIN, PARAM_THREADS

SIZE = 4


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class TritonError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str = INTERNAL) -> None:
        self.message, self.code = message, code


@dataclass
class InferenceResponse:
    output_tensors: list[Tensor] | None = None
    error: TritonError | None = None


@dataclass
class Request:
    tensors: list[Tensor]
    requested: tuple[str, ...] = (contract.PROBS,)

    def inputs(self) -> list[Tensor]:
        return self.tensors

    def requested_output_names(self) -> list[str]:
        return list(self.requested)


class Logger:
    logged: ClassVar[list[str]] = []

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.logged.append(message)


class TritonModelException(Exception):  # noqa: N818 - Triton's own name
    pass


@pytest.fixture
def pb_utils(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``triton_python_backend_utils`` as the stub would provide it; the backend modules are
    imported afresh against it and forgotten afterwards."""
    import pytriton

    path = Path(pytriton.__file__).parent / "tritonserver/backends/python"
    spec = importlib.util.spec_from_file_location(
        "triton_python_backend_utils", path / "triton_python_backend_utils.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for stand_in in (Tensor, TritonError, InferenceResponse, Logger, TritonModelException):
        setattr(module, stand_in.__name__, stand_in)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    for name in [n for n in sys.modules if n.startswith("cxr.server.backend.")]:
        monkeypatch.delitem(sys.modules, name)
    return module


def model_args(tmp_path: Path, config: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "model_config": json.dumps(config),
        "model_repository": str(tmp_path),
        "model_version": "1",
        "model_name": name,
        "model_instance_name": f"{name}_0",
    }


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bytes_request(data: bytes) -> Request:
    return Request([Tensor(contract.IMAGE_BYTES, np.array([[data]], dtype=np.object_))])


def test_preprocess_fails_only_the_bad_request(pb_utils: ModuleType, tmp_path: Path) -> None:
    from cxr.server.backend.preprocess import TritonPythonModel

    config = {
        "parameters": {contract.PARAM_IMAGE_SIZE: {"string_value": str(SIZE)}},
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
    }
    model = TritonPythonModel()
    model.initialize(model_args(tmp_path, config, contract.PREPROCESS_MODEL))
    good = png(np.full((16, 16), 77, np.uint8))
    try:
        responses = model.execute(
            [bytes_request(good), bytes_request(b"GIF89a not a radiograph"), bytes_request(good)]
        )
    finally:
        model.finalize()
    first, bad, last = responses
    for response in (first, last):
        assert response.error is None
        (tensor,) = response.output_tensors
        assert tensor.name() == contract.IMAGE
        np.testing.assert_array_equal(tensor.as_numpy(), np.full((1, 1, SIZE, SIZE), 77, np.uint8))
    assert bad.output_tensors is None and bad.error.code == TritonError.INVALID_ARG
    assert bad.error.message.startswith("not_an_image: ") and "\n" not in bad.error.message


def linear_classifier(path: Path) -> Path:
    """``IMAGE`` uint8 [N,1,S,S] -> softmax(flatten / 255 @ W) = ``PROBS`` float32 [N,2]."""
    weight = np.random.default_rng(0).normal(size=(SIZE * SIZE, 2)).astype(np.float32) / 255
    nodes = [
        helper.make_node("Cast", [contract.IMAGE], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["x"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [contract.PROBS], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info(contract.IMAGE, TensorProto.UINT8, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info(contract.PROBS, TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


def classifier_config(threads: str) -> dict[str, Any]:
    params = {PARAM_MODEL_FILE: "model.onnx", PARAM_THREADS: threads, PARAM_SPIN: "0"}
    return {
        "max_batch_size": 8,
        "input": [{"name": contract.IMAGE, "data_type": "TYPE_UINT8", "dims": [1, SIZE, SIZE]}],
        "output": [{"name": contract.PROBS, "data_type": "TYPE_FP32", "dims": [2]}],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "parameters": {key: {"string_value": value} for key, value in params.items()},
    }


def test_classifier_runs_the_batch_once_and_splits_it(pb_utils: ModuleType, tmp_path: Path):
    from cxr.server.backend.classifier import TritonPythonModel

    onnx_path = linear_classifier(tmp_path / "1" / "model.onnx")
    model = TritonPythonModel()
    model.initialize(model_args(tmp_path, classifier_config("1"), "pneumonia_fp32"))
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, (n, 1, SIZE, SIZE), dtype=np.uint8) for n in (1, 3, 2)]
    responses = model.execute([Request([Tensor(contract.IMAGE, b)]) for b in batches])
    model.finalize()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = session.run([contract.PROBS], {contract.IMAGE: np.concatenate(batches)})[0]
    rows = [r.output_tensors[0].as_numpy() for r in responses]
    assert [len(r) for r in rows] == [1, 3, 2]
    assert all(r.output_tensors[0].name() == contract.PROBS for r in responses)
    np.testing.assert_allclose(np.concatenate(rows), expected, rtol=1e-6)


def test_classifier_refuses_an_onnx_that_differs_from_its_config(
    pb_utils: ModuleType, tmp_path: Path
) -> None:
    from cxr.server.backend.classifier import TritonPythonModel

    linear_classifier(tmp_path / "1" / "model.onnx")
    config = classifier_config("1")
    config["output"][0]["dims"] = [3]
    with pytest.raises(TritonModelException, match=r"PROBS has shape \[N, 2\], the config says"):
        TritonPythonModel().initialize(model_args(tmp_path, config, "pneumonia_fp32"))

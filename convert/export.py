"""Export a trained run to ONNX and check it against PyTorch."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxr.client.contract import IMAGE, PROBS
from cxr.runtime.sessions import CARD_METADATA_KEY, ort_session, run_probs
from cxr.train.card import ModelCard

#: Opset 19 or later: needed for INT8 Q/DQ that TensorRT accepts, and for uint8 Cast inputs.
OPSET = 19
#: float32 parity limit between PyTorch and onnxruntime on the same images.
FP32_PARITY_ATOL = 1e-4


@dataclass
class Parity:
    """Largest absolute difference of one output between a reference and a candidate."""

    output: str
    max_abs_diff: float
    limit: float
    images: int

    @property
    def ok(self) -> bool:
        """Whether the difference is within the limit."""
        return self.max_abs_diff <= self.limit

    def as_dict(self) -> dict:
        """Plain dict for reports."""
        return {**asdict(self), "ok": self.ok}


def export_onnx(model, card: ModelCard, path: Path) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis, uint8 ``IMAGE`` in, ``PROBS`` out."""
    import onnx
    import torch

    example = torch.zeros((2, 1, card.image_size, card.image_size), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[IMAGE],
            output_names=[PROBS],
            dynamic_shapes={"image": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = onnx.load(str(path))
    embed_card(proto, card)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return path


def contract_problems(proto) -> list[str]:
    """How an ONNX model's inputs and outputs differ from the contract (empty: they match)."""
    import onnx

    wanted = {IMAGE: onnx.TensorProto.UINT8, PROBS: onnx.TensorProto.FLOAT}
    graph = proto.graph
    found = {t.name: t.type.tensor_type.elem_type for t in [*graph.input, *graph.output]}
    return [
        f"{name}: {onnx.TensorProto.DataType.Name(found[name]) if name in found else 'missing'}"
        f" (expected {onnx.TensorProto.DataType.Name(dtype)})"
        for name, dtype in wanted.items()
        if found.get(name) != dtype
    ]


def embed_card(proto, card: ModelCard, extra: dict | None = None) -> None:
    """Store the model card in the ONNX metadata so the file explains itself; ``extra`` adds
    what is particular to this file (an INT8 model's calibration and float layers)."""
    for prop in list(proto.metadata_props):
        if prop.key == CARD_METADATA_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key = CARD_METADATA_KEY
    entry.value = json.dumps({**asdict(card), **(extra or {})})


def torch_parity(model, onnx_path: Path, images: np.ndarray) -> Parity:
    """Compare onnxruntime's ``PROBS`` with PyTorch's on real images."""
    import torch

    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    actual = run_probs(ort_session(onnx_path), images)
    return Parity(PROBS, float(np.max(np.abs(expected - actual))), FP32_PARITY_ATOL, len(images))

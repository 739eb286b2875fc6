"""Export a trained run to ONNX and check it against PyTorch."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxr.client.contract import (
    HEATMAP,
    HEATMAP_TRITON_DTYPE,
    IMAGE,
    IMAGE_TRITON_DTYPE,
    PROBS,
    PROBS_TRITON_DTYPE,
)
from cxr.runtime.sessions import CARD_METADATA_KEY, ort_session, run_heatmaps, run_probs
from cxr.runtime.tensors import onnx_type
from cxr.train.card import ModelCard

#: Opset 19 or later: needed for INT8 Q/DQ that TensorRT accepts, and for uint8 Cast inputs.
OPSET = 19
#: float32 parity limit between PyTorch and onnxruntime on the same images.
FP32_PARITY_ATOL = 1e-4
#: The same for ``HEATMAP`` (0..1): its per-image scaling divides by the map's span, which can
#: amplify float rounding more than a softmax does.
HEATMAP_PARITY_ATOL = 1e-3


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
    """Write ``model`` (a :class:`~train.models.TriageNet`) as ONNX with a dynamic batch axis:
    uint8 ``IMAGE`` in, ``PROBS`` and (where the head allows one) ``HEATMAP`` out."""
    import onnx
    import torch

    from cxr.train.models import HeatmapUnsupportedError, ServedNet, cam_weights

    try:
        cam_weights(model.backbone)
        network, outputs = ServedNet(model), [PROBS, HEATMAP]
    except HeatmapUnsupportedError:
        network, outputs = model, [PROBS]

    example = torch.zeros((2, 1, card.image_size, card.image_size), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (example,),
            str(path),
            input_names=[IMAGE],
            output_names=outputs,
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


def contract_problems(proto, heatmap: bool = True) -> list[str]:
    """How an ONNX model's inputs and outputs differ from the contract (empty: they match);
    ``heatmap``: whether it must have ``HEATMAP`` too."""
    import onnx

    wanted = {IMAGE: onnx_type(IMAGE_TRITON_DTYPE), PROBS: onnx_type(PROBS_TRITON_DTYPE)}
    if heatmap:
        wanted[HEATMAP] = onnx_type(HEATMAP_TRITON_DTYPE)
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


def has_heatmap(path: Path) -> bool:
    """Whether an ONNX file has the ``HEATMAP`` output."""
    import onnx

    return HEATMAP in {o.name for o in onnx.load(str(path), load_external_data=False).graph.output}


def torch_parity(model, onnx_path: Path, images: np.ndarray) -> list[Parity]:
    """Compare onnxruntime's ``PROBS`` (and ``HEATMAP``) with PyTorch's on real images."""
    import torch

    session, batch = ort_session(onnx_path), torch.from_numpy(images)
    with torch.no_grad():
        probs = model(batch).numpy()
        heatmaps = model.probs_and_heatmap(batch)[1].numpy() if has_heatmap(onnx_path) else None
    checks = [_parity(PROBS, probs, run_probs(session, images), FP32_PARITY_ATOL)]
    if heatmaps is not None:
        actual = run_heatmaps(session, images)
        checks.append(_parity(HEATMAP, heatmaps, actual, HEATMAP_PARITY_ATOL))
    return checks


def _parity(name: str, expected: np.ndarray, actual: np.ndarray, limit: float) -> Parity:
    return Parity(name, float(np.max(np.abs(expected - actual))), limit, len(expected))


def heatmap_agreement(reference: Path, candidate: Path, images: np.ndarray) -> dict | None:
    """How a variant's ``HEATMAP`` agrees with the FP32 model's on ``images``: the largest and
    mean absolute difference (maps are 0..1), and the share of images whose peak cell is the
    same; None when the models have no heatmap."""
    if not has_heatmap(reference):
        return None
    expected = run_heatmaps(ort_session(reference), images)
    actual = run_heatmaps(ort_session(candidate), images)
    flat = len(images), -1
    peaks = expected.reshape(flat).argmax(1) == actual.reshape(flat).argmax(1)
    return {
        "images": len(images),
        "max_abs_diff": float(np.max(np.abs(expected - actual))),
        "mean_abs_diff": float(np.mean(np.abs(expected - actual))),
        "same_peak": float(np.mean(peaks)),
    }

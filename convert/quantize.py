"""INT8 by static post-training quantization (onnxruntime.quantization), calibrated on real images.

Two flavours of the same calibration:

* ``cpu``: QDQ, uint8 activations (asymmetric), int8 per-channel symmetric weights (U8S8): the
  combination onnxruntime's CPU kernels (VNNI) run fastest; served as ``pneumonia_int8``.
* ``tensorrt``: QDQ, int8 activations with zero point 0, int8 per-channel weights (S8S8
  symmetric): what TensorRT's explicit quantization accepts; the input of ``pneumonia_trt_int8``.

The image pre-processing at the graph's start (uint8 ``Cast``, scale, shift), the classifier head
and the ``Softmax`` at the end stay in float: only the network between them is quantized.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cxr.client.contract import IMAGE

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
FLAVOURS = ("cpu", "tensorrt")
#: Images per calibration inference, and batches per range update (bounds calibration memory).
CALIB_BATCH = 16
CALIB_STRIDE_BATCHES = 4
#: Ops that carry the heavy arithmetic: pre-/post-processing is what lies outside them.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


class QuantizationError(RuntimeError):
    """Quantization could not be done with the given inputs."""


class CalibrationReader:
    """Feeds ``IMAGE`` batches to the calibrator, in ranges (``CalibStridedMinMax``)."""

    def __init__(self, images: np.ndarray, batch: int = CALIB_BATCH) -> None:
        # Equal batches only: onnxruntime's histogram calibrators stack the outputs of a range.
        usable = len(images) - len(images) % batch if len(images) >= batch else len(images)
        self.count = usable
        self.batches = [images[i : i + batch] for i in range(0, usable, batch)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve batches ``start_index`` to ``end_index`` (exclusive) on the next pass."""
        self._iter: Iterator[np.ndarray] = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch as an input feed, ``None`` at the end of the range."""
        batch = next(self._iter, None)
        return None if batch is None else {IMAGE: batch}

    def rewind(self) -> None:
        """Start again from the first batch."""
        self.set_range(0, len(self.batches))


def _stride(batches: int, most: int = CALIB_STRIDE_BATCHES) -> int:
    """The largest divisor of ``batches`` not above ``most`` (onnxruntime needs a divisor)."""
    return max(d for d in range(1, min(most, batches) + 1) if batches % d == 0)


def float_nodes(model) -> list[str]:
    """Names of the nodes to keep in float: those between the graph inputs and the first compute
    op (the uint8 Cast and normalisation), and from the last compute op (the classifier head, so
    the logits are not rounded to 8 bits) to the outputs (Softmax)."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep: dict[str, None] = {}

    def walk(tensors: list[str], step) -> None:
        seen: set[str] = set()
        while tensors:
            for node in step(tensors.pop()):
                if node.name in seen or (node.op_type in COMPUTE_OPS and step is downstream):
                    continue
                seen.add(node.name)
                keep[node.name] = None
                if node.op_type not in COMPUTE_OPS:
                    tensors.extend(node.output if step is downstream else node.input)

    def downstream(tensor: str) -> list:
        return consumers.get(tensor, [])

    def upstream(tensor: str) -> list:
        return [producers[tensor]] if tensor in producers else []

    walk([i.name for i in graph.input], downstream)
    walk([o.name for o in graph.output], upstream)
    return list(keep)


def quantized_layers(quantized) -> list[str]:
    """Names of the nodes of a QDQ model that run on quantized inputs (graph order): what
    ``keep_float`` can name. Keeping all of them in float leaves no quantized arithmetic."""
    dequantized = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    return [
        n.name
        for n in quantized.graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        and any(i in dequantized for i in n.input)
    ]


def layer_labels(model, names: list[str]) -> dict[str, str]:
    """A readable label per node name: its op type and first initializer (the PyTorch
    parameter, e.g. ``Conv backbone.conv1.weight``), else its op type."""
    initializers = {t.name for t in model.graph.initializer}
    labels = {}
    for node in model.graph.node:
        if node.name in names:
            weights = [i for i in node.input if i in initializers]
            labels[node.name] = " ".join([node.op_type, *weights[:1]])
    return labels


def prepare(src: Path, dst: Path) -> Path:
    """Shape inference and graph optimisation before quantization (``quant_pre_process``)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    return dst


def quantize_int8(
    prepared: Path,
    dst: Path,
    calibration: CalibrationReader,
    flavour: str,
    method: str = "minmax",
    cache: Path | None = None,
    keep_float: tuple[str, ...] = (),
) -> Path:
    """Write the ``flavour`` INT8 model of ``prepared`` (an output of :func:`prepare`) to ``dst``.

    ``cache`` (a JSON file path) keeps the calibrated ranges: the second flavour, and every mixed
    model of the per-layer search, reuses them instead of calibrating again (one cache per
    method). ``keep_float``: layers (node names, :func:`quantized_layers`) left in float besides
    the pre- and post-processing.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if flavour not in FLAVOURS:
        raise QuantizationError(f"unknown INT8 flavour {flavour!r}; choose one of {FLAVOURS}")
    if method not in CALIBRATION_METHODS:
        raise QuantizationError(
            f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}"
        )
    if len(calibration) == 0:
        raise QuantizationError("no calibration images")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    symmetric = flavour == "tensorrt"
    calibration.rewind()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with (
        warnings.catch_warnings(),
        tempfile.TemporaryDirectory() as scratch,
        contextlib.redirect_stdout(io.StringIO()),  # the histogram calibrators print progress
    ):
        warnings.simplefilter("ignore")
        quantize_static(
            str(prepared),
            str(dst),
            calibration,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=[
                *float_nodes(onnx.load(str(prepared), load_external_data=False)),
                *keep_float,
            ],
            calibrate_method=methods[method],
            calibration_cache_path=cache or Path(scratch) / "calibration.json",
            extra_options={
                "ActivationSymmetric": symmetric,
                "WeightSymmetric": True,
                "CalibStridedMinMax": _stride(len(calibration)),
            },
        )
    return dst

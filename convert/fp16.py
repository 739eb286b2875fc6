"""FP16 ONNX for TensorRT: float16 weights and arithmetic, float32/uint8 inputs and outputs.

TensorRT 10+ builds strongly typed networks, so the precision is carried by the ONNX itself. The
conversion is onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)``, with the
``Cast`` that reads the uint8 ``IMAGE`` left as it is: the converter would otherwise retype its
output to float16 without changing its ``to`` attribute, an invalid graph. (Blocking the final
``Softmax`` as well is no option: the converter then declares ``PROBS`` float16.)
"""

from __future__ import annotations

import warnings
from pathlib import Path


def convert_fp16(src: Path, dst: Path) -> Path:
    """Write the float16 version of the float32 ONNX ``src`` to ``dst`` (checked)."""
    import onnx
    from onnxconverter_common.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    inputs = {i.name for i in model.graph.input}
    casts = [n.name for n in model.graph.node if n.op_type == "Cast" and set(n.input) & inputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "float32 number ... will be truncated", per weight
        half = convert_float_to_float16(model, keep_io_types=True, node_block_list=casts)
    onnx.checker.check_model(half, full_check=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(half, str(dst))
    return dst

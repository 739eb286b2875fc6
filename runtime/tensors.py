"""The contract's tensor types as Triton, ONNX and onnxruntime name them, and one comparison of a
model's inputs and outputs with the tensors a config declares.

``cxr repo check`` reads the signature from the ONNX file, the server's classifier from its
onnxruntime session, and both compare it here, so they report a mismatch in the same words.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TensorType:
    """One element type: Triton's name, ``onnx.TensorProto``'s number, onnxruntime's name."""

    triton: str
    onnx: int
    ort: str


#: Every element type the project's models use.
TENSOR_TYPES = (
    TensorType("UINT8", 2, "tensor(uint8)"),
    TensorType("FP32", 1, "tensor(float)"),
    TensorType("FP16", 10, "tensor(float16)"),
)
_BY_TRITON = {t.triton: t for t in TENSOR_TYPES}
_TRITON_OF_ONNX = {t.onnx: t.triton for t in TENSOR_TYPES}
_TRITON_OF_ORT = {t.ort: t.triton for t in TENSOR_TYPES}


def onnx_type(triton: str) -> int:
    """The ``onnx.TensorProto`` element type of a Triton dtype name (``"FP32"`` -> 1)."""
    return _BY_TRITON[triton].onnx


@dataclass(frozen=True)
class Signature:
    """A tensor as a model or a config has it: Triton dtype name and dims without the batch
    axis (-1 where a dimension is not fixed)."""

    name: str
    dtype: str
    dims: tuple[int, ...]


def onnx_signature(proto: Any) -> dict[str, Signature]:
    """The inputs and outputs of an ``onnx.ModelProto``, by name."""
    found = {}
    for tensor in [*proto.graph.input, *proto.graph.output]:
        kind = tensor.type.tensor_type
        dtype = _TRITON_OF_ONNX.get(kind.elem_type, f"ONNX type {kind.elem_type}")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim][1:]
        found[tensor.name] = Signature(tensor.name, dtype, tuple(dims))
    return found


def session_signature(session: Any) -> dict[str, Signature]:
    """The inputs and outputs of an onnxruntime session, by name."""
    return {
        t.name: Signature(
            t.name,
            _TRITON_OF_ORT.get(t.type, t.type),
            tuple(d if isinstance(d, int) else -1 for d in t.shape[1:]),
        )
        for t in [*session.get_inputs(), *session.get_outputs()]
    }


def signature_problems(
    source: str, found: dict[str, Signature], wanted: Iterable[Signature]
) -> list[str]:
    """How the tensors ``found`` in ``source`` differ from those ``wanted`` (empty: they match)."""
    problems = []
    for want in wanted:
        have = found.get(want.name)
        if have is None:
            problems.append(f"{source} has no tensor {want.name!r} (it has {sorted(found)})")
            continue
        if have.dtype != want.dtype:
            problems.append(f"{source}: {want.name} is {have.dtype}, the config says {want.dtype}")
        if have.dims != want.dims:
            problems.append(
                f"{source}: {want.name} has shape {_dims(have.dims)}, the config says "
                f"{_dims(want.dims)}"
            )
    return problems


def _dims(dims: Iterable[int]) -> str:
    return "[" + ", ".join(["N", *map(str, dims)]) + "]"


def config_tensor(name: str, data_type: str, dims: Iterable[int | str]) -> Signature:
    """A tensor of a Triton model config (``data_type`` as ``"TYPE_FP32"`` or ``"FP32"``)."""
    return Signature(name, data_type.removeprefix("TYPE_"), tuple(int(d) for d in dims))

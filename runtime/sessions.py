"""onnxruntime sessions for the exported classifier, shared by conversion, evaluation, benchmarks
and the server's Python-backend model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cxr.client.contract import HEATMAP, IMAGE, PROBS

#: ONNX metadata key holding the model card (JSON), so an .onnx file explains itself.
CARD_METADATA_KEY = "cxr_card"


def ort_session(path: Path, threads: int | None = None, spin: bool = True) -> Any:
    """A CPU onnxruntime session with ``threads`` intra-op threads (default: all cores).

    ``spin=False`` stops idle intra-op threads from busy-waiting for the next run: for a server,
    whose runs have gaps between them and which shares the CPU with its own threads.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_probs(session: Any, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """``PROBS`` for uint8 ``images`` [N, 1, S, S], run in chunks of ``batch``."""
    return run_output(session, PROBS, images, batch)


def run_heatmaps(session: Any, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """``HEATMAP`` [N, h, w] for uint8 ``images`` [N, 1, S, S], run in chunks of ``batch``."""
    return run_output(session, HEATMAP, images, batch)


def run_output(session: Any, name: str, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """One output of the session for uint8 ``images`` [N, 1, S, S], in chunks of ``batch``."""
    chunks = [
        session.run([name], {IMAGE: images[start : start + batch]})[0]
        for start in range(0, len(images), batch)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def onnx_card(session: Any) -> dict[str, Any] | None:
    """The model card embedded in an ONNX file's metadata, if any."""
    raw = session.get_modelmeta().custom_metadata_map.get(CARD_METADATA_KEY)
    return json.loads(raw) if raw else None


def onnx_image_size(session: Any) -> int:
    """The square input size S of a session whose input is ``IMAGE`` [N, 1, S, S]."""
    (image_input,) = [i for i in session.get_inputs() if i.name == IMAGE]
    size = image_input.shape[-1]
    if not isinstance(size, int):
        raise ValueError(f"ONNX input {IMAGE} has no fixed image size: shape {image_input.shape}")
    return size

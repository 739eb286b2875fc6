"""Classifier variant on CPU: onnxruntime behind Triton's dynamic batcher.

One ``execute`` call gets every request the batcher gathered; their images are joined into one
array (a single copy), run in one onnxruntime call, and the output is split back by views.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from client.contract import IMAGE, PROBS
from convert.runtime import ort_session
from server.backend.config import model_parameters, version_dir
from server.repository import PARAM_MODEL_FILE, PARAM_THREADS


class TritonPythonModel:
    """Triton Python-backend model running one ONNX classifier."""

    def initialize(self, args: dict[str, Any]) -> None:
        params = model_parameters(args)
        path = version_dir(args) / params[PARAM_MODEL_FILE]
        self.session = ort_session(path, int(params[PARAM_THREADS]))

    def execute(self, requests: list) -> list:
        arrays = [pb_utils.get_input_tensor_by_name(r, IMAGE).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        if sum(sizes) == 0:
            error = pb_utils.TritonError(
                "empty batch: send at least one image", pb_utils.TritonError.INVALID_ARG
            )
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        probs = self.session.run([PROBS], {IMAGE: batch})[0]
        responses, start = [], 0
        for size in sizes:
            if size == 0:
                error = pb_utils.TritonError(
                    "empty request: no image", pb_utils.TritonError.INVALID_ARG
                )
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            tensor = pb_utils.Tensor(PROBS, probs[start : start + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += size
        return responses

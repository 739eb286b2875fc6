"""``preprocess``: encoded PNG/JPEG/DICOM bytes -> the classifier's uint8 image.

Each request is decoded on its own: a malformed file fails only its own request, with the decoding
error's reason, while the other requests of the same batch succeed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from client.contract import IMAGE, IMAGE_BYTES, PARAM_IMAGE_SIZE
from client.imaging import ImageDecodeError, load_model_input
from server.backend.config import model_parameters


class TritonPythonModel:
    """Triton Python-backend model decoding radiographs with the shared decoding code."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.image_size = int(model_parameters(args)[PARAM_IMAGE_SIZE])

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        items = pb_utils.get_input_tensor_by_name(request, IMAGE_BYTES).as_numpy().reshape(-1)
        try:
            images = np.stack([load_model_input(bytes(item), self.image_size) for item in items])
        except ImageDecodeError as err:
            error = pb_utils.TritonError(f"{err.code}: {err}", pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(error=error)
        except Exception as err:
            message = f"decode_failed: {type(err).__name__}: {err}"
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
            )
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(IMAGE, images)])

"""``preprocess``: encoded PNG/JPEG/DICOM bytes -> the classifier's uint8 image.

Each request is decoded on its own: a malformed file fails only its own request, with the decoding
error's code and a short reason, while the other requests of the same batch succeed. An
unexpected exception is logged in the server's log; the client gets ``decode_failed`` and no
exception text. The requests of a batch are decoded in a thread pool sized when the model loads,
on the serving machine: the cores this process may use, shared by the model's instances.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from cxr.client.contract import IMAGE, IMAGE_BYTES, PARAM_IMAGE_SIZE
from cxr.client.imaging import ImageDecodeError, load_model_input
from cxr.server.backend.config import intra_op_threads, model_parameters, short_reason


class TritonPythonModel:
    """Triton Python-backend model decoding radiographs with the shared decoding code."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.image_size = int(model_parameters(args)[PARAM_IMAGE_SIZE])
        config = json.loads(args["model_config"])
        instances = sum(int(group["count"]) for group in config["instance_group"])
        _, threads = intra_op_threads("0", instances)  # cores / instances, at least 1
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    def execute(self, requests: list) -> list:
        return list(self.pool.map(self._one, requests))

    def _one(self, request: Any) -> Any:
        items = pb_utils.get_input_tensor_by_name(request, IMAGE_BYTES).as_numpy().reshape(-1)
        try:
            images = np.stack([load_model_input(bytes(item), self.image_size) for item in items])
        except ImageDecodeError as err:
            message = f"{err.code}: {short_reason(str(err))}"
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
            )
        except Exception as err:
            pb_utils.Logger.log_error(f"preprocess: {type(err).__name__}: {err}")
            message = "decode_failed: the file could not be decoded"
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
            )
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(IMAGE, images)])

    def finalize(self) -> None:
        self.pool.shutdown()

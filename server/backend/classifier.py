"""Classifier variant on CPU: onnxruntime behind Triton's dynamic batcher.

An instance runs a batch on every core while the model's other instances are idle (a lone
request gets the latency of all cores) and on its share of the cores while they are running (a
loaded server gets one single-threaded, synchronisation-free run per core): it holds two
onnxruntime sessions of the same file and picks one per batch (see ``cxr.server.backend.siblings``).

One ``execute`` call gets every request the batcher gathered. A lone request runs on its input
tensor as Triton handed it over (no copy); several are copied once into a buffer allocated at
load time, run in one onnxruntime call, and the output rows are handed back as views. Nothing else
is done per request: Triton has already checked names, dtypes, shapes and the batch size against
the config, so ``execute`` only joins, runs and splits. Each request gets the outputs it asked for
(``PROBS``; ``HEATMAP`` only when requested), and onnxruntime computes those the batch needs.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from cxr.client.contract import IMAGE
from cxr.runtime.sessions import ort_session
from cxr.runtime.tensors import config_tensor, session_signature, signature_problems
from cxr.server.backend.config import (
    PARAM_MODEL_FILE,
    PARAM_SPIN,
    PARAM_THREADS,
    intra_op_threads,
    model_parameters,
    version_dir,
)
from cxr.server.backend.siblings import Siblings


class ModelLoadError(RuntimeError):
    """The model file cannot serve this config; the message says precisely why."""


def open_session(path: Any, threads: int, spin: bool) -> Any:
    """An onnxruntime session of ``path``, or a :class:`ModelLoadError` saying what is wrong."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} is missing (run `cxr convert`)")
    try:
        return ort_session(path, threads, spin)
    except Exception as err:  # onnxruntime raises its own exception types
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelLoadError(f"{path} is not a loadable ONNX model: {reason}") from err


def check_io(session: Any, config: dict[str, Any], path: Any) -> None:
    """Raise :class:`ModelLoadError` when the ONNX inputs/outputs differ from the config's."""
    wanted = [
        config_tensor(t["name"], t["data_type"], t["dims"])
        for t in [*config["input"], *config["output"]]
    ]
    problems = signature_problems(str(path), session_signature(session), wanted)
    if problems:
        raise ModelLoadError(problems[0])


class TritonPythonModel:
    """Triton Python-backend model running one ONNX classifier."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = model_parameters(args)
        path = version_dir(args) / params[PARAM_MODEL_FILE]
        instances = sum(int(group["count"]) for group in config["instance_group"])
        alone, shared = intra_op_threads(params[PARAM_THREADS], instances)
        spin = params.get(PARAM_SPIN) == "1"
        try:
            self.alone = open_session(path, alone, spin)
            check_io(self.alone, config, path)
            self.shared = self.alone if shared == alone else open_session(path, shared, spin)
        except ModelLoadError as err:
            raise pb_utils.TritonModelException(str(err)) from None
        self.siblings = None
        if self.shared is not self.alone:
            self.siblings = Siblings.of_instance(
                args["model_name"], args["model_version"], args["model_instance_name"], instances
            )
        (image,) = config["input"]
        shape = [int(config["max_batch_size"]), *(int(d) for d in image["dims"])]
        self.buffer = np.empty(shape, dtype=np.uint8)
        self.outputs = [output["name"] for output in config["output"]]
        self.name = args["model_name"]

    def execute(self, requests: list) -> list:
        try:
            return self._run(requests)
        except Exception as err:  # the client gets a code, the server's log the exception
            pb_utils.Logger.log_error(f"{self.name}: {type(err).__name__}: {err}")
            error = pb_utils.TritonError(
                "inference_failed: the model could not run this batch",
                pb_utils.TritonError.INTERNAL,
            )
            return [pb_utils.InferenceResponse(error=error) for _ in requests]

    def _run(self, requests: list) -> list:
        arrays = [pb_utils.get_input_tensor_by_name(r, IMAGE).as_numpy() for r in requests]
        if len(arrays) == 1:
            batch = arrays[0]
        else:
            total = sum(len(a) for a in arrays)
            batch = np.concatenate(arrays, out=self.buffer[:total])
        wanted = [set(r.requested_output_names()) for r in requests]
        names = [name for name in self.outputs if any(name in w for w in wanted)]
        with self.siblings.running() if self.siblings else nullcontext(False) as crowded:
            session = self.shared if crowded else self.alone
            values = dict(zip(names, session.run(names, {IMAGE: batch}), strict=True))
        responses, start = [], 0
        for array, asked in zip(arrays, wanted, strict=True):
            end = start + len(array)
            tensors = [pb_utils.Tensor(n, values[n][start:end]) for n in names if n in asked]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses

    def finalize(self) -> None:
        if self.siblings is not None:
            self.siblings.close()

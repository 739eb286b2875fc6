"""``cxr repo check``: find what would stop a model repository from serving, precisely.

Every ``config.pbtxt`` must parse as Triton's ModelConfig protobuf; every file a model needs must
be there; an ONNX classifier's inputs and outputs must be the config's; the ensemble's steps must
exist and fit together; a TensorRT plan must have been built from the ONNX beside it, by this
TensorRT, for this GPU, for the config's shapes. Each problem names the model and the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cxr.client import contract
from cxr.convert.tensorrt import sha256, stamp_path
from cxr.server.repository import (
    CONFIG_FILE,
    LABELS_FILE,
    ONNX_FILE,
    PARAM_MODEL_FILE,
    PARAM_THREADS,
    PLAN_FILE,
    PYTHON_MODEL_FILE,
    VERSION,
    read_config,
)

#: ONNX element types (onnx.TensorProto) of the contract's dtypes.
ONNX_DTYPES = {1: "FP32", 2: "UINT8", 10: "FP16"}


@dataclass
class Problem:
    """One thing wrong with one model."""

    model: str
    message: str

    def __str__(self) -> str:
        return f"{self.model}: {self.message}"


@dataclass
class Machine:
    """What engines must have been built for; ``None`` = not known here, not checked."""

    tensorrt_version: str | None = None
    compute_capability: str | None = None


def installed_tensorrt() -> str | None:
    """The version of the TensorRT installed here, if any."""
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)


def check_repository(
    repo: Path,
    gpu_compute_capability: str | None = None,
    tensorrt_version: str | None = None,
    engines: bool = True,
) -> list[Problem]:
    """Every problem found in ``repo``; an empty list means it is consistent.

    TensorRT plans must match ``tensorrt_version`` (default: the TensorRT installed here; not
    checked without one) and ``gpu_compute_capability`` (not checked when None). With
    ``engines=False`` TensorRT models are left out, as the embedded CPU server leaves them out.
    """
    if not repo.is_dir():
        return [Problem(str(repo), "model repository folder not found")]
    machine = Machine(tensorrt_version or installed_tensorrt(), gpu_compute_capability)
    problems: list[Problem] = []
    configs: dict[str, mc.ModelConfig] = {}
    folders = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        path = folder / CONFIG_FILE
        if not path.is_file():
            problems.append(Problem(folder.name, f"no {CONFIG_FILE} in {folder}"))
            continue
        try:
            config = read_config(path)
        except (text_format.ParseError, UnicodeDecodeError) as err:
            problems.append(Problem(folder.name, f"{path} is not a valid ModelConfig: {err}"))
            continue
        if config.platform == "tensorrt_plan" and not engines:
            continue
        if config.name and config.name != folder.name:
            problems.append(
                Problem(folder.name, f"config name {config.name!r} differs from its folder name")
            )
        configs[folder.name] = config
        problems += _check_model(folder, config, machine)
    if not folders:
        problems.append(Problem(str(repo), "no model folders (run `cxr convert`)"))
    problems += _check_ensembles(configs)
    return problems


def _check_model(folder: Path, config: mc.ModelConfig, machine: Machine) -> list[Problem]:
    name = folder.name
    if config.platform == "ensemble":
        return []
    if not (folder / VERSION).is_dir():
        return [Problem(name, f"no version folder {folder / VERSION}")]
    found: list[Problem] = []
    for output in config.output:
        if output.label_filename and not (folder / output.label_filename).is_file():
            found.append(Problem(name, f"labels file {folder / output.label_filename} is missing"))
    if config.backend == "python":
        if not (folder / VERSION / PYTHON_MODEL_FILE).is_file():
            found.append(Problem(name, f"{folder / VERSION / PYTHON_MODEL_FILE} is missing"))
    elif config.platform != "tensorrt_plan":
        kind = config.platform or config.backend or "no backend or platform"
        found.append(Problem(name, f"{kind}: not a kind of model this repository uses"))
    if name.startswith(contract.CLASSIFIER_PREFIX):
        found += _check_classifier(folder, config, machine)
    return found


def _check_classifier(folder: Path, config: mc.ModelConfig, machine: Machine) -> list[Problem]:
    name = folder.name
    found: list[Problem] = []
    params = {key: value.string_value for key, value in config.parameters.items()}
    classes = params.get(contract.PARAM_CLASSES, "").split(",")
    labels = folder / LABELS_FILE
    if labels.is_file() and labels.read_text().split() != classes:
        found.append(
            Problem(name, f"{labels} lists {labels.read_text().split()}, the config {classes}")
        )
    probs = [o for o in config.output if o.name == contract.PROBS]
    if probs and list(probs[0].dims) != [len(classes)]:
        found.append(
            Problem(name, f"{contract.PROBS} dims {list(probs[0].dims)} != {len(classes)} classes")
        )
    for key in (contract.PARAM_THRESHOLD, contract.PARAM_CLASSES, contract.PARAM_IMAGE_SIZE):
        if key not in params:
            found.append(Problem(name, f"no {key!r} parameter (clients read the model card)"))
    if config.backend == "python":
        for key in (PARAM_MODEL_FILE, PARAM_THREADS):
            if key not in params:
                found.append(Problem(name, f"no {key!r} parameter (the Python model needs it)"))
        if PARAM_MODEL_FILE in params:
            found += _check_onnx(name, folder / VERSION / params[PARAM_MODEL_FILE], config)
    elif config.platform == "tensorrt_plan":
        found += _check_engine(name, folder, config, machine)
    return found


def _check_onnx(name: str, path: Path, config: mc.ModelConfig) -> list[Problem]:
    if not path.is_file():
        return [Problem(name, f"model file {path} is missing (run `cxr convert`)")]
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises DecodeError, ValidationError, OSError ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return [Problem(name, f"{path} is not a valid ONNX model: {reason}")]
    found = []
    graph_io = {t.name: t for t in [*model.graph.input, *model.graph.output]}
    for tensor in [*config.input, *config.output]:
        onnx_tensor = graph_io.get(tensor.name)
        if onnx_tensor is None:
            found.append(
                Problem(name, f"{path} has no tensor {tensor.name!r} (it has {sorted(graph_io)})")
            )
            continue
        kind = onnx_tensor.type.tensor_type
        dtype = ONNX_DTYPES.get(kind.elem_type, f"ONNX type {kind.elem_type}")
        config_dtype = mc.DataType.Name(tensor.data_type).removeprefix("TYPE_")
        if dtype != config_dtype:
            found.append(
                Problem(name, f"{path}: {tensor.name} is {dtype}, the config says {config_dtype}")
            )
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim][1:]
        if dims != list(tensor.dims):
            found.append(
                Problem(
                    name,
                    f"{path}: {tensor.name} has shape [N, {', '.join(map(str, dims))}], the "
                    f"config says [N, {', '.join(map(str, tensor.dims))}]",
                )
            )
    return found


def _check_engine(
    name: str, folder: Path, config: mc.ModelConfig, machine: Machine
) -> list[Problem]:
    plan = folder / VERSION / (config.default_model_filename or PLAN_FILE)
    source = folder / ONNX_FILE
    if not plan.is_file():
        hint = f"build it from {source}" if source.is_file() else f"and no {source} to build from"
        return [Problem(name, f"engine {plan} is missing ({hint}: docker compose run engines)")]
    stamp_file = stamp_path(plan)
    if not stamp_file.is_file():
        return [Problem(name, f"{stamp_file} missing: cannot tell which TensorRT and GPU built it")]
    try:
        stamp: dict[str, Any] = json.loads(stamp_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return [Problem(name, f"{stamp_file} is not valid JSON: {err}")]
    found = []
    built_trt = stamp.get("tensorrt_version")
    if machine.tensorrt_version and built_trt != machine.tensorrt_version:
        found.append(
            Problem(
                name,
                f"{plan} was built with TensorRT {built_trt}, this machine has "
                f"{machine.tensorrt_version} (a plan only loads in the TensorRT that built it): "
                "rebuild it",
            )
        )
    built_cc = stamp.get("compute_capability")
    if machine.compute_capability and built_cc != machine.compute_capability:
        found.append(
            Problem(
                name,
                f"{plan} was built for GPU compute capability {built_cc}, this GPU is "
                f"{machine.compute_capability}: rebuild it on this GPU",
            )
        )
    built_from = stamp.get("onnx_sha256")
    if source.is_file() and built_from and sha256(source) != built_from:
        found.append(Problem(name, f"{plan} was built from another ONNX than {source}"))
    built_batch = stamp.get("max_batch")
    if built_batch is not None and int(built_batch) < config.max_batch_size:
        found.append(
            Problem(
                name,
                f"{plan} takes batches up to {built_batch}, the config's max_batch_size is "
                f"{config.max_batch_size}",
            )
        )
    size = stamp.get("image_size")
    dims = [list(i.dims) for i in config.input if i.name == contract.IMAGE]
    if size is not None and dims and dims[0] != [1, int(size), int(size)]:
        found.append(Problem(name, f"{plan} takes {size}x{size} images, the config {dims[0]}"))
    return found


def _check_ensembles(configs: dict[str, mc.ModelConfig]) -> list[Problem]:
    found = []
    for name, config in configs.items():
        if config.platform != "ensemble":
            continue
        steps = list(config.ensemble_scheduling.step)
        if not steps:
            found.append(Problem(name, "ensemble has no steps"))
        produced = {i.name: list(i.dims) for i in config.input}
        for step in steps:
            model = configs.get(step.model_name)
            if model is None:
                found.append(
                    Problem(name, f"step model {step.model_name!r} is not in the repository")
                )
                continue
            found += _check_step(name, step, model, produced)
        for output in config.output:
            if output.name not in produced:
                found.append(Problem(name, f"output {output.name!r} is made by no step"))
        deployed = config.parameters.get(contract.PARAM_DEPLOYED_MODEL)
        if deployed and deployed.string_value not in [s.model_name for s in steps]:
            found.append(Problem(name, f"deployed_model {deployed.string_value!r} is not a step"))
    return found


def _check_step(
    name: str, step: Any, model: mc.ModelConfig, produced: dict[str, list[int]]
) -> list[Problem]:
    """One ensemble step: its inputs come from earlier steps with the right shape."""
    found = []
    inputs = {i.name: list(i.dims) for i in model.input}
    for model_input, tensor in step.input_map.items():
        if model_input not in inputs:
            found.append(Problem(name, f"{step.model_name} has no input {model_input!r}"))
        elif tensor not in produced:
            found.append(Problem(name, f"{step.model_name} reads {tensor!r}, made by no step"))
        elif produced[tensor] != inputs[model_input]:
            found.append(
                Problem(
                    name,
                    f"{step.model_name} input {model_input} has dims {inputs[model_input]} but "
                    f"{tensor!r} has dims {produced[tensor]} (image sizes differ?)",
                )
            )
    outputs = {o.name: list(o.dims) for o in model.output}
    for model_output, tensor in step.output_map.items():
        if model_output not in outputs:
            found.append(Problem(name, f"{step.model_name} has no output {model_output!r}"))
        else:
            produced[tensor] = outputs[model_output]
    return found

"""``cxr repo check``: find what would stop a model repository from serving, precisely."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from client import contract
from server.repository import CONFIG_FILE, LABELS_FILE, ONNX_FILE, PLAN_FILE, VERSION, read_config

ONNX_DTYPES = {1: "FP32", 2: "UINT8", 10: "FP16"}


@dataclass
class Problem:
    """One thing wrong with one model."""

    model: str
    message: str

    def __str__(self) -> str:
        return f"{self.model}: {self.message}"


def check_repository(repo: Path, gpu_compute_capability: str | None = None) -> list[Problem]:
    """Every problem found in ``repo``; an empty list means it is consistent."""
    if not repo.is_dir():
        return [Problem(str(repo), "model repository folder not found")]
    problems: list[Problem] = []
    configs = {}
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        path = folder / CONFIG_FILE
        if not path.is_file():
            problems.append(Problem(folder.name, f"no {CONFIG_FILE}"))
            continue
        try:
            config = read_config(path)
        except Exception as err:
            problems.append(Problem(folder.name, f"{path} is not a valid ModelConfig: {err}"))
            continue
        if config.name and config.name != folder.name:
            problems.append(Problem(folder.name, f"config name {config.name!r} != folder name"))
        configs[folder.name] = config
        problems += _check_model(folder, config, gpu_compute_capability)
    problems += _check_ensembles(configs)
    return problems


def _check_model(folder: Path, config, gpu_cc: str | None) -> list[Problem]:
    name = folder.name
    found: list[Problem] = []
    if config.platform == "ensemble":
        return found
    if not (folder / VERSION).is_dir():
        found.append(Problem(name, f"no version folder {folder / VERSION}"))
        return found
    for output in config.output:
        if output.label_filename and not (folder / output.label_filename).is_file():
            found.append(Problem(name, f"labels file {output.label_filename} is missing"))
    if config.backend == "python":
        if not (folder / VERSION / "model.py").is_file():
            found.append(Problem(name, f"{folder / VERSION / 'model.py'} is missing"))
        model_file = config.parameters.get("model_file")
        if model_file is not None:
            onnx_path = folder / VERSION / model_file.string_value
            found += _check_onnx(name, onnx_path, config)
    elif config.platform == "tensorrt_plan":
        found += _check_engine(name, folder, gpu_cc)
    if name.startswith(contract.CLASSIFIER_PREFIX):
        labels = folder / LABELS_FILE
        classes = config.parameters.get(contract.PARAM_CLASSES)
        if classes and labels.is_file():
            written = labels.read_text().split()
            if written != classes.string_value.split(","):
                found.append(Problem(name, f"{LABELS_FILE} {written} != classes parameter"))
        if contract.PARAM_THRESHOLD not in config.parameters:
            found.append(
                Problem(name, "no 'threshold' parameter: clients cannot read the operating point")
            )
    return found


def _check_onnx(name: str, path: Path, config) -> list[Problem]:
    if not path.is_file():
        return [Problem(name, f"model file {path} is missing (run `cxr convert`)")]
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:
        return [Problem(name, f"{path} is not a valid ONNX model: {err}")]
    found = []
    graph_io = {t.name: t for t in [*model.graph.input, *model.graph.output]}
    for tensor in [*config.input, *config.output]:
        onnx_tensor = graph_io.get(tensor.name)
        if onnx_tensor is None:
            found.append(
                Problem(
                    name, f"{path.name} has no tensor {tensor.name!r} (it has {sorted(graph_io)})"
                )
            )
            continue
        kind = onnx_tensor.type.tensor_type
        dtype = ONNX_DTYPES.get(kind.elem_type, str(kind.elem_type))
        config_dtype = contract_dtype(tensor.data_type)
        if dtype != config_dtype:
            found.append(
                Problem(name, f"{tensor.name}: ONNX dtype {dtype} != config {config_dtype}")
            )
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim][1:]
        if dims != list(tensor.dims):
            found.append(
                Problem(
                    name, f"{tensor.name}: ONNX shape [N,{dims}] != config dims {list(tensor.dims)}"
                )
            )
    return found


def contract_dtype(data_type: int) -> str:
    """``TYPE_UINT8`` -> ``UINT8``."""
    from tritonclient.grpc import model_config_pb2 as mc

    return mc.DataType.Name(data_type).removeprefix("TYPE_")


def _check_engine(name: str, folder: Path, gpu_cc: str | None) -> list[Problem]:
    plan = folder / VERSION / PLAN_FILE
    if not plan.is_file():
        source = folder / ONNX_FILE
        hint = f"build it from {source}" if source.is_file() else f"and no {source} to build from"
        return [Problem(name, f"engine {plan} is missing ({hint}: docker compose run engines)")]
    stamp = plan.with_suffix(".plan.json")
    if not stamp.is_file():
        return [Problem(name, f"{stamp.name} missing: cannot tell which TensorRT/GPU built it")]
    built = json.loads(stamp.read_text())
    found = []
    try:
        import tensorrt

        if built.get("tensorrt") != tensorrt.__version__:
            found.append(
                Problem(
                    name,
                    f"engine built with TensorRT {built.get('tensorrt')}, this "
                    f"machine has {tensorrt.__version__} (Serialized Engine "
                    "Version mismatch): rebuild it",
                )
            )
    except ImportError:
        pass
    if gpu_cc and built.get("compute_capability") != gpu_cc:
        found.append(
            Problem(
                name,
                f"engine built for compute capability "
                f"{built.get('compute_capability')}, GPU here is {gpu_cc}",
            )
        )
    return found


def _check_ensembles(configs: dict) -> list[Problem]:
    found = []
    for name, config in configs.items():
        if config.platform != "ensemble":
            continue
        for step in config.ensemble_scheduling.step:
            if step.model_name not in configs:
                found.append(
                    Problem(name, f"step model {step.model_name!r} is not in the repository")
                )
        deployed = config.parameters.get(contract.PARAM_DEPLOYED_MODEL)
        steps = [s.model_name for s in config.ensemble_scheduling.step]
        if deployed and deployed.string_value not in steps:
            found.append(Problem(name, f"deployed_model {deployed.string_value!r} is not a step"))
    return found

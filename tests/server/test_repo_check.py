"""``cxr repo check`` finds each kind of broken repository, precisely; ``cxr repo build``
regenerates configs and keeps tuned scheduling."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cxr.client import contract
from cxr.server.check import check_repository
from cxr.server.cli import repo_app
from cxr.server.repository import (
    CONFIG_FILE,
    LABELS_FILE,
    ONNX_FILE,
    PLAN_FILE,
    PYTHON_MODEL_FILE,
    VERSION,
    Classifier,
    classifiers_in,
    deployed_model,
    edit_config,
    publish_classifier,
    read_config,
)

TRT = contract.classifier_model("trt_fp16")


@pytest.fixture
def repo(cpu_repo: Path, deployed: str, clone: Callable[..., Path], tmp_path: Path) -> Path:
    """A fresh, valid copy of the converted CPU repository's serving path: the ensemble,
    ``preprocess`` and the deployed classifier (fewer ONNX files to check: faster)."""
    models = [contract.ENSEMBLE_MODEL, contract.PREPROCESS_MODEL, deployed]
    return clone(cpu_repo, tmp_path / "repo", models)


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file (the clone hard-links model files)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def add_engine(repo: Path, stamp: dict[str, Any] | None) -> Path:
    """Publish a TensorRT variant of the deployed classifier, with a fake plan and ``stamp``."""
    deployed = next(c for c in classifiers_in(repo) if c.name == deployed_model(repo))
    folder = publish_classifier(repo, Classifier("trt_fp16", deployed.model_file, deployed.card))
    if stamp is not None:
        plan = folder / VERSION / PLAN_FILE
        plan.write_bytes(b"not really an engine")
        good = {
            "tensorrt_version": "10.3.0",
            "compute_capability": "9.0",
            "onnx_sha256": _sha256(folder / ONNX_FILE),
            "max_batch": read_config(folder / CONFIG_FILE).max_batch_size,
            "image_size": deployed.card["image_size"],
        }
        (folder / VERSION / f"{PLAN_FILE}.json").write_text(json.dumps({**good, **stamp}))
    return folder


def _sha256(path: Path) -> str:
    from cxr.convert.tensorrt import sha256

    return sha256(path)


def edit(change: Callable[[Any], None], model: str | None = None) -> Callable[[Path, str], None]:
    """Break the config of ``model`` (default: the deployed classifier) with ``change``."""
    return lambda repo, deployed: edit_config(repo / (model or deployed) / CONFIG_FILE, change)


def _input(change: Callable[[Any], None]) -> Callable[[Any], None]:
    return lambda config: change(config.input[0])


def _drop_param(key: str) -> Callable[[Any], None]:
    return lambda config: config.parameters.pop(key)


def test_the_converted_repository_is_consistent(repo: Path) -> None:
    assert check_repository(repo) == []


def test_a_missing_or_empty_repository_is_named(tmp_path: Path) -> None:
    assert "model repository folder not found" in str(check_repository(tmp_path / "nope")[0])
    (tmp_path / "empty").mkdir()
    assert "no model folders" in str(check_repository(tmp_path / "empty")[0])


# (case id, how to break the repository (repo, deployed classifier), model named, message part)
BROKEN: list[tuple[str, Callable[[Path, str], None], str | None, str]] = [
    (
        "config_missing",
        lambda r, m: (r / "preprocess" / CONFIG_FILE).unlink(),
        "preprocess",
        "no config.pbtxt",
    ),
    (
        "config_syntax",
        lambda r, m: (r / m / CONFIG_FILE).write_text("max_batch_size: lots\n"),
        None,
        "is not a valid ModelConfig",
    ),
    (
        "config_unknown_field",
        lambda r, m: (r / m / CONFIG_FILE).write_text('name: "x"\nbatchy_size: 8\n'),
        None,
        "is not a valid ModelConfig",
    ),
    (
        "config_name",
        edit(lambda c: setattr(c, "name", "someone_else")),
        None,
        "config name 'someone_else' differs from its folder name",
    ),
    (
        "version_folder",
        lambda r, m: shutil.rmtree(r / m / VERSION),
        None,
        "no version folder",
    ),
    (
        "labels_missing",
        lambda r, m: (r / m / LABELS_FILE).unlink(),
        None,
        f"{LABELS_FILE} is missing",
    ),
    (
        "labels_differ",
        lambda r, m: (r / m / LABELS_FILE).write_text("CAT\nDOG\n"),
        None,
        "lists ['CAT', 'DOG']",
    ),
    (
        "python_model_missing",
        lambda r, m: (r / "preprocess" / VERSION / PYTHON_MODEL_FILE).unlink(),
        "preprocess",
        f"{PYTHON_MODEL_FILE} is missing",
    ),
    (
        "onnx_missing",
        lambda r, m: (r / m / VERSION / ONNX_FILE).unlink(),
        None,
        "model.onnx is missing (run `cxr convert`)",
    ),
    (
        "onnx_corrupt",
        lambda r, m: replace_file(r / m / VERSION / ONNX_FILE, b"\x08\x07garbage" * 100),
        None,
        "is not a valid ONNX model",
    ),
    (
        "onnx_empty",
        lambda r, m: replace_file(r / m / VERSION / ONNX_FILE, b""),
        None,
        "is not a valid ONNX model",
    ),
    (
        "onnx_dims",
        edit(_input(lambda t: t.dims.__setitem__(1, 999))),
        None,
        "the config says [N, 1, 999,",
    ),
    (
        "onnx_dtype",
        edit(_input(lambda t: setattr(t, "data_type", 11))),
        None,
        "IMAGE is UINT8, the config says FP32",
    ),
    (
        "onnx_tensor_name",
        edit(_input(lambda t: setattr(t, "name", "PIXELS"))),
        None,
        "has no tensor 'PIXELS'",
    ),
    (
        "threshold_missing",
        edit(_drop_param(contract.PARAM_THRESHOLD)),
        None,
        "no 'threshold' parameter",
    ),
    (
        "model_file_param_missing",
        edit(_drop_param("model_file")),
        None,
        "no 'model_file' parameter",
    ),
    (
        "ensemble_step_missing",
        lambda r, m: shutil.rmtree(r / "preprocess"),
        contract.ENSEMBLE_MODEL,
        "step model 'preprocess' is not in the repository",
    ),
    (
        "ensemble_image_size",
        edit(lambda c: c.output[0].dims.__setitem__(1, 999), "preprocess"),
        contract.ENSEMBLE_MODEL,
        "(image sizes differ?)",
    ),
    (
        "ensemble_tensor",
        edit(
            lambda c: c.ensemble_scheduling.step[1].input_map.__setitem__("IMAGE", "nothing"),
            contract.ENSEMBLE_MODEL,
        ),
        contract.ENSEMBLE_MODEL,
        "reads 'nothing', made by no step",
    ),
    (
        "ensemble_deployed",
        edit(
            lambda c: setattr(c.parameters["deployed_model"], "string_value", "pneumonia_x"),
            contract.ENSEMBLE_MODEL,
        ),
        contract.ENSEMBLE_MODEL,
        "deployed_model 'pneumonia_x' is not a step",
    ),
    ("engine_missing", lambda r, m: add_engine(r, None), TRT, "model.plan is missing"),
    (
        "engine_stamp_missing",
        lambda r, m: (add_engine(r, {}) / VERSION / f"{PLAN_FILE}.json").unlink(),
        TRT,
        "cannot tell which TensorRT and GPU built it",
    ),
    (
        "engine_other_tensorrt",
        lambda r, m: add_engine(r, {"tensorrt_version": "8.6.1"}),
        TRT,
        "built with TensorRT 8.6.1, this machine has 10.3.0",
    ),
    (
        "engine_other_gpu",
        lambda r, m: add_engine(r, {"compute_capability": "8.0"}),
        TRT,
        "built for GPU compute capability 8.0, this GPU is 9.0",
    ),
    (
        "engine_other_onnx",
        lambda r, m: add_engine(r, {"onnx_sha256": "0" * 64}),
        TRT,
        "was built from another ONNX",
    ),
    (
        "engine_small_batch",
        lambda r, m: add_engine(r, {"max_batch": 4}),
        TRT,
        "takes batches up to 4",
    ),
]


@pytest.mark.parametrize(
    ("breaks", "model", "message"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_each_kind_of_broken_repository_is_named(
    repo: Path, breaks: Callable[[Path, str], None], model: str | None, message: str
) -> None:
    deployed = deployed_model(repo)
    breaks(repo, deployed)
    problems = check_repository(repo, gpu_compute_capability="9.0", tensorrt_version="10.3.0")
    assert problems, "the broken repository passed the check"
    named = [p for p in problems if p.model == (model or deployed) and message in p.message]
    assert named, [str(p) for p in problems]


def test_a_good_engine_passes_and_engines_can_be_left_out(repo: Path) -> None:
    add_engine(repo, {})
    assert check_repository(repo, gpu_compute_capability="9.0", tensorrt_version="10.3.0") == []
    (repo / TRT / VERSION / PLAN_FILE).unlink()
    assert [p.model for p in check_repository(repo)] == [TRT]
    assert check_repository(repo, engines=False) == []


def test_check_command_exit_codes_and_messages(repo: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(repo_app, ["check", str(repo)])
    assert good.exit_code == 0, good.output
    deployed = deployed_model(repo)
    replace_file(repo / deployed / VERSION / ONNX_FILE, b"junk")
    (repo / "preprocess" / VERSION / PYTHON_MODEL_FILE).unlink()
    bad = runner.invoke(repo_app, ["check", str(repo)])
    assert bad.exit_code == 1
    assert f"{deployed}: {repo / deployed / VERSION / ONNX_FILE} is not a valid ONNX" in bad.output
    assert "preprocess: " in bad.output and "2 problem(s)" in bad.output


def test_repo_build_regenerates_configs_and_keeps_tuned_scheduling(repo: Path) -> None:
    deployed = deployed_model(repo)

    def tune(config: Any) -> None:  # what `cxr loadtest sweep` or a person tuned in place
        config.dynamic_batching.max_queue_delay_microseconds = 1234
        config.dynamic_batching.default_queue_policy.max_queue_size = 77
        config.instance_group[0].count = 3
        config.parameters["intra_op_threads"].string_value = "5"
        config.parameters[contract.PARAM_THRESHOLD].string_value = "0.999"  # not tuning: a card
        config.parameters.pop(contract.PARAM_CLASSES)

    edit_config(repo / deployed / CONFIG_FILE, tune)
    (repo / deployed / LABELS_FILE).unlink()
    shutil.rmtree(repo / contract.ENSEMBLE_MODEL)
    done = CliRunner().invoke(repo_app, ["build", str(repo)])
    assert done.exit_code == 0, done.output
    config = read_config(repo / deployed / CONFIG_FILE)
    card = next(c.card for c in classifiers_in(repo) if c.name == deployed)
    assert config.dynamic_batching.max_queue_delay_microseconds == 1234
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 77
    assert config.instance_group[0].count == 3
    assert config.parameters["intra_op_threads"].string_value == "5"
    assert float(config.parameters[contract.PARAM_THRESHOLD].string_value) == card["threshold"]
    assert config.parameters[contract.PARAM_CLASSES].string_value == ",".join(card["classes"])
    assert check_repository(repo) == []


def test_repo_build_refuses_a_repository_without_classifiers(tmp_path: Path) -> None:
    done = CliRunner().invoke(repo_app, ["build", str(tmp_path)])
    assert done.exit_code == 2
    assert "no classifier ONNX found" in done.output

"""Fixtures of the client tests: test images of every kind (good, bad, with patient data), the
``cxr client`` command in a subprocess, and servers of our own (TLS, busy queues, kill tests)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzz_inputs import dicom_bytes, png_bytes, png_with_header
from PIL import Image

#: Patient data written into the test DICOM files: none of it may leave the client or be printed.
PATIENT = {
    "PatientName": "Doe^Jane^SECRETNAME",
    "PatientID": "PID-SECRET-4711",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "ACC-SECRET-99",
    "InstitutionName": "SECRET General Hospital",
}
SOP_INSTANCE_UID = "1.2.826.0.1.3680043.8.498.4711"
ADMIN_KEY = "test-admin-key-123"
QUEUE_FULL_MODEL = "pneumonia_qfull"
QUEUE_TIMEOUT_MODEL = "pneumonia_qtimeout"
#: A copy of the classifier whose batcher holds a lone request for SLOW_DELAY_US, waiting for a
#: full batch: no answer can come sooner, however fast the machine.
SLOW_MODEL = "pneumonia_slow"
SLOW_DELAY_US = 3_000_000


@pytest.fixture(scope="session")
def patient() -> dict[str, str]:
    """The patient attributes written into :func:`phi_dicom` (to look for in every output)."""
    return dict(PATIENT)


@pytest.fixture(scope="session")
def xray_pngs(synthetic_data: Path) -> list[Path]:
    """Six synthetic chest X-ray PNGs: three NORMAL, then three PNEUMONIA."""
    test = synthetic_data / "test"
    return (
        sorted((test / "NORMAL").glob("*.png"))[:3] + sorted((test / "PNEUMONIA").glob("*.png"))[:3]
    )


def xray_array(path: Path) -> np.ndarray:
    """A test PNG's pixels, 2-D uint8."""
    return np.asarray(Image.open(path).convert("L"))


@pytest.fixture(scope="session")
def phi_dicom(xray_pngs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DICOM file, without extension, holding an X-ray and patient data."""
    path = tmp_path_factory.mktemp("phi") / "study0001"
    extra = {**PATIENT, "SOPInstanceUID": SOP_INSTANCE_UID}
    path.write_bytes(dicom_bytes(xray_array(xray_pngs[-1]), **extra))
    return path


@pytest.fixture(scope="session")
def good_variants(xray_pngs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Files the client accepts although they are unusual: name -> path."""
    folder = tmp_path_factory.mktemp("variants")
    gray = xray_array(xray_pngs[-1])
    files = {
        "rgb.png": png_bytes(np.stack([gray] * 3, axis=-1)),
        "gray16.png": png_bytes(gray.astype(np.uint16) * 257),
        "gray16.dcm": dicom_bytes(gray.astype(np.uint16) * 16, BitsStored=12, HighBit=11),
        "monochrome2.dcm": dicom_bytes(gray),
        "monochrome1.dcm": dicom_bytes(255 - gray, PhotometricInterpretation="MONOCHROME1"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


@pytest.fixture(scope="session")
def bad_inputs(xray_pngs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Inputs that must each give an error row: path -> expected ``error_code``."""
    folder = tmp_path_factory.mktemp("bad")
    png = xray_pngs[0].read_bytes()
    gray = xray_array(xray_pngs[0])
    files = {
        "notes.png": (b"these are not the pixels you are looking for\n", "not_an_image"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "empty.png": (b"", "empty"),
        "enormous.png": (png_with_header(20_000, 20_000), "too_large"),
        "no_pixels.dcm": (dicom_bytes(None), "no_pixel_data"),
        "private_syntax.dcm": (
            dicom_bytes(gray, transfer_syntax="1.2.3.4.5.6"),
            "unsupported_transfer_syntax",
        ),
        "two_frames.dcm": (
            dicom_bytes(np.concatenate([gray, gray]), NumberOfFrames=2, Rows=gray.shape[0]),
            "multi_frame",
        ),
    }
    expected = {}
    for name, (data, code) in files.items():
        (folder / name).write_bytes(data)
        expected[folder / name] = code
    # A folder of files that cannot be read as images at all.
    unreadable = folder / "unreadable"
    unreadable.mkdir()
    os.mkfifo(unreadable / "a_pipe")
    expected[unreadable / "a_pipe"] = "not_a_file"
    (unreadable / "dangling").symlink_to(folder / "gone")
    expected[unreadable / "dangling"] = "not_found"
    if os.geteuid() != 0:  # root reads anything
        locked = unreadable / "locked.png"
        locked.write_bytes(png)
        locked.chmod(0)
        expected[locked] = "unreadable"
    return expected


def write_pngs(folder: Path, count: int, size: int = 64, seed: int = 0) -> list[Path]:
    """``count`` small random grayscale PNGs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
        path = folder / f"img{index:04d}.png"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def many_pngs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """500 small PNGs for long runs (kill and resume tests)."""
    return write_pngs(tmp_path_factory.mktemp("many") / "pngs", 500)


@pytest.fixture(scope="session")
def cli_command() -> Callable[..., list[str]]:
    """The ``cxr client ARGS...`` command line, to run as a subprocess."""
    return lambda *args: [sys.executable, "-m", "cxr", "client", *args]


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess]:
    """Run ``cxr client ARGS...`` to completion in this process (the real command, without an
    interpreter start per call); returns a CompletedProcess. Tests that kill the command run it
    as a subprocess (:func:`cli_command`)."""
    from typer.testing import CliRunner

    from cxr.client.cli import client_app

    def run(*args: str) -> subprocess.CompletedProcess:
        result = CliRunner().invoke(client_app, list(args), catch_exceptions=False)
        return subprocess.CompletedProcess(
            ["cxr", "client", *args], result.exit_code, result.stdout, result.stderr
        )

    return run


@pytest.fixture(scope="session")
def start_server() -> Iterator[Callable[..., Any]]:
    """Start a TritonServer of our own (``ServerConfig`` keywords, free ports unless given);
    every one is stopped at the end of the session."""
    from cxr.server.triton import ServerConfig, TritonServer, free_ports

    with contextlib.ExitStack() as stack:

        def start(repo: Path, **options: Any) -> TritonServer:
            keys = ("grpc_port", "http_port", "metrics_port")
            for key, port in zip(keys, free_ports(3), strict=True):
                options[key] = options.get(key) or port
            server = stack.enter_context(TritonServer(ServerConfig(repo, **options)))
            assert not server.failed_models(), server.log_tail()
            return server

        yield start


@pytest.fixture(scope="session")
def admin_key() -> str:
    """The admin key of :func:`busy_server`."""
    return ADMIN_KEY


@pytest.fixture(scope="session")
def busy_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory, start_server) -> Any:
    """A server restricted by :data:`ADMIN_KEY`, with three more copies of the classifier:
    ``pneumonia_qfull`` (queue of one request), ``pneumonia_qtimeout`` (20 ms queue timeout,
    one instance, batch 1) and :data:`SLOW_MODEL`."""
    from cxr.client import contract
    from cxr.server.repository import CONFIG_FILE, config_text, read_config

    repo = tmp_path_factory.mktemp("busy") / "repo"
    shutil.copytree(model_repo, repo)
    ensemble = read_config(repo / contract.ENSEMBLE_MODEL / CONFIG_FILE)
    deployed = ensemble.parameters[contract.PARAM_DEPLOYED_MODEL].string_value
    for name in (QUEUE_FULL_MODEL, QUEUE_TIMEOUT_MODEL, SLOW_MODEL):
        shutil.copytree(repo / deployed, repo / name)
        config = read_config(repo / name / CONFIG_FILE)
        config.name = name
        policy = config.dynamic_batching.default_queue_policy
        if name == QUEUE_FULL_MODEL:
            policy.max_queue_size = 1
        elif name == SLOW_MODEL:
            batching = config.dynamic_batching
            batching.max_queue_delay_microseconds = SLOW_DELAY_US
            del batching.preferred_batch_size[:]
            batching.preferred_batch_size.append(config.max_batch_size)
            policy.default_timeout_microseconds = 0  # no queue timeout: the delay decides
        else:
            # One instance running one image at a time: a burst queues for longer than the 20 ms
            # timeout whatever the machine's load, so timeouts happen on a quiet machine too.
            policy.max_queue_size = 0
            policy.default_timeout_microseconds = 20_000
            config.max_batch_size = 1
            del config.instance_group[1:]
            config.instance_group[0].count = 1
            keep = [w for w in config.model_warmup if w.batch_size <= 1]
            del config.model_warmup[:]
            config.model_warmup.extend(keep)
        (repo / name / CONFIG_FILE).write_text(config_text(config))
    return start_server(repo, admin_key=ADMIN_KEY)


@pytest.fixture(scope="session")
def queue_models() -> dict[str, str]:
    """Names of :func:`busy_server`'s classifier copies: ``full`` and ``timeout``."""
    return {"full": QUEUE_FULL_MODEL, "timeout": QUEUE_TIMEOUT_MODEL}


@pytest.fixture(scope="session")
def slow_model() -> str:
    """Name of :func:`busy_server`'s classifier that answers no sooner than ``SLOW_DELAY_US``."""
    return SLOW_MODEL


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on."""
    from cxr.server.triton import free_port

    return free_port()

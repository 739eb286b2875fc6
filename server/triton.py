"""The embedded Triton: nvidia-pytriton's bundled ``tritonserver`` run directly on a repository.

No PyTriton Python API: the model repository stays the single source of truth. This module finds
the binary, assembles the Python backend for the running interpreter, sets the environment the
stub needs, starts the server on loopback, waits until it is live, reports every model's state,
and stops it with no stub process or shared-memory region left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from client.contract import ADMIN_HEADER
from server.repository import CONFIG_FILE, read_config

#: Admin protocols closed to callers without the key; inference and health stay open.
RESTRICTED_PROTOCOLS = "model-repository,shared-memory,statistics,trace,logging"
ADMIN_KEY_ENV = "CXR_ADMIN_KEY"
#: Backends the embedded server has; other models (TensorRT plans) are left out, with a reason.
EMBEDDED_BACKENDS = {"python"}
SHM_PREFIX = "triton_python_backend_shm_region"
#: Seconds tritonserver waits for in-flight requests on SIGTERM before it unloads the models.
EXIT_TIMEOUT_S = 10


class ServerError(RuntimeError):
    """The server could not be started as asked; the message says why."""


@dataclass
class TLS:
    """gRPC TLS material; ``ca`` turns on mutual TLS (clients must present a certificate)."""

    cert: Path
    key: Path
    ca: Path | None = None


@dataclass
class ServerConfig:
    """How to run the embedded server."""

    repo: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    admin_key: str | None = None
    tls: TLS | None = None
    log_verbose: int = 0
    extra_args: list[str] = field(default_factory=list)


def pytriton_dir() -> Path:
    """The folder of nvidia-pytriton's bundled Triton (raises a clear ImportError without it)."""
    try:
        import pytriton
    except ImportError as err:
        raise ImportError(
            "the embedded server needs nvidia-pytriton: pip install 'cxr-triage[serve]'"
        ) from err
    return Path(pytriton.__file__).parent / "tritonserver"


def prepare_backends(workdir: Path) -> Path:
    """A backend directory with the Python backend and the stub for this interpreter."""
    dist = pytriton_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    python_dir = workdir / "backends" / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in (
        dist / "backends" / "python" / "libtriton_python.so",
        dist / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        link = python_dir / source.name
        if not link.exists():
            link.symlink_to(source)
    return workdir / "backends"


def server_environment() -> dict[str, str]:
    """Environment for tritonserver and its stubs: this interpreter's libpython first, then the
    wheel's bundled libraries, and this environment's ``bin`` first on PATH."""
    env = os.environ.copy()
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    bundled = pytriton_dir().parent.parent / "nvidia_pytriton.libs"
    previous = env.get("LD_LIBRARY_PATH", "")
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, str(bundled), previous) if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ModelPlan:
    """Which models the embedded server loads, and which it leaves out and why."""

    load: list[str]
    skipped: dict[str, str]


def plan_models(repo: Path) -> ModelPlan:
    """Models of the repository that the embedded server can run (explicit model control)."""
    if not repo.is_dir():
        raise ServerError(f"model repository not found: {repo}")
    load, skipped = [], {}
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            skipped[folder.name] = f"no {CONFIG_FILE}"
            continue
        try:
            config = read_config(config_path)
        except Exception as err:
            skipped[folder.name] = f"{config_path}: invalid config ({err})"
            continue
        if config.platform == "ensemble" or config.backend in EMBEDDED_BACKENDS:
            load.append(folder.name)
        else:
            kind = config.platform or config.backend
            skipped[folder.name] = f"{kind} is not in the embedded (CPU) server; serve it on a GPU"
    if not load:
        raise ServerError(f"{repo}: no model the embedded server can load (run `cxr convert`)")
    return ModelPlan(load, skipped)


class TritonServer:
    """A running embedded ``tritonserver``; use as a context manager or call start()/stop()."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.process: subprocess.Popen | None = None
        self.plan: ModelPlan | None = None
        self.model_states: dict[str, tuple[str, str]] = {}
        self._shm_before: set[Path] = set()
        self._workdir = tempfile.TemporaryDirectory(prefix="cxr-triton-")
        self.log_path = Path(self._workdir.name) / "tritonserver.log"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint."""
        return f"{self.config.host}:{self.config.grpc_port}"

    @property
    def http_host(self) -> str:
        """Address of the HTTP endpoint: loopback when gRPC has TLS (Triton's HTTP has none, and a
        plain-text endpoint on the network would bypass TLS and client certificates)."""
        return "127.0.0.1" if self.config.tls else self.config.host

    @property
    def http_url(self) -> str:
        """``http://host:port`` of the HTTP endpoint."""
        return f"http://{self.http_host}:{self.config.http_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics URL."""
        return f"http://{self.config.host}:{self.config.metrics_port}/metrics"

    def command(self) -> list[str]:
        """The tritonserver command line."""
        c = self.config
        assert self.plan is not None
        args = [
            str(pytriton_dir() / "bin" / "tritonserver"),
            f"--model-repository={c.repo.resolve()}",
            f"--backend-directory={prepare_backends(Path(self._workdir.name))}",
            "--model-control-mode=explicit",
            *[f"--load-model={name}" for name in self.plan.load],
            "--exit-on-error=false",
            "--strict-readiness=true",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            f"--grpc-address={c.host}",
            f"--grpc-port={c.grpc_port}",
            f"--http-address={self.http_host}",
            f"--http-port={c.http_port}",
            f"--metrics-address={c.host}",
            f"--metrics-port={c.metrics_port}",
            "--metrics-config=summary_latencies=true",
            f"--log-verbose={c.log_verbose}",
        ]
        if c.admin_key:
            args.append(
                f"--grpc-restricted-protocol={RESTRICTED_PROTOCOLS}:{ADMIN_HEADER}={c.admin_key}"
            )
            args.append(
                f"--http-restricted-api={RESTRICTED_PROTOCOLS}:{ADMIN_HEADER}={c.admin_key}"
            )
        if c.tls:
            args += [
                "--grpc-use-ssl=true",
                f"--grpc-server-cert={c.tls.cert}",
                f"--grpc-server-key={c.tls.key}",
            ]
            if c.tls.ca:
                args += [f"--grpc-root-cert={c.tls.ca}", "--grpc-use-ssl-mutual=true"]
        return args + c.extra_args

    def start(self, timeout: float = 120.0) -> TritonServer:
        """Start the server and wait until it is live and every model has loaded or failed.

        Raises :class:`ServerError` when a port is taken, the repository has nothing to serve, or
        no model loaded (with each model's reason); models that fail leave the others serving.
        """
        c = self.config
        self.plan = plan_models(c.repo)
        for name, host, port in (
            ("gRPC", c.host, c.grpc_port),
            ("HTTP", self.http_host, c.http_port),
            ("metrics", c.host, c.metrics_port),
        ):
            if port_in_use(host, port):
                raise ServerError(
                    f"{name} port {host}:{port} is already in use; choose another "
                    f"with --{name.lower()}-port or stop what listens there"
                )
        self._shm_before = set(_shm_regions())
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(),
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self._live():
            if self.process.poll() is not None:
                self._cleanup()
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"tritonserver not live after {timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.2)
        self.model_states = self._read_model_states()
        if not any(state == "READY" for state, _ in self.model_states.values()):
            reasons = "\n".join(f"  {m}: {r}" for m, r in self.failed_models().items())
            self.stop()
            raise ServerError(f"no model of {c.repo} loaded:\n{reasons}")
        return self

    def _live(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/live", timeout=1) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _read_model_states(self) -> dict[str, tuple[str, str]]:
        request = urllib.request.Request(
            f"{self.http_url}/v2/repository/index", data=b"{}", method="POST"
        )
        if self.config.admin_key:
            request.add_header(ADMIN_HEADER, self.config.admin_key)
        with urllib.request.urlopen(request, timeout=5) as reply:
            index = json.loads(reply.read())
        loaded = set(self.plan.load) if self.plan else set()
        return {
            m["name"]: (m.get("state") or "UNKNOWN", _clean_reason(m.get("reason", "")))
            for m in index
            if m["name"] in loaded  # the index also lists the models left out (TensorRT)
        }

    def failed_models(self) -> dict[str, str]:
        """Models that did not load, with Triton's reason."""
        return {
            name: reason for name, (state, reason) in self.model_states.items() if state != "READY"
        }

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait, then kill whatever of its process group is left; free shared memory."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._cleanup()

    def _cleanup(self) -> None:
        """Kill leftover stubs (same process group) and remove the shared-memory regions that
        appeared while it ran and that no process holds any more."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for region in set(_shm_regions()) - self._shm_before:
            if _region_owner_gone(region):
                with contextlib.suppress(OSError):
                    region.unlink()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._workdir.cleanup()


def _clean_reason(reason: str) -> str:
    """Triton's load-failure reason without the Python backend's traceback (``At: ...``)."""
    return reason.split("\n\nAt:\n", 1)[0].strip()


def _shm_regions() -> list[Path]:
    """The Python backend's shared-memory regions on this machine."""
    return list(Path("/dev/shm").glob(f"{SHM_PREFIX}*"))


def _region_owner_gone(region: Path) -> bool:
    """A Python-backend shared-memory region that no live process holds open."""
    target = str(region)
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.readlink(fd) == target:
                    return False
        except OSError:
            continue
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            if target in maps.read_text():
                return False
        except OSError:
            continue
    return True

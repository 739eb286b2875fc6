"""The embedded Triton: nvidia-pytriton's bundled ``tritonserver`` run directly on a repository.

No PyTriton Python API: the model repository stays the single source of truth. This module finds
the binary, assembles the Python backend for the running interpreter, sets the environment the
stub needs, starts the server on loopback, waits until it is live, reports every model's state,
and stops it with no stub process or shared-memory region left behind.

Closed by default: the admin protocols are restricted by the admin key, or without one by a
random key that only this process knows (it reads the model states with it), unless
``open_admin`` opens them on loopback; the models are loaded at start (``--model-control-mode
none``: load and unload requests are refused) unless ``model_control="explicit"``. The server
dies with the process that started it (the kernel's parent-death signal), and a pid file per gRPC
port in this user's private run-time folder lets a later start name a stale server of ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import secrets
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
from typing import Any

from cxr.client.contract import ADMIN_HEADER, GRPC_ADMIN_HEADER
from cxr.client.network import is_loopback
from cxr.server.private import RUNTIME_DIR_ENV, user_runtime_dir
from cxr.server.repository import scan_repository

#: Admin protocols closed to callers without the key; inference and health stay open.
RESTRICTED_PROTOCOLS = "model-repository,shared-memory,statistics,trace,logging"
ADMIN_KEY_ENV = "CXR_ADMIN_KEY"
#: Backends the embedded server has; other models (TensorRT plans) are left out, with a reason.
EMBEDDED_BACKENDS = {"python"}
SHM_PREFIX = "triton_python_backend_shm_region"
#: "none": every model is loaded at start and the load/unload API is refused; "explicit": the
#: model-repository protocol may load and unload models (for the holders of the admin key).
MODEL_CONTROL_MODES = ("none", "explicit")
#: Linux prctl option: the signal a process gets when the thread that started it ends.
PR_SET_PDEATHSIG = 1
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
    #: Admin protocols open without a key (loopback only; for development).
    open_admin: bool = False
    #: Serve on a non-loopback address without TLS and an admin key.
    insecure: bool = False
    model_control: str = "none"
    #: Prometheus metrics (no authentication): loopback unless asked.
    metrics_host: str = "127.0.0.1"
    log_verbose: int = 0
    extra_args: list[str] = field(default_factory=list)

    @classmethod
    def on_free_ports(cls, repo: Path, **options: Any) -> ServerConfig:
        """A loopback configuration of ``repo`` on three distinct free ports."""
        grpc, http, metrics = free_ports(3)
        return cls(repo, grpc_port=grpc, http_port=http, metrics_port=metrics, **options)


def check_exposure(config: ServerConfig) -> None:
    """Raise :class:`ServerError` for a configuration that would expose the server: admin
    protocols opened beyond loopback, or a network address without TLS and an admin key (unless
    ``insecure``)."""
    if config.model_control not in MODEL_CONTROL_MODES:
        raise ServerError(
            f"model control {config.model_control!r}: "
            f"choose one of {', '.join(MODEL_CONTROL_MODES)}"
        )
    if config.open_admin and config.admin_key:
        raise ServerError("--open-admin and an admin key exclude each other")
    if config.open_admin and not is_loopback(config.host):
        raise ServerError(
            f"--open-admin opens the admin protocols on loopback only, not on --host {config.host}"
        )
    if config.model_control == "explicit" and not (config.admin_key or config.open_admin):
        raise ServerError(
            "--model-control explicit needs an admin key (or --open-admin on loopback): the "
            "load API is an admin protocol"
        )
    if (
        not is_loopback(config.host)
        and not (config.tls and config.admin_key)
        and not config.insecure
    ):
        missing = " and ".join(
            what
            for what, present in (
                ("TLS (--tls-cert/--tls-key)", config.tls),
                ("an admin key (--admin-key or CXR_ADMIN_KEY)", config.admin_key),
            )
            if not present
        )
        raise ServerError(
            f"--host {config.host} is not loopback: serving on the network needs {missing}; "
            "--insecure serves without them"
        )


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


def server_environment(runtime_dir: Path) -> dict[str, str]:
    """Environment for tritonserver and its stubs: this interpreter's libpython first, then the
    wheel's bundled libraries, this environment's ``bin`` first on PATH, and the server's private
    folder (``runtime_dir``) for the stubs' lock files."""
    env = os.environ.copy()
    env[RUNTIME_DIR_ENV] = str(runtime_dir)
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
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on loopback (held together while picked, so the kernel
    cannot hand the same one out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


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
    for model in scan_repository(repo):
        name, config = model.path.name, model.config
        if config is None:
            skipped[name] = str(model.error)
        elif config.platform == "ensemble" or config.backend in EMBEDDED_BACKENDS:
            load.append(name)
        else:
            kind = config.platform or config.backend
            skipped[name] = f"{kind} is not in the embedded (CPU) server; serve it on a GPU"
    if not load:
        raise ServerError(f"{repo}: no model the embedded server can load (run `cxr convert`)")
    return ModelPlan(load, skipped)


#: libc's prctl, resolved before any fork (the child between fork and exec only calls it).
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent(parent: int) -> None:
    """In the child between fork and exec: ask the kernel for SIGKILL when the parent ends (even
    by SIGKILL), and end at once if it already has. Only two system calls: safe after a fork."""
    if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
        os._exit(1)


@dataclass
class PidFile:
    """The record a running server leaves in this user's run-time folder, one per gRPC port."""

    path: Path
    pid: int  # tritonserver
    parent: int  # the process that started it
    repo: str
    ports: list[int]

    @classmethod
    def for_port(cls, port: int) -> Path:
        """Where the record of the server on gRPC ``port`` lives."""
        return user_runtime_dir() / f"tritonserver-{port}.json"

    @classmethod
    def read(cls, path: Path) -> PidFile | None:
        """The record in ``path``, or None when it is unreadable."""
        try:
            data = json.loads(path.read_text())
            return cls(path, int(data["pid"]), int(data["parent"]), data["repo"], data["ports"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self) -> None:
        """Write the record (atomically)."""
        data = {"pid": self.pid, "parent": self.parent, "repo": self.repo, "ports": self.ports}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        temporary.replace(self.path)

    def server_alive(self) -> bool:
        """Whether the recorded process still runs and is a tritonserver."""
        try:
            argv0 = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            return False
        return argv0.endswith(b"tritonserver")


def stale_servers() -> list[PidFile]:
    """Servers of ours still running after the process that started them ended (records of
    servers that are gone are removed)."""
    stale = []
    for path in sorted(user_runtime_dir().glob("tritonserver-*.json")):
        record = PidFile.read(path)
        if record is None or not record.server_alive():
            path.unlink(missing_ok=True)
        elif not Path(f"/proc/{record.parent}").exists():
            stale.append(record)
    return stale


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
        self._pid_file: Path | None = None
        # Without a key (and unless opened on purpose) the admin protocols are restricted by a key
        # that only this object knows: closed to everyone else, readable for the model states.
        self._admin_key = config.admin_key or (None if config.open_admin else secrets.token_hex(32))

    @property
    def admin_headers(self) -> dict[str, str]:
        """gRPC headers that open this server's admin protocols (empty when they are open)."""
        return {GRPC_ADMIN_HEADER: self._admin_key} if self._admin_key else {}

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
        return f"http://{self.config.metrics_host}:{self.config.metrics_port}/metrics"

    def command(self) -> list[str]:
        """The tritonserver command line."""
        c = self.config
        assert self.plan is not None
        workdir = Path(self._workdir.name)
        if c.model_control == "explicit":
            repository = c.repo.resolve()
            control = [
                "--model-control-mode=explicit",
                *[f"--load-model={m}" for m in self.plan.load],
            ]
        else:  # every model of the view is loaded at start; the load API is refused
            repository = self._repository_view(workdir / "repository")
            control = ["--model-control-mode=none"]
        args = [
            str(pytriton_dir() / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={prepare_backends(workdir)}",
            *control,
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
            f"--metrics-address={c.metrics_host}",
            f"--metrics-port={c.metrics_port}",
            "--metrics-config=summary_latencies=true",
            f"--log-verbose={c.log_verbose}",
        ]
        if self._admin_key:
            key = f"{RESTRICTED_PROTOCOLS}:{ADMIN_HEADER}={self._admin_key}"
            args += [f"--grpc-restricted-protocol={key}", f"--http-restricted-api={key}"]
        if c.tls:
            args += [
                "--grpc-use-ssl=true",
                f"--grpc-server-cert={c.tls.cert}",
                f"--grpc-server-key={c.tls.key}",
            ]
            if c.tls.ca:
                args += [f"--grpc-root-cert={c.tls.ca}", "--grpc-use-ssl-mutual=true"]
        return args + c.extra_args

    def _repository_view(self, view: Path) -> Path:
        """A folder of links to the models of the plan: what ``--model-control-mode=none`` loads."""
        assert self.plan is not None
        view.mkdir(exist_ok=True)
        for name in self.plan.load:
            link = view / name
            if not link.is_symlink():
                link.symlink_to(self.config.repo.resolve() / name, target_is_directory=True)
        return view

    def start(self, timeout: float = 120.0) -> TritonServer:
        """Start the server and wait until it is live and every model has loaded or failed.

        Raises :class:`ServerError` when the configuration would expose the server, a port is
        taken (naming a stale server of ours that holds it), the repository has nothing to serve,
        or no model loaded (with each model's reason); models that fail leave the others serving.
        The server gets SIGKILL when the thread that started it ends: start it from a thread
        that outlives it (the main thread).
        """
        c = self.config
        check_exposure(c)
        self.plan = plan_models(c.repo)
        ports = {"gRPC": c.grpc_port, "HTTP": c.http_port, "metrics": c.metrics_port}
        stale = {port: s for s in stale_servers() for port in s.ports}
        for name, host, port in (
            ("gRPC", c.host, c.grpc_port),
            ("HTTP", self.http_host, c.http_port),
            ("metrics", c.metrics_host, c.metrics_port),
        ):
            if port in stale:
                s = stale[port]
                raise ServerError(
                    f"{name} port {port} is held by a tritonserver an earlier cxr serve left "
                    f"running (pid {s.pid}, repository {s.repo}; its cxr serve, pid {s.parent}, "
                    f"is gone): stop it with `kill {s.pid}`"
                )
            if port_in_use(host, port):
                raise ServerError(
                    f"{name} port {host}:{port} is already in use; choose another "
                    f"with --{name.lower()}-port or stop what listens there"
                )
        self._shm_before = set(_shm_regions())
        workdir = Path(self._workdir.name)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(workdir),
            start_new_session=True,  # a Ctrl-C in a terminal reaches cxr serve, which stops it
            # Two system calls, no lock taken: safe in a threaded parent despite the warning.
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),  # noqa: PLW1509
        )
        log.close()
        record = PidFile(
            PidFile.for_port(c.grpc_port),
            self.process.pid,
            os.getpid(),
            str(c.repo.resolve()),
            sorted(ports.values()),
        )
        record.write()
        self._pid_file = record.path
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
        if self._admin_key:
            request.add_header(ADMIN_HEADER, self._admin_key)
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
        if self._pid_file is not None:
            self._pid_file.unlink(missing_ok=True)
            self._pid_file = None
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

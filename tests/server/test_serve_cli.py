"""``cxr serve`` as a subprocess: starts, reports every model (a broken one precisely, the others
serving), serves TLS gRPC and metrics on loopback, stops on SIGTERM with no stub process or
shared-memory region left; refuses busy ports, bad TLS options and repositories with nothing to
serve."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import typer
from typer.testing import CliRunner

from cxr.client import contract
from cxr.server.backend.siblings import PREFIX as LOCK_PREFIX
from cxr.server.private import RUNTIME_DIR_ENV
from cxr.server.repository import ONNX_FILE, VERSION
from cxr.server.triton import SHM_PREFIX, free_port, free_ports

START_DEADLINE_S = 180
STOP_DEADLINE_S = 60


def port_options() -> list[str]:
    """``cxr serve`` options for three distinct free loopback ports."""
    names = ("grpc", "http", "metrics")
    return [f"--{n}-port={port}" for n, port in zip(names, free_ports(3), strict=True)]


def cxr_serve(*args: str) -> list[str]:
    """The ``cxr serve ARGS...`` command line."""
    return [sys.executable, "-m", "cxr", "serve", *args]


class Output:
    """The stderr of a running command, collected by a thread."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.lines.append(line)

    @property
    def text(self) -> str:
        """Everything read so far."""
        return "".join(self.lines)

    def wait_for(self, marker: str, process: subprocess.Popen, timeout: float) -> str:
        """Wait until ``marker`` was printed; fail with the output if the process ends first."""
        deadline = time.monotonic() + timeout
        while marker not in self.text:
            assert process.poll() is None, f"exited {process.returncode}:\n{self.text}"
            assert time.monotonic() < deadline, f"no {marker!r} within {timeout} s:\n{self.text}"
            time.sleep(0.2)
        return self.text


def start_serve(*args: str) -> tuple[subprocess.Popen, Output]:
    """``cxr serve ARGS...`` started as a subprocess, and its stderr being collected."""
    process = subprocess.Popen(
        cxr_serve(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    return process, Output(process)


def session_processes(sid: int) -> dict[int, list[str]]:
    """pid -> command line of every live process in session ``sid`` (zombies, dead and
    waiting for init to reap them, hold nothing and are left out)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
                found[int(stat.parent.name)] = [part.decode() for part in cmdline if part]
        except (OSError, IndexError, ValueError):
            continue
    return found


def listening_address(port: int) -> str | None:
    """The local address a TCP socket listens on at ``port`` (/proc/net/tcp and tcp6; an
    IPv4-mapped IPv6 address is given as IPv4)."""
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            return socket.inet_ntop(family, words).removeprefix("::ffff:")
    return None


def children(pid: int) -> dict[int, list[str]]:
    """pid -> command line of the children of ``pid``."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
                found[int(stat.parent.name)] = [part.decode() for part in cmdline if part]
        except (OSError, IndexError, ValueError):
            continue
    return found


def stop_for_sure(process: subprocess.Popen) -> None:
    """End a ``cxr serve`` the test left running: SIGTERM, then SIGKILL for it and whatever is
    left of its server's session (a failing test must not orphan a tritonserver)."""
    if process.poll() is not None:
        return
    servers = children(process.pid)
    process.terminate()
    try:
        process.wait(STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_DEADLINE_S)
    for server_pid in servers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server_pid, signal.SIGKILL)  # started in a session of its own


@pytest.fixture
def broken_variant_repo(
    cpu_repo: Path, deployed: str, clone: Any, tmp_path: Path
) -> tuple[Path, str]:
    """The converted repository with one classifier that is not deployed made unloadable."""
    repo = clone(cpu_repo, tmp_path / "repo")
    broken = next(
        contract.classifier_model(v)
        for v in contract.CPU_VARIANTS
        if contract.classifier_model(v) != deployed
    )
    onnx_path = repo / broken / VERSION / ONNX_FILE
    onnx_path.unlink()
    onnx_path.write_bytes(b"\x00corrupt onnx\x00" * 64)
    return repo, broken


@pytest.fixture
def serving(broken_variant_repo: tuple[Path, str], dev_certs: Any) -> Iterator[dict]:
    """``cxr serve`` running with TLS on free ports (stopped by the test, killed if it fails)."""
    repo, broken = broken_variant_repo
    ports = dict(zip(("grpc", "http", "metrics"), free_ports(3), strict=True))
    args = [f"--{name}-port={port}" for name, port in ports.items()]
    process = subprocess.Popen(
        cxr_serve(
            "--repo",
            str(repo),
            *args,
            "--tls-cert",
            str(dev_certs.server_cert),
            "--tls-key",
            str(dev_certs.server_key),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CXR_ADMIN_KEY": "cli-test-key"},
    )
    output = Output(process)
    try:
        yield {"process": process, "output": output, "ports": ports, "broken": broken}
    finally:
        stop_for_sure(process)


def test_serve_reports_models_serves_tls_and_stops_cleanly(
    serving: dict, dev_certs: Any, samples_dir: Path
) -> None:
    process, output, ports = serving["process"], serving["output"], serving["ports"]
    text = output.wait_for("Ctrl-C to stop.", process, START_DEADLINE_S)
    broken = serving["broken"]
    assert re.search(rf"UNAVAILABLE {broken} .*model\.onnx is not a loadable ONNX model", text)
    assert f"READY {contract.ENSEMBLE_MODEL}" in text
    assert "/v2/health/ready stays false" in text
    assert f"grpcs (TLS): 127.0.0.1:{ports['grpc']}" in text
    assert f"metrics: http://127.0.0.1:{ports['metrics']}/metrics" in text
    assert "admin protocols: restricted by key" in text
    server_pid = int(re.search(r"\(pid (\d+)\)", text).group(1))
    for port in ports.values():
        assert listening_address(port) == "127.0.0.1", port

    # The other models serve, over TLS.
    client = grpcclient.InferenceServerClient(
        f"localhost:{ports['grpc']}", ssl=True, root_certificates=str(dev_certs.ca_cert)
    )
    png = (samples_dir / "nih_00000001_000.png").read_bytes()
    tensor = grpcclient.InferInput(contract.IMAGE_BYTES, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[png]], dtype=np.object_))
    result = client.infer(contract.ENSEMBLE_MODEL, [tensor], client_timeout=30)
    assert result.as_numpy(contract.PROBS).shape == (1, 2)
    assert not client.is_model_ready(broken)
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics") as reply:
        assert "nv_inference_request_success" in reply.read().decode()

    # What it runs: tritonserver and one stub per Python model instance, each with its region.
    stubs = {
        pid: cmd
        for pid, cmd in session_processes(server_pid).items()
        if cmd and cmd[0].endswith("triton_python_backend_stub")
    }
    assert stubs, session_processes(server_pid)
    regions = {arg for cmd in stubs.values() for arg in cmd if arg.startswith(SHM_PREFIX)}
    assert regions and all((Path("/dev/shm") / r).exists() for r in regions)
    # Instances that pick their threads by whether their siblings run keep lock files, in the
    # server's private folder (mode 0700, a name no other user could predict).
    runtime = {
        Path(line.split(b"=", 1)[1].decode())
        for pid in stubs
        for line in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if line.startswith(RUNTIME_DIR_ENV.encode() + b"=")
    }
    assert len(runtime) == 1, runtime
    (folder,) = runtime
    assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == os.geteuid()
    locks = list(folder.glob(f"{LOCK_PREFIX}{server_pid}-*"))
    assert locks or len(os.sched_getaffinity(0)) == 1

    process.send_signal(signal.SIGTERM)
    assert process.wait(STOP_DEADLINE_S) == 0, output.text
    assert "stopped" in output.text
    assert session_processes(server_pid) == {}, "processes of the server outlived it"
    assert not [r for r in regions if (Path("/dev/shm") / r).exists()], "shared memory left"
    assert not [lock for lock in locks if lock.exists()], "instance lock files left"


def test_a_signal_while_starting_stops_everything(cpu_repo: Path) -> None:
    ports = port_options()
    process, output = start_serve("--repo", str(cpu_repo), *ports)
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while not (servers := children(process.pid)):  # tritonserver started: models loading
            assert process.poll() is None and time.monotonic() < deadline, output.text
            time.sleep(0.05)
        (server_pid,) = servers
        process.send_signal(signal.SIGTERM)
        assert process.wait(STOP_DEADLINE_S) == 0, output.text
    finally:
        stop_for_sure(process)
    assert "stopped" in output.text and "Ctrl-C to stop." not in output.text
    assert session_processes(server_pid) == {}, "processes of the server outlived it"


@pytest.fixture(scope="module")
def serve_app() -> typer.Typer:
    """``cxr serve`` as a Typer app, to run in this process (its refusals need no subprocess)."""
    from cxr.server.serve_cli import serve_command

    app = typer.Typer()
    app.command()(serve_command)
    return app


def test_serve_refuses_a_busy_port(serve_app: typer.Typer, cpu_repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = CliRunner().invoke(serve_app, ["--repo", str(cpu_repo), "--http-port", str(port)])
    assert done.exit_code == 2
    assert f"HTTP port 127.0.0.1:{port} is already in use" in done.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "server.crt"], "--tls-cert and --tls-key go together"),
        (["--tls-ca", "ca.crt"], "--tls-ca (mutual TLS) needs --tls-cert and --tls-key"),
        (["--tls-cert", "nope.crt", "--tls-key", "nope.key"], "nope.crt: no such file"),
    ],
)
def test_serve_refuses_bad_tls_options(
    serve_app: typer.Typer, cpu_repo: Path, args: list[str], message: str
) -> None:
    done = CliRunner().invoke(serve_app, ["--repo", str(cpu_repo), *args])
    assert done.exit_code == 2 and message in done.output, done.output


def test_serve_refuses_a_repository_with_nothing_to_serve(
    serve_app: typer.Typer, tmp_path: Path
) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.pbtxt").write_text("this is not a config")
    done = CliRunner().invoke(serve_app, ["--repo", str(tmp_path)])
    assert done.exit_code == 2
    assert "no model the embedded server can load" in done.output


def test_serve_refuses_when_no_model_loads(
    serve_app: typer.Typer, cpu_repo: Path, deployed: str, clone: Any, tmp_path: Path
) -> None:
    repo = clone(cpu_repo, tmp_path / "repo", [deployed])
    (repo / deployed / VERSION / ONNX_FILE).unlink()
    ports = port_options()
    done = CliRunner().invoke(serve_app, ["--repo", str(repo), *ports])
    assert done.exit_code == 2, done.output
    assert f"no model of {repo} loaded" in done.output
    assert "model.onnx is missing (run `cxr convert`)" in done.output


#: The issue's bound: no tritonserver may outlive a killed ``cxr serve`` by more (the kernel
#: kills it when cxr serve ends: milliseconds, a 1000x margin).
ORPHAN_DEADLINE_S = 5
#: The stubs notice that tritonserver is gone by themselves (1.5-2.1 s measured here while the
#: cores were shared): bounded 10x over the issue's 5 s, only to catch a stub that stays.
STUB_DEADLINE_S = 50


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` have passed; its last value."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_a_killed_serve_leaves_no_server_and_the_ports_serve_again(cpu_repo: Path) -> None:
    ports = port_options()
    process, output = start_serve("--repo", str(cpu_repo), *ports)
    try:
        text = output.wait_for("Ctrl-C to stop.", process, START_DEADLINE_S)
        server_pid = int(re.search(r"\(pid (\d+)\)", text).group(1))
        assert session_processes(server_pid)
        process.kill()  # SIGKILL: cxr serve gets no chance to stop anything
        process.wait(STOP_DEADLINE_S)
        server_gone = wait_until(
            lambda: server_pid not in session_processes(server_pid), ORPHAN_DEADLINE_S
        )
        assert server_gone, "tritonserver outlived cxr serve"
        stubs_gone = wait_until(lambda: not session_processes(server_pid), STUB_DEADLINE_S)
        assert stubs_gone, "stubs outlived tritonserver"
    finally:
        stop_for_sure(process)
    again, output = start_serve("--repo", str(cpu_repo), *ports)
    try:
        output.wait_for("Ctrl-C to stop.", again, START_DEADLINE_S)
        again.send_signal(signal.SIGTERM)
        assert again.wait(STOP_DEADLINE_S) == 0, output.text
    finally:
        stop_for_sure(again)


def test_a_start_names_a_stale_server_of_ours(
    serve_app: typer.Typer, cpu_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tritonserver whose cxr serve is gone (recorded in the run-time folder) holding the port:
    the refusal names it and says how to stop it, instead of a bare "port in use"."""
    from cxr.server.triton import PidFile

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    dead_parent = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_parent.wait()
    port = free_port()
    holder = "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); "
    holder += "s.listen(); print('ready', flush=True); sys.stdin.read()"
    # A process that is a tritonserver by its name and holds the gRPC port, as a stale one would.
    stale = subprocess.Popen(
        ["bash", "-c", f'exec -a tritonserver {sys.executable} -c "{holder}" {port}'],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stale.stdout is not None and stale.stdout.readline() == "ready\n"
        record = PidFile(PidFile.for_port(port), stale.pid, dead_parent.pid, str(cpu_repo), [port])
        record.write()
        done = CliRunner().invoke(serve_app, ["--repo", str(cpu_repo), "--grpc-port", str(port)])
        assert done.exit_code == 2, done.output
        assert f"held by a tritonserver an earlier cxr serve left running (pid {stale.pid}" in (
            done.output
        )
        assert f"kill {stale.pid}" in done.output
    finally:
        stale.kill()
        stale.wait()
    # Once it is gone, its record is dropped.
    from cxr.server.triton import stale_servers

    assert stale_servers() == [] and not record.path.exists()

"""Closed by default: a server without an admin key refuses the admin protocols and model loads;
``--open-admin`` and ``--model-control explicit`` open them on loopback only when asked; a network
address needs TLS and a key; private folders refuse what another user could have put there."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import typer
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from cxr.client import contract
from cxr.server.private import UnsafeFolderError, private_folder
from cxr.server.triton import ServerConfig, TritonServer

RESTRICTED_MESSAGE = "This protocol is restricted"


def http_status(url: str, method: str = "GET") -> int:
    """HTTP status of a call without any header."""
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def start(repo: Path, **options: Any) -> TritonServer:
    """A started server of ``repo`` on free loopback ports."""
    server = TritonServer(ServerConfig.on_free_ports(repo, **options))
    try:
        server.start()
    except BaseException:
        server.__exit__(None, None, None)
        raise
    return server


@pytest.fixture(scope="module")
def default_server(cpu_repo: Path) -> Iterator[TritonServer]:
    """A server as ``cxr serve`` starts it with no security option at all."""
    server = start(cpu_repo)
    try:
        assert not server.failed_models(), server.log_tail()
        yield server
    finally:
        server.__exit__(None, None, None)


def non_deployed(deployed: str) -> str:
    """A CPU classifier the ensemble does not route to."""
    return next(
        contract.classifier_model(v)
        for v in contract.CPU_VARIANTS
        if contract.classifier_model(v) != deployed
    )


def test_a_default_server_refuses_a_model_load(default_server: TritonServer, deployed: str) -> None:
    with grpcclient.InferenceServerClient(default_server.grpc_url) as client:
        for call in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException, match=RESTRICTED_MESSAGE):
                call(deployed)
        # Even the key of the process that started it cannot change the models: none mode.
        with pytest.raises(InferenceServerException, match="not allowed"):
            client.unload_model(deployed, headers=default_server.admin_headers)
        with pytest.raises(InferenceServerException, match="not allowed"):
            client.load_model(non_deployed(deployed), headers=default_server.admin_headers)
        assert client.is_model_ready(deployed)
        assert client.is_model_ready(contract.ENSEMBLE_MODEL)


def test_a_default_server_closes_every_admin_protocol(default_server: TritonServer) -> None:
    with grpcclient.InferenceServerClient(default_server.grpc_url) as client:
        for call in (
            client.get_model_repository_index,
            client.get_inference_statistics,
            client.get_trace_settings,
            client.get_log_settings,
            client.get_system_shared_memory_status,
        ):
            with pytest.raises(InferenceServerException, match=RESTRICTED_MESSAGE):
                call()
        assert client.is_server_ready()  # health and inference stay open
    base = default_server.http_url
    assert http_status(f"{base}/v2/repository/index", "POST") == 403
    assert http_status(f"{base}/v2/models/stats") == 403
    assert http_status(f"{base}/v2/logging") == 403
    assert http_status(f"{base}/v2/health/ready") == 200


def test_open_admin_and_explicit_control_when_asked(
    cpu_repo: Path, clone: Any, deployed: str, tmp_path: Path
) -> None:
    repo = clone(cpu_repo, tmp_path / "repo")
    server = start(repo, open_admin=True, model_control="explicit")
    try:
        other = non_deployed(deployed)
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            assert client.get_inference_statistics(deployed) is not None
            client.unload_model(other)
            assert not client.is_model_ready(other)
            client.load_model(other)
            assert client.is_model_ready(other)
    finally:
        server.__exit__(None, None, None)


def test_metrics_bind_loopback_unless_asked(cpu_repo: Path, dev_certs: Any) -> None:
    from cxr.server.triton import TLS, plan_models

    tls = TLS(dev_certs.server_cert, dev_certs.server_key)
    server = TritonServer(ServerConfig(cpu_repo, host="0.0.0.0", tls=tls, admin_key="k"))
    server.plan = plan_models(cpu_repo)
    args = server.command()
    assert "--grpc-address=0.0.0.0" in args and "--metrics-address=127.0.0.1" in args
    asked = TritonServer(ServerConfig(cpu_repo, metrics_host="0.0.0.0"))
    asked.plan = server.plan
    assert "--metrics-address=0.0.0.0" in asked.command()


@pytest.fixture(scope="module")
def serve_app() -> typer.Typer:
    """``cxr serve`` as a Typer app run in this process (refusals need no server)."""
    from cxr.server.serve_cli import serve_command

    app = typer.Typer()
    app.command()(serve_command)
    return app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "is not loopback: serving on the network needs TLS"),
        (["--host", "10.1.2.3", "--admin-key", "k"], "needs TLS (--tls-cert/--tls-key);"),
        (["--host", "0.0.0.0", "--open-admin", "--insecure"], "--open-admin opens the admin"),
        (["--open-admin", "--admin-key", "k"], "--open-admin and an admin key exclude"),
        (["--model-control", "explicit"], "--model-control explicit needs an admin key"),
        (["--model-control", "poll"], "model control 'poll': choose one of none, explicit"),
    ],
)
def test_serve_refuses_exposed_configurations(
    serve_app: typer.Typer, cpu_repo: Path, args: list[str], message: str
) -> None:
    env = {"CXR_ADMIN_KEY": ""}
    done = CliRunner().invoke(serve_app, ["--repo", str(cpu_repo), *args], env=env)
    assert done.exit_code == 2, done.output
    assert message in done.output, done.output


def test_private_folders_refuse_what_another_could_have_planted(tmp_path: Path) -> None:
    made = private_folder(tmp_path / "mine")
    assert made.stat().st_mode & 0o777 == 0o700
    assert private_folder(made) == made  # an existing private folder is reused
    open_folder = tmp_path / "open"
    open_folder.mkdir(mode=0o755)
    open_folder.chmod(0o755)
    with pytest.raises(UnsafeFolderError, match="open to other users"):
        private_folder(open_folder)
    (tmp_path / "link").symlink_to(made)
    with pytest.raises(UnsafeFolderError, match="not a folder"):
        private_folder(tmp_path / "link")
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    if os.geteuid() != 0:
        pytest.skip("changing a folder's owner needs root")
    os.chown(foreign, 12345, 12345)
    with pytest.raises(UnsafeFolderError, match="belongs to uid 12345"):
        private_folder(foreign)


def test_sibling_locks_live_in_the_servers_private_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxr.server.backend.siblings import Siblings
    from cxr.server.private import RUNTIME_DIR_ENV

    private = tmp_path / "server"
    private.mkdir(mode=0o700)
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(private))
    instance = Siblings.of_instance("m", "1", "m_0_0", 2)
    assert instance.folder.parent == private
    instance.close()
    planted = tmp_path / "planted"
    planted.mkdir()
    planted.chmod(0o777)  # as another user could have made it
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(planted))
    with pytest.raises(UnsafeFolderError, match="open to other users"):
        Siblings.of_instance("m", "1", "m_0_0", 2)

"""Admin protocols closed without the key (gRPC and HTTP) while inference and health stay open;
gRPC with mutual TLS."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from cxr.client import contract
from cxr.client.contract import ADMIN_HEADER as HTTP_ADMIN_HEADER
from cxr.client.contract import GRPC_ADMIN_HEADER

RESTRICTED_MESSAGE = "This protocol is restricted"
#: One call of each restricted gRPC protocol (model-repository, statistics, trace, logging,
#: shared-memory); the unload is refused before it could unload anything.
GRPC_ADMIN_CALLS: dict[str, Callable[[Any, dict | None], Any]] = {
    "repository_index": lambda c, h: c.get_model_repository_index(headers=h),
    "statistics": lambda c, h: c.get_inference_statistics(headers=h),
    "trace": lambda c, h: c.get_trace_settings(headers=h),
    "logging": lambda c, h: c.get_log_settings(headers=h),
    "shared_memory": lambda c, h: c.get_system_shared_memory_status(headers=h),
}
HTTP_ADMIN_CALLS = {
    "repository_index": ("POST", "/v2/repository/index"),
    "statistics": ("GET", "/v2/models/stats"),
    "trace": ("GET", "/v2/trace/setting"),
    "logging": ("GET", "/v2/logging"),
    "shared_memory": ("GET", "/v2/systemsharedmemory/status"),
}


def http(served: Any, method: str, path: str, body: Any = None, key: str | None = None) -> int:
    """HTTP status of a call to the server (errors included)."""
    data = None if body is None and method == "GET" else json.dumps(body or {}).encode()
    request = urllib.request.Request(f"{served.http_url}{path}", data=data, method=method)
    if key is not None:
        request.add_header(HTTP_ADMIN_HEADER, key)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.parametrize("call", sorted(GRPC_ADMIN_CALLS))
def test_grpc_admin_protocols_need_the_key(grpc: Any, admin_key: str, call: str) -> None:
    for headers in (None, {GRPC_ADMIN_HEADER: "wrong-key"}, {HTTP_ADMIN_HEADER: admin_key}):
        with pytest.raises(InferenceServerException, match=RESTRICTED_MESSAGE):
            GRPC_ADMIN_CALLS[call](grpc, headers)
    assert GRPC_ADMIN_CALLS[call](grpc, {GRPC_ADMIN_HEADER: admin_key}) is not None


def test_grpc_unload_without_the_key_changes_nothing(grpc: Any, deployed: str) -> None:
    with pytest.raises(InferenceServerException, match=RESTRICTED_MESSAGE):
        grpc.unload_model(deployed)
    assert grpc.is_model_ready(deployed)


@pytest.mark.parametrize("call", sorted(HTTP_ADMIN_CALLS))
def test_http_admin_apis_need_the_key(served: Any, admin_key: str, call: str) -> None:
    method, path = HTTP_ADMIN_CALLS[call]
    assert http(served, method, path) == 403
    assert http(served, method, path, key="wrong-key") == 403
    assert http(served, method, path, key=admin_key) == 200


def test_inference_metadata_and_health_stay_open(
    served: Any, grpc: Any, deployed: str, image_size: int
) -> None:
    model = deployed
    assert grpc.is_server_live() and grpc.is_server_ready() and grpc.is_model_ready(model)
    config = grpc.get_model_config(contract.ENSEMBLE_MODEL, as_json=True)["config"]
    assert config["parameters"][contract.PARAM_DEPLOYED_MODEL]["string_value"] == model
    assert grpc.get_model_metadata(model).name == model
    tensor = grpcclient.InferInput(contract.IMAGE, [1, 1, image_size, image_size], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 1, image_size, image_size), np.uint8))
    assert grpc.infer(model, [tensor]).as_numpy(contract.PROBS).shape == (1, 2)
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{model}/ready"):
        assert http(served, "GET", path) == 200
    assert http(served, "GET", f"/v2/models/{model}/config") == 200
    body = {
        "inputs": [
            {
                "name": contract.IMAGE,
                "shape": [1, 1, image_size, image_size],
                "datatype": "UINT8",
                "data": [0] * image_size * image_size,
            }
        ]
    }
    assert http(served, "POST", f"/v2/models/{model}/infer", body) == 200


@pytest.fixture(scope="module")
def mtls(cpu_repo: Path, dev_certs: Any) -> Iterator[Any]:
    """A server of the converted repository with gRPC mutual TLS."""
    from cxr.server.triton import TLS, ServerConfig, TritonServer

    tls = TLS(dev_certs.server_cert, dev_certs.server_key, dev_certs.ca_cert)
    config = ServerConfig.on_free_ports(cpu_repo, tls=tls)
    with TritonServer(config) as server:
        assert not server.failed_models(), server.log_tail()
        yield server


def tls_client(url: str, certs: Any, client_cert: bool) -> Any:
    """A gRPC client trusting the dev CA, presenting the client certificate when asked."""
    return grpcclient.InferenceServerClient(
        url,
        ssl=True,
        root_certificates=str(certs.ca_cert),
        private_key=str(certs.client_key) if client_cert else None,
        certificate_chain=str(certs.client_cert) if client_cert else None,
    )


def test_mutual_tls_serves_clients_with_a_certificate(
    mtls: Any, dev_certs: Any, samples_dir: Path
) -> None:
    client = tls_client(mtls.grpc_url, dev_certs, client_cert=True)
    assert client.is_server_ready()
    png = (samples_dir / "nih_00000001_000.png").read_bytes()
    tensor = grpcclient.InferInput(contract.IMAGE_BYTES, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[png]], dtype=np.object_))
    result = client.infer(contract.ENSEMBLE_MODEL, [tensor], client_timeout=30)
    assert result.as_numpy(contract.PROBS).shape == (1, 2)


@pytest.mark.parametrize("client_kind", ["no_client_certificate", "plaintext"])
def test_mutual_tls_refuses_other_clients(mtls: Any, dev_certs: Any, client_kind: str) -> None:
    if client_kind == "plaintext":
        client = grpcclient.InferenceServerClient(mtls.grpc_url)
    else:
        client = tls_client(mtls.grpc_url, dev_certs, client_cert=False)
    with pytest.raises(InferenceServerException) as caught:
        client.is_server_live(client_timeout=10)
    assert caught.value.status() == "StatusCode.UNAVAILABLE", caught.value


def test_with_tls_http_binds_loopback_only(cpu_repo: Path, dev_certs: Any) -> None:
    """Triton's HTTP has no TLS: on the network it would bypass TLS and client certificates."""
    from cxr.server.triton import TLS, ServerConfig, TritonServer, plan_models

    tls = TLS(dev_certs.server_cert, dev_certs.server_key)
    server = TritonServer(ServerConfig(cpu_repo, host="0.0.0.0", tls=tls))
    server.plan = plan_models(cpu_repo)
    args = server.command()
    assert "--grpc-address=0.0.0.0" in args and "--http-address=127.0.0.1" in args
    assert "--grpc-use-ssl=true" in args and "--grpc-use-ssl-mutual=true" not in args

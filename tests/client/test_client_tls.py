"""TLS and mutual TLS with throw-away certificates: the client gets through with the right
certificates and is refused without them (library and ``cxr client``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.client import TriageClient, TriageError


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):
    from cxr.server.certs import make_dev_certs

    return make_dev_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(model_repo: Path, certs, start_server):
    from cxr.server.triton import TLS

    return start_server(model_repo, tls=TLS(certs.server_cert, certs.server_key))


@pytest.fixture(scope="module")
def mtls_server(model_repo: Path, certs, start_server):
    from cxr.server.triton import TLS

    return start_server(model_repo, tls=TLS(certs.server_cert, certs.server_key, certs.ca_cert))


def triage(url: str, paths: list[Path], **tls) -> list:
    with TriageClient(url, timeout=3, **tls) as client:
        return client.predict(paths)


def refused(url: str, **tls) -> TriageError:
    with pytest.raises(TriageError) as caught, TriageClient(url, timeout=1, **tls) as client:
        client.model_info()
    return caught.value


def test_tls(tls_server, certs, xray_pngs: list[Path]) -> None:
    url = tls_server.grpc_url
    results = triage(url, xray_pngs[:2], ssl=True, root_certificates=str(certs.ca_cert))
    assert all(r.ok for r in results), results
    assert refused(url).code == "unavailable"  # plain text to a TLS port
    assert refused(url, ssl=True).code == "unavailable"  # the dev CA is not a system root


def test_mutual_tls(mtls_server, certs, xray_pngs: list[Path]) -> None:
    url = mtls_server.grpc_url
    mutual = {
        "ssl": True,
        "root_certificates": str(certs.ca_cert),
        "certificate_chain": str(certs.client_cert),
        "private_key": str(certs.client_key),
    }
    assert all(r.ok for r in triage(url, xray_pngs[:2], **mutual))
    without_client_cert = {"ssl": True, "root_certificates": str(certs.ca_cert)}
    assert refused(url, **without_client_cert).code == "unavailable"
    assert refused(url).code == "unavailable"  # plain text


def test_cli_over_mutual_tls(mtls_server, certs, run_cli, xray_pngs: list[Path]) -> None:
    tls = [
        "--ssl",
        "--root-cert", str(certs.ca_cert),
        "--client-cert", str(certs.client_cert),
        "--client-key", str(certs.client_key),
    ]  # fmt: skip
    url = ["--url", mtls_server.grpc_url]
    done = run_cli("predict", *map(str, xray_pngs[:3]), *url, *tls, "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('"ok": true') == 3
    assert run_cli("health", *url, *tls).returncode == 0
    assert run_cli("models", *url, *tls).returncode == 0
    no_client_cert = run_cli("predict", str(xray_pngs[0]), *url, *tls[:3], "--timeout", "1")
    assert no_client_cert.returncode == 2 and "cannot use" in no_client_cert.stderr

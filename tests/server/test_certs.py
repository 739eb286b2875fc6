"""Tests for server.certs: a throw-away CA, server and client certificates for (mutual) TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import stat
import sys
from pathlib import Path

import pytest

pytest.importorskip("cryptography", reason="server.certs needs cryptography (the certs extra)")

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from cxr.server.certs import DevCerts, make_dev_certs

HOSTS = ("localhost", "cxr.example.test", "127.0.0.1", "::1")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("certs") / "dev", HOSTS, days=3)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_exist_as_pem(certs: DevCerts) -> None:
    for field, path in vars(certs).items():
        assert path.is_file(), field
        text = path.read_text()
        kind = "PRIVATE KEY" if field.endswith("_key") else "CERTIFICATE"
        assert text.startswith(f"-----BEGIN {kind}-----"), field
    assert sorted(p.name for p in certs.ca_cert.parent.iterdir()) == sorted(
        p.name for p in vars(certs).values()
    )  # no CA key, no temporary files left behind


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_keys_are_private(certs: DevCerts) -> None:
    for path in (certs.server_key, certs.client_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(certs.ca_cert.stat().st_mode) == 0o644


def test_server_cert_verifies_against_the_ca_for_every_host(certs: DevCerts) -> None:
    ca, server = load(certs.ca_cert), load(certs.server_cert)
    server.verify_directly_issued_by(ca)  # issuer name and signature with the CA's public key
    assert server.issuer == ca.subject
    store = Store([ca])
    for host in HOSTS:
        try:
            subject: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            subject = x509.DNSName(host)
        verifier = PolicyBuilder().store(store).build_server_verifier(subject)
        chain = verifier.verify(server, [])
        assert chain[-1] == ca
    other = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("elsewhere.test"))
    with pytest.raises(x509.verification.VerificationError):
        other.verify(server, [])


def test_client_cert_verifies_against_the_ca(certs: DevCerts) -> None:
    ca, client = load(certs.ca_cert), load(certs.client_cert)
    client.verify_directly_issued_by(ca)
    verified = PolicyBuilder().store(Store([ca])).build_client_verifier().verify(client, [])
    assert verified.chain[-1] == ca
    assert verified.subjects == [x509.DNSName("cxr-triage-dev-client")]


def test_sans_and_key_usages(certs: DevCerts) -> None:
    server, client, ca = load(certs.server_cert), load(certs.client_cert), load(certs.ca_cert)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "cxr.example.test"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (server, client):
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_validity_window(certs: DevCerts) -> None:
    now = dt.datetime.now(dt.UTC)
    for path in (certs.ca_cert, certs.server_cert, certs.client_cert):
        cert = load(path)
        assert cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
        lifetime = cert.not_valid_after_utc - now
        assert dt.timedelta(days=2, hours=23) < lifetime <= dt.timedelta(days=3)


def test_mutual_tls_handshake(certs: DevCerts) -> None:
    """The files work with OpenSSL as they are: a real mutual-TLS handshake, in memory."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs.ca_cert)
    server_ctx.load_cert_chain(certs.server_cert, certs.server_key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=certs.ca_cert)
    client_ctx.load_cert_chain(certs.client_cert, certs.client_key)

    pipes = {side: (ssl.MemoryBIO(), ssl.MemoryBIO()) for side in ("server", "client")}
    server = server_ctx.wrap_bio(*pipes["server"], server_side=True)
    client = client_ctx.wrap_bio(*pipes["client"], server_hostname="localhost")
    done = {"server": False, "client": False}
    for _ in range(20):
        for side, end in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    end.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        # shuttle bytes: each side's outgoing BIO feeds the other's incoming BIO
        pipes["server"][0].write(pipes["client"][1].read())
        pipes["client"][0].write(pipes["server"][1].read())
        if all(done.values()):
            break
    assert all(done.values()), done
    peer = server.getpeercert()
    assert peer is not None and ("commonName", "cxr-triage-dev-client") in peer["subject"][-1]
    assert client.getpeercert() is not None


def test_rerun_replaces_files_and_restores_permissions(tmp_path: Path) -> None:
    first = make_dev_certs(tmp_path)
    first.server_key.chmod(0o644)
    old = first.server_cert.read_bytes()
    second = make_dev_certs(tmp_path)
    assert second == first  # same paths
    assert second.server_cert.read_bytes() != old  # a new CA and new keys
    if sys.platform != "win32":
        assert stat.S_IMODE(second.server_key.stat().st_mode) == 0o600
    load(second.server_cert).verify_directly_issued_by(load(second.ca_cert))


def test_default_hosts(tmp_path: Path) -> None:
    certs = make_dev_certs(tmp_path / "nested" / "dir")
    sans = load(certs.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


@pytest.mark.parametrize(("hosts", "days"), [((), 7), (("",), 7), (("localhost",), 0)])
def test_bad_arguments(tmp_path: Path, hosts: tuple[str, ...], days: int) -> None:
    with pytest.raises(ValueError):
        make_dev_certs(tmp_path, hosts, days)
    assert not any(tmp_path.iterdir())


def test_missing_cryptography_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography", None)  # makes `import cryptography` fail
    with pytest.raises(ImportError, match=r"pip install 'cxr-triage\[certs\]'"):
        make_dev_certs(tmp_path)
    assert not os.listdir(tmp_path)

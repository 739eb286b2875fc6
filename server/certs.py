"""Throw-away TLS certificates for development and tests: ``cxr certs dev``.

One call makes a fresh certificate authority and signs two certificates with it: one for the
server (Subject Alternative Names for every host, ``serverAuth``) and one for a client
(``clientAuth``, for mutual TLS). Keys are EC P-256, everything is PEM, private keys are written
with 0600 permissions. The CA's private key is never written: nothing else can be signed with it
once the call returns. For tests and local experiments only, never production.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr.client.files import write_atomic

CA_CERT = "ca.crt"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"
CLIENT_NAME = "cxr-triage-dev-client"
CLOCK_SKEW = dt.timedelta(minutes=5)  # valid from a little before now: hosts' clocks differ


@dataclass(frozen=True)
class DevCerts:
    """Paths of the files written by :func:`make_dev_certs`."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_dev_certs(
    out_dir: Path,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 7,
) -> DevCerts:
    """Write a throw-away CA certificate, a server and a client certificate with their keys.

    ``hosts`` are the names clients use to reach the server: IP addresses become IP address SANs,
    anything else a DNS name SAN (the first host is also the server's common name). Certificates
    are valid from a few minutes ago for ``days`` days. Existing files are replaced.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as err:
        raise ImportError(
            "making development certificates needs the 'cryptography' package: "
            "pip install 'cxr-triage[certs]'"
        ) from err

    hosts = [host.strip() for host in ([hosts] if isinstance(hosts, str) else hosts)]
    if not hosts or not all(hosts):
        raise ValueError(f"at least one non-empty host name or IP address is needed, got {hosts}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - CLOCK_SKEW, now + dt.timedelta(days=days)

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cxr-triage development"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )

    def key_usage(*, cert_sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=cert_sign,
            crl_sign=cert_sign,
            encipher_only=False,
            decipher_only=False,
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("cxr-triage dev CA (throw-away)")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    def general_name(host: str) -> x509.GeneralName:
        """An IP address SAN for an IP literal, a DNS name SAN otherwise."""
        try:
            return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            return x509.DNSName(host)

    server_sans = [general_name(host) for host in hosts]
    server_cert, server_key = leaf(hosts[0][:64], ExtendedKeyUsageOID.SERVER_AUTH, server_sans)
    # RFC 5280 verifiers (cryptography's among them) want a SAN in every leaf, clients included.
    client_cert, client_key = leaf(
        CLIENT_NAME, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName(CLIENT_NAME)]
    )

    def cert_pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    certs = DevCerts(
        ca_cert=out_dir / CA_CERT,
        server_cert=out_dir / SERVER_CERT,
        server_key=out_dir / SERVER_KEY,
        client_cert=out_dir / CLIENT_CERT,
        client_key=out_dir / CLIENT_KEY,
    )
    write_atomic(certs.server_key, key_pem(server_key), 0o600)
    write_atomic(certs.client_key, key_pem(client_key), 0o600)
    write_atomic(certs.ca_cert, cert_pem(ca_cert), 0o644)
    write_atomic(certs.server_cert, cert_pem(server_cert), 0o644)
    write_atomic(certs.client_cert, cert_pem(client_cert), 0o644)
    return certs

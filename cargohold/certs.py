"""The cluster CA and its certificates, for mutual TLS between gateways, nodes and admins.

`create_ca(dir)` writes `ca.pem` + `ca-key.pem` (EC P-256, 10 years); `issue(dir, role,
name, hosts)` writes `<name>.pem` + `<name>-key.pem` signed by it (2 years by default),
whose identity is:

    CN = name, OU = role, SAN URI = cargohold:role/<role>, SAN DNS/IP = hosts

Nodes read the role from the SAN URI (node/access.py), so a gateway certificate cannot
be used as a node or admin one. Node certificates are server and client certificates
(nodes call each other); the hosts are the names and addresses clients dial. Private
keys are written 0600. `cargohold admin certs ca|issue` drives this module.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cargohold.cluster_auth import CERT_ROLE_PREFIX, ROLES


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(directory: str | os.PathLike[str], days: int = 3650) -> Path:
    """A new cluster CA in `directory` (refuses to overwrite one); returns ca.pem's path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (out / "ca-key.pem").exists():
        raise FileExistsError(f"{out / 'ca-key.pem'} exists: refusing to replace the CA")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cargohold cluster CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(out / "ca-key.pem", _key_pem(key), 0o600)
    _write(out / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return out / "ca.pem"


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(
    directory: str | os.PathLike[str],
    role: str,
    name: str,
    hosts: list[str] | None = None,
    days: int = 730,
) -> tuple[Path, Path]:
    """A certificate for `role` named `name`, signed by the CA in `directory`;
    returns (cert path, key path)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    out = Path(directory)
    ca_key = serialization.load_pem_private_key((out / "ca-key.pem").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key made by `cargohold admin certs ca`")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(CERT_ROLE_PREFIX + role)]
    names += [_san(h) for h in hosts or []]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role == "node":
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out / f"{name}.pem", out / f"{name}-key.pem"
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def san_uris(pem: bytes) -> list[str]:
    """The SAN URIs of a PEM certificate (empty when it has none or does not parse)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return []
    return list(ext.value.get_values_for_type(x509.UniformResourceIdentifier))

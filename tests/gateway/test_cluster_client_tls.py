"""ClusterClient over mutual TLS (cluster.tls_ca/tls_cert/tls_key) against fake nodes."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fakenodes import FakeNodes

from cargohold.digests import chunk_id_of
from cargohold.errors import Unavailable
from gateway.cluster import ClusterClient


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cargohold-test-ca")])
    ca = _cert("cargohold-test-ca", ca_key, ca_name, ca_key, ca=True)
    files: dict[str, Path] = {}
    files["ca"] = tmp_path / "ca.pem"
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who in ("node", "gateway"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(who, key, ca_name, ca_key, ca=False)
        files[f"{who}_key"] = tmp_path / f"{who}.key"
        files[f"{who}_key"].write_bytes(_pem_key(key))
        files[f"{who}_cert"] = tmp_path / f"{who}.pem"
        files[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


async def test_mutual_tls_round_trip(pki: dict[str, Path]) -> None:
    server_creds = grpc.ssl_server_credentials(
        [(pki["node_key"].read_bytes(), pki["node_cert"].read_bytes())],
        root_certificates=pki["ca"].read_bytes(),
        require_client_auth=True,
    )
    nodes = await FakeNodes(3, server_creds).start()
    try:
        cfg = nodes.config()
        cfg.cluster.tls_ca = str(pki["ca"])
        cfg.cluster.tls_cert = str(pki["gateway_cert"])
        cfg.cluster.tls_key = str(pki["gateway_key"])
        client = await ClusterClient.connect(cfg)
        try:
            data = os.urandom(70_000)
            recipe = await client.store_bytes(data)
            assert await client.read_all(recipe) == data
            assert recipe["chunks"][0][0] == chunk_id_of(data[:65536]).hex()
        finally:
            await client.close()
        # Without a client certificate the nodes refuse the connection.
        cfg.cluster.tls_cert = cfg.cluster.tls_key = ""
        anonymous = await ClusterClient.connect(cfg)
        try:
            with pytest.raises(Unavailable):
                await anonymous.query("upload_get", {"upload": "x"})
        finally:
            await anonymous.close()
    finally:
        await nodes.stop()

"""Cosign-format signatures made by the tests themselves (the Debian builds of podman and
skopeo have sigstore signing compiled out): keys, the simple-signing payload, the
signature, and the signature manifest with its config, all as bytes ready to push."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SIG_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def new_key(kind: str = "ec") -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def payload(reference: str, digest: str) -> bytes:
    """The simple-signing payload cosign signs for `digest` (pushed as `reference`)."""
    doc = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data)


@dataclass(frozen=True)
class Signature:
    """What to push: two blobs (payload, config) and the signature manifest."""

    payload: bytes
    config: bytes
    manifest: bytes

    @property
    def blobs(self) -> list[bytes]:
        return [self.payload, self.config]

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


def signature(
    key: PrivateKey, reference: str, digest: str, subject: dict[str, Any] | None = None
) -> Signature:
    """A cosign signature of `digest`: for the tag scheme (`subject` None, push it under
    `signature_tag(digest)`) or as an OCI 1.1 referrer of `subject`."""
    data = payload(reference, digest)
    config = json.dumps({"architecture": "", "os": "", "rootfs": {"type": "layers"}}).encode()
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": SIMPLE_SIGNING,
                "digest": sha256(data),
                "size": len(data),
                "annotations": {
                    "dev.cosignproject.cosign/signature": base64.b64encode(sign(key, data)).decode()
                },
            }
        ],
    }
    if subject is not None:
        doc["artifactType"] = SIG_ARTIFACT
        doc["subject"] = subject
    return Signature(data, config, json.dumps(doc).encode())


def signature_tag(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}-{hexpart}.sig"

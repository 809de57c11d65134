"""Cosign-format signatures: finding them in a manifest and checking them against keys.

A cosign signature is an OCI manifest whose layers have the media type
`application/vnd.dev.cosign.simplesigning.v1+json`: each such layer is a "simple signing"
payload (JSON naming the signed manifest in `critical.image.docker-manifest-digest`) and
carries the base64 signature over the payload's bytes in the annotation
`dev.cosignproject.cosign/signature`. It is found either by the tag scheme (tag
`sha256-<hex>.sig` in the image's repository) or as an OCI 1.1 referrer of the image
(artifact type `application/vnd.dev.cosign.artifact.sig.v1+json`).

Verification keys are PEM public keys: ECDSA P-256/P-384 (ECDSA with SHA-256/384 over the
payload, DER signature, as cosign signs), RSA (PKCS#1 v1.5 or PSS with SHA-256) and
Ed25519. Everything here is pure and synchronous; the caller runs it off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
# Tag-scheme suffixes cosign uses for signatures, attestations and SBOMs of an image.
TAG_SUFFIXES = (".sig", ".att", ".sbom")
MAX_SIGNATURE_B64 = 16 * 1024

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class UnsupportedKey(ValueError):
    """A PEM that is not a supported public key."""


def load_public_key(pem: str) -> PublicKey:
    """A supported public key from PEM text; UnsupportedKey (a ValueError) with the reason."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UnsupportedKey(f"not a PEM public key: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise UnsupportedKey(f"unsupported curve {key.curve.name} (P-256 or P-384)")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise UnsupportedKey("RSA keys must have at least 2048 bits")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise UnsupportedKey(f"unsupported key type {type(key).__name__} (ECDSA, RSA or Ed25519)")


def signature_tag(digest: str) -> str:
    """The tag cosign stores an image's signature under: sha256:<hex> -> sha256-<hex>.sig."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}-{hexpart}.sig"


def is_scheme_tag(tag: str | None) -> bool:
    """A cosign tag-scheme tag (a signature, attestation or SBOM of another manifest)."""
    if tag is None or not tag.endswith(TAG_SUFFIXES):
        return False
    algorithm, sep, rest = tag.partition("-")
    return bool(sep) and algorithm in ("sha256", "sha512") and rest.count(".") == 1


@dataclass(frozen=True, slots=True)
class SignedLayer:
    """One simple-signing layer: its payload blob's digest and the signature bytes."""

    payload_digest: str
    signature: bytes


def signed_layers(manifest: dict[str, Any]) -> Iterator[SignedLayer]:
    """The simple-signing layers of a parsed manifest (none when it holds no signature)."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        return
    for layer in layers:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
            continue
        annotations = layer.get("annotations")
        encoded = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
        digest = layer.get("digest")
        if not isinstance(encoded, str) or not isinstance(digest, str):
            continue
        if len(encoded) > MAX_SIGNATURE_B64:
            continue
        try:
            signature = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        yield SignedLayer(digest, signature)


IMAGE_CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)


def is_runnable(manifest: dict[str, Any]) -> bool:
    """Whether a container runtime could run what this manifest describes: an index (its
    children are images), or an image config with at least one filesystem (tar) layer.
    Signatures (simple-signing layers), attestations (DSSE envelopes) and SBOMs are not,
    whatever their `subject`, `artifactType` or tag say, so a policy cannot be side-stepped
    by dressing an image up as an artifact."""
    if "manifests" in manifest:
        return True
    config = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(config, dict) or config.get("mediaType") not in IMAGE_CONFIG_TYPES:
        return False
    if not isinstance(layers, list):
        return False
    return any(
        isinstance(x, dict)
        and isinstance(x.get("mediaType"), str)
        and ("tar" in x["mediaType"] or "rootfs.diff" in x["mediaType"])
        for x in layers
    )


def verify_with(key: PublicKey, payload: bytes, signature: bytes) -> bool:
    """Whether `signature` over `payload` is `key`'s."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            algorithm = hashes.SHA384() if isinstance(key.curve, ec.SECP384R1) else hashes.SHA256()
            key.verify(signature, payload, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            try:
                key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
            except InvalidSignature:
                pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO)
                key.verify(signature, payload, pss, hashes.SHA256())
        else:
            key.verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def signer(keys: Iterable[tuple[str, PublicKey]], payload: bytes, signature: bytes) -> str | None:
    """The name of the first key that made `signature` over `payload`, else None."""
    for name, key in keys:
        if verify_with(key, payload, signature):
            return name
    return None


def signed_digest(payload: bytes) -> str | None:
    """The manifest digest a simple-signing payload names (None when it names none)."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    critical = doc.get("critical") if isinstance(doc, dict) else None
    image = critical.get("image") if isinstance(critical, dict) else None
    digest = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    return digest if isinstance(digest, str) else None

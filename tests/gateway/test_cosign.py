"""Cosign-format signature checks (gateway/signatures/cosign.py) without a gateway."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.signatures import cosign
from tests import signing_kit as kit


def _pem(key: object) -> str:
    return (
        key.public_key()
        .public_bytes(  # type: ignore[attr-defined,no-any-return]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        .decode()
    )


def test_only_supported_public_keys_load() -> None:
    for kind in ("ec", "rsa", "ed25519"):
        cosign.load_public_key(kit.public_pem(kit.new_key(kind)))
    with pytest.raises(cosign.UnsupportedKey, match="2048"):
        cosign.load_public_key(_pem(rsa.generate_private_key(65537, 1024)))
    with pytest.raises(cosign.UnsupportedKey, match="curve"):
        cosign.load_public_key(_pem(ec.generate_private_key(ec.SECP521R1())))
    with pytest.raises(cosign.UnsupportedKey, match="PEM"):
        cosign.load_public_key("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----")


def test_a_signature_verifies_with_its_key_only_and_names_its_digest() -> None:
    key, other = kit.new_key(), kit.new_key("ed25519")
    digest = "sha256:" + "a" * 64
    sig = kit.signature(key, "reg/app", digest)

    [layer] = cosign.signed_layers(json.loads(sig.manifest))
    assert layer.payload_digest == kit.sha256(sig.payload)
    keys = [("other", cosign.load_public_key(kit.public_pem(other)))]
    assert cosign.signer(keys, sig.payload, layer.signature) is None
    keys.append(("release", cosign.load_public_key(kit.public_pem(key))))
    assert cosign.signer(keys, sig.payload, layer.signature) == "release"
    assert cosign.signer(keys, sig.payload + b" ", layer.signature) is None  # edited payload
    assert cosign.signed_digest(sig.payload) == digest
    assert cosign.signed_digest(b"[" * 100_000) is None


def test_what_counts_as_runnable_is_judged_by_content() -> None:
    image = {
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json"},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}],
    }
    assert cosign.is_runnable(image)
    # An image dressed up as an artifact is still an image.
    assert cosign.is_runnable({**image, "artifactType": "x/y", "subject": {"digest": "d"}})
    assert cosign.is_runnable({"manifests": []})
    sig = kit.signature(kit.new_key(), "reg/app", "sha256:" + "b" * 64)

    assert not cosign.is_runnable(json.loads(sig.manifest))
    sbom = {"config": {"mediaType": "application/spdx+json"}, "layers": image["layers"]}
    assert not cosign.is_runnable(sbom)
    assert cosign.is_scheme_tag("sha256-" + "c" * 64 + ".sig")
    assert not cosign.is_scheme_tag("v1.sig") and not cosign.is_scheme_tag(None)

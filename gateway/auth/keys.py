"""Token signing and verification keys (ES256 on P-256), each known by its `kid`.

A PEM key's `kid` is its RFC 7638 JWK thumbprint (so every gateway derives the same one
from the shared file); a JWKS file names its own. Only EC P-256 keys are accepted.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cargohold.errors import ConfigError


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(key: ec.EllipticCurvePublicKey) -> str:
    """The RFC 7638 thumbprint of an EC public key (base64url, no padding)."""
    numbers = key.public_numbers()
    size = (key.curve.key_size + 7) // 8
    jwk = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64u(numbers.x.to_bytes(size, "big")),
        "y": _b64u(numbers.y.to_bytes(size, "big")),
    }
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()
    return _b64u(hashlib.sha256(canonical).digest())


def _p256(key: object, source: str) -> None:
    curve = getattr(key, "curve", None)
    if not isinstance(curve, ec.SECP256R1):
        raise ConfigError(f"{source}: only EC P-256 keys (ES256) are accepted")


def load_signing_key(path: str) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """(kid, private key) of a PEM EC P-256 private key file."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the token signing key {path}: {exc}") from exc
    _p256(key, path)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return thumbprint(key.public_key()), key


def load_verify_keys(paths: list[str]) -> dict[str, ec.EllipticCurvePublicKey]:
    """kid -> public key, from PEM (public or private) and JWKS JSON files."""
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read token key file {path}: {exc}") from exc
        if data.lstrip().startswith(b"{"):
            try:
                jwks = jwt.PyJWKSet.from_json(data.decode())
            except (jwt.PyJWTError, ValueError) as exc:
                raise ConfigError(f"{path}: not a usable JWKS: {exc}") from exc
            for jwk in jwks.keys:
                _p256(jwk.key, path)
                if not jwk.key_id:
                    raise ConfigError(f"{path}: every JWKS key needs a kid")
                keys[jwk.key_id] = jwk.key
            continue
        keys.update(_pem_public(data, path))
    return keys


def _pem_public(data: bytes, path: str) -> dict[str, ec.EllipticCurvePublicKey]:
    try:
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            public = private.public_key()
        else:
            public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load token key {path}: {exc}") from exc
    _p256(public, path)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return {thumbprint(public): public}


def generate_signing_key(path: str) -> None:
    """Write a new PEM EC P-256 private key, 0600 (`cargohold dev --auth`, tests)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    target = Path(path)
    target.touch(mode=0o600, exist_ok=True)
    target.chmod(0o600)
    target.write_bytes(pem)

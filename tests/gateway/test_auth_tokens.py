"""Token issuing and verification, and every forged or misused token refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cargohold.errors import ConfigError
from gateway.auth.keys import generate_signing_key, load_signing_key, load_verify_keys, thumbprint
from gateway.auth.scopes import Scope, parse_scope, parse_scopes
from gateway.auth.tokens import TokenInvalid, TokenIssuer, TokenVerifier

PULL_PUSH = frozenset({"pull", "push"})


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def key() -> tuple[str, ec.EllipticCurvePrivateKey]:
    private = ec.generate_private_key(ec.SECP256R1())
    return thumbprint(private.public_key()), private


@pytest.fixture
def issuer(key: tuple[str, ec.EllipticCurvePrivateKey]) -> TokenIssuer:
    kid, private = key
    return TokenIssuer(kid, private, "cargohold", "registry", 300, 3600)


@pytest.fixture
def verifier(key: tuple[str, ec.EllipticCurvePrivateKey]) -> TokenVerifier:
    kid, private = key
    return TokenVerifier({kid: private.public_key()}, "cargohold", "registry", 0)


def _claims(**over: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "cargohold",
        "sub": "alice",
        "aud": "registry",
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "access": [{"type": "repository", "name": "team/a", "actions": ["pull", "push"]}],
    }
    claims.update(over)
    return claims


def _sign(key: tuple[str, ec.EllipticCurvePrivateKey], **over: object) -> str:
    kid, private = key
    return jwt.encode(_claims(**over), private, algorithm="ES256", headers={"kid": kid})


def test_issued_token_verifies_with_its_access(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.access_token("alice", [Scope("repository", "team/a", PULL_PUSH)])
    verified = verifier.verify(token)
    assert verified.subject == "alice"
    assert verified.granted("repository", "team/a") == PULL_PUSH
    assert verified.granted("repository", "team/b") == frozenset()
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == issuer.kid


def test_alg_none_refused(
    key: tuple[str, ec.EllipticCurvePrivateKey], verifier: TokenVerifier
) -> None:
    token = jwt.encode(_claims(), None, algorithm="none", headers={"kid": key[0]})
    with pytest.raises(TokenInvalid, match="algorithm"):
        verifier.verify(token)


def test_hs256_signed_with_the_public_key_refused(
    key: tuple[str, ec.EllipticCurvePrivateKey], verifier: TokenVerifier
) -> None:
    kid, private = key
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64u(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64u(json.dumps(_claims()).encode())
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(TokenInvalid, match="algorithm"):
        verifier.verify(f"{header}.{payload}.{_b64u(signature)}")


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"exp": int(time.time()) - 10}, "expired"),
        ({"nbf": int(time.time()) + 600}, "not yet valid"),
        ({"aud": "another-registry"}, "[Aa]udience"),
        ({"iss": "someone-else"}, "[Ii]ssuer"),
    ],
)
def test_claims_checked(
    key: tuple[str, ec.EllipticCurvePrivateKey],
    verifier: TokenVerifier,
    over: dict[str, object],
    reason: str,
) -> None:
    with pytest.raises(TokenInvalid, match=reason):
        verifier.verify(_sign(key, **over))


def test_unknown_kid_refused(verifier: TokenVerifier) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    kid = thumbprint(other.public_key())
    with pytest.raises(TokenInvalid, match="unknown kid"):
        verifier.verify(_sign((kid, other)))


def test_known_kid_but_other_key_refused(
    key: tuple[str, ec.EllipticCurvePrivateKey], verifier: TokenVerifier
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(TokenInvalid, match=r"[Ss]ignature"):
        verifier.verify(_sign((key[0], other)))


def test_access_claim_edited_after_signing_refused(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.access_token("alice", [Scope("repository", "team/a", frozenset({"pull"}))])
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["access"][0]["actions"] = ["pull", "push", "delete"]
    claims["access"][0]["name"] = "team/b"
    forged = f"{header}.{_b64u(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(TokenInvalid, match=r"[Ss]ignature"):
        verifier.verify(forged)


def test_missing_claims_and_garbage_refused(
    key: tuple[str, ec.EllipticCurvePrivateKey], verifier: TokenVerifier
) -> None:
    claims = _claims()
    del claims["exp"]
    token = jwt.encode(claims, key[1], algorithm="ES256", headers={"kid": key[0]})
    with pytest.raises(TokenInvalid):
        verifier.verify(token)
    for garbage in ("", "a.b.c", "not-a-token"):
        with pytest.raises(TokenInvalid):
            verifier.verify(garbage)
    with pytest.raises(TokenInvalid):
        verifier.verify(_sign(key, access={"type": "repository"}))


def test_refresh_token_is_not_an_access_token(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    refresh = issuer.refresh_token("alice")
    assert verifier.verify_refresh(refresh) == "alice"
    with pytest.raises(TokenInvalid, match=r"[Aa]udience"):
        verifier.verify(refresh)
    access = issuer.access_token("alice", [])
    with pytest.raises(TokenInvalid, match=r"[Aa]udience"):
        verifier.verify_refresh(access)


def test_rotation_old_and_new_keys_both_verify(tmp_path: Path) -> None:
    old, new = tmp_path / "old.pem", tmp_path / "new.pem"
    generate_signing_key(str(old))
    generate_signing_key(str(new))
    assert (old.stat().st_mode & 0o777) == 0o600
    old_kid, old_key = load_signing_key(str(old))
    new_kid, new_key = load_signing_key(str(new))
    keys = load_verify_keys([str(old), str(new)])
    assert set(keys) == {old_kid, new_kid}
    verifier = TokenVerifier(keys, "cargohold", "registry", 0)
    for kid, private in ((old_kid, old_key), (new_kid, new_key)):
        token = TokenIssuer(kid, private, "cargohold", "registry", 60, 60).access_token("u", [])
        assert verifier.verify(token).subject == "u"
    # Dropping the old key from the list retires its tokens.
    only_new = TokenVerifier(load_verify_keys([str(new)]), "cargohold", "registry", 0)
    old_token = TokenIssuer(old_kid, old_key, "cargohold", "registry", 60, 60).access_token("u", [])
    with pytest.raises(TokenInvalid, match="unknown kid"):
        only_new.verify(old_token)


def test_jwks_file_and_non_p256_keys(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk["kid"] = "external-1"
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    keys = load_verify_keys([str(path)])
    assert list(keys) == ["external-1"]
    p384 = ec.generate_private_key(ec.SECP384R1())
    pem = tmp_path / "p384.pem"
    pem.write_bytes(
        p384.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigError, match="P-256"):
        load_verify_keys([str(pem)])


def test_scope_parsing() -> None:
    scope = parse_scope("repository:team/app:push,pull")
    assert scope == Scope("repository", "team/app", PULL_PUSH)
    assert str(scope) == "repository:team/app:pull,push"
    assert str(parse_scope("registry:catalog:*")) == "registry:catalog:*"
    assert parse_scope("garbage") is None
    assert parse_scopes(["repository:a:pull repository:b:push", "x"]) == [
        Scope("repository", "a", frozenset({"pull"})),
        Scope("repository", "b", frozenset({"push"})),
    ]


def test_verified_tokens_are_cached_until_they_expire(
    key: tuple[str, ec.EllipticCurvePrivateKey],
) -> None:
    kid, private = key
    verifier = TokenVerifier({kid: private.public_key()}, "cargohold", "registry", 0, 2)
    token = _sign(key)
    first = verifier.verify(token)
    verifier.keys = {}  # a cached token no longer needs its key ...
    assert verifier.verify(token) is first
    # ... but a forged variant of it is not the same string: verified (and refused) afresh.
    with pytest.raises(TokenInvalid, match="unknown kid"):
        verifier.verify(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    verifier.keys = {kid: private.public_key()}
    expired = _sign(key, exp=int(time.time()) + 1)
    assert verifier.verify(expired).subject == "alice"
    object.__setattr__(verifier._cache[expired], "expires", time.time() - 1)
    verifier.keys = {}
    with pytest.raises(TokenInvalid):  # expired in the cache: verified again, refused
        verifier.verify(expired)
    # Bounded: the oldest entries go.
    verifier.keys = {kid: private.public_key()}
    for sub in ("a", "b", "c"):
        verifier.verify(_sign(key, sub=sub))
    assert len(verifier._cache) == 2

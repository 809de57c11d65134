"""Registry tokens: ES256 JWTs issued by the built-in token service and verified on every
request.

An access token carries `iss`, `sub` (the user; empty for anonymous), `aud` (the
service), `exp`, `nbf`, `iat`, `jti` and `access` (a list of `{type, name, actions}`), and
its header names the signing key's `kid`. Verification accepts only ES256, only a known
`kid`, the configured issuer and audience, and checks exp/nbf/iat (with
`auth.token_leeway_seconds`). A refresh token (what `docker login` stores) is a JWT for
the audience `<service>#refresh` with no access: never usable as an access token.

A client sends the same token with every request until it expires, so the outcome of a
successful verification is remembered per token string (its signature included) until the
token's `exp` (an LRU of `auth.token_cache_entries`): an ECDSA verify per token, not per
request.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth.scopes import Scope

ALGORITHM = "ES256"
REFRESH_SUFFIX = "#refresh"


class TokenInvalid(Exception):
    """The token is not one this registry accepts (the reason is for logs only)."""


@dataclass(frozen=True)
class VerifiedToken:
    subject: str
    access: tuple[Scope, ...]
    expires: float = 0.0  # unix time (`exp` + leeway)

    def granted(self, kind: str, name: str) -> frozenset[str]:
        actions: set[str] = set()
        for scope in self.access:
            if scope.type == kind and scope.name == name:
                actions |= scope.actions
        return frozenset(actions)


class TokenVerifier:
    def __init__(
        self,
        keys: dict[str, ec.EllipticCurvePublicKey],
        issuer: str,
        service: str,
        leeway: float,
        cache_entries: int = 0,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.service = service
        self.leeway = leeway
        self.cache_entries = cache_entries
        self._cache: OrderedDict[str, VerifiedToken] = OrderedDict()

    def _decode(self, token: str, audience: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenInvalid(f"malformed: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise TokenInvalid(f"algorithm {header.get('alg')!r} refused")
        key = self.keys.get(str(header.get("kid")))
        if key is None:
            raise TokenInvalid("unknown kid")
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenInvalid(str(exc)) from None

    def verify(self, token: str) -> VerifiedToken:
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires > time.time():
                self._cache.move_to_end(token)
                return cached
            del self._cache[token]
        claims = self._decode(token, self.service)
        verified = VerifiedToken(
            str(claims["sub"]),
            _access(claims.get("access")),
            float(claims["exp"]) + self.leeway,
        )
        if self.cache_entries > 0:
            self._cache[token] = verified
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
        return verified

    def verify_refresh(self, token: str) -> str:
        """The user a refresh token was issued to."""
        claims = self._decode(token, self.service + REFRESH_SUFFIX)
        subject = str(claims["sub"])
        if not subject:
            raise TokenInvalid("refresh token without a subject")
        return subject


def _access(raw: Any) -> tuple[Scope, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise TokenInvalid("access claim is not a list")
    out = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise TokenInvalid("access entry is not an object")
        kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
        if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(actions, list):
            raise TokenInvalid("access entry of the wrong shape")
        out.append(Scope(kind, name, frozenset(a for a in actions if isinstance(a, str))))
    return tuple(out)


class TokenIssuer:
    def __init__(
        self,
        kid: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        service: str,
        ttl: int,
        refresh_ttl: int,
    ) -> None:
        self.kid = kid
        self.key = key
        self.issuer = issuer
        self.service = service
        self.ttl = ttl
        self.refresh_ttl = refresh_ttl

    def _sign(self, subject: str, audience: str, ttl: int, extra: dict[str, Any]) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "exp": now + ttl,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(16),
            **extra,
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def access_token(self, subject: str, access: list[Scope]) -> str:
        claims = {"access": [scope.to_claim() for scope in access]}
        return self._sign(subject, self.service, self.ttl, claims)

    def refresh_token(self, subject: str) -> str:
        return self._sign(subject, self.service + REFRESH_SUFFIX, self.refresh_ttl, {})

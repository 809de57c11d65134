"""Cluster credentials: caller roles, per-role keys, and the per-call HMAC token.

Every gRPC call to a node carries a caller role, one of `ROLES`:

    gateway   the HTTP gateways (chunk reads/writes, registry metadata commands)
    node      storage nodes calling each other (repair, scrub re-fetch, status probes)
    admin     the operator's `cargohold admin` verbs (membership, triggers, status)

The role is proven in one of two ways (docs/security.md has the full picture):

- mutual TLS: the client certificate, issued by the cluster CA (`cargohold admin certs`),
  names the role in a SAN URI `cargohold:role/<role>` (cargohold/certs.py);
- otherwise a per-call token in the `x-cargohold-auth` call metadata:
  `<role>.<unix ms>.<nonce>.<mac>` with mac = HMAC-SHA256(role key, method|role|ms|nonce),
  base64url. The role key is HMAC-SHA256(cluster.secret, "cargohold grpc role <role>"):
  a node holds the secret and so every role key; a gateway or an admin may hold only its
  own role key (`cluster.credential = "<role>:<hex key>"`, printed by `cargohold admin
  keys <role>`), so it cannot act as another role. The node refuses a token older or
  newer than `cluster.auth_max_skew` seconds and one whose nonce it saw already
  (`NonceCache`, bounded by `cluster.auth_nonce_cache_max`).

The token authenticates the caller and the method, not the message body: on a network
an attacker can write to, use mTLS (an on-path attacker could alter a call in flight).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import Any

from cargohold.config import Config
from cargohold.errors import ConfigError

ROLES = ("gateway", "node", "admin")
METADATA_KEY = "x-cargohold-auth"
CERT_ROLE_PREFIX = "cargohold:role/"
_NONCE_BYTES = 12


class AuthError(Exception):
    """A call whose credential is missing, malformed, stale, replayed or wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def role_key(secret: str, role: str) -> bytes:
    """The key of `role` derived from the cluster secret (distinct per role)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    return hmac.new(secret.encode(), f"cargohold grpc role {role}".encode(), "sha256").digest()


def format_credential(secret: str, role: str) -> str:
    """The `cluster.credential` value for a process that must hold only `role`'s key."""
    return f"{role}:{role_key(secret, role).hex()}"


@dataclass(frozen=True)
class Credential:
    role: str
    key: bytes

    def mac(self) -> Any:
        """A fresh HMAC-SHA256 of this key (the key schedule computed once, then copied)."""
        base = _MAC_BASES.get(self.key)
        if base is None:
            base = _MAC_BASES[self.key] = hmac.new(self.key, digestmod=hashlib.sha256)
        return base.copy()


_MAC_BASES: dict[bytes, Any] = {}


def parse_credential(text: str) -> Credential:
    role, sep, key = text.strip().partition(":")
    if not sep or role not in ROLES:
        raise ConfigError(f"cluster.credential must be '<role>:<hex key>' with role in {ROLES}")
    try:
        raw = bytes.fromhex(key)
    except ValueError:
        raise ConfigError("cluster.credential: the key is not hex") from None
    if len(raw) != 32:
        raise ConfigError("cluster.credential: the key must be 32 bytes (64 hex digits)")
    return Credential(role, raw)


def client_credential(cfg: Config, role: str) -> Credential | None:
    """What a client process of `role` signs its calls with: `cluster.credential` when set
    (its role wins), else the key of `role` derived from `cluster.secret`, else None
    (no token is sent; nodes with authentication on refuse the calls)."""
    if cfg.cluster.credential:
        return parse_credential(cfg.cluster.credential)
    if cfg.cluster.secret:
        return Credential(role, role_key(cfg.cluster.secret, role))
    return None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(credential: Credential, method: str, ms: str, nonce: str) -> bytes:
    mac = credential.mac()
    mac.update(f"{method}|{credential.role}|{ms}|{nonce}".encode())
    return bytes(mac.digest())


def sign(credential: Credential, method: str, now: float | None = None) -> str:
    """A fresh token for one call of `method` ('/cargohold.v1.Chunks/Put')."""
    ms = str(int((time.time() if now is None else now) * 1000))
    nonce = _b64(os.urandom(_NONCE_BYTES))
    mac = _b64(_mac(credential, method, ms, nonce))
    return f"{credential.role}.{ms}.{nonce}.{mac}"


class NonceCache:
    """Nonces seen in the last `window` seconds, bucketed by the second of their token, so
    forgetting old ones is dropping whole buckets. Holds at most `max_entries`."""

    def __init__(self, window: float, max_entries: int) -> None:
        self._window = window
        self._max = max_entries
        self._buckets: dict[int, set[str]] = {}
        self._count = 0
        self._oldest_kept = 0

    def __len__(self) -> int:
        return self._count

    def _prune(self, now: float) -> None:
        floor = int(now - self._window) - 1
        if floor <= self._oldest_kept:
            return
        for second in [s for s in self._buckets if s < floor]:
            self._count -= len(self._buckets.pop(second))
        self._oldest_kept = floor

    def add(self, second: int, nonce: str, now: float) -> None:
        """Remember `nonce`; AuthError when it was seen (a replay) or the cache is full."""
        self._prune(now)
        bucket = self._buckets.setdefault(second, set())
        if nonce in bucket:
            raise AuthError("replayed token")
        if self._count >= self._max:
            raise AuthError("nonce cache full")
        bucket.add(nonce)
        self._count += 1


class TokenVerifier:
    """The node's side of the token: the three role keys, the skew bound, the nonce cache."""

    def __init__(self, secret: str, max_skew: float, nonce_cache_max: int) -> None:
        self._keys = {role: Credential(role, role_key(secret, role)) for role in ROLES}
        self._skew = max_skew
        self._nonces = NonceCache(2 * max_skew, nonce_cache_max)

    def verify(self, token: str | None, method: str, now: float | None = None) -> str:
        """The caller's role, or AuthError saying why the token is not accepted."""
        if not token:
            raise AuthError("no credentials")
        parts = token.split(".")
        if len(parts) != 4:
            raise AuthError("malformed token")
        role, ms, nonce, mac = parts
        key = self._keys.get(role)
        if key is None or not ms.isdigit():
            raise AuthError("malformed token")
        try:
            given = _unb64(mac)
        except ValueError:
            raise AuthError("malformed token") from None
        if not hmac.compare_digest(given, _mac(key, method, ms, nonce)):
            raise AuthError("bad signature")
        now = time.time() if now is None else now
        sent = int(ms) / 1000
        if abs(now - sent) > self._skew:
            raise AuthError("token outside the clock-skew window")
        self._nonces.add(int(sent), nonce, now)
        return role


def role_from_uris(uris: list[str]) -> str | None:
    """The role a certificate names in its SAN URIs (`cargohold:role/<role>`), if exactly one."""
    roles = {u[len(CERT_ROLE_PREFIX) :] for u in uris if u.startswith(CERT_ROLE_PREFIX)}
    if len(roles) != 1:
        return None
    role = roles.pop()
    return role if role in ROLES else None


def require_secret(cfg: Config, role: str) -> None:
    """Refuse to start a node (`role`="node") without `cluster.secret`, or a gateway without
    `cluster.secret` or a gateway `cluster.credential`: there is no built-in default."""
    if role == "node" and not cfg.cluster.secret:
        raise ConfigError(
            "cluster.secret is not set (or cluster.secret_file / CARGOHOLD_CLUSTER_SECRET): "
            "a node needs the cluster secret; `cargohold dev` generates one for local use"
        )
    if role != "node" and not (cfg.cluster.secret or cfg.cluster.credential):
        raise ConfigError(
            f"neither cluster.secret nor cluster.credential is set (or their *_file forms): "
            f"a {role} needs one to authenticate to the nodes"
        )
    if cfg.cluster.credential and parse_credential(cfg.cluster.credential).role != role:
        raise ConfigError(f"cluster.credential is not a {role} credential")


def upload_id_key(cfg: Config) -> str:
    """The key gateways sign upload ids with (gateway/upload_ids.py): derived from the
    gateway role key, so gateways holding only their credential agree with those holding
    the secret. Empty when neither is configured (in-process tests)."""
    if cfg.cluster.credential:
        key = parse_credential(cfg.cluster.credential).key
    elif cfg.cluster.secret:
        key = role_key(cfg.cluster.secret, "gateway")
    else:
        return ""
    return hmac.new(key, b"cargohold upload ids", hashlib.sha256).hexdigest()

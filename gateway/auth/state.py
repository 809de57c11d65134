"""The gateway's authentication state, built once from `[auth]`: the mode, the users and
their password checks, the failed-login limiter, the token issuer and verifier, and the
challenges 401 answers carry.

`login` is the one place a username and password are checked (HTTP Basic on `/v2/` in
htpasswd mode, the token service in token mode): limited per user and client address
(429 with `Retry-After` while blocked), each result logged as `auth.login`.
"""

from __future__ import annotations

import base64
import binascii
import logging

from aiohttp import web

from cargohold.config import AuthConfig
from cargohold.errors import TooManyRequests, Unauthorized
from cargohold.log import log_event
from cargohold.metadata_api import Metadata
from gateway.auth.directory import Directory, RolePolicy
from gateway.auth.htpasswd import HtpasswdFile
from gateway.auth.keys import load_signing_key, load_verify_keys
from gateway.auth.limits import LoginLimiter
from gateway.auth.passwords import PasswordChecker
from gateway.auth.policy import AnyUserPolicy, Policy
from gateway.auth.scopes import Scope
from gateway.auth.tokens import TokenIssuer, TokenVerifier

logger = logging.getLogger("cargohold.gateway")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic ...` header; None if not Basic."""
    kind, _, value = header.partition(" ")
    if kind.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    user, _, password = decoded.partition(":")
    return user, password


class AuthState:
    def __init__(self, cfg: AuthConfig, meta: Metadata | None = None) -> None:
        self.cfg = cfg
        self.mode = cfg.mode
        self.limiter = LoginLimiter(cfg)
        self.passwords: PasswordChecker | None = None
        self.directory: Directory | None = None
        # Users of an htpasswd file may do everything; the built-in token service without
        # one takes users, namespaces and roles from the cluster metadata
        # (gateway/auth/directory.py); an external issuer's tokens carry their own rights.
        self.policy: Policy = AnyUserPolicy()
        if cfg.htpasswd:
            users = HtpasswdFile(cfg.htpasswd, cfg.htpasswd_check_seconds)
            self.passwords = PasswordChecker(
                users, cfg.login_cache_seconds, cfg.login_cache_entries
            )
        elif cfg.mode == "token" and cfg.signing_key and meta is not None:
            self.directory = Directory(meta, cfg.directory_refresh_seconds)
            self.policy = RolePolicy(self.directory)
            self.passwords = PasswordChecker(
                self.directory, cfg.login_cache_seconds, cfg.login_cache_entries
            )
        self.issuer: TokenIssuer | None = None
        self.verifier: TokenVerifier | None = None
        if cfg.mode == "token":
            keys = load_verify_keys(cfg.verify_keys)
            if cfg.signing_key:
                kid, private = load_signing_key(cfg.signing_key)
                keys[kid] = private.public_key()
                self.issuer = TokenIssuer(
                    kid,
                    private,
                    cfg.issuer,
                    cfg.service,
                    cfg.token_ttl_seconds,
                    cfg.refresh_token_ttl_seconds,
                )
            self.verifier = TokenVerifier(
                keys, cfg.issuer, cfg.service, cfg.token_leeway_seconds, cfg.token_cache_entries
            )

    # -- challenges ---------------------------------------------------------------------
    def realm(self, request: web.Request) -> str:
        if self.cfg.realm:
            return self.cfg.realm
        return f"{request.scheme}://{request.host}/auth/token"

    def challenge(self, request: web.Request, scope: Scope | None, error: str = "") -> str:
        if self.mode == "htpasswd":
            return f"Basic realm={_quote(self.cfg.realm or 'cargohold')}"
        parts = [f"realm={_quote(self.realm(request))}", f"service={_quote(self.cfg.service)}"]
        if scope is not None:
            parts.append(f"scope={_quote(str(scope))}")
        if error:
            parts.append(f"error={_quote(error)}")
        return "Bearer " + ",".join(parts)

    def unauthorized(
        self, request: web.Request, scope: Scope | None, error: str = ""
    ) -> Unauthorized:
        detail = None
        if scope is not None:
            detail = [
                {"Type": scope.type, "Name": scope.name, "Action": a} for a in sorted(scope.actions)
            ]
        return Unauthorized(
            detail=detail, headers={"WWW-Authenticate": self.challenge(request, scope, error)}
        )

    # -- logins -------------------------------------------------------------------------
    async def login(self, request: web.Request, user: str, password: str) -> bool:
        """True when the password is right; TooManyRequests while this user or address is
        backing off."""
        address = request.remote or "-"
        keys = self.limiter.keys(user, address)
        wait = self.limiter.retry_after(keys)
        if wait:
            log_event(logger, "auth.login", user=user, client=address, result="throttled")
            raise TooManyRequests(
                "too many failed logins; retry later", headers={"Retry-After": str(wait)}
            )
        ok = bool(user) and self.passwords is not None
        if ok:
            assert self.passwords is not None
            ok = await self.passwords.check(user, password)
        if ok:
            self.limiter.succeeded(user)
        else:
            self.limiter.failed(keys)
        log_event(logger, "auth.login", user=user, client=address, result="ok" if ok else "failed")
        return ok

    async def user_exists(self, user: str) -> bool:
        return self.passwords is not None and await self.passwords.exists(user)


AUTH: web.AppKey[AuthState] = web.AppKey("cargohold_auth", AuthState)

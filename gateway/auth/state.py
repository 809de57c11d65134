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
from cargohold.metadata_api import ROLES, Metadata
from gateway.activity import ACTIVITY
from gateway.auth.directory import (
    Directory,
    FileAndRobots,
    FileUsersPolicy,
    RolePolicy,
    is_robot,
)
from gateway.auth.htpasswd import HtpasswdFile
from gateway.auth.keys import load_signing_key, load_verify_keys
from gateway.auth.lease import AccessLease
from gateway.auth.limits import LoginLimiter
from gateway.auth.passwords import PasswordChecker
from gateway.auth.policy import AnyUserPolicy, Policy
from gateway.auth.scopes import Scope
from gateway.auth.tokens import TokenIssuer, TokenVerifier
from gateway.client_address import client_address

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
    def __init__(
        self, cfg: AuthConfig, meta: Metadata | None = None, lease: AccessLease | None = None
    ) -> None:
        self.cfg = cfg
        self.mode = cfg.mode
        self.limiter = LoginLimiter(cfg)
        self.passwords: PasswordChecker | None = None
        # The cluster's users, groups, robots and namespaces: wherever this gateway checks
        # passwords itself (htpasswd mode, the built-in token service), not for an external
        # issuer. `directory_users`: users (not only robots) come from it.
        self.directory: Directory | None = None
        self.directory_users = False
        if meta is not None and (cfg.mode == "htpasswd" or cfg.signing_key):
            # The revision check reads the leader's applied state without a Raft barrier
            # (gateway/auth/revision.py): cheap, and current for anything acknowledged.
            revisions = Metadata(meta.transport, linearizable=False)
            self.directory = Directory(
                meta,
                cfg.directory_refresh_seconds,
                revisions if cfg.revocation_check else None,
                cfg.revocation_check_interval,
                lease if cfg.revocation_lease else None,
            )
        # Started with the app (gateway/app.py) only when the directory uses it.
        self.lease = lease if self.directory is not None and cfg.revocation_check else None
        if not cfg.revocation_lease:
            self.lease = None
        # Users of an htpasswd file may do everything (robots what their permissions say);
        # the built-in token service without one takes users, groups, namespaces and roles
        # from the cluster metadata (gateway/auth/directory.py); an external issuer's
        # tokens carry their own rights.
        self.policy: Policy = AnyUserPolicy()
        if cfg.htpasswd:
            users = FileAndRobots(
                HtpasswdFile(cfg.htpasswd, cfg.htpasswd_check_seconds), self.directory
            )
            self.policy = FileUsersPolicy(self.directory)
            self.passwords = PasswordChecker(
                users, cfg.login_cache_seconds, cfg.login_cache_entries
            )
        elif cfg.mode == "token" and self.directory is not None:
            self.directory_users = True
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
        address = client_address(request)
        keys = self.limiter.keys(user, address)
        wait = self.limiter.retry_after(keys)
        activity = request.app.get(ACTIVITY)
        if wait:
            log_event(logger, "auth.login", user=user, client=address, result="throttled")
            if activity is not None:
                activity.login(request, user, "throttled")
            raise TooManyRequests(
                "too many failed logins; retry later", headers={"Retry-After": str(wait)}
            )
        ok = bool(user) and self.passwords is not None
        if ok:
            assert self.passwords is not None
            if self.directory is not None and (is_robot(user) or self.directory_users):
                await self.directory.confirm()  # disabled or revoked elsewhere: known now
            ok = await self.passwords.check(user, password)
        if ok:
            self.limiter.succeeded(user)
        else:
            self.limiter.failed(keys)
        log_event(logger, "auth.login", user=user, client=address, result="ok" if ok else "failed")
        # A success is a login at the token service; HTTP Basic on every /v2/ request
        # (htpasswd mode) would make each request one, so only its failures are recorded.
        if activity is not None and (not ok or not request.path.startswith("/v2")):
            activity.login(request, user, "ok" if ok else "failed")
        return ok

    async def user_exists(self, user: str) -> bool:
        return self.passwords is not None and await self.passwords.exists(user)

    # -- identities -----------------------------------------------------------------------
    @staticmethod
    def is_robot(name: str) -> bool:
        return is_robot(name)

    async def still_valid(self, name: str) -> bool:
        """May `name`, holder of an unexpired token, still act? Cluster users must still be
        enabled and robots exist and be unexpired (revocation does not wait for the token
        to expire); htpasswd and external-issuer users are trusted until expiry."""
        if self.directory is None or not name:
            return True
        if is_robot(name) or self.directory_users:
            await self.directory.refresh(name)
            await self.directory.confirm()  # revoked elsewhere a moment ago: known now
            return self.directory.valid(name)
        return True

    async def is_cluster_admin(self, name: str) -> bool:
        """Cluster users flagged admin; every htpasswd user (they may do everything on
        `/v2/` too); never a robot, an anonymous caller or an external issuer's subject."""
        if not name or is_robot(name):
            return False
        if self.directory_users:
            assert self.directory is not None
            await self.directory.refresh()
            user = self.directory.user(name)
            return user is not None and user.admin
        return bool(self.cfg.htpasswd)

    async def namespace_role(self, name: str, namespace: str) -> str | None:
        """The strongest role a cluster user holds in `namespace` (own or by group)."""
        if self.directory is None or not self.directory_users or is_robot(name):
            return None
        await self.directory.refresh()
        ns = self.directory.namespace(namespace)
        if ns is None or self.directory.user(name) is None:
            return None
        roles = self.directory.roles_in(name, ns)
        return next((r for r in ROLES if r in roles), None)


AUTH: web.AppKey[AuthState] = web.AppKey("cargohold_auth", AuthState)

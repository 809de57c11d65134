"""Registry users, namespaces and roles from the replicated metadata, and the policy they
define (token mode without an htpasswd file; docs/security.md "Registry users").

`Directory` caches the `access_list` query for `auth.directory_refresh_seconds`, so a
disabled user, a revoked grant or a changed visibility takes effect on every gateway
within that time; when the cluster cannot answer, the last answer is kept.

`RolePolicy`: a namespace is a repository-name prefix (`team` holds `team/app` and
`team/x/y`; the longest matching namespace decides). Roles grant `admin`: everything
(`*`), `maintainer`: pull, push, delete, `developer`: pull, push, `reader`: pull. A
`public` namespace lets anyone (anonymous too) pull. Cluster admins may do everything
everywhere. A repository outside every namespace is reachable by cluster admins only.
Anyone may ask for `registry:catalog:*`: the catalog lists only what the caller may pull.
A disabled user is no user at all.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cargohold.errors import RegistryError
from cargohold.log import log_event
from cargohold.metadata_api import AccessData, Metadata, NamespaceInfo, UserInfo
from gateway.auth.policy import KNOWN_ACTIONS
from gateway.auth.scopes import Scope

logger = logging.getLogger("cargohold.gateway")

ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"pull", "push", "delete", "*"}),
    "maintainer": frozenset({"pull", "push", "delete"}),
    "developer": frozenset({"pull", "push"}),
    "reader": frozenset({"pull"}),
}


class Directory:
    def __init__(self, meta: Metadata, refresh_seconds: float) -> None:
        self.meta = meta
        self.refresh_seconds = refresh_seconds
        self._users: dict[str, UserInfo] = {}
        self._namespaces: list[NamespaceInfo] = []  # longest name first
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    def _install(self, data: AccessData) -> None:
        self._users = {u.name: u for u in data.users}
        self._namespaces = sorted(data.namespaces, key=lambda n: len(n.name), reverse=True)

    async def refresh(self) -> None:
        if (
            self._loaded_at is not None
            and time.monotonic() - self._loaded_at < self.refresh_seconds
        ):
            return
        async with self._lock:
            if (
                self._loaded_at is not None
                and time.monotonic() - self._loaded_at < self.refresh_seconds
            ):
                return
            try:
                self._install(await self.meta.access_list())
            except RegistryError as exc:
                if self._loaded_at is None:
                    raise
                log_event(logger, "auth.directory_stale", logging.WARNING, error=exc.message)
            self._loaded_at = time.monotonic()

    def user(self, name: str | None) -> UserInfo | None:
        user = self._users.get(name) if name else None
        return None if user is None or user.disabled else user

    def lookup(self, name: str) -> bytes | None:
        """The password hash of an enabled user (the PasswordChecker's user source)."""
        user = self.user(name)
        return user.password_hash.encode() if user is not None else None

    def namespace_of(self, repo: str) -> NamespaceInfo | None:
        for ns in self._namespaces:
            if repo == ns.name or repo.startswith(ns.name + "/"):
                return ns
        return None


class RolePolicy:
    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    async def granted(self, user: str | None, scope: Scope) -> frozenset[str]:
        await self.directory.refresh()
        if scope.type == "registry" and scope.name == "catalog":
            return scope.actions & {"*"}
        if scope.type != "repository":
            return frozenset()
        account = self.directory.user(user)
        if account is not None and account.admin:
            return scope.actions & KNOWN_ACTIONS
        allowed: set[str] = set()
        ns = self.directory.namespace_of(scope.name)
        if ns is not None:
            if ns.visibility == "public":
                allowed.add("pull")
            if account is not None and account.name in ns.grants:
                allowed |= ROLE_ACTIONS.get(ns.grants[account.name], frozenset())
        if "*" in allowed:
            return scope.actions & KNOWN_ACTIONS
        return scope.actions & frozenset(allowed)

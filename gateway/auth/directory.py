"""Registry users, groups, robot accounts, namespaces and roles from the replicated
metadata, and the policy they define (docs/security.md "Registry users", "Robot
accounts").

`Directory` caches the `access_list` query for `auth.directory_refresh_seconds`, so a
disabled user, a revoked grant or robot, or a changed visibility takes effect on every
gateway within that time (at once on the gateway whose admin API made the change:
`invalidate`), and at once on every gateway when `auth.revocation_check` is on: each
authenticated request first `confirm`s that the cached directory is still the cluster's
(gateway/auth/lease.py while its lease is fresh, else gateway/auth/revision.py), re-reading
it when the revision moved. When the cluster cannot
answer, the last answer is kept. A login naming
someone the cache does not know re-reads it early (at most every 0.25 s), so a user or
robot made through another gateway or the CLI can log in at once. A robot past its
`expires_at` is refused from that second on, whatever the cache's age.

`RolePolicy`: a namespace is a repository-name prefix (`team` holds `team/app` and
`team/x/y`; the longest matching namespace decides). Roles grant `admin`: everything
(`*`), `maintainer`: pull, push, delete, `developer`: pull, push, `reader`: pull. A
`public` namespace lets anyone (anonymous too) pull. Cluster admins may do everything
everywhere. A repository outside every namespace is reachable by cluster admins only.
Anyone may ask for `registry:catalog:*`: the catalog lists only what the caller may pull.
A disabled user is no user at all. A group's members hold every role granted to the
group (a user's actions in a namespace are the union of their own and their groups').

Robot accounts (`robot$<name>`) hold only the actions their permissions list for the
namespace deciding a repository (no role, never cluster admin), plus anonymous pull of
public namespaces; an expired robot is no robot at all.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cargohold.errors import RegistryError
from cargohold.log import log_event
from cargohold.metadata_api import (
    ROBOT_PREFIX,
    AccessData,
    Metadata,
    NamespaceInfo,
    RobotInfo,
    UserInfo,
)
from gateway.auth.lease import AccessLease
from gateway.auth.passwords import UserSource
from gateway.auth.policy import KNOWN_ACTIONS
from gateway.auth.revision import RevisionWatch
from gateway.auth.scopes import Scope
from gateway.metrics import AUTH_REVISION_LEASED, AUTH_REVISION_READ

logger = logging.getLogger("cargohold.gateway")

ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"pull", "push", "delete", "*"}),
    "maintainer": frozenset({"pull", "push", "delete"}),
    "developer": frozenset({"pull", "push"}),
    "reader": frozenset({"pull"}),
}


# How stale the cache may be when a login names someone it does not know.
MISS_REFRESH_SECONDS = 0.25


class Directory:
    def __init__(
        self,
        meta: Metadata,
        refresh_seconds: float,
        revision_meta: Metadata | None = None,
        revision_interval: float = 0.0,
        lease: AccessLease | None = None,
    ) -> None:
        self.meta = meta
        self.refresh_seconds = refresh_seconds
        # The revision the cached data was read at, and the watch that reads the cluster's
        # (None: no revocation check, the cache lives `refresh_seconds`).
        self._revision = ""
        self._watch: RevisionWatch | None = None
        if revision_meta is not None:
            self._watch = RevisionWatch(revision_meta.access_revision, revision_interval)
        # The leader's revision under a lease (gateway/auth/lease.py): trusted without a
        # round trip while fresh; the watch's reads are the fallback.
        self._lease = lease if revision_meta is not None else None
        self._users: dict[str, UserInfo] = {}
        self._namespaces: list[NamespaceInfo] = []  # longest name first
        self._by_name: dict[str, NamespaceInfo] = {}
        self._groups_of: dict[str, frozenset[str]] = {}  # user -> groups
        self._robots: dict[str, RobotInfo] = {}  # by login name (robot$<name>)
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    def _install(self, data: AccessData) -> None:
        self._users = {u.name: u for u in data.users}
        self._namespaces = sorted(data.namespaces, key=lambda n: len(n.name), reverse=True)
        self._by_name = {n.name: n for n in data.namespaces}
        groups_of: dict[str, set[str]] = {}
        for group in data.groups:
            for member in group.members:
                groups_of.setdefault(member, set()).add(group.name)
        self._groups_of = {user: frozenset(groups) for user, groups in groups_of.items()}
        self._robots = {r.login: r for r in data.robots}

    def invalidate(self) -> None:
        """Re-read at the next `refresh` (this gateway just changed the directory)."""
        self._loaded_at = None

    def _fresh(self, user: str) -> bool:
        if self._loaded_at is None:
            return False
        age = time.monotonic() - self._loaded_at
        if age < self.refresh_seconds:
            # A login by a name this cache does not know (a user or robot just created
            # elsewhere) re-reads early, at most every MISS_REFRESH_SECONDS.
            unknown = user and user not in self._users and user not in self._robots
            return not unknown or age < min(MISS_REFRESH_SECONDS, self.refresh_seconds)
        return False

    async def refresh(self, user: str = "") -> None:
        """Re-read the cluster's access data when older than `refresh_seconds` (or, when
        `user` names someone unknown here, older than MISS_REFRESH_SECONDS)."""
        if self._fresh(user):
            return
        async with self._lock:
            if self._fresh(user):
                return
            try:
                await self._read()
            except RegistryError as exc:
                if self._loaded_at is None:
                    raise
                log_event(logger, "auth.directory_stale", logging.WARNING, error=exc.message)
            self._loaded_at = time.monotonic()

    async def _read(self) -> None:
        """Read the directory (with the revision checks on: the revision first, so the data
        is at least as new as the revision it is filed under; a change in between costs
        one more read at the next `confirm`, never a stale cache)."""
        revision = await self._cluster_revision() if self._watch is not None else ""
        self._install(await self.meta.access_list())
        self._revision = revision

    async def _cluster_revision(self) -> str:
        """The leader's access revision: the leased one while the lease is fresh (no round
        trip), else a read sent after this call began."""
        if self._lease is not None:
            leased = self._lease.revision()
            if leased is not None:
                AUTH_REVISION_LEASED.inc()
                return leased
        assert self._watch is not None
        AUTH_REVISION_READ.inc()
        return await self._watch.current()

    async def confirm(self) -> None:
        """Make sure the cached directory is the cluster's current one: take the cluster's
        access revision (the leased one while the lease is fresh, else a read sent after
        this call began, shared with concurrent callers) and re-read the directory when it
        moved. When the cluster cannot answer, the cache stands (and expires as usual)."""
        if self._watch is None or self._loaded_at is None:
            return
        try:
            revision = await self._cluster_revision()
        except RegistryError as exc:
            log_event(logger, "auth.revision_unknown", logging.WARNING, error=exc.message)
            return
        if revision == self._revision:
            return
        async with self._lock:
            if revision == self._revision:  # another caller re-read it meanwhile
                return
            try:
                await self._read()
            except RegistryError as exc:
                log_event(logger, "auth.directory_stale", logging.WARNING, error=exc.message)
                return
            self._loaded_at = time.monotonic()
            log_event(logger, "auth.directory_changed", logging.DEBUG, revision=self._revision)

    def user(self, name: str | None) -> UserInfo | None:
        user = self._users.get(name) if name else None
        return None if user is None or user.disabled else user

    def robot(self, login: str | None, now: float | None = None) -> RobotInfo | None:
        """A robot account by its login name (`robot$<name>`), unless expired."""
        robot = self._robots.get(login) if login else None
        if robot is None:
            return None
        if robot.expires_at is not None and robot.expires_at <= (now or time.time()):
            return None
        return robot

    def valid(self, name: str) -> bool:
        """An enabled user or a live robot."""
        if is_robot(name):
            return self.robot(name) is not None
        return self.user(name) is not None

    def lookup(self, name: str) -> bytes | None:
        """The password (or robot secret) hash of an enabled user or live robot (the
        PasswordChecker's user source)."""
        if is_robot(name):
            robot = self.robot(name)
            return robot.secret_hash.encode() if robot is not None else None
        user = self.user(name)
        return user.password_hash.encode() if user is not None else None

    def groups_of(self, user: str) -> frozenset[str]:
        return self._groups_of.get(user, frozenset())

    def namespace_names(self) -> list[str]:
        return sorted(self._by_name)

    def namespace(self, name: str) -> NamespaceInfo | None:
        return self._by_name.get(name)

    def roles_in(self, user: str, ns: NamespaceInfo) -> set[str]:
        """The roles an (enabled) user holds in `ns`, their own and through groups."""
        roles = {ns.grants[user]} if user in ns.grants else set()
        for group in self.groups_of(user):
            if group in ns.group_grants:
                roles.add(ns.group_grants[group])
        return roles

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
        allowed: set[str] = set()
        ns = self.directory.namespace_of(scope.name)
        if ns is not None and ns.visibility == "public":
            allowed.add("pull")
        if user and is_robot(user):
            robot = self.directory.robot(user)
            if robot is not None and ns is not None:
                allowed |= set(robot.permissions.get(ns.name, ()))
            return scope.actions & frozenset(allowed)
        account = self.directory.user(user)
        if account is not None and account.admin:
            return scope.actions & KNOWN_ACTIONS
        if ns is not None and account is not None:
            for role in self.directory.roles_in(account.name, ns):
                allowed |= ROLE_ACTIONS.get(role, frozenset())
        if "*" in allowed:
            return scope.actions & KNOWN_ACTIONS
        return scope.actions & frozenset(allowed)


def is_robot(name: str | None) -> bool:
    return bool(name) and str(name).startswith(ROBOT_PREFIX)


class FileUsersPolicy:
    """htpasswd users (from the file) may do everything, as before; robot accounts (from
    the cluster directory) what their permissions say."""

    def __init__(self, directory: Directory | None) -> None:
        self.directory = directory
        self._robots = RolePolicy(directory) if directory is not None else None

    async def granted(self, user: str | None, scope: Scope) -> frozenset[str]:
        if is_robot(user):
            if self._robots is None:
                return frozenset()
            return await self._robots.granted(user, scope)
        if not user:
            return frozenset()
        return scope.actions & KNOWN_ACTIONS


class FileAndRobots:
    """The user source of htpasswd modes: `robot$` names from the cluster directory, every
    other name from the htpasswd file (the cluster is asked only for robot logins)."""

    def __init__(self, file: UserSource, directory: Directory | None) -> None:
        self.file = file
        self.directory = directory

    async def refresh(self, user: str = "") -> None:
        if is_robot(user):
            if self.directory is not None:
                await self.directory.refresh(user)
        else:
            await self.file.refresh(user)

    def lookup(self, user: str) -> bytes | None:
        if is_robot(user):
            return self.directory.lookup(user) if self.directory is not None else None
        return self.file.lookup(user)

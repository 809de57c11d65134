"""Who calls the admin API, and what they may do there.

Credentials are those of `/v2/`: in token mode a Bearer token from the token service (its
subject is the caller; the scopes it carries do not matter here) or HTTP Basic; in
htpasswd mode HTTP Basic. Both go through `AuthState` (the same login limits, password
cache and revocation checks). None or wrong -> 401 `UNAUTHORIZED` with the mode's
challenge.

Rights: a cluster admin may do everything; a namespace admin (role `admin` there, directly
or through a group) may read the namespace, change its visibility and its grants; robots
only `whoami`. Users of an htpasswd file may do everything on `/v2/`, so they are cluster
admins here too. With `auth.mode = "none"` nobody is authenticated: reads are open,
changes are refused (403), so an open registry cannot be given users by anyone passing by.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from cargohold.errors import Denied
from cargohold.metadata_api import Actor
from gateway.access_log import USER_KEY
from gateway.activity import actor_context
from gateway.auth.state import AUTH, AuthState, basic_credentials
from gateway.auth.tokens import TokenInvalid
from gateway.context import context

ANONYMOUS, USER, ROBOT = "anonymous", "user", "robot"


@dataclass(frozen=True)
class Caller:
    name: str  # "" when anonymous
    kind: str  # ANONYMOUS, USER or ROBOT
    cluster_admin: bool
    # May read every listing (cluster admins; anyone when auth.mode is "none").
    read_all: bool


def auth_state(request: web.Request) -> AuthState:
    return request.app[AUTH]


async def caller(request: web.Request) -> Caller:
    """The authenticated caller; Unauthorized (401 with the challenge) otherwise."""
    auth = auth_state(request)
    if auth.mode == "none":
        return Caller("", ANONYMOUS, False, True)
    header = request.headers.get("Authorization", "")
    kind, _, value = header.partition(" ")
    name = ""
    if kind.lower() == "basic":
        credentials = basic_credentials(header)
        if credentials is None or not await auth.login(request, *credentials):
            raise auth.unauthorized(request, None)
        name = credentials[0]
    elif kind.lower() == "bearer" and auth.verifier is not None:
        try:
            name = auth.verifier.verify(value.strip()).subject
        except TokenInvalid:
            raise auth.unauthorized(request, None, "invalid_token") from None
        if not name or not await auth.still_valid(name):
            raise auth.unauthorized(request, None, "invalid_token")
    else:
        raise auth.unauthorized(request, None)
    request[USER_KEY] = name
    admin = await auth.is_cluster_admin(name)
    return Caller(name, ROBOT if auth.is_robot(name) else USER, admin, admin)


def actor(request: web.Request) -> Actor | None:
    """The activity-log context every change made through this API carries (after
    `caller` named the caller), None when the log is off."""
    return actor_context(request, context(request).cfg.audit.enabled)


def require_cluster_admin(who: Caller) -> None:
    if not who.cluster_admin:
        raise Denied("only cluster admins may do this")


def require_read_all(who: Caller) -> None:
    if not who.read_all:
        raise Denied("only cluster admins may list this")


async def require_namespace_admin(request: web.Request, who: Caller, namespace: str) -> None:
    """Cluster admins, and users with role `admin` in `namespace` (directly or by group)."""
    if who.cluster_admin:
        return
    auth = auth_state(request)
    if who.kind == USER and await auth.namespace_role(who.name, namespace) == "admin":
        return
    raise Denied(f"only admins of namespace {namespace!r} may do this")

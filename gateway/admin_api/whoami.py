"""`GET whoami`: who the credentials name, and what that identity is (any caller that
authenticates, robots too; with `auth.mode = "none"`, anonymous)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.admin_api import identity
from gateway.admin_api.body import answer


async def whoami(request: web.Request) -> web.StreamResponse:
    who = await identity.caller(request)
    auth = identity.auth_state(request)
    body: dict[str, Any] = {
        "name": who.name,
        "kind": who.kind,
        "cluster_admin": who.cluster_admin,
        "auth_mode": auth.mode,
        "namespaces": {},
        "groups": [],
    }
    directory = auth.directory
    if directory is not None and who.kind == identity.ROBOT:
        robot = directory.robot(who.name)
        if robot is not None:
            body["namespaces"] = {n: list(a) for n, a in robot.permissions.items()}
            body["expires_at"] = robot.expires_at
            body["expires_in"] = (
                None if robot.expires_at is None else max(0, int(robot.expires_at - time.time()))
            )
    elif directory is not None and auth.directory_users and who.kind == identity.USER:
        body["groups"] = sorted(directory.groups_of(who.name))
        roles = {}
        for name in directory.namespace_names():
            role = await auth.namespace_role(who.name, name)
            if role is not None:
                roles[name] = role
        body["namespaces"] = roles
    return answer(body)


def routes(router: web.UrlDispatcher, prefix: str) -> None:
    router.add_get(prefix + "/whoami", whoami)

"""`robots`: robot accounts for CI (docs/security.md "Robot accounts").

    GET    robots            [{name, login, expires_at, expired, permissions, description,
                               created_at}]
    POST   robots            {name, permissions: {ns: [actions]}, expires_in?, description?}
                             -> 201 {name, login, secret, expires_at} (the secret, once)
    DELETE robots/{name}     revoke (`name` with or without the `robot$` prefix)

`expires_in` is in seconds (default 30 days; -1: never). Cluster admins may manage every
robot; a namespace admin those whose permissions lie only in namespaces they administer.
Only the bcrypt hash of the secret (computed in a worker thread) is stored.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from cargohold.credentials import ROBOT_BCRYPT_ROUNDS, hash_password, new_robot_secret
from cargohold.errors import AlreadyExists, Denied, NotFound, RequestInvalid
from cargohold.metadata_api import ROBOT_PREFIX, RobotDelete, RobotInfo, RobotPut
from gateway.admin_api import identity
from gateway.admin_api.body import answer, field, json_object
from gateway.admin_api.users import changed
from gateway.context import context

DEFAULT_EXPIRY_SECONDS = 30 * 24 * 3600


def short_name(name: str) -> str:
    return name[len(ROBOT_PREFIX) :] if name.startswith(ROBOT_PREFIX) else name


def robot_row(robot: RobotInfo, now: float) -> dict[str, Any]:
    return {
        "name": robot.name,
        "login": robot.login,
        "expires_at": robot.expires_at,
        "expired": robot.expires_at is not None and robot.expires_at <= now,
        "permissions": {n: list(a) for n, a in robot.permissions.items()},
        "description": robot.description,
        "created_at": robot.created_at,
    }


async def _may_manage(request: web.Request, who: identity.Caller, namespaces: list[str]) -> bool:
    if who.cluster_admin:
        return True
    if who.kind != identity.USER or not namespaces:
        return False
    auth = identity.auth_state(request)
    for ns in namespaces:
        if await auth.namespace_role(who.name, ns) != "admin":
            return False
    return True


def _permissions(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = field(body, "permissions", dict)
    if not raw:
        raise RequestInvalid("'permissions' must map namespaces to lists of actions")
    out = []
    for namespace, actions in raw.items():
        if not isinstance(actions, list):
            raise RequestInvalid(f"permissions[{namespace!r}] must be a list of actions")
        out.append({"namespace": namespace, "actions": actions})
    return out


def _expires_at(body: dict[str, Any], now: float) -> float | None:
    seconds = field(body, "expires_in", int, DEFAULT_EXPIRY_SECONDS)
    if seconds == -1:
        return None
    if seconds <= 0:
        raise RequestInvalid("'expires_in' must be seconds > 0, or -1 for never")
    return float(int(now) + seconds)


async def list_robots(request: web.Request) -> web.StreamResponse:
    who = await identity.caller(request)
    data = await context(request).meta.access_list()
    now = time.time()
    rows = []
    for robot in data.robots:
        if who.read_all or await _may_manage(request, who, list(robot.permissions)):
            rows.append(robot_row(robot, now))
    return answer(rows)


async def add_robot(request: web.Request) -> web.StreamResponse:
    who = await identity.caller(request)
    if who.kind == identity.ANONYMOUS:
        raise Denied("robot accounts are made by cluster or namespace admins")
    body = await json_object(request)
    name = short_name(field(body, "name", str, ""))
    permissions = _permissions(body)
    if not await _may_manage(request, who, [p["namespace"] for p in permissions]):
        raise Denied("only admins of every namespace listed may make this robot")
    now = time.time()
    expires_at = _expires_at(body, now)
    description = field(body, "description", str, "")
    meta = context(request).meta
    if any(r.name == name for r in (await meta.access_list()).robots):
        raise AlreadyExists(f"robot {ROBOT_PREFIX}{name} exists")
    secret = new_robot_secret()
    hashed = await asyncio.to_thread(hash_password, secret, ROBOT_BCRYPT_ROUNDS)
    # The contract's own checks (names, actions, known namespaces) apply as for the CLI.
    request_ = RobotPut.from_args(
        {
            "name": name,
            "secret_hash": hashed,
            "expires_at": expires_at,
            "permissions": permissions,
            "description": description,
            "created_at": now,
            "audit": identity.actor(request),
        }
    )
    await meta.robot_put(request_)
    changed(request)
    body_out = {
        "name": name,
        "login": ROBOT_PREFIX + name,
        "secret": secret,
        "expires_at": expires_at,
        "permissions": {n: list(a) for n, a in request_.permissions},
    }
    return answer(body_out, 201)


async def delete_robot(request: web.Request) -> web.StreamResponse:
    who = await identity.caller(request)
    name = short_name(request.match_info["name"])
    meta = context(request).meta
    robot = next((r for r in (await meta.access_list()).robots if r.name == name), None)
    if robot is None:
        if not who.cluster_admin:
            raise Denied(f"no robot {ROBOT_PREFIX}{name} you may revoke")
        raise NotFound(f"no robot {ROBOT_PREFIX}{name}")
    if not await _may_manage(request, who, list(robot.permissions)):
        raise Denied(f"only admins of every namespace of {robot.login} may revoke it")
    await meta.call(RobotDelete(name, identity.actor(request)))
    changed(request)
    return answer({"name": name, "login": robot.login, "revoked": True})


def routes(router: web.UrlDispatcher, prefix: str) -> None:
    router.add_get(prefix + "/robots", list_robots)
    router.add_post(prefix + "/robots", add_robot)
    router.add_delete(prefix + "/robots/{name}", delete_robot)

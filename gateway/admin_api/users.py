"""`users`: registry users of the cluster metadata (cluster admins only).

    GET    users                   [{name, admin, disabled, groups, namespaces}]
    POST   users                   {name, password?, admin?} -> 201 {name, password?}
    PATCH  users/{name}            {password?, disabled?, admin?}

A password not given is generated and answered once; only its bcrypt hash (computed in a
worker thread) is stored. Password hashes never leave the cluster through this API.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from cargohold.credentials import hash_password, new_password
from cargohold.errors import AlreadyExists, NotFound, RequestInvalid
from cargohold.metadata_api import AccessData, UserPut
from gateway.activity import actor_context
from gateway.admin_api import identity
from gateway.admin_api.body import answer, field, json_object
from gateway.context import context


def user_rows(data: AccessData) -> list[dict[str, Any]]:
    rows = []
    for user in data.users:
        rows.append(
            {
                "name": user.name,
                "admin": user.admin,
                "disabled": user.disabled,
                "groups": [g.name for g in data.groups if user.name in g.members],
                "namespaces": {
                    ns.name: ns.grants[user.name]
                    for ns in data.namespaces
                    if user.name in ns.grants
                },
            }
        )
    return rows


def changed(request: web.Request) -> None:
    """This gateway sees its own change at once (the others within their refresh)."""
    directory = identity.auth_state(request).directory
    if directory is not None:
        directory.invalidate()


async def list_users(request: web.Request) -> web.StreamResponse:
    identity.require_read_all(await identity.caller(request))
    return answer(user_rows(await context(request).meta.access_list()))


async def add_user(request: web.Request) -> web.StreamResponse:
    identity.require_cluster_admin(await identity.caller(request))
    body = await json_object(request)
    name = field(body, "name", str)
    if not name:
        raise RequestInvalid("'name' is required")
    meta = context(request).meta
    if any(u.name == name for u in (await meta.access_list()).users):
        raise AlreadyExists(f"user {name!r} exists")
    password = field(body, "password", str)
    generated = password is None
    password = password or new_password()
    hashed = await asyncio.to_thread(hash_password, password)
    admin = field(body, "admin", bool, False)
    await meta.user_put(UserPut(name, hashed, False, admin, actor_context(request)))
    changed(request)
    out: dict[str, Any] = {"name": name}
    if generated:
        out["password"] = password
    return answer(out, 201)


async def change_user(request: web.Request) -> web.StreamResponse:
    identity.require_cluster_admin(await identity.caller(request))
    name = request.match_info["name"]
    body = await json_object(request)
    meta = context(request).meta
    if not any(u.name == name for u in (await meta.access_list()).users):
        raise NotFound(f"no user {name!r}")
    password = field(body, "password", str)
    hashed = await asyncio.to_thread(hash_password, password) if password else None
    await meta.user_put(
        UserPut(
            name,
            hashed,
            field(body, "disabled", bool),
            field(body, "admin", bool),
            actor_context(request),
        )
    )
    changed(request)
    return answer({"name": name})


def routes(router: web.UrlDispatcher, prefix: str) -> None:
    router.add_get(prefix + "/users", list_users)
    router.add_post(prefix + "/users", add_user)
    router.add_patch(prefix + "/users/{name}", change_user)

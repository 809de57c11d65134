"""`groups`: named groups of users; a grant to a group gives its role to every member
(cluster admins only; namespace admins grant roles to groups through `namespaces`).

    GET    groups                          [{name, members, namespaces: {ns: role}}]
    POST   groups                          {name} -> 201 {name, members: []}
    DELETE groups/{name}                   the group and every grant naming it
    PUT    groups/{name}/members/{user}    add a member
    DELETE groups/{name}/members/{user}    remove a member
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cargohold.errors import AlreadyExists, NotFound
from cargohold.metadata_api import (
    AccessData,
    GroupDelete,
    GroupInfo,
    GroupMemberSet,
    GroupPut,
)
from gateway.admin_api import identity
from gateway.admin_api.body import answer, field, json_object
from gateway.admin_api.users import changed
from gateway.context import context


def _row(group: GroupInfo, data: AccessData) -> dict[str, Any]:
    return {
        "name": group.name,
        "members": list(group.members),
        "namespaces": {
            ns.name: ns.group_grants[group.name]
            for ns in data.namespaces
            if group.name in ns.group_grants
        },
    }


async def _find(request: web.Request, name: str) -> dict[str, Any]:
    data = await context(request).meta.access_list()
    for group in data.groups:
        if group.name == name:
            return _row(group, data)
    raise NotFound(f"no group {name!r}")


async def list_groups(request: web.Request) -> web.StreamResponse:
    identity.require_read_all(await identity.caller(request))
    data = await context(request).meta.access_list()
    return answer([_row(g, data) for g in data.groups])


async def add_group(request: web.Request) -> web.StreamResponse:
    identity.require_cluster_admin(await identity.caller(request))
    name = field(await json_object(request), "name", str, "")
    meta = context(request).meta
    if any(g.name == name for g in (await meta.access_list()).groups):
        raise AlreadyExists(f"group {name!r} exists")
    await meta.call(GroupPut(name, identity.actor(request)))
    changed(request)
    return answer({"name": name, "members": [], "namespaces": {}}, 201)


async def delete_group(request: web.Request) -> web.StreamResponse:
    identity.require_cluster_admin(await identity.caller(request))
    name = request.match_info["name"]
    if not await context(request).meta.call(GroupDelete(name, identity.actor(request))):
        raise NotFound(f"no group {name!r}")
    changed(request)
    return answer({"name": name, "deleted": True})


async def _membership(request: web.Request, member: bool) -> web.StreamResponse:
    identity.require_cluster_admin(await identity.caller(request))
    name, user = request.match_info["name"], request.match_info["user"]
    change = GroupMemberSet(name, user, member, identity.actor(request))
    await context(request).meta.call(change)
    changed(request)
    return answer(await _find(request, name))


async def add_member(request: web.Request) -> web.StreamResponse:
    return await _membership(request, True)


async def remove_member(request: web.Request) -> web.StreamResponse:
    return await _membership(request, False)


def routes(router: web.UrlDispatcher, prefix: str) -> None:
    router.add_get(prefix + "/groups", list_groups)
    router.add_post(prefix + "/groups", add_group)
    router.add_delete(prefix + "/groups/{name}", delete_group)
    members = router.add_resource(prefix + "/groups/{name}/members/{user}")
    members.add_route("PUT", add_member)
    members.add_route("DELETE", remove_member)

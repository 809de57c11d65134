"""`namespaces`: repository-name prefixes, their visibility and role grants.

    GET    namespaces                                  every namespace the caller administers
                                                       (cluster admins: all)
    POST   namespaces                                  {name, visibility?} -> 201 (cluster admins)
    GET    namespaces/{ns}                             {name, visibility, grants, group_grants}
    PATCH  namespaces/{ns}                             {visibility}
    PUT    namespaces/{ns}/grants/users/{user}         {role}
    DELETE namespaces/{ns}/grants/users/{user}
    PUT    namespaces/{ns}/grants/groups/{group}       {role}
    DELETE namespaces/{ns}/grants/groups/{group}

Everything but creating a namespace is open to the namespace's admins too (role `admin`
there, directly or through a group). Namespace names contain `/`, so `{ns}` is greedy and
the grants routes are matched first.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cargohold.errors import AlreadyExists, NotFound, RequestInvalid
from cargohold.metadata_api import (
    ROLES,
    VISIBILITIES,
    GrantSet,
    GroupGrantSet,
    NamespaceInfo,
    NamespacePut,
)
from cargohold.names import validate_name
from gateway.activity import actor_context
from gateway.admin_api import identity
from gateway.admin_api.body import answer, field, json_object
from gateway.admin_api.users import changed
from gateway.context import context


def _row(ns: NamespaceInfo) -> dict[str, Any]:
    return {
        "name": ns.name,
        "visibility": ns.visibility,
        "grants": dict(ns.grants),
        "group_grants": dict(ns.group_grants),
    }


def _visibility(body: dict[str, Any], default: str | None = None) -> str:
    visibility = field(body, "visibility", str, default)
    if visibility not in VISIBILITIES:
        raise RequestInvalid(f"visibility must be one of {', '.join(VISIBILITIES)}")
    return str(visibility)


async def _find(request: web.Request, name: str) -> NamespaceInfo:
    data = await context(request).meta.access_list()
    for ns in data.namespaces:
        if ns.name == name:
            return ns
    raise NotFound(f"no namespace {name!r}")


async def list_namespaces(request: web.Request) -> web.StreamResponse:
    who = await identity.caller(request)
    data = await context(request).meta.access_list()
    rows = []
    for ns in data.namespaces:
        if not who.read_all:
            auth = identity.auth_state(request)
            if await auth.namespace_role(who.name, ns.name) != "admin":
                continue
        rows.append(_row(ns))
    return answer(rows)


async def add_namespace(request: web.Request) -> web.StreamResponse:
    identity.require_cluster_admin(await identity.caller(request))
    body = await json_object(request)
    name = validate_name(field(body, "name", str, ""))
    meta = context(request).meta
    if any(ns.name == name for ns in (await meta.access_list()).namespaces):
        raise AlreadyExists(f"namespace {name!r} exists")
    visibility = _visibility(body, "private")
    await meta.call(NamespacePut(name, visibility, actor_context(request)))
    changed(request)
    return answer({"name": name, "visibility": visibility}, 201)


async def get_namespace(request: web.Request) -> web.StreamResponse:
    who = await identity.caller(request)
    name = request.match_info["ns"]
    if not who.read_all:
        await identity.require_namespace_admin(request, who, name)
    return answer(_row(await _find(request, name)))


async def change_namespace(request: web.Request) -> web.StreamResponse:
    who = await identity.caller(request)
    name = request.match_info["ns"]
    await identity.require_namespace_admin(request, who, name)
    body = await json_object(request)
    await _find(request, name)
    put = NamespacePut(name, _visibility(body), actor_context(request))
    await context(request).meta.call(put)
    changed(request)
    return answer(_row(await _find(request, name)))


async def _grant(request: web.Request, role: str | None) -> web.StreamResponse:
    who = await identity.caller(request)
    name, kind = request.match_info["ns"], request.match_info["kind"]
    principal = request.match_info["principal"]
    await identity.require_namespace_admin(request, who, name)
    meta = context(request).meta
    actor = actor_context(request)
    if kind == "users":
        await meta.call(GrantSet(name, principal, role, actor))
    else:
        await meta.call(GroupGrantSet(name, principal, role, actor))
    changed(request)
    return answer(_row(await _find(request, name)))


async def put_grant(request: web.Request) -> web.StreamResponse:
    body = await json_object(request)
    role = field(body, "role", str)
    if role not in ROLES:
        raise RequestInvalid(f"role must be one of {', '.join(ROLES)}")
    return await _grant(request, role)


async def delete_grant(request: web.Request) -> web.StreamResponse:
    return await _grant(request, None)


def routes(router: web.UrlDispatcher, prefix: str) -> None:
    base = prefix + "/namespaces"
    router.add_get(base, list_namespaces)
    router.add_post(base, add_namespace)
    grants = router.add_resource(base + "/{ns:.+}/grants/{kind:users|groups}/{principal}")
    grants.add_route("PUT", put_grant)
    grants.add_route("DELETE", delete_grant)
    one = router.add_resource(base + "/{ns:.+}")
    one.add_route("GET", get_namespace)
    one.add_route("PATCH", change_namespace)

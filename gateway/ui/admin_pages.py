"""The cluster admins' pages of the web UI: the cluster (what `cargohold admin status`
shows: members, leader, disk use, chunks below R copies, repair/scrub/GC progress, quotas)
and the activity log (the admin API's `GET audit`, paged)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import grpc
from aiohttp import web

from cargohold.errors import Denied
from cargohold.node_status import status_record
from gateway.admin_api.audit import audit_page
from gateway.context import context
from gateway.health import READINESS
from gateway.ui.pages import page
from gateway.ui.render import render
from gateway.ui.session import Viewer

# The background roles whose progress the page shows (the rest of `extra` is store counters).
_ROLES = ("repair", "scrub", "gc", "retention")


def _require_admin(who: Viewer) -> None:
    if not who.cluster_admin:
        raise Denied("only cluster admins may see this page")


async def _node(request: web.Request, address: str) -> dict[str, Any]:
    try:
        reply = await request.app[READINESS].status(address)
    except grpc.aio.AioRpcError as exc:
        return {"address": address, "error": exc.code().name}
    return status_record(address, reply)


@page
async def cluster(request: web.Request, who: Viewer) -> web.StreamResponse:
    _require_admin(who)
    meta = context(request).meta
    members = await meta.members()
    nodes = await asyncio.gather(*(_node(request, m.grpc) for m in members))
    by_address = {n["address"]: n for n in nodes}
    rows: list[dict[str, Any]] = []
    for m in members:
        node = by_address.get(m.grpc, {})
        extra = node.get("extra", {})
        roles = {k: v for k, v in extra.items() if k in _ROLES and isinstance(v, dict)}
        repair = roles.get("repair", {})
        below = repair.get("below_replicas") if repair.get("running") else None
        if below is None:
            below = repair.get("last_below_replicas")
        rows.append({"member": m, "node": node, "roles": roles, "below": below})
    leader = next((m.id for m in members if by_address.get(m.grpc, {}).get("is_leader")), None)
    counts = await meta.status()
    quotas = await meta.quota_list()
    return render(
        request,
        who,
        "cluster.html",
        title="Cluster",
        rows=rows,
        leader=leader,
        counts=counts,
        quotas=quotas,
    )


_FILTERS = ("repo", "actor", "action", "after")


@page
async def activity(request: web.Request, who: Viewer) -> web.StreamResponse:
    _require_admin(who)
    result = await audit_page(request)
    params = {k: request.query.get(k, "") for k in _FILTERS}
    more = None
    if result["next"] is not None:
        more = urlencode({**{k: v for k, v in params.items() if v}, "after": result["next"]})
    return render(
        request,
        who,
        "activity.html",
        title="Activity",
        records=result["records"],
        params=params,
        next_query=more,
    )

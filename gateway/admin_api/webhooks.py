"""`GET webhooks`, `GET webhooks/{name}/dead-letters`: webhook endpoints and their
delivery state, read-only (cluster admins only; docs/webhooks.md).

The listing is the replicated state's (`webhook_list`: endpoints added with the admin CLI,
cursors of configured ones, dead-letter counts, the delivery lease) with this gateway's
configured endpoints merged in, header values masked. Endpoints are changed with
`cargohold admin webhooks` only: their headers may hold a receiver's credential, and the
cluster accepts `webhook_put` from the admin role alone (node/access.py).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cargohold.webhooks import parse_config_endpoints
from gateway.admin_api import identity
from gateway.admin_api.body import answer
from gateway.context import context


async def list_webhooks(request: web.Request) -> web.StreamResponse:
    identity.require_cluster_admin(await identity.caller(request))
    ctx = context(request)
    listing: dict[str, Any] = await ctx.meta.webhook_list()
    rows = {row["name"]: row for row in listing["endpoints"]}
    for row in rows.values():
        if row.get("endpoint"):
            row["endpoint"]["headers"] = {k: "***" for k in row["endpoint"].get("headers", {})}
            row["endpoint"]["origin"] = "cluster"
    for endpoint in parse_config_endpoints(ctx.cfg.webhooks.endpoints):
        row = rows.setdefault(
            endpoint.name,
            {"name": endpoint.name, "cursor": None, "dead_letters": 0, "retry": []},
        )
        if not row.get("endpoint"):
            row["endpoint"] = endpoint.to_json(reveal_headers=False)
    listing["endpoints"] = [rows[name] for name in sorted(rows)]
    return answer(listing)


async def dead_letters(request: web.Request) -> web.StreamResponse:
    identity.require_cluster_admin(await identity.caller(request))
    letters = await context(request).meta.webhook_dead_letters(request.match_info["name"])
    keys = ("seq", "time", "attempts", "reason")
    return answer([dict(zip(keys, d, strict=True)) for d in letters])


def routes(router: web.UrlDispatcher, prefix: str) -> None:
    router.add_get(prefix + "/webhooks", list_webhooks)
    router.add_get(prefix + "/webhooks/{name}/dead-letters", dead_letters)

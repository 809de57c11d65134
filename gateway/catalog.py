"""`GET /v2/_catalog?n=&last=`: every repository in byte order, paged like tag lists."""

from __future__ import annotations

from aiohttp import web

from gateway.context import context
from gateway.pagination import paged_response, parse_page


async def catalog(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    page = parse_page(request, ctx.cfg.gateway)
    result = await ctx.cluster.query("catalog", {"n": page.n, "last": page.last})
    return paged_response(
        "/v2/_catalog", page, "repositories", list(result["repositories"]), bool(result.get("more"))
    )

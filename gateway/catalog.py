"""`GET /v2/_catalog?n=&last=`: every repository in byte order, paged like tag lists."""

from __future__ import annotations

from aiohttp import web

from gateway.context import context
from gateway.pagination import paged_response, parse_page


async def catalog(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    page = parse_page(request, ctx.cfg.gateway)
    repos = await ctx.meta.catalog(page.n, page.last)
    return paged_response("/v2/_catalog", page, "repositories", repos.items, repos.more)

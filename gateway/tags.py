"""`GET /v2/<name>/tags/list?n=&last=`: a repository's tags in byte order, paged.

An unknown repository is 404 `NAME_UNKNOWN` (raised by the node's `tags_list`).
"""

from __future__ import annotations

from aiohttp import web

from cargohold.names import validate_name
from gateway.context import context
from gateway.pagination import paged_response, parse_page


async def list_tags(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    name = validate_name(request.match_info["name"])
    page = parse_page(request, ctx.cfg.gateway)
    tags = await ctx.meta.tags_list(name, page.n, page.last)
    return paged_response(
        f"/v2/{name}/tags/list", page, "tags", tags.items, tags.more, extra={"name": name}
    )

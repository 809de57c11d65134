"""`GET /v2/<name>/tags/list?n=&last=`: a repository's tags in byte order, paged.

An unknown repository is 404 `NAME_UNKNOWN` (raised by the node's `tags_list`). A proxy
namespace (gateway/mirror/) lists the upstream's tags, or the stored ones while the
upstream is unavailable.
"""

from __future__ import annotations

from aiohttp import web

from cargohold.errors import NameUnknown
from cargohold.metadata_api import Page as TagPage
from cargohold.names import validate_name
from gateway.context import context
from gateway.mirror.proxy import MIRROR
from gateway.pagination import Page, paged_response, parse_page


async def list_tags(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    name = validate_name(request.match_info["name"])
    page = parse_page(request, ctx.cfg.gateway)
    mirror = request.app.get(MIRROR)
    route = mirror.route(request, name) if mirror is not None else None
    if mirror is not None and route is None and mirror.cfg.mirror.root:
        try:
            tags = await ctx.meta.tags_list(name, page.n, page.last)
        except NameUnknown:
            route = mirror.root_route(name)
            if route is None:
                raise
        else:
            return _page(name, page, tags)
    if mirror is not None and route is not None:
        return _page(name, page, await mirror.tags(route, page.n, page.last))
    return _page(name, page, await ctx.meta.tags_list(name, page.n, page.last))


def _page(name: str, page: Page, tags: TagPage) -> web.StreamResponse:
    return paged_response(
        f"/v2/{name}/tags/list", page, "tags", tags.items, tags.more, extra={"name": name}
    )

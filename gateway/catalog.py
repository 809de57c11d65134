"""`GET /v2/_catalog?n=&last=`: every repository in byte order, paged like tag lists.

With `[auth]` on, only the repositories the caller may pull are listed (the policy of
gateway/auth/): hidden names are skipped and further node pages read to fill the page
(at most `_MAX_READS` per request: a page may then hold fewer than `n` names).
"""

from __future__ import annotations

from aiohttp import web

from gateway.access_log import USER_KEY
from gateway.auth.scopes import repository
from gateway.auth.state import AUTH
from gateway.context import context
from gateway.pagination import paged_response, parse_page

_PULL = frozenset({"pull"})
_MAX_READS = 8


async def catalog(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    page = parse_page(request, ctx.cfg.gateway)
    auth = request.app.get(AUTH)
    if auth is None or auth.mode == "none" or page.n == 0:
        repos = await ctx.meta.catalog(page.n, page.last)
        return paged_response("/v2/_catalog", page, "repositories", repos.items, repos.more)
    user = request.get(USER_KEY) or None
    visible: list[str] = []
    last, more, reads = page.last, True, 0
    while more and len(visible) < page.n and reads < _MAX_READS:
        repos = await ctx.meta.catalog(page.n, last)
        reads += 1
        more = repos.more
        for index, name in enumerate(repos.items):
            if len(visible) == page.n:
                more = more or index < len(repos.items)
                break
            last = name
            if "pull" in await auth.policy.granted(user, repository(name, _PULL)):
                visible.append(name)
    # `Link` names the last visible name: the hidden ones after it are read again, unseen.
    return paged_response("/v2/_catalog", page, "repositories", visible, more)

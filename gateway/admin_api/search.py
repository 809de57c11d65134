"""`GET search`: repositories and tags by name, namespace, labels, annotations, media type,
platform, times and size, sorted and paged by cursor (docs/search.md).

Anyone may search; results hold only what the caller may pull (gateway/search.py). Without
an `Authorization` header the caller is anonymous (public namespaces only, in token mode);
with one, the credentials are checked as everywhere in this API (401 when wrong).
"""

from __future__ import annotations

from aiohttp import web

from gateway.admin_api import identity
from gateway.admin_api.body import answer
from gateway.search import run_search, spec_from_query


async def search(request: web.Request) -> web.StreamResponse:
    user: str | None = None
    if "Authorization" in request.headers:
        user = (await identity.caller(request)).name or None
    spec = spec_from_query(request.query)
    page = await run_search(request, user, spec)
    return answer(page.to_json())


def routes(router: web.UrlDispatcher, prefix: str) -> None:
    router.add_get(prefix + "/search", search)

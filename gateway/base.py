"""`GET /v2/`: the API version check every client starts with (200 `{}`).

Auth, when it exists, answers 401 with its challenge here; the version header itself is
added to every response by `gateway.errors.add_api_version_header`.
"""

from __future__ import annotations

from aiohttp import web


async def api_version_check(request: web.Request) -> web.StreamResponse:
    return web.json_response({})

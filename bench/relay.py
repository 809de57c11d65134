"""The least a pull-through cache does for a cold pull, as a process of its own: a relay
that GETs each request from the upstream and sends the response on, hashing a blob's
pieces as they pass (`hash_off_loop`, as the gateway does) and holding its last piece
until the digest matches. No cluster write, no spool, no single flight, no metadata:
what is left of a cold pull's cost on top of a direct one when the cache fill is free.
bench/mirror_pull.py `--relay` pulls through it beside the direct and cold pulls.

    .venv/bin/python -m bench.relay UPSTREAM_URL PORT
"""

from __future__ import annotations

import hashlib
import sys

import aiohttp
import uvloop
from aiohttp import web

from cargohold.concurrency import hash_off_loop

_PASSED = ("Content-Type", "Docker-Content-Digest")
HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http", aiohttp.ClientSession)
UPSTREAM: web.AppKey[str] = web.AppKey("upstream", str)


async def relay(request: web.Request) -> web.StreamResponse:
    url = request.app[UPSTREAM] + request.path_qs
    accept = {"Accept": request.headers["Accept"]} if "Accept" in request.headers else {}
    async with request.app[HTTP].get(url, headers=accept) as up:
        headers = {k: up.headers[k] for k in _PASSED if k in up.headers}
        if "/blobs/" not in request.path or up.status != 200:
            return web.Response(status=up.status, body=await up.read(), headers=headers)
        digest = request.path.rsplit("/", 1)[1]
        response = web.StreamResponse(headers=headers)
        response.content_length = up.content_length
        await response.prepare(request)
        hasher = hashlib.sha256()
        held = b""
        async for piece in up.content.iter_any():
            await hash_off_loop(len(piece), hasher.update, piece)
            if held:
                await response.write(held)
            held = piece
        if f"sha256:{hasher.hexdigest()}" != digest:
            raise ConnectionResetError("digest mismatch: the last piece is not sent")
        await response.write(held)
        await response.write_eof()
        return response


async def _app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app[HTTP] = aiohttp.ClientSession(auto_decompress=False)

    async def close(app: web.Application) -> None:
        await app[HTTP].close()

    app.on_cleanup.append(close)
    app.router.add_get("/{path:.*}", relay)
    return app


def main() -> None:
    upstream, port = sys.argv[1], int(sys.argv[2])
    uvloop.install()
    web.run_app(_app(upstream), host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()

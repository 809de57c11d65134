"""Manifest reads (req/s, p50/p99) and tag writes, at several connection counts.

Reads: one small image is pushed, then for each of HEAD/GET by tag and by digest and each
connection count, that many workers repeat the request for `manifest_seconds` (at most
`manifest_max_requests`), each on its own persistent connection, with the lean client of
`bench.rawhttp` (so that the client's CPU cost does not cap the req/s). By-tag reads are
the linearizable path in Cargohold; by-digest reads may be served from a gateway cache.

Tag writes: the same manifest PUT under fresh tags, a small replicated metadata command per
request on Cargohold (and a few small files on Distribution).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from bench.blobdata import BlobSpec
from bench.driver import drive
from bench.images import Image, push_image
from bench.oci import ACCEPT_MANIFESTS
from bench.rawhttp import RawClient
from bench.workloads.common import NS_MANIFESTS, Context, in_thread, nonce, pick, sessions

REPO = "bench/manifests"
TAG = "v1"
READ_OPS = ("head_tag", "get_tag", "head_digest", "get_digest")


async def _image() -> Image:
    layer = BlobSpec.unique(nonce(NS_MANIFESTS, 0), 64 * 1024)
    return await in_thread(Image.build, "manifests", [layer])


async def run(
    ctx: Context, ops: tuple[str, ...] = READ_OPS, conns: tuple[int, ...] | None = None
) -> dict[str, Any]:
    p = ctx.profile
    conns = conns if conns is not None else p.manifest_conns
    image = await _image()
    async with sessions(ctx, 4) as clients:
        await push_image(clients[0], REPO, TAG, image)
    reads: dict[str, Any] = {}
    for op in ops:
        ref = TAG if op.endswith("_tag") else image.digest
        for n in conns:
            reads[f"{op}_c{n}"] = await _read_cell(ctx, op, ref, n)
            ctx.advance(f"manifest {op} c{n}")
    return {"manifest_reads": reads}


async def _read_cell(ctx: Context, op: str, ref: str, conns: int) -> dict[str, Any]:
    """`conns` persistent connections (spread over the gateways), one worker each."""
    p = ctx.profile
    head = op.startswith("head")
    pool: asyncio.Queue[tuple[RawClient, bytes]] = asyncio.Queue()
    clients = [RawClient(ctx.urls[i % len(ctx.urls)]) for i in range(conns)]
    authorization = ""
    if ctx.tokens is not None:  # one pull token for the repository, like docker's
        async with aiohttp.ClientSession() as session:
            header = await ctx.tokens.header(session, REPO)
        authorization = header["Authorization"]
    try:
        for c in clients:
            await c.connect()
            pool.put_nowait(
                (
                    c,
                    c.build(
                        "HEAD" if head else "GET",
                        f"/v2/{REPO}/manifests/{ref}",
                        ACCEPT_MANIFESTS,
                        authorization,
                    ),
                )
            )

        async def one(_: int) -> int:
            client, raw = await pool.get()
            try:
                await client.request(raw, head)
            finally:
                pool.put_nowait((client, raw))
            return 1

        result = await drive(conns, one, p.manifest_max_requests, p.manifest_seconds)
    finally:
        for c in clients:
            c.close()
    return result.to_json("requests")


async def run_tag_puts(ctx: Context) -> dict[str, Any]:
    p = ctx.profile
    image = await _image()
    async with sessions(ctx, 4) as clients:
        await push_image(clients[0], REPO, TAG, image)
    out: dict[str, Any] = {}
    for n in p.tag_put_conns:
        async with sessions(ctx, n) as clients:

            async def one(i: int, clients: Any = clients, n: int = n) -> int:
                await pick(clients, i).put_manifest(REPO, f"c{n}-{i}", image.manifest)
                return 1

            result = await drive(n, one, p.tag_put_max, p.tag_put_seconds)
        out[f"tag_put_c{n}"] = result.to_json("requests")
        ctx.advance(f"tag puts c{n}")
    return {"tag_puts": out}

"""Manifest reads (req/s, p50/p99) and tag writes, at several connection counts.

Reads: one small image is pushed, then for each of HEAD/GET by tag and by digest and each
connection count, that many workers repeat the request for `manifest_seconds` (at most
`manifest_max_requests`). By-tag reads are the linearizable path in Cargohold; by-digest
reads may be served from a gateway cache.

Tag writes: the same manifest PUT under fresh tags, a small replicated metadata command per
request on Cargohold (and a few small files on Distribution).
"""

from __future__ import annotations

from typing import Any

from bench.blobdata import BlobSpec
from bench.driver import drive
from bench.images import Image, push_image
from bench.workloads.common import NS_MANIFESTS, Context, in_thread, nonce, pick, sessions

REPO = "bench/manifests"
TAG = "v1"
READ_OPS = ("head_tag", "get_tag", "head_digest", "get_digest")


async def _image() -> Image:
    layer = BlobSpec.unique(nonce(NS_MANIFESTS, 0), 64 * 1024)
    return await in_thread(Image.build, "manifests", [layer])


async def run(ctx: Context, ops: tuple[str, ...] = READ_OPS,
              conns: tuple[int, ...] | None = None) -> dict[str, Any]:
    p = ctx.profile
    conns = conns if conns is not None else p.manifest_conns
    image = await _image()
    async with sessions(ctx, 4) as clients:
        await push_image(clients[0], REPO, TAG, image)
    reads: dict[str, Any] = {}
    for op in ops:
        ref = TAG if op.endswith("_tag") else image.digest
        for n in conns:
            async with sessions(ctx, n) as clients:
                if op.startswith("head"):
                    async def one(i: int, clients: Any = clients, ref: str = ref) -> int:
                        await pick(clients, i).head_manifest(REPO, ref)
                        return 1
                else:
                    async def one(i: int, clients: Any = clients, ref: str = ref) -> int:
                        await pick(clients, i).get_manifest(REPO, ref)
                        return 1
                result = await drive(n, one, p.manifest_max_requests, p.manifest_seconds)
            reads[f"{op}_c{n}"] = result.to_json("requests")
            ctx.advance(f"manifest {op} c{n}")
    return {"manifest_reads": reads}


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

"""Deduplication: push images that share layers, compare bytes pushed with bytes stored.

Each of `dedup_images` images (one repository each) has:
- two base layers identical in every image (2 units and 1 unit);
- a "family" layer whose first 2 units are the same in every image and whose last
  quarter unit is its own (an edited layer: same prefix, new tail);
- a small unique layer (256 KiB).
A unit is `dedup_unit` (Cargohold's chunk size), so the shared prefix is chunk-aligned.
Whole-blob dedup (Distribution) finds the base layers; chunk dedup finds the prefix too.

Stored bytes are measured before and after (Cargohold: the sum of `Admin.Status`
chunk_bytes over nodes, every replica counted; Distribution: file sizes under its
storage dir), waiting until the figure stops moving (background replication).
`ratio` = logical bytes pushed / stored bytes per replica.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.blobdata import BlobSpec
from bench.images import Image, push_image
from bench.workloads.common import NS_DEDUP, Context, in_thread, nonce, sessions

KiB = 1024


def images(count: int, unit: int) -> list[Image]:
    base0 = BlobSpec.unique(nonce(NS_DEDUP, 0), 2 * unit)
    base1 = BlobSpec.unique(nonce(NS_DEDUP, 1), unit)
    family = nonce(NS_DEDUP, 2)
    out = []
    for k in range(count):
        edited = BlobSpec(((family, 2 * unit), (nonce(NS_DEDUP, 3, k), unit // 4)))
        small = BlobSpec.unique(nonce(NS_DEDUP, 4, k), 256 * KiB)
        out.append(Image.build(f"dedup-{k}", [base0, base1, edited, small]))
    return out


async def _settled(ctx: Context, attempts: int = 20) -> int | None:
    last = await ctx.system.stored_bytes()
    for _ in range(attempts):
        await asyncio.sleep(0.5)
        now = await ctx.system.stored_bytes()
        if now == last:
            return now
        last = now
    return last


async def run(ctx: Context) -> dict[str, Any]:
    p = ctx.profile
    imgs = await in_thread(images, p.dedup_images, p.dedup_unit)
    before = await _settled(ctx)
    if before is None:
        return {}
    logical = 0
    async with sessions(ctx, 8) as clients:
        for k, image in enumerate(imgs):
            logical += await push_image(clients[k % len(clients)], f"bench/dedup-{k}", "v1", image)
    after = await _settled(ctx)
    assert after is not None
    stored = after - before
    per_replica = stored / ctx.system.replicas
    ctx.advance("dedup")
    return {
        "dedup": {
            "images": len(imgs),
            "logical_bytes": logical,
            "stored_bytes_all_replicas": stored,
            "replicas": ctx.system.replicas,
            "stored_bytes_per_replica": int(per_replica),
            "ratio": round(logical / per_replica, 3) if per_replica > 0 else None,
        }
    }

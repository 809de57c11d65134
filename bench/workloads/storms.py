"""Storms: many clients at once.

Pull storm: one multi-layer image; `storm_clients` independent clients (each its own
connections, 3 blobs in parallel like docker) are released together and each pulls the
whole image (HEAD by tag and GET by digest through aiohttp, every blob through the cheap
`RawBlobReader`, so that 50 clients do not cost the machine more than the bytes). The
image's push is followed, untimed, by `settle_writes` (its replica copies finish first),
as the blob workload's pulls are.
Reported: time per client p50/p99/max and aggregate MB/s.

Push storm: `push_storm_images` small images (config and two unique layers each) pushed
`push_storm_concurrency` at a time into 10 repositories; images/s and time per image.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from bench.blobdata import BlobSpec
from bench.driver import drive
from bench.images import Image, pull_image, push_image
from bench.oci import READ_BUFFER, OciClient
from bench.rawhttp import RawBlobReader
from bench.stats import summarise
from bench.workloads.common import (
    NS_PUSH_STORM,
    NS_STORM,
    Context,
    in_thread,
    nonce,
    pick,
    sessions,
    settle_writes,
)

STORM_REPO = "bench/storm"
LAYER_PARALLELISM = 3  # docker's default max-concurrent-downloads


async def run_pull_storm(ctx: Context) -> dict[str, Any]:
    p = ctx.profile
    layers = [
        BlobSpec.unique(nonce(NS_STORM, i), p.storm_layer_size) for i in range(p.storm_layers)
    ]
    image = await in_thread(Image.build, "storm", layers)
    async with sessions(ctx, 4) as clients:
        await push_image(clients[0], STORM_REPO, "v1", image)
    await settle_writes(ctx)

    start_gate = asyncio.Event()
    times: list[float] = []
    errors: list[str] = []
    total_bytes = 0

    async def client(index: int) -> None:
        nonlocal total_bytes
        connector = aiohttp.TCPConnector(limit=2)
        async with aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            read_bufsize=READ_BUFFER,
            timeout=aiohttp.ClientTimeout(total=None),
        ) as s:
            url = ctx.urls[index % len(ctx.urls)]
            oci = OciClient(url, s, ctx.tokens)
            # With token auth (the `cargohold-r3-auth` system): the repository's pull token,
            # fetched before the start like a client that logged in, sent on every blob GET.
            authorization = ""
            if ctx.tokens is not None:
                authorization = (await ctx.tokens.header(s, STORM_REPO))["Authorization"]
            readers: asyncio.Queue[RawBlobReader] = asyncio.Queue()
            for _ in range(LAYER_PARALLELISM):
                readers.put_nowait(RawBlobReader(url))

            async def fetch(repo: str, digest: str) -> int:
                reader = await readers.get()
                try:
                    return await reader.get(f"/v2/{repo}/blobs/{digest}", authorization)
                finally:
                    readers.put_nowait(reader)

            await start_gate.wait()
            t0 = time.perf_counter()
            try:
                pulled = await pull_image(oci, STORM_REPO, "v1", LAYER_PARALLELISM, fetch)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                return
            finally:
                while not readers.empty():
                    readers.get_nowait().close()
            times.append(time.perf_counter() - t0)
            total_bytes += pulled

    tasks = [asyncio.ensure_future(client(i)) for i in range(p.storm_clients)]
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    start_gate.set()
    _, pending = await asyncio.wait(tasks, timeout=p.storm_seconds)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.perf_counter() - t0
    client_cpu = time.process_time() - cpu0
    ctx.advance("pull storm")
    result: dict[str, Any] = {
        "clients": p.storm_clients,
        "completed": len(times),
        "errors": len(errors),
        "timed_out": bool(pending),
        "image_bytes": image.layer_bytes,
        "elapsed_s": round(elapsed, 3),
        "MB_per_s": round(total_bytes / elapsed / 1e6, 2),
        "client_cpu_pct": round(100 * client_cpu / elapsed, 1),
    }
    result.update({k: round(v, 3) for k, v in summarise(times).items()})
    if errors:
        result["error_samples"] = errors[:3]
    return {"pull_storm": result}


async def run_push_storm(ctx: Context) -> dict[str, Any]:
    p = ctx.profile

    def build_all() -> list[Image]:
        return [
            Image.build(
                f"push-storm-{i}",
                [
                    BlobSpec.unique(nonce(NS_PUSH_STORM, i, 0), p.push_storm_layer_size),
                    BlobSpec.unique(nonce(NS_PUSH_STORM, i, 1), p.push_storm_layer_size),
                ],
            )
            for i in range(p.push_storm_images)
        ]

    images = await in_thread(build_all)
    async with sessions(ctx, p.push_storm_concurrency * 3) as clients:

        async def one(i: int) -> int:
            return await push_image(
                pick(clients, i), f"bench/pushstorm-{i % 10}", f"t{i}", images[i]
            )

        result = await drive(p.push_storm_concurrency, one, len(images), p.push_storm_seconds)
    ctx.advance("push storm")
    out = result.to_json("bytes")
    out["images_per_s"] = out.pop("ops_per_s")
    return {"push_storm": out}

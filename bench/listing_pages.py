"""`tags/list` and `_catalog` pages end to end through a real cluster (issue 20).

    .venv/bin/python -m bench.listing_pages                    # 100 k tags, 1,000 repos, 3 nodes
    .venv/bin/python -m bench.listing_pages --tags 20000 --nodes 1

Starts a LocalCluster (real node and gateway processes), fills one repository with
`--tags` tags and `--repos` other repositories (one manifest each) by `manifest_put`
commands sent straight to the nodes over gRPC, signed as a gateway's (the fastest way to
get there; the listing does not read manifest bytes), then times over HTTP, through the
gateway, with one keep-alive connection:

- `tags_walk`: every page of 1,000 of the big repository, following `Link`;
- `tags_first`, `catalog`: the first page of 1,000, repeated;
- `tags_after_push`: a page of 1,000 from the middle right after a new tag was pushed
  (a new tag used to throw the sorted order away: the next page sorted the whole repository).

Each request is a linearizable read: the gateway's query waits for a Raft barrier, so a
page's time includes one commit round. Printed: per case the count, median, p90 and max in
milliseconds. A micro-benchmark, not a test; results in docs/metadata.md, "Listing".
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from cargohold import metadata_api as api
from cargohold.grpc_channels import open_channel
from cargohold_cli.devcluster import LocalCluster
from protos import registry_pb2, registry_pb2_grpc

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _hex(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _put(repo: str, key: object, tag: str) -> registry_pb2.MetadataRequest:
    request = api.ManifestPut(
        repo,
        "sha256:" + _hex("manifest", key),
        MANIFEST,
        {"size": 100, "chunks": [[_hex("chunk", key), 100]]},
        tag=tag,
        now=time.time(),
    )
    return registry_pb2.MetadataRequest(op=request.op, args=json.dumps(request.to_args()).encode())


async def _seed(cluster: LocalCluster, tags: int, repos: int, inflight: int = 64) -> float:
    cfg = cluster.client_config("gateway")
    channels = [open_channel(a, cfg) for a in cluster.node_grpc_addresses]
    stubs = [registry_pb2_grpc.MetadataStub(c) for c in channels]
    work = [_put("big/repo", i % 997, f"t{i:07d}") for i in range(tags)]
    work += [_put(f"org/app{j:05d}", ("repo", j), "latest") for j in range(repos)]
    start = time.perf_counter()

    async def worker(k: int) -> None:
        for i in range(k, len(work), inflight):
            await stubs[i % len(stubs)].Command(work[i], timeout=30)

    try:
        await asyncio.gather(*(worker(k) for k in range(inflight)))
    finally:
        for channel in channels:
            await channel.close()
    return len(work) / (time.perf_counter() - start)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[float, dict[str, Any], str]:
    start = time.perf_counter()
    async with session.get(url) as resp:
        body = await resp.json()
        link = resp.headers.get("Link", "")
    if resp.status != 200:
        raise RuntimeError(f"{url}: {resp.status} {body}")
    return (time.perf_counter() - start) * 1000, body, link


def _summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "count": len(ms),
        "median_ms": round(statistics.median(ordered), 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
        "max_ms": round(ordered[-1], 2),
    }


async def _measure(cluster: LocalCluster, repeats: int) -> dict[str, dict[str, float]]:
    base = cluster.gateway_urls[0]
    out: dict[str, list[float]] = {"tags_walk": [], "tags_first": [], "catalog": []}
    out["tags_after_push"] = []
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn) as session:
        url = f"{base}/v2/big/repo/tags/list?n=1000"
        while url:
            ms, _, link = await _get(session, url)
            out["tags_walk"].append(ms)
            url = base + link[1 : link.index(">")] if link else ""
        for _ in range(repeats):
            out["tags_first"].append(
                (await _get(session, f"{base}/v2/big/repo/tags/list?n=1000"))[0]
            )
            out["catalog"].append((await _get(session, f"{base}/v2/_catalog?n=1000"))[0])
    cfg = cluster.client_config("gateway")
    channel = open_channel(cluster.node_grpc_addresses[0], cfg)
    stub = registry_pb2_grpc.MetadataStub(channel)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for i in range(repeats):
                await stub.Command(_put("big/repo", i, f"m{i:07d}"), timeout=30)
                url = f"{base}/v2/big/repo/tags/list?n=1000&last=m"
                out["tags_after_push"].append((await _get(session, url))[0])
    finally:
        await channel.close()
    return {name: _summary(ms) for name, ms in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=100_000)
    parser.add_argument("--repos", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=50)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chlist-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster", nodes=opts.nodes, gateways=1)
        cluster.start(timeout=90)
        try:
            rate = asyncio.run(_seed(cluster, opts.tags, opts.repos))
            result: dict[str, Any] = {
                "nodes": opts.nodes,
                "tags": opts.tags,
                "repos": opts.repos + 1,
                "seed_commands_per_s": round(rate),
            }
            result.update(asyncio.run(_measure(cluster, opts.repeats)))
        finally:
            cluster.stop()
    for key, value in result.items():
        print(f"{key:22} {value}")


if __name__ == "__main__":
    main()

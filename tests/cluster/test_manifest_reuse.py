"""A manifest PUT of bytes the cluster stores writes no chunks (gateway/manifests.py,
`manifest_put`'s `reuse_stored`), on a real 3-node cluster (R = 3, W = 2) with two
gateways: the same manifest PUT again under new tags (the `docker tag` + push case) adds no
chunk-store write transaction on any node; and once the manifest was deleted (through the
other gateway, so this one still caches the body) and garbage-collected, the same PUT is
refused by the state, falls back to writing the chunks, and reads back hash-correct from
either gateway.

Chunk writes are counted by `cargohold_node_chunk_commit_seconds_count` (one per LMDB
write transaction, a put of a chunk already held included) on every node's `/metrics`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable

import aiohttp
import pytest

from cargohold_cli.admin import admin_config, run_gc
from cargohold_cli.devcluster import LocalCluster
from cluster.chunkcheck import chunk_ids, has
from cluster.images import ImageSpec, sha256
from cluster.polling import eventually
from cluster.registry_client import RegistryClient
from cluster.shapes import CHUNK, QUIET_ROLES

pytestmark = pytest.mark.cluster

_COMMITS = re.compile(r"^cargohold_node_chunk_commit_seconds_count\{[^}]*\} ([0-9.e+]+)$", re.M)


async def commits(http: aiohttp.ClientSession, cluster: LocalCluster) -> list[float]:
    """Chunk-store write transactions so far, per node."""
    out = []
    for i in range(cluster.node_count):
        async with http.get(f"http://{cluster.node_metrics(i)}/metrics") as resp:
            assert resp.status == 200
            found = _COMMITS.findall(await resp.text())
        out.append(sum(float(v) for v in found))
    return out


async def settled(http: aiohttp.ClientSession, cluster: LocalCluster) -> list[float]:
    """`commits` once two scrapes agree and every node holds the same chunks (a push is
    acknowledged at W = 2; the third copies follow in the background)."""

    async def check() -> list[float] | None:
        first = await commits(http, cluster)
        counts = {cluster.node_status(i, timeout=10).chunk_count for i in range(3)}
        return first if len(counts) == 1 and await commits(http, cluster) == first else None

    return await eventually(check, "chunk writes settled on every node")


async def put(http: aiohttp.ClientSession, base: str, ref: str, body: bytes) -> None:
    async with http.put(
        f"{base}/v2/reuse/app/manifests/{ref}",
        data=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    ) as resp:
        assert resp.status == 201, await resp.text()


async def pulled(http: aiohttp.ClientSession, base: str, ref: str) -> bytes:
    async with http.get(
        f"{base}/v2/reuse/app/manifests/{ref}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def test_a_stored_manifest_put_again_writes_no_chunks_and_falls_back_once_collected(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster = make_cluster(
        nodes=3,
        gateways=2,
        chunk_size=CHUNK,
        extra={
            "node": dict(QUIET_ROLES),
            # Nothing else writes chunks while the test counts them.
            "audit": {"seal_interval_seconds": 0.0},
            "lifecycle": {
                "gc_interval_seconds": 0.0,
                "gc_grace_seconds": 0.0,
                "trash_retention_seconds": 0.0,
            },
        },
    )
    one, other = cluster.gateway_urls
    client = RegistryClient(http)
    image = ImageSpec("reuse/app", "v1", 7, (1000, CHUNK + 10))
    body, digest = image.manifest(), image.digest
    await client.push_image(one, image, CHUNK)
    before = await settled(http, cluster)

    # Again under new tags, with `?tag=`, and by digest: no chunk written anywhere.
    await put(http, one, "v2", body)
    await put(http, one, "v3?tag=v4", body)
    await put(http, one, digest, body)
    assert await commits(http, cluster) == before
    for ref in ("v2", "v4"):
        assert await pulled(http, other, ref) == body

    # Control: a manifest the gateway has not stored is written (the counter counts puts).
    other_body = body.replace(b'"schemaVersion":2', b'"schemaVersion":2,"annotations":{}')
    await put(http, one, "control", other_body)
    assert await commits(http, cluster) != before

    # Deleted through the other gateway (this one keeps the body cached) and collected.
    async with http.delete(f"{other}/v2/reuse/app/manifests/{digest}") as resp:
        assert resp.status == 202, await resp.text()
    cfg = admin_config(str(cluster.admin_config_path()))
    results = await asyncio.to_thread(run_gc, cluster.node_grpc_addresses, False, True, cfg)
    assert all("error" not in r for r in results.values()), results
    assert sum(r["pruned_blobs"] for r in results.values()) == 1  # the manifest's bytes
    ids = chunk_ids(body, CHUNK)
    for i in range(3):
        assert not any(await asyncio.to_thread(has, cluster, i, ids)), f"node {i}"

    # The same gateway PUTs it again from its cache: refused, written, then committed.
    await put(http, one, "v5", body)
    for i in range(3):
        await eventually(
            lambda i=i: asyncio.to_thread(lambda: all(has(cluster, i, ids))),
            f"node {i} holds the manifest's chunks again",
        )
    for base in (one, other):
        got = await pulled(http, base, "v5")
        assert "sha256:" + hashlib.sha256(got).hexdigest() == digest == sha256(body)

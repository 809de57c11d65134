"""Online garbage collection on a real cluster (node/gc.py, docs/operations.md "Garbage
collection"): a deleted image's bytes leave every node and the next push reuses LMDB's
freed pages; and the race: writers pushing images that share base layers while GC runs
back to back and a node is SIGKILLed mid-pass, after which every acknowledged image reads
back byte for byte and the deleted ones are reclaimed.

`CARGOHOLD_GC_RACE_IMAGES` / `CARGOHOLD_GC_RACE_WRITERS` scale the race (default 60 / 4;
the issue's figure is 300 / 8).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest

from cargohold.config import Config
from cargohold_cli.admin import admin_config, run_gc, trigger
from cargohold_cli.devcluster import LocalCluster
from cluster.chunkcheck import chunk_ids, has
from cluster.images import CONFIG_TYPE, LAYER_TYPE, MANIFEST_TYPE, sha256
from cluster.registry_client import RegistryClient, Retryable, Violation
from cluster.shapes import CHUNK, QUIET_ROLES

pytestmark = pytest.mark.cluster

MiB = 1024 * 1024


@dataclass(frozen=True)
class Image:
    """Config + a base layer shared by many images + a layer of its own, from a seed."""

    repo: str
    tag: str
    seed: int
    base: int  # which shared base layer

    def base_layer(self) -> bytes:
        return random.Random(10_000 + self.base).randbytes(2 * CHUNK + 1234)

    def own_layer(self) -> bytes:
        rng = random.Random(self.seed)
        return rng.randbytes(rng.randint(CHUNK // 3, 2 * CHUNK))

    def blobs(self) -> list[tuple[str, str, bytes]]:
        layers = [self.base_layer(), self.own_layer()]
        config = json.dumps({"seed": self.seed, "base": self.base}).encode()
        return [(CONFIG_TYPE, sha256(config), config)] + [
            (LAYER_TYPE, sha256(b), b) for b in layers
        ]

    def manifest(self) -> bytes:
        blobs = self.blobs()
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": {
                    "mediaType": CONFIG_TYPE,
                    "digest": blobs[0][1],
                    "size": len(blobs[0][2]),
                },
                "layers": [{"mediaType": t, "digest": d, "size": len(b)} for t, d, b in blobs[1:]],
            },
            separators=(",", ":"),
        ).encode()

    def own_chunks(self) -> list[bytes]:
        """Chunks no other image holds: its own layer, config and manifest."""
        config = self.blobs()[0][2]
        return (
            chunk_ids(self.own_layer(), CHUNK)
            + chunk_ids(config, CHUNK)
            + chunk_ids(self.manifest(), CHUNK)
        )


def admin(cluster: LocalCluster) -> Config:
    return admin_config(str(cluster.admin_config_path()))


def gc_cluster(
    make_cluster: Callable[..., LocalCluster], grace: float, repair_interval: float | None = None
) -> LocalCluster:
    node: dict[str, float | int] = dict(QUIET_ROLES)
    if repair_interval is not None:
        node["repair_interval"] = repair_interval
    return make_cluster(
        nodes=3,
        gateways=1,
        chunk_size=CHUNK,
        extra={
            "node": node,
            "lifecycle": {
                "gc_interval_seconds": 0.0,
                "gc_grace_seconds": grace,
                # Deletes are final here: the trash has its own test (test_trash.py).
                "trash_retention_seconds": 0.0,
            },
        },
    )


async def push(client: RegistryClient, base: str, image: Image) -> None:
    await client.push_image(base, image, CHUNK)


async def delete(http: aiohttp.ClientSession, base: str, image: Image) -> None:
    digest = sha256(image.manifest())
    async with http.delete(f"{base}/v2/{image.repo}/manifests/{digest}") as resp:
        assert resp.status == 202, await resp.text()
    for _, blob, _ in image.blobs():
        async with http.delete(f"{base}/v2/{image.repo}/blobs/{blob}") as resp:
            assert resp.status == 202, await resp.text()


async def read_back(client: RegistryClient, base: str, image: Image) -> None:
    status, _, body = await client.get_manifest(base, image.repo, image.tag)
    if status != 200 or body != image.manifest():
        raise Violation(f"{image.repo}:{image.tag}: manifest status {status}")
    for _, digest, data in image.blobs():
        status, got = await client.get_blob(base, image.repo, digest)
        if status != 200 or got != data:
            raise Violation(f"{image.repo}@{digest}: status {status}, {len(got)} bytes")


async def settled_figures(cluster: LocalCluster) -> list[dict[str, int]]:
    """`node_figures` once every node holds the same chunk bytes (R = 3 on 3 nodes: a push
    is acknowledged at a write quorum, its last copy follows in the background); as they
    are after a hang guard otherwise."""
    for _ in range(300):
        figures = node_figures(cluster)
        if len({f["chunk_bytes"] for f in figures}) == 1:
            break
        await asyncio.sleep(0.2)
    return figures


def node_figures(cluster: LocalCluster) -> list[dict[str, int]]:
    out = []
    for i in range(cluster.node_count):
        reply = cluster.node_status(i, timeout=10)
        lmdb = json.loads(reply.extra)["lmdb"]
        out.append({"chunk_bytes": reply.chunk_bytes, **lmdb})
    return out


async def test_deleted_image_bytes_leave_every_node_and_freed_pages_are_reused(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster = gc_cluster(make_cluster, grace=0.0)
    base = cluster.gateway_url
    client = RegistryClient(http)
    rng = random.Random(12)
    keep = Image("gc/keep", "v1", 1, base=0)
    await push(client, base, keep)
    before = await settled_figures(cluster)

    big_layer = rng.randbytes(20 * MiB)
    config = b'{"big": 1}'
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": sha256(config), "size": len(config)},
            "layers": [
                {"mediaType": LAYER_TYPE, "digest": sha256(big_layer), "size": len(big_layer)}
            ],
        }
    ).encode()
    for data in (config, big_layer):
        await client.push_blob(base, "gc/big", sha256(data), data, monolithic=False)
    await client.put_manifest(base, "gc/big", "v1", manifest)
    pushed = await settled_figures(cluster)
    image_bytes = len(big_layer) + len(config) + len(manifest)
    for b, p in zip(before, pushed, strict=True):  # R = 3 on 3 nodes: a copy on each
        assert p["chunk_bytes"] - b["chunk_bytes"] == image_bytes

    async with http.delete(f"{base}/v2/gc/big/manifests/{sha256(manifest)}") as resp:
        assert resp.status == 202
    for data in (config, big_layer):
        async with http.delete(f"{base}/v2/gc/big/blobs/{sha256(data)}") as resp:
            assert resp.status == 202
    results = await asyncio.to_thread(
        run_gc, cluster.node_grpc_addresses, False, True, admin(cluster)
    )
    assert all("error" not in r for r in results.values()), results
    collected = node_figures(cluster)
    for b, c in zip(before, collected, strict=True):
        assert c["chunk_bytes"] == b["chunk_bytes"]
    assert sum(r["pruned_blobs"] for r in results.values()) == 3  # config, layer, manifest
    await read_back(client, base, keep)

    # The next push of the same size lands in the freed pages: the file grows by a small
    # fraction of it (B-tree copy-on-write pages and pages a recent txn freed, which LMDB
    # reuses only once no reader can see them), not by the 20 MiB a file without reuse
    # would take.
    again = rng.randbytes(20 * MiB)
    await client.push_blob(base, "gc/again", sha256(again), again, monolithic=False)
    repushed = await settled_figures(cluster)
    print(f"lmdb after push: {pushed}\nafter gc + same-size push: {repushed}")
    for p, r in zip(pushed, repushed, strict=True):
        assert r["file_bytes"] - p["file_bytes"] < len(again) // 4, (p, r)


async def test_gc_reclaims_while_repair_probes_every_chunk_on_every_owner(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    """Repair not quieted: every half second each node asks the other owners (`Chunks.Has`)
    about every chunk it holds. Those probes are no use of a chunk, so GC still reclaims a
    deleted image once its grace has passed."""
    grace = 2.0
    cluster = gc_cluster(make_cluster, grace=grace, repair_interval=0.5)
    base = cluster.gateway_url
    client = RegistryClient(http)
    keep, gone = Image("gc/keep", "v1", 1, base=0), Image("gc/gone", "v1", 2, base=1)
    await push(client, base, keep)
    await push(client, base, gone)
    await delete(http, base, gone)
    garbage = gone.own_chunks() + chunk_ids(gone.base_layer(), CHUNK)
    await asyncio.to_thread(run_gc, cluster.node_grpc_addresses, False, True, admin(cluster))
    left: list[int] = []
    # Pass 1 saw the blobs unlinked; a pass a grace later prunes and sweeps them. A node's
    # repair may copy a chunk back to a node that swept before it (docs/operations.md):
    # that copy is young for a grace, so allow a few more passes, each a grace apart.
    for _ in range(6):
        await asyncio.sleep(grace + 0.5)
        results = await asyncio.to_thread(
            run_gc, cluster.node_grpc_addresses, False, True, admin(cluster)
        )
        assert all("error" not in r for r in results.values()), results
        left = [sum(await asyncio.to_thread(has, cluster, i, garbage)) for i in range(3)]
        if not any(left):
            break
    assert left == [0, 0, 0], f"deleted chunks still held per node: {left} of {len(garbage)}"
    repair = [json.loads(cluster.node_status(i, timeout=10).extra)["repair"] for i in range(3)]
    assert all(r["passes"] >= 2 for r in repair), repair  # repair really ran meanwhile
    await read_back(client, base, keep)


def _gc_loop(cluster: LocalCluster, stop: threading.Event, passes: list[int]) -> None:
    """`admin gc --wait`, back to back, until told to stop (errors of a dead node count)."""
    while not stop.is_set():
        results = run_gc(cluster.node_grpc_addresses, wait=True, cfg=admin(cluster))
        passes.append(sum(1 for r in results.values() if "error" not in r))


def _kill_mid_pass(cluster: LocalCluster, i: int) -> bool:
    """Trigger a GC pass on node i and SIGKILL it while the pass runs; True when it was
    seen running (else it is killed anyway, right after the trigger)."""
    trigger([cluster.node_grpc(i)], "gc", wait=False, cfg=admin(cluster))
    seen = False
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and not seen:
        try:
            extra = json.loads(cluster.node_status(i).extra)
            seen = bool(extra.get("gc", {}).get("running"))
        except Exception:  # a busy node may not answer in time
            pass
    cluster.kill_node(i, signal.SIGKILL)
    return seen


async def test_pushes_racing_back_to_back_gc_and_a_killed_node_lose_nothing(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    total = int(os.environ.get("CARGOHOLD_GC_RACE_IMAGES", "60"))
    writers = int(os.environ.get("CARGOHOLD_GC_RACE_WRITERS", "4"))
    # The shortest safe grace here: longer than any push request, Raft commit included.
    grace = float(os.environ.get("CARGOHOLD_GC_RACE_GRACE", "10"))
    cluster = gc_cluster(make_cluster, grace=grace)
    base = cluster.gateway_url
    client = RegistryClient(http, timeout=60)
    images = [Image(f"race/i{n}", "v1", 1000 + n, base=n % 3) for n in range(total)]
    acked: list[Image] = []
    deleted: list[Image] = []
    retried = 0

    stop = threading.Event()
    passes: list[int] = []
    loop_thread = threading.Thread(target=_gc_loop, args=(cluster, stop, passes), daemon=True)
    loop_thread.start()
    queue: asyncio.Queue[Image] = asyncio.Queue()
    for image in images:
        queue.put_nowait(image)
    killed_at = total // 3
    killed_mid_pass: list[bool] = []

    async def writer() -> None:
        nonlocal retried
        while not queue.empty():
            image = queue.get_nowait()
            for _attempt in range(20):
                try:
                    await push(client, base, image)
                    break
                except Retryable:
                    retried += 1
                    await asyncio.sleep(0.5)
            else:
                raise AssertionError(f"{image.repo} never acknowledged")
            acked.append(image)
            if len(acked) % 3 == 0:
                await delete(http, base, image)
                deleted.append(image)
            if len(acked) >= killed_at and not killed_mid_pass:
                killed_mid_pass.append(False)  # claimed: one kill, by one writer
                killed_mid_pass[0] = await asyncio.to_thread(_kill_mid_pass, cluster, 2)
                await asyncio.sleep(1.0)
                cluster.start_node(2)

    try:
        await asyncio.gather(*(writer() for _ in range(writers)))
    finally:
        stop.set()
        await asyncio.to_thread(loop_thread.join, 300)
    await asyncio.to_thread(cluster.wait_ready, 60)

    # Every acknowledged image not deleted reads back byte for byte.
    live = [i for i in acked if i not in deleted]
    for image in live:
        await read_back(client, base, image)

    # GC still reclaims the deleted ones: a recipe is pruned once the leader has seen it
    # unlinked for a grace period (a leader elected after the SIGKILL starts counting at
    # its first pass), and a restarted node counts every chunk young for one grace.
    await asyncio.to_thread(
        trigger, cluster.node_grpc_addresses, "repair", True, 3600.0, admin(cluster)
    )
    await asyncio.to_thread(run_gc, cluster.node_grpc_addresses, False, True, admin(cluster))
    await asyncio.sleep(grace + 1)
    pruned = 0
    for _ in range(2):  # the leader prunes then sweeps; the others sweep after it
        results = await asyncio.to_thread(
            run_gc, cluster.node_grpc_addresses, False, True, admin(cluster)
        )
        assert all("error" not in r for r in results.values()), results
        pruned += sum(r["pruned_blobs"] for r in results.values())
    garbage = [cid for image in deleted for cid in image.own_chunks()]
    for i in range(cluster.node_count):
        left = sum(await asyncio.to_thread(has, cluster, i, garbage))
        assert left == 0, f"node {i} still holds {left} of {len(garbage)} deleted chunks"
    for image in live:
        await read_back(client, base, image)
    print(
        f"gc race: images={total} writers={writers} acked={len(acked)} deleted={len(deleted)} "
        f"gc_node_passes={sum(passes)} retried_requests={retried} "
        f"killed_mid_pass={killed_mid_pass} garbage_chunks={len(garbage)} "
        f"pruned_after_pushes={pruned}"
    )
    assert sum(passes) >= 3  # GC really ran during the pushes

"""Packed calls on a real cluster (3 node processes, one gateway, `gateway.pack_calls` on by
default): many small images pushed at once, so the gateway's chunk Puts and Metadata
commands to a node queue behind its calls in flight and ride `Chunks.PutMany` /
`Metadata.Commands`; every image reads back byte for byte, and the nodes' metrics show
the packs they served."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cargohold_cli.devcluster import LocalCluster
from cluster.images import ImageSpec
from cluster.registry_client import RegistryClient, check_image
from cluster.shapes import CHUNK

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

IMAGES = 32
IN_FLIGHT = 16


async def packed_requests(
    http: aiohttp.ClientSession, cluster: LocalCluster, nodes: list[int] | None = None
) -> dict[str, float]:
    """Requests carried by packed calls, by method, summed over `nodes` (default: all)."""
    total: dict[str, float] = {}
    for i in range(cluster.node_count) if nodes is None else nodes:
        async with http.get(f"http://{cluster.node_metrics(i)}/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "cargohold_node_packed_requests_total":
                    method = sample.labels["method"]
                    total[method] = total.get(method, 0.0) + sample.value
    return total


def small_images(repo: str, count: int, seed: int) -> list[ImageSpec]:
    """Images whose config and layers are all under `gateway.pack_chunk_max_bytes` (64 KiB):
    every chunk packable."""
    rng = random.Random(seed)
    return [
        ImageSpec(
            f"{repo}{i % 4}",
            f"v{i}",
            rng.getrandbits(48),
            (rng.randint(100, 4000), rng.randint(4000, 60_000)),
        )
        for i in range(count)
    ]


async def test_concurrent_small_pushes_ride_packs_and_pull_back_intact(
    quiet_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster = quiet_cluster(nodes=3, gateways=1)
    base = cluster.gateway_url
    client = RegistryClient(http)
    images = small_images("packs/app", IMAGES, seed=13)
    before = await packed_requests(http, cluster)
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def push(image: ImageSpec) -> str:
        async with slots:
            return await client.push_image(base, image, CHUNK)

    digests = await asyncio.gather(*(push(image) for image in images))
    assert digests == [image.digest for image in images]
    for image in images:
        await check_image(client, base, image)
    after = await packed_requests(http, cluster)
    packed = {m: after.get(m, 0.0) - before.get(m, 0.0) for m in after}
    # Sixteen pushes at once: puts and commands queued behind calls in flight and were
    # carried in packs (each push makes 3 chunk Puts per blob and ~7 commands, one node
    # has every command).
    assert packed["Chunks/PutMany"] > 0, packed
    assert packed["Metadata/Commands"] > 0, packed


@pytest.mark.chaos
async def test_a_leader_killed_mid_burst_loses_no_acknowledged_image(
    quiet_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    """SIGKILL of the Raft leader while sixteen pushes ride packs: calls of a pack in flight
    fail with it, the gateway retries or the client gets an error, and every image whose
    push was acknowledged reads back byte for byte, before and after the node returns."""
    cluster = quiet_cluster(nodes=3, gateways=1)
    base = cluster.gateway_url
    client = RegistryClient(http)
    images = small_images("packs/kill", IMAGES * 2, seed=29)
    leader = cluster.leader_index()
    assert leader is not None
    survivors = [i for i in range(cluster.node_count) if i != leader]
    before = await packed_requests(http, cluster, survivors)
    slots = asyncio.Semaphore(IN_FLIGHT)
    done = asyncio.Event()
    finished = 0

    async def push(image: ImageSpec) -> ImageSpec | None:
        nonlocal finished
        async with slots:
            try:
                digest = await client.push_image(base, image, CHUNK)
            except Exception:  # the client saw an error: not acknowledged, may be lost
                return None
            finally:
                finished += 1
                if finished >= IN_FLIGHT // 2:
                    done.set()
        assert digest == image.digest
        return image

    pushes = [asyncio.create_task(push(image)) for image in images]
    await done.wait()
    await asyncio.to_thread(cluster.kill_node, leader)
    assert finished < len(images) - IN_FLIGHT  # killed with a full window of pushes going
    acknowledged = [image for image in await asyncio.gather(*pushes) if image is not None]
    after = await packed_requests(http, cluster, survivors)
    assert after.get("Chunks/PutMany", 0.0) > before.get("Chunks/PutMany", 0.0)
    # W=2 of R=3 with two nodes left: the burst goes on after the kill.
    assert len(acknowledged) >= len(images) // 2, len(acknowledged)
    for image in acknowledged:
        await check_image(client, base, image)
    await asyncio.to_thread(cluster.start_node, leader)
    await asyncio.to_thread(cluster.wait_answering, leader)
    for image in acknowledged:
        await check_image(client, base, image)

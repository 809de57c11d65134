"""Bulk puts on a real cluster (3 node processes R=3 W=2, one gateway; `node.bulk_listen`
"auto" and `gateway.bulk_puts` on by default): large chunks reach every node through its
bulk port, a node SIGKILLed in the middle of pushes loses nothing acknowledged, and once
restarted (on a new bulk port) it is found again and takes bulk puts."""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
from collections.abc import Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cargohold_cli.devcluster import LocalCluster
from cluster.polling import eventually
from cluster.registry_client import RegistryClient
from cluster.shapes import CHUNK

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

WORKERS = 4
VICTIM = 1


async def metric(http: aiohttp.ClientSession, address: str, name: str, **labels: str) -> float:
    async with http.get(f"http://{address}/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def test_bulk_puts_survive_a_killed_node_and_find_it_again_after_its_restart(
    quiet_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster = quiet_cluster(nodes=3, gateway={"bulk_retry_seconds": 0.5})
    base = cluster.gateway_url
    client = RegistryClient(http)
    rng = random.Random(29)
    acknowledged: dict[str, bytes] = {}
    failed = 0
    phase = {"stop": False}

    async def pusher(worker: int) -> None:
        nonlocal failed
        n = 0
        while not phase["stop"]:
            n += 1
            # 2-5 full chunks and a tail: every full chunk goes to the bulk ports.
            data = rng.randbytes(rng.randint(2, 5) * CHUNK + rng.randint(1, CHUNK))
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            try:
                await client.push_blob(base, "bulk/app", digest, data, monolithic=False)
            except Exception:
                failed += 1  # refused while the node died: not acknowledged, not checked
                continue
            acknowledged[digest] = data

    async def pushed_at_least(count: int) -> bool:
        return len(acknowledged) >= count

    workers = [asyncio.create_task(pusher(w)) for w in range(WORKERS)]
    try:
        await eventually(lambda: pushed_at_least(12), "pushes before the kill")
        for i in range(cluster.node_count):
            assert await metric(http, cluster.node_metrics(i), "cargohold_node_bulk_puts_total")
        cluster.kill_node(VICTIM, signal.SIGKILL)
        before_kill = len(acknowledged)
        await eventually(lambda: pushed_at_least(before_kill + 12), "pushes with a node dead")
        cluster.start_node(VICTIM)
        await asyncio.to_thread(cluster.wait_ready, 60.0)
        victim = cluster.node_metrics(VICTIM)

        async def victim_takes_bulk_puts() -> float:
            return await metric(http, victim, "cargohold_node_bulk_puts_total")

        # The restarted node listens on a new port: the gateway's connections to the old
        # one failed, it asked again and sends there.
        await eventually(victim_takes_bulk_puts, "bulk puts to the restarted node")
    finally:
        phase["stop"] = True
        await asyncio.gather(*workers)
    sent = await metric(
        http, cluster.gateway_metrics(0), "cargohold_gateway_bulk_puts_total", path="sent"
    )
    assert sent > 0
    # Every acknowledged blob reads back byte for byte.
    for digest, data in acknowledged.items():
        status, body = await client.get_blob(base, "bulk/app", digest)
        assert status == 200, digest
        assert hashlib.sha256(body).hexdigest() == digest.split(":", 1)[1]
        assert body == data
    assert len(acknowledged) >= 24, (len(acknowledged), failed)

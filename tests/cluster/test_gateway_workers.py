"""A gateway with `gateway.workers = 2` (gateway/workers.py) over real processes.

One node, one gateway whose supervisor runs two workers on one listen address
(SO_REUSEPORT). Pushes and pulls go over fresh connections, so the kernel spreads them
over both workers (each worker's own `/metrics` port shows it served some); a SIGKILLed
worker is restarted by the supervisor while its sibling keeps serving; SIGTERM to the
supervisor stops every worker.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster, child_pids
from cluster.chunkcheck import pull_blob, push_blob
from cluster.shapes import CHUNK, QUIET_ROLES

pytestmark = [pytest.mark.cluster]

REPO = "workers/blobs"


def worker_pids(cluster: LocalCluster) -> list[int]:
    proc = cluster.gateway_procs[0]
    assert proc is not None
    return sorted(child_pids(proc.pid))


async def served(http: aiohttp.ClientSession, address: str) -> float:
    """Requests a worker answered on /v2/ routes (its own metrics port)."""
    async with http.get(f"http://{address}/metrics") as resp:
        text = await resp.text()
    found = re.findall(r"^cargohold_gateway_requests_total\{.*\} ([0-9.e+]+)$", text, re.M)
    return sum(float(v) for v in found)


async def round_trips(base: str, count: int, size: int) -> None:
    """`count` blobs pushed and pulled back, each request on a new connection."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as fresh:
        for n in range(count):
            data = os.urandom(size) + n.to_bytes(4, "big")
            digest = await push_blob(fresh, base, REPO, data)
            assert await pull_blob(fresh, base, REPO, digest) == data


async def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_two_workers_serve_and_one_killed_is_restarted(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster = make_cluster(
        nodes=1,
        replicas=1,
        write_quorum=1,
        chunk_size=CHUNK,
        extra={"node": dict(QUIET_ROLES)},
        gateway_workers=2,
    )
    base = cluster.gateway_url
    pids = worker_pids(cluster)
    assert len(pids) == 2
    await round_trips(base, 24, CHUNK + 1000)
    counts = [await served(http, a) for a in cluster.gateway_worker_metrics(0)]
    assert all(c > 0 for c in counts), f"a worker served nothing: {counts}"

    victim = pids[0]
    os.kill(victim, signal.SIGKILL)
    # The survivor serves meanwhile (the dead worker's socket left the reuseport group).
    await wait_for(lambda: victim not in worker_pids(cluster), 10, "the killed worker to go")
    await round_trips(base, 4, 3 * CHUNK)
    # The supervisor starts a new worker after worker_restart_delay_seconds (1 s).
    await wait_for(lambda: len(worker_pids(cluster)) == 2, 30, "a restarted worker")
    cluster.wait_ready(30)  # every worker's /healthz answers again
    assert victim not in worker_pids(cluster)
    await round_trips(base, 8, CHUNK + 1)

    supervisor = cluster.gateway_procs[0]
    assert supervisor is not None
    workers = worker_pids(cluster)
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived its supervisor"  # noqa: ASYNC240

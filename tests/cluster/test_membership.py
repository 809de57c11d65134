"""Membership changes against real processes (issue 3 #3): add a 4th node to a loaded
3-node cluster, then drain and remove an original one (the Raft leader, the hardest case),
while clients push and pull through both gateways: zero failed requests, no lost chunk,
every chunk on its R placement nodes at the end. Also: `remove` refuses an active member
and a draining member that still holds chunks.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from cargohold_cli import admin
from cargohold_cli.devcluster import LocalCluster
from cluster.chunkcheck import chunk_ids, copies, misplaced, pull_blob, push_blob
from cluster.roles import status_extra, trigger, wait_answering
from cluster.shapes import CHUNK, MiB

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]

# Gateways re-learn the member list every second, so a new or drained node is seen soon.
FAST_MEMBERS = {"members_refresh_seconds": 1.0}


class Load:
    """Clients pushing through one gateway and pulling through the other, counting failures."""

    def __init__(self, http: aiohttp.ClientSession, gateways: list[str]) -> None:
        self.http = http
        self.gateways = gateways
        self.blobs: list[tuple[str, str, bytes]] = []  # (repo, digest, data)
        self.failures: list[str] = []
        self.ops = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _worker(self, w: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            repo = f"load/w{w}"
            data = os.urandom(CHUNK * (1 + n % 3) + n)
            a, b = self.gateways[n % 2], self.gateways[(n + 1) % 2]
            try:
                digest = await push_blob(self.http, a, repo, data)
                self.blobs.append((repo, digest, data))
                assert await pull_blob(self.http, b, repo, digest) == data
                if self.blobs:  # and an older blob, which repair may be moving
                    old_repo, old_digest, old = self.blobs[(n * 7) % len(self.blobs)]
                    assert await pull_blob(self.http, a, old_repo, old_digest) == old
                self.ops += 3
            except Exception as exc:  # every failure counts; the test asserts none
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def start(self, workers: int = 2) -> None:
        self._tasks = [asyncio.create_task(self._worker(w)) for w in range(workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


def member_change(cluster: LocalCluster, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """`cargohold admin nodes ...` as the operator runs it: signed as the admin role."""
    return admin.member_change(*args, cfg=cluster.client_config("admin"), **kwargs)


async def _repair_until_placed(
    cluster: LocalCluster, nodes: list[int], ids: list[bytes], rounds: int = 6
) -> None:
    for _ in range(rounds):
        await asyncio.gather(*(asyncio.to_thread(trigger, cluster, i) for i in nodes))
        if not await asyncio.to_thread(misplaced, cluster, ids, nodes[0]):
            return
    assert await asyncio.to_thread(misplaced, cluster, ids, nodes[0]) == []


async def _wait(predicate: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_add_then_drain_and_remove_the_leader_under_load(
    quiet_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster = quiet_cluster(nodes=3, gateways=2, gateway=FAST_MEMBERS)
    seeds = cluster.node_grpc_addresses
    preload = [os.urandom(2 * MiB + k) for k in range(6)]
    pre_digests = [await push_blob(http, cluster.gateway_url, "load/pre", d) for d in preload]
    load = Load(http, cluster.gateway_urls)
    load.start()
    try:
        # Add n4: started with peers = the others' Raft addresses, then added by the leader.
        new = cluster.add_node()
        await asyncio.to_thread(wait_answering, cluster, new)
        members = await asyncio.to_thread(
            member_change,
            cluster,
            seeds,
            "AddMember",
            cluster.node_id(new),
            cluster.node_grpc(new),
            cluster.node_raft(new),
        )
        assert {m["id"]: m["state"] for m in members}["n4"] == "active"
        await _wait(
            lambda: any(m["id"] == "n4" for m in cluster.members(new)),
            "n4 to catch up with the Raft log",
        )
        ids = [c for d in preload for c in chunk_ids(d, CHUNK)]
        await _repair_until_placed(cluster, [0, 1, 2, new], ids)
        assert cluster.node_status(new).chunk_count > 0  # rebalancing gave n4 its share

        # Drain and remove the leader.
        victim = cluster.leader_index()
        assert victim is not None
        victim_id = cluster.node_id(victim)
        await asyncio.to_thread(
            member_change, cluster, seeds, "SetMemberState", victim_id, state="draining"
        )
        await asyncio.sleep(2.5)  # gateways re-learn members every second: no new writes
        rest = [i for i in range(cluster.node_count) if i != victim]
        for _ in range(8):
            await asyncio.gather(*(asyncio.to_thread(trigger, cluster, i) for i in [*rest, victim]))
            if cluster.node_status(victim).chunk_count == 0:
                break
        assert cluster.node_status(victim).chunk_count == 0
        members = await asyncio.to_thread(member_change, cluster, seeds, "RemoveMember", victim_id)
        assert {m["id"]: m["state"] for m in members}[victim_id] == "removed"
        await asyncio.sleep(1.5)
        cluster.kill_node(victim, signal.SIGTERM)
        await asyncio.sleep(2.0)  # pushes and pulls go on against the 3 remaining nodes
    finally:
        await load.stop()

    print(
        f"\nmembership: {load.ops} pushes/pulls during add + drain + remove, "
        f"{len(load.failures)} failed"
    )
    assert load.failures == [], load.failures[:5]
    assert load.ops > 0
    all_ids = ids + [c for _, _, d in load.blobs for c in chunk_ids(d, CHUNK)]
    await _repair_until_placed(cluster, rest, all_ids)
    assert all(len(holders) == 3 for holders in copies(cluster, rest, all_ids).values())
    leader = cluster.leader_index()
    assert leader in rest
    assert sorted(status_members(cluster, leader)) == sorted(cluster.node_raft(i) for i in rest)
    for data, digest in zip(preload, pre_digests, strict=True):
        assert await pull_blob(http, cluster.gateway_urls[1], "load/pre", digest) == data
    for repo, digest, data in load.blobs:
        assert await pull_blob(http, cluster.gateway_url, repo, digest) == data


def status_members(cluster: LocalCluster, i: int) -> list[str]:
    return list(status_extra(cluster, i)["raft"]["members"])


async def test_remove_refuses_an_active_or_unemptied_member(
    quiet_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster = quiet_cluster(nodes=3, gateways=1, gateway=FAST_MEMBERS)
    seeds = cluster.node_grpc_addresses
    await push_blob(http, cluster.gateway_url, "refuse/a", os.urandom(MiB))
    victim = next(i for i in range(3) if i != cluster.leader_index())
    # The push returned after W=2 copies; the premise below is that the victim holds its
    # (third) copy, which the gateway finishes writing in the background.
    deadline = time.monotonic() + 30
    while cluster.node_status(victim).chunk_count < 4:
        assert time.monotonic() < deadline, "the victim never received its copy of the blob"
        await asyncio.sleep(0.1)
    with pytest.raises(RuntimeError, match="is active: drain it first"):
        await asyncio.to_thread(
            member_change, cluster, seeds, "RemoveMember", cluster.node_id(victim)
        )
    await asyncio.to_thread(
        member_change, cluster, seeds, "SetMemberState", cluster.node_id(victim), state="draining"
    )
    # With 3 nodes and R=3 its chunks have nowhere to go: it keeps them, remove refuses.
    progress = await asyncio.to_thread(trigger, cluster, victim)
    assert progress["moved_away_chunks"] == 0
    with pytest.raises(RuntimeError, match="still holds 4 chunks"):
        await asyncio.to_thread(
            member_change, cluster, seeds, "RemoveMember", cluster.node_id(victim)
        )
    # The same refusal through the CLI: exit 1, the reason on stderr.
    cli = [
        sys.executable,
        "-m",
        "cargohold_cli",
        "admin",
        "--config",
        str(cluster.admin_config_path()),
        "nodes",
        "--nodes",
        ",".join(seeds),
        "remove",
        cluster.node_id(victim),
    ]
    done = await asyncio.to_thread(subprocess.run, cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "still holds 4 chunks" in done.stderr
    repair = [
        sys.executable,
        "-m",
        "cargohold_cli",
        "admin",
        "--config",
        str(cluster.admin_config_path()),
        "repair",
        "--wait",
        "--nodes",
        ",".join(seeds),
    ]
    done = await asyncio.to_thread(
        subprocess.run, repair, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.count("passes=") == 3, done.stdout
    members = await asyncio.to_thread(
        member_change, cluster, seeds, "SetMemberState", cluster.node_id(victim), state="active"
    )
    assert {m["id"]: m["state"] for m in members}[cluster.node_id(victim)] == "active"


async def test_a_dead_node_removed_with_force_is_rebuilt_elsewhere(
    quiet_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster = quiet_cluster(nodes=4, gateways=1, gateway=FAST_MEMBERS)
    seeds = cluster.node_grpc_addresses
    blobs = [os.urandom(MiB + k) for k in range(4)]
    digests = [await push_blob(http, cluster.gateway_url, "dead/a", d) for d in blobs]
    ids = [c for d in blobs for c in chunk_ids(d, CHUNK)]
    await _repair_until_placed(cluster, [0, 1, 2, 3], ids)
    dead = next(i for i in range(4) if i != cluster.leader_index())
    cluster.kill_node(dead, signal.SIGKILL)
    await asyncio.to_thread(
        member_change, cluster, seeds, "SetMemberState", cluster.node_id(dead), state="draining"
    )
    with pytest.raises(RuntimeError, match="does not answer"):
        await asyncio.to_thread(
            member_change, cluster, seeds, "RemoveMember", cluster.node_id(dead)
        )
    members = await asyncio.to_thread(
        member_change, cluster, seeds, "RemoveMember", cluster.node_id(dead), force=True
    )
    assert {m["id"]: m["state"] for m in members}[cluster.node_id(dead)] == "removed"
    rest = [i for i in range(4) if i != dead]
    await _repair_until_placed(cluster, rest, ids)
    assert all(len(holders) == 3 for holders in copies(cluster, rest, ids).values())
    for data, digest in zip(blobs, digests, strict=True):
        assert await pull_blob(http, cluster.gateway_url, "dead/a", digest) == data

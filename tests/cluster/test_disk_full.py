"""A full disk is survived (issue 19): nodes on small filesystems (tmpfs), filled with a
filler file (fast) rather than with pushes, then freed by deleting it.

- One node full: it refuses chunk writes and shows `full`, stays up and serves reads;
  pushes go on through the others; after space returns, repair brings every chunk back
  to R copies.
- Every node full: a push gets 507 with an OCI error body that names the nodes and their
  free bytes; nothing exits; every image acknowledged before pulls byte-exact while full;
  pushes succeed again once space is freed, without a restart.

The filler leaves half the reserve free, not zero: the reserve is what keeps the Raft
journal writable when chunks fill a disk, which is the case these tests stand for.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cargohold.config import NodeConfig
from cargohold_cli.admin import admin_config, cluster_status, format_status
from cargohold_cli.devcluster import LocalCluster
from cluster.chunkcheck import chunk_ids, copies, digest_of, misplaced, pull_blob, push_blob
from cluster.images import random_image
from cluster.registry_client import RegistryClient, check_image
from cluster.roles import trigger
from cluster.shapes import CHUNK, QUIET_ROLES, MiB
from cluster.tmpfs import Tmpfs
from node.disk import reserve_bytes

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

DISK = "40m"
# Writes must resume by themselves this soon after space returns (the bound).
RESUME_WITHIN = 30.0
SETTINGS = {
    "node": {**QUIET_ROLES, "disk_check_interval": 0.5},
    "gateway": {"members_refresh_seconds": 1.0},
}


def _fill_below_watermark(disks: Tmpfs, path: Path) -> int:
    """Leave half the node's reserve free (below its watermark, above zero)."""
    st = os.statvfs(path)
    cfg = NodeConfig()
    reserve = reserve_bytes(
        st.f_blocks * st.f_frsize, cfg.disk_reserve_fraction, cfg.disk_reserve_max_bytes
    )
    return disks.fill(path, leave=reserve // 2)


def _cluster(
    make_cluster: Callable[..., LocalCluster], disks: Tmpfs, on_tmpfs: list[int]
) -> LocalCluster:
    cluster = make_cluster(start=False, nodes=3, gateways=1, chunk_size=CHUNK, extra=SETTINGS)
    for i in on_tmpfs:
        disks.mount(cluster.node_data_dir(i), DISK)
    cluster.start(timeout=60)
    return cluster


async def _until(what: str, check: Callable[[], bool], within: float) -> float:
    """Poll `check` until true; fail after `within` seconds. Returns the seconds it took."""
    started = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.25)
    return time.monotonic() - started


def _full(cluster: LocalCluster, i: int) -> bool:
    return bool(cluster.node_status(i, timeout=5).disk_full)


def _all_running(cluster: LocalCluster) -> None:
    exited = [
        (f"n{i + 1}", p.returncode if p else None)
        for i, p in enumerate(cluster.node_procs)
        if p is None or p.poll() is not None
    ]
    exited += [
        (f"gateway-{j + 1}", p.returncode if p else None)
        for j, p in enumerate(cluster.gateway_procs)
        if p is None or p.poll() is not None
    ]
    assert not exited, f"processes exited: {exited}\n{cluster.tail_logs()}"


def _log_events(cluster: LocalCluster, name: str, event: str) -> int:
    text = (cluster.base_dir / "logs" / f"{name}.log").read_text(errors="replace")
    return sum(1 for line in text.splitlines() if f"event={event} " in line + " ")


async def test_one_full_node_costs_redundancy_not_availability(
    tmpfs: Tmpfs,
    make_cluster: Callable[..., LocalCluster],
    http: aiohttp.ClientSession,
) -> None:
    cluster = _cluster(make_cluster, tmpfs, on_tmpfs=[2])
    base, repo, n3 = cluster.gateway_url, "disk/one-full", 2
    try:
        blobs = [os.urandom(MiB)]
        digests = [await push_blob(http, base, repo, blobs[0])]
        _fill_below_watermark(tmpfs, cluster.node_data_dir(n3))
        await _until("n3 reports full", lambda: _full(cluster, n3), within=10)

        # Pushes go on: W=2 copies land on n1 and n2, n3 refuses its copy.
        for _ in range(3):
            data = os.urandom(2 * MiB + 12345)
            blobs.append(data)
            try:
                digests.append(await push_blob(http, base, repo, data))
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{cluster.tail_logs()}") from None
        later = [cid for data in blobs[1:] for cid in chunk_ids(data, CHUNK)]
        held = copies(cluster, [0, 1, 2], later)
        assert all(holders == {0, 1} for holders in held.values()), held

        admin = admin_config(str(cluster.admin_config_path()))
        status = await asyncio.to_thread(cluster_status, cluster.node_grpc_addresses, 10.0, admin)
        node = next(n for n in status["nodes"] if n.get("id") == "n3")
        assert node["disk"]["full"] and node["disk"]["free_bytes"] < node["disk"]["reserve_bytes"]
        assert node["disk"]["capacity_bytes"] > 0 and node["disk"]["used_bytes"] > 0
        table = format_status(status)
        assert any(line.split()[:2] == ["n3", "full"] for line in table.splitlines()), table
        _all_running(cluster)
        for data, digest in zip(blobs, digests, strict=True):
            assert await pull_blob(http, base, repo, digest) == data

        # Space returns: n3 takes writes again by itself, and repair restores R copies.
        tmpfs.free(cluster.node_data_dir(n3))
        took = await _until("n3 leaves full", lambda: not _full(cluster, n3), RESUME_WITHIN)
        print(f"\nn3 writable again {took:.1f} s after the filler was deleted")
        ids = [cid for data in blobs for cid in chunk_ids(data, CHUNK)]
        progress = await asyncio.gather(
            *(asyncio.to_thread(trigger, cluster, i) for i in (0, 1, 2))
        )
        assert sum(int(p["repaired_chunks"]) for p in progress) >= len(set(later))
        assert misplaced(cluster, ids) == []
        assert all(len(h) == 3 for h in copies(cluster, [0, 1, 2], ids).values())
        _all_running(cluster)
        assert _log_events(cluster, "n3", "node.disk_full") == 1
        assert _log_events(cluster, "n3", "node.disk_ok") == 1
    finally:
        cluster.kill_all()


async def _refused_push(http: aiohttp.ClientSession, base: str, repo: str) -> dict[str, Any]:
    """A monolithic blob push that must be refused for lack of space: its OCI error entry."""
    data = os.urandom(MiB)
    url = f"{base}/v2/{repo}/blobs/uploads/?digest={digest_of(data)}"
    async with http.post(url, data=data) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 507, body
        assert resp.headers["Content-Type"].startswith("application/json")
    (entry,) = body["errors"]
    return dict(entry)


async def test_whole_cluster_full_refuses_with_507_and_keeps_serving(
    tmpfs: Tmpfs,
    make_cluster: Callable[..., LocalCluster],
    http: aiohttp.ClientSession,
) -> None:
    cluster = _cluster(make_cluster, tmpfs, on_tmpfs=[0, 1, 2])
    base, repo = cluster.gateway_url, "disk/all-full"
    client = RegistryClient(http)
    rng = random.Random(19)
    try:
        stored = [random_image(rng, repo, CHUNK) for _ in range(2)]
        for spec in stored:
            for _, digest, data in spec.blobs():
                await client.push_blob(base, spec.repo, digest, data, monolithic=False)
            await client.put_manifest(base, spec.repo, spec.tag, spec.manifest())
        for i in range(3):
            _fill_below_watermark(tmpfs, cluster.node_data_dir(i))
        for i in range(3):
            await _until(f"n{i + 1} reports full", lambda i=i: _full(cluster, i), within=10)

        # A push that no longer fits: 507 and an OCI body that says why. The first refusal
        # names the nodes that refused before the write gave up; once the gateway's
        # refresh has asked every member (each second here), it names all three.
        entry = await _refused_push(http, base, repo)
        assert entry["code"] == "DENIED" and "storage is full" in entry["message"], entry
        named: dict[str, dict[str, Any]] = {}

        async def names_all() -> bool:
            refusal = await _refused_push(http, base, repo)
            named.clear()
            named.update({n["node"]: n for n in refusal["detail"]["nodes"]})
            return set(named) == {"n1", "n2", "n3"}

        deadline = time.monotonic() + 10
        while not await names_all():
            assert time.monotonic() < deadline, named
            await asyncio.sleep(0.5)
        assert all(0 < n["free_bytes"] < n["reserve_bytes"] for n in named.values()), named

        # Reads need no space: every image acknowledged before pulls byte-exact, by tag
        # and by digest, and the tag list answers.
        for spec in stored:
            await check_image(client, base, spec)
        async with http.get(f"{base}/v2/{repo}/tags/list") as resp:
            assert resp.status == 200
            assert set((await resp.json())["tags"]) >= {s.tag for s in stored}
        _all_running(cluster)

        # Space returns: pushes succeed again by themselves, no restart.
        for i in range(3):
            tmpfs.free(cluster.node_data_dir(i))
        started = time.monotonic()
        later = random_image(rng, repo, CHUNK)
        while True:
            try:
                for _, digest, data in later.blobs():
                    await client.push_blob(base, later.repo, digest, data, monolithic=True)
                await client.put_manifest(base, later.repo, later.tag, later.manifest())
                break
            except Exception:
                if time.monotonic() - started > RESUME_WITHIN:
                    raise
                await asyncio.sleep(0.5)
        print(f"\npushes accepted again {time.monotonic() - started:.1f} s after space returned")
        for spec in [*stored, later]:
            await check_image(client, base, spec)
        _all_running(cluster)
    finally:
        cluster.kill_all()

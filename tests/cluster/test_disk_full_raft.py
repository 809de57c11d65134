"""A full disk, Raft side (issue 19): the metadata log grows on disks with no space left.

Every node's data dir is its own small tmpfs, filled to the last byte once the cluster
runs (chunk writes already stopped: this is past the chunk reserve, the case where only the
space the Raft log claimed ahead is left). Then a burst of manifest pushes and blob mounts
runs until the log's claimed space is used up. Snapshots are due every second
meanwhile, so space runs out during snapshots too. What must hold:

- no process dies (pysyncobj's mmap journal died of SIGBUS here);
- a blob mount (a Raft command only) that no longer fits, once the log's claimed space is
  used up, gets 507 (MetadataStorageFull), never a 503;
- every acknowledged tag pulls byte-exact while the disks are full, HEAD answers, and
  tags/list and the catalog list them (reads confirm leadership without a log append);
- once space returns, pushes succeed again by themselves, and a restart of every node
  (snapshot + log) still has every acknowledged tag.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.images import CONFIG_TYPE, MANIFEST_TYPE, sha256
from cluster.tmpfs import Tmpfs

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

KiB = 1024
DISK = "48m"
REPO = "raftfull/app"
CLIENTS = 8
RAFT_SMALL = {
    # Small extents so the burst uses up the claimed space in seconds.
    "raft_journal_extent": 256 * KiB,
    "raft_journal_floor": 64 * KiB,
    # A snapshot is due all the time: space runs out during snapshots too.
    "raft_compaction_min_entries": 100,
    "raft_compaction_min_time": 1.0,
    "repair_interval": 3600.0,
    "scrub_interval": 3600.0,
}


CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode()


def _manifest(n: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": sha256(CONFIG), "size": len(CONFIG)},
            "layers": [],
            "annotations": {"n": n},
        },
        separators=(",", ":"),
    ).encode()


def _alive(cluster: LocalCluster) -> None:
    exited = [
        (name, p.returncode if p else None)
        for name, p in cluster._named_procs()
        if p is None or p.poll() is not None
    ]
    assert not exited, f"processes exited: {exited}\n{cluster.tail_logs()}"


class Burst:
    """What a burst was told: acknowledged manifests (tag -> body) and blob mounts (repo),
    and the statuses seen, with 507s split by what was full."""

    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}
        self.mounts: list[str] = []
        self.statuses: dict[str, int] = {}
        self.samples: dict[str, bytes] = {}

    def count(self, key: str) -> int:
        return self.statuses.get(key, 0)

    def note(self, what: str, status: int, body: bytes) -> None:
        key = f"{what} {status}"
        if status == 507:
            key += " metadata" if b"no metadata can be stored" in body else " chunks"
        self.statuses[key] = self.count(key) + 1
        if status >= 500 and status != 507:
            self.samples.setdefault(key, body[:400])


async def _burst(
    session: aiohttp.ClientSession, base: str, prefix: str, refused: int, limit: float
) -> Burst:
    """CLIENTS clients, each in turn: a manifest push (its bytes go to the chunk store,
    then one Raft command) and a cross-repository blob mount (a Raft command only, so the
    log grows even when chunk writes are refused). Until `refused` mounts got 507 for want
    of metadata space, or `limit` seconds."""
    out = Burst()
    stop = time.monotonic() + limit

    async def client(w: int) -> None:
        i = 0
        while time.monotonic() < stop and out.count("mount 507 metadata") < refused:
            tag = f"{prefix}{w}-{i}"
            body = _manifest(tag)
            i += 1
            async with session.put(
                f"{base}/v2/{REPO}/manifests/{tag}",
                data=body,
                headers={"Content-Type": MANIFEST_TYPE},
            ) as resp:
                out.note("manifest", resp.status, await resp.read())
                if resp.status == 201:
                    out.manifests[tag] = body
            repo = f"{REPO}-{tag}"
            async with session.post(
                f"{base}/v2/{repo}/blobs/uploads/?mount={sha256(CONFIG)}&from={REPO}"
            ) as resp:
                out.note("mount", resp.status, await resp.read())
                if resp.status == 201:
                    out.mounts.append(repo)
                elif resp.status == 507:
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(client(w) for w in range(CLIENTS)))
    return out


async def _check_reads(session: aiohttp.ClientSession, base: str, burst: Burst) -> None:
    sem = asyncio.Semaphore(16)

    async def one(tag: str, body: bytes) -> None:
        async with sem:
            url = f"{base}/v2/{REPO}/manifests/{tag}"
            async with session.get(url, headers={"Accept": MANIFEST_TYPE}) as resp:
                assert resp.status == 200, (tag, resp.status, await resp.text())
                assert await resp.read() == body
            async with session.head(url, headers={"Accept": MANIFEST_TYPE}) as resp:
                assert resp.status == 200
                assert resp.headers["Docker-Content-Digest"] == sha256(body)

    async def mounted(repo: str) -> None:
        async with sem:
            async with session.head(f"{base}/v2/{repo}/blobs/{sha256(CONFIG)}") as resp:
                assert resp.status == 200, (repo, resp.status)

    await asyncio.gather(
        *(one(t, b) for t, b in burst.manifests.items()), *(mounted(r) for r in burst.mounts)
    )
    async with session.get(f"{base}/v2/{REPO}/tags/list?n=10000") as resp:
        assert resp.status == 200
        assert set(burst.manifests) <= set((await resp.json())["tags"])
    async with session.get(f"{base}/v2/_catalog?n=10000") as resp:
        assert resp.status == 200
        assert {REPO, *burst.mounts} <= set((await resp.json())["repositories"])


def _merge(into: Burst, other: Burst) -> None:
    into.manifests.update(other.manifests)
    into.mounts.extend(other.mounts)


def _events(cluster: LocalCluster, event: str) -> int:
    count = 0
    for path in (cluster.base_dir / "logs").glob("n*.log"):
        count += path.read_text(errors="replace").count(f"event={event}")
    return count


async def test_the_raft_log_fills_the_disk_without_a_death_or_a_loss(
    tmpfs: Tmpfs, make_cluster: Callable[..., LocalCluster]
) -> None:
    cluster = make_cluster(start=False, nodes=3, gateways=1, extra={"node": RAFT_SMALL})
    for i in range(cluster.node_count):
        tmpfs.mount(cluster.node_data_dir(i), DISK)
    cluster.start(timeout=60)
    base = cluster.gateway_url
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(
            f"{base}/v2/{REPO}/blobs/uploads/?digest={sha256(CONFIG)}", data=CONFIG
        ) as resp:
            assert resp.status == 201, await resp.text()
        acked = await _burst(session, base, "a", refused=1, limit=1.0)
        assert acked.manifests and acked.mounts, acked.statuses
        for i in range(cluster.node_count):
            tmpfs.fill(cluster.node_data_dir(i))

        full = await _burst(session, base, "b", refused=40, limit=120.0)
        print(f"\nwhile full: {full.statuses}")
        _merge(acked, full)
        assert full.count("mount 507 metadata") >= 40, (full.statuses, full.samples)
        # The Raft side answers 507, never 503. (A manifest's chunk writes refused by every
        # node are the chunk side's answer, tests/cluster/test_disk_full.py.)
        assert full.count("mount 503") == 0, (full.statuses, full.samples)
        _alive(cluster)
        await _check_reads(session, base, acked)
        # Snapshots were attempted, and failed, with the disks full.
        assert _events(cluster, "raft.dump_failed") >= 1
        assert _events(cluster, "raft.journal_space_low") >= 1
        _alive(cluster)

        for i in range(cluster.node_count):
            tmpfs.free(cluster.node_data_dir(i))
        deadline = time.monotonic() + 30
        while True:
            after = await _burst(session, base, "c", refused=1, limit=1.0)
            if after.manifests and after.mounts:
                break
            assert time.monotonic() < deadline, f"pushes never resumed: {after.statuses}"
        _merge(acked, after)

    cluster.stop()
    cluster.start(timeout=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await _check_reads(session, base, acked)
    _alive(cluster)

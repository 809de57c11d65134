"""The activity log on a real cluster (3 nodes, 2 gateways, token auth): pushes, pulls,
deletes, logins and denials appear with their actor, segments are sealed into the chunk
store, `cargohold admin audit verify` passes, catches a sealed segment damaged on every
node's disk, and the chain survives a SIGKILLed Raft leader with every acknowledged push
in it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cargohold.audit import blob_size, segment_lines
from cargohold_cli.devcluster import LocalCluster
from cluster.chunkcheck import cluster_query, flip_stored_bytes, node_chunk
from cluster.images import ImageSpec
from cluster.shapes import CHUNK, QUIET_ROLES
from cluster.token_client import TokenClient, push_image, token_auth

pytestmark = pytest.mark.cluster

USERS = {"alice": "alice-pw"}
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def audit_cluster(make_cluster: Callable[..., LocalCluster], tmp_path: Path) -> LocalCluster:
    return make_cluster(
        nodes=3,
        gateways=2,
        chunk_size=CHUNK,
        extra={
            "node": dict(QUIET_ROLES),
            "auth": token_auth(tmp_path, USERS),
            "audit": {"flush_seconds": 0.2, "segment_records": 20, "seal_interval_seconds": 1},
            "lifecycle": {"pull_flush_seconds": 0.2},
        },
    )


def admin_audit(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cargohold_cli", "admin", "audit", *args]
    argv += ["--config", str(cluster.admin_config_path())]
    argv += ["--nodes", ",".join(cluster.node_grpc_addresses)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def records(cluster: LocalCluster, *filters: str) -> list[dict[str, Any]]:
    done = admin_audit(cluster, "export", *filters)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def wait_for(check: Callable[[], Any], limit: float = 60.0) -> Any:
    deadline = time.monotonic() + limit
    while True:
        got = await asyncio.to_thread(check)
        if got or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.5)


async def test_events_with_actor_sealed_segments_and_tampering(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cluster = audit_cluster(make_cluster, tmp_path)
    first, second = cluster.gateway_urls
    image = ImageSpec("team/app", "v1", seed=21, layer_sizes=(500,))
    alice = TokenClient(http, first, "alice", USERS["alice"])
    assert await push_image(alice, image, "v1") == 201
    ua = {"User-Agent": "audit-test/1.0"}
    # A wrong password at the token service: a failed login.
    async with http.get(
        f"{second}/auth/token",
        params={"service": "cargohold"},
        auth=aiohttp.BasicAuth("alice", "wrong"),
        headers=ua,
    ) as resp:
        assert resp.status == 401
    # Anonymous push: denied (401).
    async with http.post(f"{second}/v2/team/app/blobs/uploads/", headers=ua) as resp:
        assert resp.status == 401
    # Pulls through the other gateway, enough records to seal a few segments.
    reader = TokenClient(http, second, "alice", USERS["alice"])
    for _ in range(45):
        status, _h, body = await reader.request(
            "GET", "/v2/team/app/manifests/v1", headers={"Accept": MANIFEST, **ua}
        )
        assert status == 200 and body == image.manifest()
    status, _h, _b = await alice.request("DELETE", "/v2/team/app/manifests/v1")
    assert status == 202

    def sealed_and_all_there() -> bool:
        head = cluster_query(cluster, "audit_head", {})
        if len(head["segments"]) < 2:
            return False
        found = records(cluster, "--action", "pull", "--actor", "alice")
        return sum(r["user_agent"] == "audit-test/1.0" for r in found) >= 45

    assert await wait_for(sealed_and_all_there), cluster_query(cluster, "audit_head", {})

    rows = await asyncio.to_thread(records, cluster)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    by = {a: [r for r in rows if r["action"] == a] for a in {r["action"] for r in rows}}
    [pushed] = [r for r in by["push"] if blob_size(r) is None]
    # The image's blobs (config and layer), pushed by alice: blob push records with sizes.
    assert {(r["digest"], blob_size(r), r["actor"]) for r in by["push"] if r is not pushed} == {
        (digest, len(data), "alice") for _media, digest, data in image.blobs()
    }
    assert (pushed["actor"], pushed["actor_kind"], pushed["repository"]) == (
        "alice",
        "user",
        "team/app",
    )
    assert (pushed["reference"], pushed["client"]) == ("v1", "127.0.0.1")
    pulls = [r for r in by["pull"] if r["user_agent"] == "audit-test/1.0"]
    assert len(pulls) == 45
    assert {(r["actor"], r["reference"]) for r in pulls} == {("alice", "v1")}
    [deleted] = by["delete"]
    assert (deleted["actor"], deleted["reference"], deleted["detail"]) == ("alice", "v1", "tag")
    logins = {(r["actor"], r["result"]) for r in by["login"]}
    assert {("alice", "ok"), ("alice", "failed")} <= logins
    assert any(r["result"] == "401" and r["actor"] == "" for r in by["denied"])
    # The filters.
    only = await asyncio.to_thread(records, cluster, "--action", "delete", "--actor", "alice")
    assert [r["seq"] for r in only] == [deleted["seq"]]
    assert await asyncio.to_thread(records, cluster, "--repo", "other/") == []

    done = await asyncio.to_thread(admin_audit, cluster, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intact" in done.stdout
    # The head exported off the cluster (an anchor): verify proves the chain passes it.
    anchor = tmp_path / "audit-anchor.json"
    done = await asyncio.to_thread(admin_audit, cluster, "export", "--anchor", str(anchor))
    assert done.returncode == 0 and json.loads(anchor.read_text())["seq"] >= len(rows)
    done = await asyncio.to_thread(admin_audit, cluster, "verify", "--anchor", str(anchor))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passes through the anchor" in done.stdout

    # Damage the first sealed segment on every node's disk: verify must say so.
    head = cluster_query(cluster, "audit_head", {})
    segment = head["segments"][0]
    [(chunk_hex, _length)] = segment["recipe"]["chunks"]
    copies = [node_chunk(cluster, i, bytes.fromhex(chunk_hex)) for i in range(3)]
    data = next(c for c in copies if c is not None)
    assert len(segment_lines(data)) == segment["last"] - segment["first"] + 1
    hits = sum(flip_stored_bytes(cluster, i, data) for i in range(3))
    assert hits >= 1
    done = await asyncio.to_thread(admin_audit, cluster, "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"segment {segment['first']}-{segment['last']}" in done.stdout


async def test_chain_verifies_after_the_leader_is_killed_mid_stream(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cluster = audit_cluster(make_cluster, tmp_path)
    first, second = cluster.gateway_urls
    image = ImageSpec("team/stream", "t0", seed=33, layer_sizes=(300,))
    alice = TokenClient(http, first, "alice", USERS["alice"])
    acknowledged: list[str] = []
    stop = asyncio.Event()

    async def pusher() -> None:
        n = 0
        while not stop.is_set():
            tag = f"t{n}"
            n += 1
            try:
                if await push_image(alice, image, tag) == 201:
                    acknowledged.append(tag)
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)

    async def puller() -> None:
        client = TokenClient(http, second, "alice", USERS["alice"])
        while not stop.is_set():
            if acknowledged:
                try:
                    await client.request("GET", f"/v2/team/stream/manifests/{acknowledged[-1]}")
                except aiohttp.ClientError:
                    pass
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(pusher()), asyncio.create_task(puller())]
    try:
        await wait_for(lambda: len(acknowledged) >= 10)
        leader = await asyncio.to_thread(cluster.leader_index)
        assert leader is not None
        await asyncio.to_thread(cluster.kill_node, leader)
        before = len(acknowledged)
        assert await wait_for(lambda: len(acknowledged) >= before + 10, limit=90)
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    def all_pushes_recorded() -> bool:
        pushed = {r["reference"] for r in records(cluster, "--action", "push")}
        return set(acknowledged) <= pushed

    assert await wait_for(all_pushes_recorded, limit=60)
    done = await asyncio.to_thread(admin_audit, cluster, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    pushes = await asyncio.to_thread(records, cluster, "--action", "push", "--actor", "alice")
    assert set(acknowledged) <= {r["reference"] for r in pushes}

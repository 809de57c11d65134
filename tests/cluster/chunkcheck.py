"""Helpers for the repair and membership tests: push/pull blobs over HTTP, and ask every
node which chunks it holds (Chunks.Has) to check placement and copy counts."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import aiohttp
import grpc

from cargohold.placement import replicas_for
from cargohold_cli.devcluster import LocalCluster
from protos import registry_pb2, registry_pb2_grpc


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chunk_ids(data: bytes, chunk_size: int) -> list[bytes]:
    return [
        hashlib.sha256(data[i : i + chunk_size]).digest() for i in range(0, len(data), chunk_size)
    ]


async def push_blob(http: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> str:
    """POST + monolithic PUT; returns the digest (raises on any non-2xx)."""
    digest = digest_of(data)
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        assert resp.status == 202, await resp.text()
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    async with http.put(
        f"{location}{sep}digest={digest}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 201, await resp.text()
    return digest


async def pull_blob(http: aiohttp.ClientSession, base: str, repo: str, digest: str) -> bytes:
    async with http.get(f"{base}/v2/{repo}/blobs/{digest}") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


def admin(cluster: LocalCluster, i: int) -> registry_pb2_grpc.AdminStub:
    return registry_pb2_grpc.AdminStub(grpc.insecure_channel(cluster.node_grpc(i)))


def has(cluster: LocalCluster, i: int, ids: list[bytes]) -> list[bool]:
    with grpc.insecure_channel(cluster.node_grpc(i)) as channel:
        reply = registry_pb2_grpc.ChunksStub(channel).Has(
            registry_pb2.HasChunksRequest(ids=ids), timeout=30
        )
    return list(reply.present)


def members(cluster: LocalCluster, i: int) -> list[dict[str, Any]]:
    return cluster.members(i, timeout=10)


def index_of(cluster: LocalCluster, node_id: str) -> int:
    return int(node_id[1:]) - 1


def copies(cluster: LocalCluster, nodes: list[int], ids: list[bytes]) -> dict[bytes, set[int]]:
    """{chunk id: indexes of the listed nodes holding it}."""
    out: dict[bytes, set[int]] = {cid: set() for cid in ids}
    for i in nodes:
        for cid, ok in zip(ids, has(cluster, i, ids), strict=True):
            if ok:
                out[cid].add(i)
    return out


def misplaced(cluster: LocalCluster, ids: list[bytes], ask: int = 0) -> list[str]:
    """Chunks lacking a copy on one of their R placement nodes (over active members)."""
    active = [m["id"] for m in members(cluster, ask) if m["state"] == "active"]
    wrong: list[str] = []
    placed: dict[int, list[bytes]] = {}
    for cid in ids:
        for node_id in replicas_for(cid, active, cluster.layout.replicas):
            placed.setdefault(index_of(cluster, node_id), []).append(cid)
    for i, wanted in placed.items():
        for cid, ok in zip(wanted, has(cluster, i, wanted), strict=True):
            if not ok:
                wrong.append(f"{cid.hex()[:12]} missing on n{i + 1}")
    return wrong


def trigger(cluster: LocalCluster, i: int, role: str = "repair") -> dict[str, Any]:
    """Run one whole pass of a role on node i and return its progress."""
    with grpc.insecure_channel(cluster.node_grpc(i)) as channel:
        reply = registry_pb2_grpc.AdminStub(channel).Trigger(
            registry_pb2.TriggerRequest(role=role, wait=True), timeout=300
        )
    return dict(json.loads(reply.progress))


def status_extra(cluster: LocalCluster, i: int) -> dict[str, Any]:
    return dict(json.loads(cluster.node_status(i, timeout=10).extra))


def wait_answering(cluster: LocalCluster, i: int, timeout: float = 60.0) -> None:
    cluster.wait_answering(i, timeout)

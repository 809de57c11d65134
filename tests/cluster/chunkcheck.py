"""What the nodes hold, asked directly: chunk presence and placement (Chunks.Has, as a
probe, so asking keeps no chunk young for garbage collection), the
recipes of test images (a linearizable metadata query), single stored copies (Chunks.Get),
and damaging a stored copy on disk; plus plain blob push/pull over HTTP for the repair and
membership tests."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

import aiohttp
import grpc

from cargohold.placement import replicas_for
from cargohold_cli.devcluster import LocalCluster
from cluster.images import ImageSpec
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


def has(cluster: LocalCluster, i: int, ids: list[bytes]) -> list[bool]:
    with cluster.channel(i, "node") as channel:
        reply = registry_pb2_grpc.ChunksStub(channel).Has(
            registry_pb2.HasChunksRequest(ids=ids, probe_only=True), timeout=30
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


def _metadata_query(cluster: LocalCluster, address: str, op: str, args: dict[str, Any]) -> Any:
    with cluster.channel(address) as channel:
        stub = registry_pb2_grpc.MetadataStub(channel)
        reply = stub.Query(
            registry_pb2.MetadataRequest(op=op, args=json.dumps(args).encode(), linearizable=True),
            timeout=15,
        )
        return json.loads(reply.result)


def cluster_query(cluster: LocalCluster, op: str, args: dict[str, Any], limit: float = 30.0) -> Any:
    """A linearizable query through the running nodes in turn, retried on UNAVAILABLE
    (a node that just restarted, an election) as the gateway would."""
    deadline = time.monotonic() + limit
    attempt = 0
    while True:
        nodes = cluster.running_nodes()
        address = cluster.node_grpc(nodes[attempt % len(nodes)])
        attempt += 1
        try:
            return _metadata_query(cluster, address, op, args)
        except grpc.RpcError as exc:
            if (
                exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                or time.monotonic() > deadline
            ):
                raise
            time.sleep(0.2)


# Recipes are immutable: chunk lists already looked up, per image.
_CHUNKS_OF: dict[ImageSpec, dict[str, int]] = {}


def image_chunks(cluster: LocalCluster, specs: Iterable[ImageSpec]) -> dict[str, int]:
    """Chunk id (hex) -> length of every chunk the images' blobs and manifests use."""
    chunks: dict[str, int] = {}
    for spec in specs:
        mine = _CHUNKS_OF.get(spec)
        if mine is None:
            mine = {}
            for digest in [d for _, d, _ in spec.blobs()] + [spec.digest]:
                recipe = cluster_query(cluster, "blob_get", {"repo": spec.repo, "digest": digest})
                for chunk_hex, length in recipe["chunks"]:
                    mine[chunk_hex] = int(length)
            _CHUNKS_OF[spec] = mine
        chunks.update(mine)
    return chunks


def replica_counts(cluster: LocalCluster, chunk_ids: Iterable[str]) -> dict[str, int]:
    """How many running nodes hold a healthy copy of each chunk (Chunks.Has)."""
    ids = list(chunk_ids)
    counts = dict.fromkeys(ids, 0)
    for i in cluster.running_nodes():
        with cluster.channel(i, "node") as channel:
            stub = registry_pb2_grpc.ChunksStub(channel)
            for start in range(0, len(ids), 500):
                batch = ids[start : start + 500]
                reply = stub.Has(
                    registry_pb2.HasChunksRequest(
                        ids=[bytes.fromhex(c) for c in batch], probe_only=True
                    ),
                    timeout=15,
                )
                for chunk_hex, present in zip(batch, reply.present, strict=True):
                    counts[chunk_hex] += int(present)
    return counts


def flip_stored_bytes(
    cluster: LocalCluster, node: int, data: bytes, offset: int | None = None
) -> int:
    """Flip one byte of `data`'s stored copy in node `node`'s LMDB file, in place on disk.

    The chunk's bytes are found in `data.mdb` by content (they are random, so unique) and
    one byte in the middle is inverted with a plain `pwrite`: the running node's read-only
    map sees it at once, like bit rot under a live process. Returns how many copies of the
    bytes were found and damaged (old freed pages may hold earlier copies).
    """
    path = cluster.node_data_dir(node) / "chunks" / "data.mdb"
    probe_at = offset if offset is not None else len(data) // 2
    probe = data[max(0, probe_at - 32) : probe_at + 32]
    raw = path.read_bytes()
    hits = 0
    start = 0
    with open(path, "r+b") as f:
        while True:
            pos = raw.find(probe, start)
            if pos < 0:
                break
            target = pos + min(32, probe_at)
            f.seek(target)
            f.write(bytes([raw[target] ^ 0xFF]))
            hits += 1
            start = pos + len(probe)
        f.flush()
    return hits


def node_chunk(cluster: LocalCluster, i: int, chunk_id: bytes) -> bytes | None:
    """Node i's verified copy of a chunk (Chunks.Get), or None when it serves none."""
    with cluster.channel(i, "node") as channel:
        stub = registry_pb2_grpc.ChunksStub(channel)
        try:
            return bytes(stub.Get(registry_pb2.GetChunkRequest(id=chunk_id), timeout=15).data)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DATA_LOSS):
                return None
            raise


def quarantined(cluster: LocalCluster, i: int) -> int:
    """Chunks node i moved to quarantine (Admin.Status extra)."""
    extra = json.loads(cluster.node_status(i, timeout=10).extra or b"{}")
    return int(extra.get("chunks_quarantined", 0))

"""The scrub role and the re-fetch in-process against fake nodes (tests/node/fakepeers.py),
a byte flipped with MemoryChunkStore's `corrupt` test hook."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from fakepeers import Cluster, Members, config, fake_cluster_fixture, peers_fixture  # noqa: F401

from cargohold.config import Config
from cargohold.digests import checksum_of, chunk_id_of
from node.chunk_service import add_to_server
from node.memstore import MemoryChunkStore
from node.peers import PeerPool
from node.scrub import ScrubRole
from protos import registry_pb2 as pb
from protos import registry_pb2_grpc as pb_grpc


async def _put_everywhere(stores: list[MemoryChunkStore], count: int) -> list[tuple[bytes, bytes]]:
    chunks = []
    for _ in range(count):
        data = os.urandom(4096)
        cid = chunk_id_of(data)
        for store in stores:
            await store.put(cid, data)
        chunks.append((cid, data))
    return chunks


async def test_scrub_quarantines_a_flipped_byte_and_refetches_a_good_copy(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    nodes, members = await fake_cluster(3)
    chunks = await _put_everywhere([n.store for n in nodes], 10)
    victim, data = chunks[4]
    nodes[0].store.corrupt(victim)
    nodes[1].store.corrupt(victim)  # one peer's copy is bad too: the other one serves
    cfg = config(tmp_path, "n1", replicas=3)
    role = ScrubRole(cfg, nodes[0].store, members, peers(cfg))
    await role.run_pass()
    stats = role.stats
    assert stats.chunks_scrubbed == 10 and stats.bytes_scrubbed == 10 * 4096
    assert stats.corrupt_found == 1 and stats.repaired == 1 and stats.refetch_failed == 0
    assert await nodes[0].store.get(victim) == data
    assert (await nodes[0].store.stats()).quarantined == 1


async def test_scrub_replaces_a_swapped_copy_with_a_valid_checksum(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    nodes, members = await fake_cluster(2)
    chunks = await _put_everywhere([n.store for n in nodes], 3)
    victim, data = chunks[1]
    evil = os.urandom(4096)
    await nodes[0].store.delete([victim])
    await nodes[0].store.put(victim, evil, checksum_of(evil), verify_id=False)
    cfg = config(tmp_path, "n1", replicas=2)
    role = ScrubRole(cfg, nodes[0].store, members, peers(cfg))
    await role.run_pass()
    assert role.stats.corrupt_found == 1 and role.stats.repaired == 1
    assert await nodes[0].store.get(victim) == data


async def test_refetch_refuses_wrong_bytes_and_reports_when_no_replica_has_it(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    nodes, members = await fake_cluster(2)
    data = os.urandom(4096)
    cid = chunk_id_of(data)
    await nodes[0].store.put(cid, data)
    nodes[0].store.corrupt(cid)
    cfg = config(tmp_path, "n1", replicas=2)
    role = ScrubRole(cfg, nodes[0].store, members, peers(cfg))
    await role.run_pass()  # n2 never had it
    assert role.stats.corrupt_found == 1 and role.stats.refetch_failed == 1
    assert await nodes[0].store.has([cid]) == [False]


class _LyingChunks(pb_grpc.ChunksServicer):
    """A peer that answers every Get with bytes that do not match the id."""

    async def Get(
        self, request: pb.GetChunkRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetChunkReply:
        return pb.GetChunkReply(data=b"not the chunk")


async def test_refetch_never_stores_bytes_that_fail_sha256(
    peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ChunksServicer_to_server(_LyingChunks(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    store = MemoryChunkStore()
    try:
        members = Members(
            [
                {"id": "n1", "grpc": "127.0.0.1:1", "raft": "", "state": "active"},
                {"id": "n2", "grpc": f"127.0.0.1:{port}", "raft": "", "state": "active"},
            ]
        )
        cfg = config(tmp_path, "n1", replicas=2)
        role = ScrubRole(cfg, store, members, peers(cfg))
        cid = chunk_id_of(b"the real chunk")
        assert await role.refetcher.refetch(cid) is False
        assert await store.has([cid]) == [False]
    finally:
        await server.stop(None)
        store.close()


async def test_a_get_that_finds_corruption_schedules_the_refetch(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    nodes, members = await fake_cluster(2)
    chunks = await _put_everywhere([n.store for n in nodes], 1)
    cid, data = chunks[0]
    cfg = config(tmp_path, "n1", replicas=2)
    role = ScrubRole(cfg, nodes[0].store, members, peers(cfg))
    server = grpc.aio.server()
    add_to_server(server, nodes[0].store, on_corrupt=role.refetcher.schedule)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    nodes[0].store.corrupt(cid)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.ChunksStub(channel).Get(pb.GetChunkRequest(id=cid))
            assert err.value.code() == grpc.StatusCode.DATA_LOSS
        for _ in range(100):
            if (await nodes[0].store.has([cid]))[0]:
                break
            await asyncio.sleep(0.02)
        assert await nodes[0].store.get(cid) == data
        assert role.stats.repaired == 1
    finally:
        await server.stop(None)
        await role.close()

"""The Chunks gRPC service, called through the generated stub against a real grpc.aio server
on 127.0.0.1 backed by an LmdbChunkStore in tmp_path."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from cargohold.config import NodeConfig
from cargohold.digests import checksum_of
from cargohold.errors import (
    ChunkCorrupt,
    ChunkMissing,
    DigestInvalid,
    RegistryError,
    StorageFull,
    from_grpc_details,
)
from cargohold.pack_items import item_error
from cargohold.wire import encode_put
from node.chunk_service import add_to_server
from node.chunkstore import ChunkStore, LmdbChunkStore
from node.metrics import PackCounts
from protos import registry_pb2 as pb
from protos import registry_pb2_grpc as pb_grpc

MiB = 1024 * 1024
CFG = NodeConfig(chunk_list_page_size=4, chunk_list_page_max=5)
OPTIONS = [
    ("grpc.max_send_message_length", CFG.grpc_max_message),
    ("grpc.max_receive_message_length", CFG.grpc_max_message),
]

Serve = Callable[..., Awaitable[pb_grpc.ChunksStub]]
ServeChannel = Callable[..., Awaitable[grpc.aio.Channel]]


@pytest.fixture
async def serve_channel() -> AsyncIterator[ServeChannel]:
    """Start a Chunks server for a store on 127.0.0.1:0 and answer a channel to it; both
    stopped after."""
    running: list[tuple[grpc.aio.Server, grpc.aio.Channel]] = []

    async def start(
        store: ChunkStore, cfg: NodeConfig = CFG, packs: PackCounts | None = None
    ) -> grpc.aio.Channel:
        server = grpc.aio.server(options=OPTIONS)
        add_to_server(server, store, cfg, packs=packs)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
        running.append((server, channel))
        return channel

    try:
        yield start
    finally:
        for server, channel in running:
            await channel.close()
            await server.stop(None)


@pytest.fixture
def serve(serve_channel: ServeChannel) -> Serve:
    """`serve_channel`, answering the Chunks stub on that channel."""

    async def start(store: ChunkStore, cfg: NodeConfig = CFG) -> pb_grpc.ChunksStub:
        return pb_grpc.ChunksStub(await serve_channel(store, cfg))

    return start


@pytest.fixture
async def stub(serve: Serve, lmdb_chunk_store: LmdbChunkStore) -> pb_grpc.ChunksStub:
    return await serve(lmdb_chunk_store)


def random_chunk(size: int) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    return hashlib.sha256(data).digest(), data


def decoded(exc: grpc.aio.AioRpcError) -> RegistryError | None:
    return from_grpc_details(exc.details())


async def test_put_then_get_a_4mib_chunk(stub: pb_grpc.ChunksStub) -> None:
    cid, data = random_chunk(4 * MiB)
    reply = await stub.Put(pb.PutChunkRequest(id=cid, data=data))
    assert reply.existed is False
    reply = await stub.Put(pb.PutChunkRequest(id=cid, data=data, checksum=checksum_of(data)))
    assert reply.existed is True
    got = await stub.Get(pb.GetChunkRequest(id=cid))
    assert got.data == data
    assert got.checksum == checksum_of(data)


async def test_get_missing_is_not_found(stub: pb_grpc.ChunksStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Get(pb.GetChunkRequest(id=hashlib.sha256(b"nope").digest()))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert isinstance(decoded(info.value), ChunkMissing)


async def test_put_with_wrong_id_or_checksum_is_invalid_argument(stub: pb_grpc.ChunksStub) -> None:
    cid, data = random_chunk(1000)
    for request in (
        pb.PutChunkRequest(id=hashlib.sha256(b"x").digest(), data=data),
        pb.PutChunkRequest(id=cid, data=data, checksum=b"\1" * 16),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Put(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert isinstance(decoded(info.value), DigestInvalid)
    assert (await stub.Has(pb.HasChunksRequest(ids=[cid]))).present == [False]


async def test_put_with_checksum_trusts_the_gateway_id_unless_configured(
    serve: Serve, tmp_path: Path
) -> None:
    """Default: a Put with a checksum is checked by xxh3 only (the gateway computed the id
    from the bytes); `verify_put_sha256` re-hashes the id too; no checksum = sha256 always."""
    _, data = random_chunk(1000)
    forged = hashlib.sha256(b"not these bytes").digest()
    trusting = await serve(LmdbChunkStore(str(tmp_path / "a"), 64 * MiB, 16, 16 * MiB))
    reply = await trusting.Put(pb.PutChunkRequest(id=forged, data=data, checksum=checksum_of(data)))
    assert reply.existed is False
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trusting.Put(pb.PutChunkRequest(id=forged, data=data))
    assert isinstance(decoded(info.value), DigestInvalid)
    strict_cfg = NodeConfig(verify_put_sha256=True)
    strict = await serve(LmdbChunkStore(str(tmp_path / "b"), 64 * MiB, 16, 16 * MiB), strict_cfg)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await strict.Put(pb.PutChunkRequest(id=forged, data=data, checksum=checksum_of(data)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(decoded(info.value), DigestInvalid)
    assert (await strict.Has(pb.HasChunksRequest(ids=[forged]))).present == [False]


async def test_put_and_get_of_an_empty_chunk(stub: pb_grpc.ChunksStub) -> None:
    cid = hashlib.sha256(b"").digest()
    assert (await stub.Put(pb.PutChunkRequest(id=cid, checksum=checksum_of(b"")))).existed is False
    got = await stub.Get(pb.GetChunkRequest(id=cid))
    assert got.data == b""
    assert got.checksum == checksum_of(b"")


async def test_malformed_put_is_invalid_argument(lmdb_chunk_store: LmdbChunkStore) -> None:
    server = grpc.aio.server(options=OPTIONS)
    add_to_server(server, lmdb_chunk_store, CFG)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
    try:
        call = channel.unary_unary(
            "/cargohold.v1.Chunks/Put",
            request_serializer=None,
            response_deserializer=pb.PutChunkReply.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"\x0a\xff")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
        await server.stop(None)


async def test_corrupt_copy_is_data_loss_then_gone(
    stub: pb_grpc.ChunksStub, lmdb_chunk_store: LmdbChunkStore
) -> None:
    cid, data = random_chunk(64 * 1024)
    await stub.Put(pb.PutChunkRequest(id=cid, data=data))
    with lmdb_chunk_store._env.begin(write=True) as txn:
        value = bytearray(txn.get(cid, db=lmdb_chunk_store._chunks))
        value[100] ^= 0x10
        txn.put(cid, bytes(value), db=lmdb_chunk_store._chunks)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Get(pb.GetChunkRequest(id=cid))
    assert info.value.code() == grpc.StatusCode.DATA_LOSS
    assert isinstance(decoded(info.value), ChunkCorrupt)
    assert (await stub.Has(pb.HasChunksRequest(ids=[cid]))).present == [False]
    assert (await lmdb_chunk_store.stats()).quarantined == 1


async def test_has_and_delete(stub: pb_grpc.ChunksStub) -> None:
    a, b = random_chunk(10), random_chunk(0)
    missing = hashlib.sha256(b"missing").digest()
    await stub.Put(pb.PutChunkRequest(id=a[0], data=a[1]))
    await stub.Put(pb.PutChunkRequest(id=b[0], data=b[1]))
    has = await stub.Has(pb.HasChunksRequest(ids=[a[0], missing, b[0]]))
    assert list(has.present) == [True, False, True]
    deleted = await stub.Delete(pb.DeleteChunksRequest(ids=[a[0], missing]))
    assert deleted.deleted == 1
    assert (await stub.Has(pb.HasChunksRequest(ids=[a[0], b[0]]))).present == [False, True]
    assert (await stub.Get(pb.GetChunkRequest(id=b[0]))).data == b""


async def _list(
    stub: pb_grpc.ChunksStub, after: bytes = b"", page_size: int = 0
) -> list[list[tuple[bytes, int]]]:
    pages = []
    async for reply in stub.List(pb.ListChunksRequest(after=after, page_size=page_size)):
        assert len(reply.ids) == len(reply.sizes)
        pages.append(list(zip(reply.ids, reply.sizes, strict=True)))
    return pages


async def test_list_streams_every_id_in_pages(stub: pb_grpc.ChunksStub) -> None:
    assert await _list(stub) == []
    chunks = [random_chunk(n) for n in range(11)]
    for cid, data in chunks:
        await stub.Put(pb.PutChunkRequest(id=cid, data=data))
    expected = sorted((cid, len(data)) for cid, data in chunks)
    pages = await _list(stub, page_size=3)
    assert [len(p) for p in pages] == [3, 3, 3, 2]
    assert [e for p in pages for e in p] == expected
    # 0 means the configured default page (4); a page above the maximum (5) is capped.
    assert [len(p) for p in await _list(stub)] == [4, 4, 3]
    assert [len(p) for p in await _list(stub, page_size=1000)] == [5, 5, 1]
    tail = await _list(stub, after=expected[7][0], page_size=3)
    assert [e for p in tail for e in p] == expected[8:]


async def test_full_node_is_resource_exhausted(
    serve: Serve, open_lmdb_store: Callable[..., LmdbChunkStore]
) -> None:
    stub = await serve(open_lmdb_store(map_size=2 * MiB))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        for _ in range(16):
            cid, data = random_chunk(256 * 1024)
            await stub.Put(pb.PutChunkRequest(id=cid, data=data))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert isinstance(decoded(info.value), StorageFull)


async def test_a_probe_only_has_is_no_use_for_gc(
    stub: pb_grpc.ChunksStub, lmdb_chunk_store: LmdbChunkStore
) -> None:
    """A node's internal probe (repair) leaves no touch; a gateway's Has (the default) does."""
    cid, data = random_chunk(10)
    await stub.Put(pb.PutChunkRequest(id=cid, data=data))
    written = lmdb_chunk_store.touches.last(cid)
    probe = await stub.Has(pb.HasChunksRequest(ids=[cid], probe_only=True))
    assert list(probe.present) == [True]
    assert lmdb_chunk_store.touches.last(cid) == written
    assert list((await stub.Has(pb.HasChunksRequest(ids=[cid]))).present) == [True]
    assert lmdb_chunk_store.touches.last(cid) > written


async def test_put_many_stores_each_put_and_answers_each_as_its_own_put(
    serve_channel: ServeChannel, lmdb_chunk_store: LmdbChunkStore
) -> None:
    """Items in order: stored, stored before, bad checksum, malformed, id not the data's;
    each error item is what the single Put answers (code, details, detail trailer)."""
    packs = PackCounts()
    channel = await serve_channel(lmdb_chunk_store, packs=packs)
    stub = pb_grpc.ChunksStub(channel)
    put_raw = channel.unary_unary(
        "/cargohold.v1.Chunks/Put", response_deserializer=pb.PutChunkReply.FromString
    )
    fresh = [random_chunk(size) for size in (1, 1000, 64 * 1024)]
    known_id, known = random_chunk(10)
    await stub.Put(pb.PutChunkRequest(id=known_id, data=known))
    puts = [
        *(encode_put(cid, [data], checksum_of(data)) for cid, data in fresh),
        encode_put(known_id, [known], checksum_of(known)),
        encode_put(fresh[0][0], [fresh[0][1]], b"\1" * 16),  # a wrong checksum
        b"\xff\xff",  # not a PutChunkRequest
        encode_put(hashlib.sha256(b"x").digest(), [known], b""),  # not the data's id
    ]
    reply = await stub.PutMany(pb.PutManyRequest(puts=puts, request_ids=["req-1"]))
    assert len(reply.items) == len(puts)
    assert [item.code for item in reply.items[:4]] == [0, 0, 0, 0]
    oks = [pb.PutChunkReply.FromString(item.reply) for item in reply.items[:4]]
    assert [r.existed for r in oks] == [False, False, False, True]
    for cid, data in fresh:
        assert (await stub.Get(pb.GetChunkRequest(id=cid))).data == data
    for item, single in zip(reply.items[4:], puts[4:], strict=True):
        packed = item_error(item)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await put_raw(single)
        assert packed.code() == info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert packed.details() == info.value.details()
        assert isinstance(decoded(packed), DigestInvalid)
    assert packs.calls["Chunks/PutMany"] == 1
    assert packs.requests["Chunks/PutMany"] == len(puts)


async def test_put_many_on_a_full_node_carries_the_storage_full_detail(
    serve: Serve, open_lmdb_store: Callable[..., LmdbChunkStore]
) -> None:
    stub = await serve(open_lmdb_store(map_size=2 * MiB))
    chunks = [random_chunk(256 * 1024) for _ in range(16)]
    reply = await stub.PutMany(
        pb.PutManyRequest(puts=[encode_put(c, [d], checksum_of(d)) for c, d in chunks])
    )
    full = [item for item in reply.items if item.code]
    assert full, "a 2 MiB map cannot take 4 MiB of chunks"
    err = item_error(full[0])
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    refused = from_grpc_details(err.details(), err.trailing_metadata())
    assert isinstance(refused, StorageFull)
    # The single call's trailer carries the same detail (the node's disk figures).
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Put(pb.PutChunkRequest(id=chunks[-1][0], data=chunks[-1][1]))
    single = from_grpc_details(info.value.details(), info.value.trailing_metadata())
    assert isinstance(single, StorageFull)
    assert isinstance(refused.detail, dict) and isinstance(single.detail, dict)
    assert set(refused.detail) == set(single.detail)


async def test_a_malformed_put_many_fails_as_a_whole(
    serve_channel: ServeChannel, lmdb_chunk_store: LmdbChunkStore
) -> None:
    channel = await serve_channel(lmdb_chunk_store)
    put_many = channel.unary_unary("/cargohold.v1.Chunks/PutMany")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await put_many(b"\x0a\xff")  # a puts field longer than the message
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

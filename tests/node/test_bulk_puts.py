"""The node's bulk put port (node/bulk_puts.py), a real server on 127.0.0.1 in front of a
real LmdbChunkStore in tmp_path, driven by the gateway's client (`BulkPuts`) and, for what
a well-behaved client never sends, by a raw socket."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from cargohold.bulk_wire import BULK_METHOD, PUT, PUT_MAGIC, REPLY, hello, put_header
from cargohold.cluster_auth import Credential, role_key, sign
from cargohold.config import Config
from cargohold.digests import checksum_of
from cargohold.errors import DigestInvalid, StorageFull, from_grpc_details
from cargohold.wire import encode_put
from gateway.cluster.bulk_puts import BulkPuts
from node.bulk_puts import BulkPutServer, FrameBuffers
from node.chunkstore import LmdbChunkStore
from node.memstore import MemoryChunkStore
from protos import registry_pb2 as pb
from tests.bulk_kit import SECRET, FakeNode, bulk_config, chunk, serve_bulk

MiB = 1024 * 1024


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LmdbChunkStore]:
    s = LmdbChunkStore(str(tmp_path / "chunks"), 1 << 30, 64, 64 * MiB)
    yield s
    s.close()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., BulkPutServer]]:
    started: list[BulkPutServer] = []

    async def start(put_value: object, cfg: Config | None = None) -> BulkPutServer:
        server = await serve_bulk(put_value, cfg)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        await server.stop()


def gateway_config(secret: str = SECRET) -> Config:
    cfg = Config()
    cfg.cluster.secret = secret
    return cfg


async def connect(
    servers: Callable[..., BulkPutServer], put_value: object, cfg: Config | None = None
) -> tuple[BulkPutServer, BulkPuts, FakeNode]:
    """A bulk port storing with `put_value`, a gateway client (`cfg`, else the cluster's
    gateway config) and a node channel that names the port."""
    server = await servers(put_value)
    return server, BulkPuts(cfg or gateway_config()), FakeNode("n1:7001", bulk=server.address)


async def raw_connection(address: str, role: str = "gateway") -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    token = sign(Credential(role, role_key(SECRET, role)), BULK_METHOD)
    sock.sendall(hello(token))
    assert (await read_item(sock)).code == 0
    return sock


async def read_item(sock: socket.socket) -> pb.PackItem:
    def read() -> pb.PackItem:
        size = REPLY.unpack(_exactly(sock, REPLY.size))[0]
        return pb.PackItem.FromString(_exactly(sock, size))

    return await asyncio.to_thread(read)


def _exactly(sock: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        got = sock.recv(size - len(out))
        if not got:
            raise ConnectionError("closed")
        out += got
    return out


async def closed_by_peer(sock: socket.socket) -> bool:
    def read() -> bool:
        try:
            return sock.recv(1) == b""
        except ConnectionError:
            return True

    return await asyncio.to_thread(read)


async def test_a_put_is_stored_checked_and_answers_whether_it_existed(
    store: LmdbChunkStore, servers: Callable[..., BulkPutServer]
) -> None:
    server, client, node = await connect(
        servers, lambda cid, value: store.put_value(cid, value, verify_id=True)
    )
    chunk_id, data, request = chunk(3 * MiB + 5)
    first = await client.put(node, request, 10.0)  # type: ignore[arg-type]
    again = await client.put(node, request, 10.0)  # type: ignore[arg-type]
    assert first == pb.PutChunkReply(existed=False)
    assert again == pb.PutChunkReply(existed=True)
    assert await store.get(chunk_id) == data
    assert (client.sent, client.fallbacks) == (2, 0)
    assert node.chunks.asked == 1  # the address is asked once, the connection reused
    assert (server.counters.puts, server.counters.bytes) == (2, 2 * len(data))
    client.close()


async def test_a_wrong_checksum_or_id_is_refused_as_the_grpc_put_refuses_it(
    store: LmdbChunkStore, servers: Callable[..., BulkPutServer]
) -> None:
    _server, client, node = await connect(
        servers, lambda cid, value: store.put_value(cid, value, verify_id=True)
    )
    chunk_id, data, _ = chunk(MiB)
    bad_checksum = encode_put(chunk_id, [data], checksum_of(data[1:]))
    bad_id = encode_put(bytes(32), [data], checksum_of(data))
    for request in (bad_checksum, bad_id):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.put(node, request, 10.0)  # type: ignore[arg-type]
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = from_grpc_details(caught.value.details(), caught.value.trailing_metadata())
        assert isinstance(err, DigestInvalid)
    assert not (await store.has([chunk_id, bytes(32)]))[0]
    # Refused puts leave the connection usable.
    assert await client.put(node, chunk(MiB)[2], 10.0) is not None  # type: ignore[arg-type]
    client.close()


async def test_a_full_store_answers_storage_full(servers: Callable[..., BulkPutServer]) -> None:
    store = MemoryChunkStore(capacity_bytes=MiB)
    _server, client, node = await connect(servers, store.put_value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.put(node, chunk(2 * MiB)[2], 10.0)  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    err = from_grpc_details(caught.value.details(), caught.value.trailing_metadata())
    assert isinstance(err, StorageFull)
    client.close()


@pytest.mark.parametrize(
    ("secret", "role", "reason"),
    [("another-secret", "gateway", "bad signature"), (SECRET, "admin", "role admin")],
)
async def test_a_hello_the_matrix_refuses_sends_grpc_puts_instead(
    store: LmdbChunkStore,
    servers: Callable[..., BulkPutServer],
    secret: str,
    role: str,
    reason: str,
) -> None:
    cfg = gateway_config(secret)
    if role != "gateway":
        cfg.cluster.credential = f"{role}:{role_key(SECRET, role).hex()}"
    server, client, node = await connect(servers, store.put_value, cfg)
    assert await client.put(node, chunk(MiB)[2], 10.0) is None  # type: ignore[arg-type]
    assert client.fallbacks == 1 and server.counters.refused == 1
    assert server.counters.puts == 0
    # Not asked again until bulk_retry_seconds have passed.
    assert await client.put(node, chunk(MiB)[2], 10.0) is None  # type: ignore[arg-type]
    assert node.chunks.asked == 1
    client.close()


async def test_frames_it_cannot_take_end_the_connection(
    store: LmdbChunkStore, servers: Callable[..., BulkPutServer]
) -> None:
    server = await servers(store.put_value, bulk_config(grpc_max_message=2 * MiB))
    # Larger than the gRPC message limit: refused before a byte of data is read.
    sock = await raw_connection(server.address)
    sock.sendall(put_header("r1", bytes(32), bytes(16), 3 * MiB))
    item = await read_item(sock)
    assert item.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "exceeds" in item.details
    assert await closed_by_peer(sock)
    # Not a put frame.
    sock = await raw_connection(server.address)
    sock.sendall(PUT.pack(b"JUNK", 0, 10))
    assert (await read_item(sock)).code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert await closed_by_peer(sock)
    # Not a hello: nothing but the hello is read before authentication.
    host, _, port = server.address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(struct.pack(">4sH", PUT_MAGIC, 40) + b"x" * 40)
    assert (await read_item(sock)).code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert await closed_by_peer(sock)
    assert server.counters.refused == 3 and server.counters.puts == 0


async def test_silent_and_surplus_connections_are_closed(
    store: LmdbChunkStore, servers: Callable[..., BulkPutServer]
) -> None:
    server = await servers(
        store.put_value, bulk_config(bulk_idle_seconds=0.3, bulk_max_connections=1)
    )
    first = await raw_connection(server.address)
    # A second connection past the limit is closed on accept.
    host, _, port = server.address.rpartition(":")
    second = socket.create_connection((host, int(port)), timeout=10)
    assert await closed_by_peer(second)
    # Half a frame, then silence: closed after bulk_idle_seconds.
    first.sendall(put_header("r1", bytes(32), bytes(16), MiB) + b"x" * 1000)
    assert await closed_by_peer(first)
    await asyncio.sleep(0.1)
    assert server.open_connections == 0


async def test_a_connection_the_node_dropped_sends_that_put_by_grpc_and_asks_again_later(
    store: LmdbChunkStore, servers: Callable[..., BulkPutServer]
) -> None:
    cfg = gateway_config()
    cfg.gateway.bulk_retry_seconds = 0.2
    server, client, node = await connect(servers, store.put_value, cfg)
    assert await client.put(node, chunk(MiB)[2], 10.0) is not None  # type: ignore[arg-type]
    await server.stop()  # a restart: the pooled connection is gone
    restarted = await servers(store.put_value)
    node.bulk = restarted.address
    assert await client.put(node, chunk(MiB)[2], 10.0) is None  # type: ignore[arg-type]
    assert client.fallbacks == 1
    await asyncio.sleep(0.3)
    assert await client.put(node, chunk(MiB)[2], 10.0) is not None  # type: ignore[arg-type]
    assert node.chunks.asked == 2 and restarted.counters.puts == 1
    client.close()


async def test_a_put_without_a_reply_in_time_is_a_failed_put(
    servers: Callable[..., BulkPutServer],
) -> None:
    release = asyncio.Event()

    async def stuck(chunk_id: bytes, value: memoryview) -> bool:
        await release.wait()
        return False

    _server, client, node = await connect(servers, stuck)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.put(node, chunk(MiB)[2], 0.3)  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    release.set()
    client.close()


async def test_no_bulk_path_sends_grpc_puts(store: LmdbChunkStore) -> None:
    client = BulkPuts(gateway_config())
    for node in (FakeNode("n1:7001", bulk=""), FakeNode("n2:7001", unimplemented=True)):
        assert await client.put(node, chunk(MiB)[2], 10.0) is None  # type: ignore[arg-type]
    # With TLS on the gateway's channels, or bulk puts off, it does not even ask.
    tls = gateway_config()
    tls.cluster.tls_ca = "/nonexistent/ca.pem"
    off = gateway_config()
    off.gateway.bulk_puts = False
    for cfg in (tls, off):
        node = FakeNode("n3:7001", bulk="127.0.0.1:1")
        assert await BulkPuts(cfg).put(node, chunk(MiB)[2], 10.0) is None  # type: ignore[arg-type]
        assert node.chunks.asked == 0


def test_frame_buffers_are_reused_by_size_and_few_are_kept() -> None:
    buffers = FrameBuffers(keep=2)
    first = buffers.take(MiB)
    buffers.give(first)
    assert buffers.take(MiB) is first
    assert buffers.take(MiB) is not first  # taken: a new one
    given = [bytearray(size) for size in (1, 2, 3)]
    for buffer in given:
        buffers.give(buffer)
    assert buffers.take(2) is given[1] and buffers.take(3) is given[2]
    assert buffers.take(1) is not given[0]  # the oldest was dropped: a new one


async def test_a_port_that_keeps_refusing_is_tried_less_and_less_often() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: every connection is refused
    cfg = gateway_config()
    cfg.gateway.bulk_retry_seconds = 10.0
    client = BulkPuts(cfg)
    node = FakeNode("n1:7001", bulk=f"127.0.0.1:{port}")
    request = chunk(64 * 1024 + 1)[2]
    waits = []
    for _ in range(8):
        assert await client.put(node, request, 10.0) is None  # type: ignore[arg-type]
        state = client._nodes[node.address]
        waits.append(round(state.retry_at - time.monotonic()))
        state.retry_at = 0.0  # as if the wait had passed
    # Doubled for each refusal in a row, up to RETRY_MAX_SECONDS.
    assert waits == [10, 20, 40, 80, 160, 320, 600, 600]
    assert node.chunks.asked == 8 and client.fallbacks == 8

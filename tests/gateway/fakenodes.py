"""In-process fake storage nodes for the data-path tests: real gRPC, in-memory state.

`FakeNodes` starts N grpc.aio servers on 127.0.0.1 serving `Chunks`, `Metadata` and
`Admin`, all sharing one `FakeState` (standing in for the Raft-replicated metadata: the
real `MetadataState` behind fakecluster.InProcessMetadata). Each node keeps its
own chunk dict and can be told to misbehave: `down` (UNAVAILABLE), `corrupt` (flipped
bytes), `missing` (NOT_FOUND), `slow` (an `asyncio.Event` its Get waits on), `full`
(its disk above the watermark: Put answers StorageFull with its figures, Status says
`disk_full`), `packs = False` (a node from before `PutMany`/`Commands`: UNIMPLEMENTED);
each request of a pack runs through the same handler as its single call. So the real
`ClusterClient`, the upload pipeline and the handlers are exercised end to end without
processes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fakecluster import InProcessMetadata

from cargohold.config import Config
from cargohold.digests import checksum_of, chunk_id_of
from cargohold.errors import (
    DETAIL_TRAILER,
    ChunkMissing,
    RegistryError,
    StorageFull,
    Unavailable,
)
from cargohold.grpc_status import abort_with
from cargohold.metadata_api import MemberJoin
from cargohold.pack_items import ok_item, status_item
from gateway.app import build_app
from gateway.cluster import ClusterClient
from gateway.context import GatewayContext
from gateway.server import make_runner
from protos import registry_pb2 as pb
from protos import registry_pb2_grpc as pb_grpc


class FakeState(InProcessMetadata):
    """The real metadata state machine (one for all fake nodes, as Raft would make it),
    recording the commands and the queries the nodes receive."""

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.queries: list[str] = []

    @property
    def blobs(self) -> dict[str, Any]:
        return self.state.blobs

    def command(self, op: str, args: dict[str, Any]) -> Any:
        self.commands.append((op, args))
        return super().command(op, args)

    def query(self, op: str, args: dict[str, Any]) -> Any:
        self.queries.append(op)
        return super().query(op, args)


class FakeNode(pb_grpc.ChunksServicer, pb_grpc.MetadataServicer, pb_grpc.AdminServicer):
    def __init__(self, node_id: str, state: FakeState, cluster: FakeNodes) -> None:
        self.id = node_id
        self.state = state
        self.cluster = cluster
        self.chunks: dict[bytes, bytes] = {}
        self.down = False
        self.corrupt = False  # flipped bytes, the stored checksum
        self.lying = False  # flipped bytes with their own (matching) checksum
        self.missing = False
        self.slow: asyncio.Event | None = None  # Get waits for it
        self.hung_puts: asyncio.Event | None = None  # Put waits for it
        self.full = False
        self.lost_replies = 0  # Commands applied whose reply is lost (node died after commit)
        self.free_bytes = 1000  # what a full node reports (its reserve is 4000)
        self.packs = True  # serves PutMany/Commands (False: a node from before packs)
        self.put_many_calls = 0
        self.command_packs = 0
        self.puts = 0
        self.put_calls = 0
        self.gets = 0
        self.has_calls = 0
        self.server: grpc.aio.Server | None = None
        self.address = ""

    async def _gate(self, context: grpc.aio.ServicerContext) -> None:
        if self.down:
            await abort_with(context, Unavailable("node down"))

    async def Put(
        self, request: pb.PutChunkRequest, context: grpc.aio.ServicerContext
    ) -> pb.PutChunkReply:
        await self._gate(context)
        self.put_calls += 1
        if self.full:
            await abort_with(
                context,
                StorageFull(f"node {self.id} has no space", detail=self.disk_figures()),
            )
        if self.hung_puts is not None:
            await self.hung_puts.wait()
        assert chunk_id_of(request.data) == request.id
        assert checksum_of(request.data) == request.checksum
        self.puts += 1
        existed = request.id in self.chunks
        self.chunks[request.id] = bytes(request.data)
        return pb.PutChunkReply(existed=existed)

    async def PutMany(
        self, request: pb.PutManyRequest, context: grpc.aio.ServicerContext
    ) -> pb.PackReply:
        """Each put as `Put` would answer it (a node that predates packs: UNIMPLEMENTED)."""
        await self._packs_gate(context)
        self.put_many_calls += 1
        return await _each(
            [self.Put(pb.PutChunkRequest.FromString(raw), _ItemContext()) for raw in request.puts]
        )

    async def Commands(
        self, request: pb.MetadataPack, context: grpc.aio.ServicerContext
    ) -> pb.PackReply:
        """Each command as `Command` would answer it."""
        await self._packs_gate(context)
        self.command_packs += 1
        return await _each([self.Command(command, _ItemContext()) for command in request.commands])

    async def _packs_gate(self, context: grpc.aio.ServicerContext) -> None:
        await self._gate(context)
        if not self.packs:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    def disk_figures(self) -> dict[str, Any]:
        return {"node": self.id, "free_bytes": self.free_bytes, "reserve_bytes": 4000}

    async def Get(
        self, request: pb.GetChunkRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetChunkReply:
        await self._gate(context)
        self.gets += 1
        if self.slow is not None:
            await self.slow.wait()
        data = self.chunks.get(request.id)
        if data is None or self.missing:
            await abort_with(context, ChunkMissing())
        assert data is not None
        checksum = checksum_of(data)
        if self.corrupt or self.lying:
            data = bytes([data[0] ^ 1]) + data[1:]
        if self.lying:
            checksum = checksum_of(data)
        return pb.GetChunkReply(data=data, checksum=checksum)

    async def Has(
        self, request: pb.HasChunksRequest, context: grpc.aio.ServicerContext
    ) -> pb.HasChunksReply:
        await self._gate(context)
        self.has_calls += 1
        return pb.HasChunksReply(present=[i in self.chunks for i in request.ids])

    async def Command(
        self, request: pb.MetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.MetadataReply:
        await self._gate(context)
        try:
            result = self.state.command(request.op, json.loads(request.args or b"{}"))
        except RegistryError as err:
            await abort_with(context, err)
        if self.lost_replies:
            self.lost_replies -= 1
            await abort_with(context, Unavailable("reply lost after the commit"))
        return pb.MetadataReply(result=json.dumps(result).encode())

    async def Query(
        self, request: pb.MetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.MetadataReply:
        await self._gate(context)
        try:
            result = self.state.query(request.op, json.loads(request.args or b"{}"))
        except RegistryError as err:
            await abort_with(context, err)
        return pb.MetadataReply(result=json.dumps(result).encode())

    async def WatchAccess(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        # No leader to hold a lease from (as a follower answers): gateways over these fakes
        # fall back to the TTLs and revision reads.
        await abort_with(context, Unavailable("fake nodes grant no access lease"))
        yield  # pragma: no cover - a generator, as the real servicer

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusReply:
        await self._gate(context)
        leader = self.cluster.leader
        return pb.StatusReply(
            node_id=self.id,
            raft_address=f"raft-{self.id}",
            leader_raft_address=f"raft-{leader.id}" if leader else "",
            is_leader=leader is self,
            disk_full=self.full,
            disk_free_bytes=self.free_bytes,
            disk_reserve_bytes=4000,
            disk_capacity_bytes=100_000,
        )


class _ItemAbort(Exception):
    def __init__(self, item: pb.PackItem) -> None:
        super().__init__(item.details)
        self.item = item


class _ItemContext:
    """The context one request of a pack runs its single call's handler with: `abort`
    ends that request only, with the status the single call would have ended with."""

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing: Any = ()) -> None:
        detail = "".join(v for k, v in trailing or () if k == DETAIL_TRAILER)
        raise _ItemAbort(status_item(code, details, detail))


async def _each(calls: list[Any]) -> pb.PackReply:
    """The PackReply of a pack's single-call handlers, run at once."""

    async def one(call: Any) -> pb.PackItem:
        try:
            return ok_item((await call).SerializeToString())
        except _ItemAbort as abort:
            return abort.item

    return pb.PackReply(items=await asyncio.gather(*(one(c) for c in calls)))


class FakeNodes:
    """N fake nodes on loopback sharing one FakeState."""

    def __init__(
        self, count: int, server_credentials: grpc.ServerCredentials | None = None
    ) -> None:
        self.server_credentials = server_credentials
        self.state = FakeState()
        self.nodes = [FakeNode(f"n{i + 1}", self.state, self) for i in range(count)]
        self.leader: FakeNode | None = self.nodes[0] if self.nodes else None

    async def start(self) -> FakeNodes:
        for node in self.nodes:
            server = grpc.aio.server(
                options=[
                    ("grpc.max_send_message_length", 64 << 20),
                    ("grpc.max_receive_message_length", 64 << 20),
                ]
            )
            pb_grpc.add_ChunksServicer_to_server(node, server)
            pb_grpc.add_MetadataServicer_to_server(node, server)
            pb_grpc.add_AdminServicer_to_server(node, server)
            if self.server_credentials is None:
                port = server.add_insecure_port("127.0.0.1:0")
            else:
                port = server.add_secure_port("127.0.0.1:0", self.server_credentials)
            await server.start()
            node.server, node.address = server, f"127.0.0.1:{port}"
        for n in self.nodes:
            self.state.state.execute(MemberJoin(n.id, n.address, f"raft-{n.id}"))
        return self

    async def stop(self) -> None:
        for node in self.nodes:
            if node.server is not None:
                await node.server.stop(grace=None)

    def by_id(self, node_id: str) -> FakeNode:
        return next(n for n in self.nodes if n.id == node_id)

    def holders(self, chunk_id: bytes) -> list[str]:
        return [n.id for n in self.nodes if chunk_id in n.chunks]

    def config(
        self, replicas: int = 3, write_quorum: int = 2, chunk_size: int = 64 * 1024
    ) -> Config:
        cfg = Config()
        cfg.cluster.replicas = replicas
        cfg.cluster.write_quorum = write_quorum
        cfg.cluster.chunk_size = chunk_size
        cfg.gateway.nodes = [n.address for n in self.nodes]
        cfg.gateway.hedge_after_seconds = 0.05
        cfg.gateway.retry_backoff_seconds = 0.01
        cfg.gateway.metadata_retry_seconds = 0.2
        cfg.gateway.rpc_timeout_seconds = 5.0
        cfg.gateway.has_check_min_bytes = 32 * 1024
        return cfg


async def gateway_client(cfg: Config) -> AsyncIterator[tuple[TestClient, ClusterClient]]:
    """An in-process gateway (the real app) over a real ClusterClient; closed afterwards."""
    cluster = await ClusterClient.connect(cfg)
    client = TestClient(TestServer(build_app(GatewayContext(cfg=cfg, cluster=cluster))))
    await client.start_server()
    try:
        yield client, cluster
    finally:
        await client.close()
        await cluster.close()


@dataclass
class DataPath:
    """What a data-path HTTP test needs: the fake nodes, a gateway client, its cluster."""

    nodes: FakeNodes
    http: TestClient
    cluster: ClusterClient
    cfg: Config


async def data_path(count: int = 3, **cfg_overrides: Any) -> AsyncIterator[DataPath]:
    """Fake nodes plus one in-process gateway over them; everything stopped afterwards."""
    fake = await FakeNodes(count).start()
    cfg = fake.config(replicas=min(3, count), write_quorum=min(2, count))
    for key, value in cfg_overrides.items():
        section, _, name = key.partition("__")
        setattr(getattr(cfg, section), name, value)
    try:
        async for http, cluster in gateway_client(cfg):
            yield DataPath(fake, http, cluster, cfg)
    finally:
        await fake.stop()


async def production_server(cfg: Config, cluster: ClusterClient) -> AsyncIterator[str]:
    """The app served as gateway/server.py serves it (no handler cancellation on client
    disconnect, unlike aiohttp's TestServer); yields its base URL."""
    runner = make_runner(build_app(GatewayContext(cfg=cfg, cluster=cluster)), cfg)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        port = sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def vanish_mid_body(url: str, path: str, records: list[Any]) -> None:
    """GET `path` from the server at `url`, read the status line, then drop the connection
    without reading the body; return once the gateway logged `blob.client_gone` (among the
    captured `records`)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    writer.transport.abort()  # vanish without reading the body
    await eventually(
        lambda: any(r.getMessage() == "blob.client_gone" for r in records),
        "gateway saw the lost client",
    )


async def eventually(predicate: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Wait until `predicate()` holds; fail (not hang) if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)

"""In-process fake storage nodes for the repair and scrub tests: each is a real grpc.aio
server on 127.0.0.1 (Chunks over a MemoryChunkStore, plus an Admin.Status that answers the
health probe); `Members` is a MemberSource the test edits; `config` builds a node's Config.
Test modules import the fixtures `fake_cluster` and `peers` by their function names
(`fake_cluster_fixture`, `peers_fixture`) so that pytest finds them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from cargohold.config import Config
from node.chunk_service import add_to_server
from node.memstore import MemoryChunkStore
from node.peers import PeerPool
from protos import registry_pb2 as pb
from protos import registry_pb2_grpc as pb_grpc


class _Status(pb_grpc.AdminServicer):
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.disk_full = False  # what the health probe reports: set by a test

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusReply:
        return pb.StatusReply(node_id=self.node_id, disk_full=self.disk_full)


@dataclass
class FakeNode:
    id: str
    address: str
    store: MemoryChunkStore
    server: grpc.aio.Server | None
    status: _Status


@dataclass
class Members:
    """A MemberSource: the `members` query answered from a list the test edits."""

    rows: list[dict[str, str]] = field(default_factory=list)
    on_query: Callable[[], None] | None = None

    def local_query(self, op: str, args: dict[str, Any]) -> Any:
        assert op == "members"
        if self.on_query is not None:
            self.on_query()
        return [dict(r) for r in self.rows]

    def set_state(self, node_id: str, state: str) -> None:
        for row in self.rows:
            if row["id"] == node_id:
                row["state"] = state


Cluster = Callable[[int], Awaitable[tuple[list[FakeNode], Members]]]


@pytest.fixture(name="fake_cluster")
async def fake_cluster_fixture() -> AsyncIterator[Cluster]:
    nodes: list[FakeNode] = []

    async def make(count: int) -> tuple[list[FakeNode], Members]:
        members = Members()
        for k in range(count):
            node_id = f"n{k + 1}"
            store = MemoryChunkStore()
            server = grpc.aio.server()
            add_to_server(server, store)
            status = _Status(node_id)
            pb_grpc.add_AdminServicer_to_server(status, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            node = FakeNode(node_id, f"127.0.0.1:{port}", store, server, status)
            nodes.append(node)
            members.rows.append(
                {"id": node_id, "grpc": node.address, "raft": "", "state": "active"}
            )
        return nodes, members

    try:
        yield make
    finally:
        for node in nodes:
            if node.server is not None:
                await node.server.stop(None)
            node.store.close()


def config(tmp_path: Path, node_id: str, replicas: int, **node: Any) -> Config:
    cfg = Config()
    cfg.cluster.replicas = replicas
    cfg.cluster.write_quorum = 1
    cfg.node.id = node_id
    cfg.node.data_dir = str(tmp_path / node_id)
    cfg.node.repair_page_size = 8
    for key, value in node.items():
        setattr(cfg.node, key, value)
    os.makedirs(cfg.node.data_dir, exist_ok=True)
    return cfg


@pytest.fixture(name="peers")
async def peers_fixture() -> AsyncIterator[Callable[[Config], PeerPool]]:
    pools: list[PeerPool] = []

    def make(cfg: Config) -> PeerPool:
        pools.append(PeerPool(cfg))
        return pools[-1]

    try:
        yield make
    finally:
        for pool in pools:
            await pool.close()

"""A node's bulk put port in-process, and what the gateway's client needs of a node channel.

`serve_bulk` starts a real `BulkPutServer` (node/bulk_puts.py) on 127.0.0.1 in front of a
real chunk store; `FakeNode` stands in for a `NodeChannel`: its address, and a
`chunks.BulkAddress` that answers where that server listens (or what a test says).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from cargohold.config import Config
from cargohold.digests import checksum_of
from cargohold.wire import encode_put
from node.access import BULK_ROLES
from node.bulk_puts import BulkPutServer, PutValue
from protos import registry_pb2 as pb

SECRET = "bulk-test-secret"


def bulk_config(secret: str = SECRET, **node: Any) -> Config:
    cfg = Config()
    cfg.cluster.secret = secret
    cfg.node.grpc_listen = "127.0.0.1:0"
    cfg.node.bulk_listen = "127.0.0.1:0"
    for key, value in node.items():
        setattr(cfg.node, key, value)
    return cfg


async def serve_bulk(put_value: PutValue, cfg: Config | None = None) -> BulkPutServer:
    """A started bulk port; the caller stops it."""
    server = BulkPutServer(cfg or bulk_config(), put_value, BULK_ROLES, "127.0.0.1")
    await server.start()
    return server


def chunk(size: int) -> tuple[bytes, bytes, bytes]:
    """(id, data, encoded PutChunkRequest) of `size` random bytes."""
    data = os.urandom(size)
    chunk_id = hashlib.sha256(data).digest()
    return chunk_id, data, encode_put(chunk_id, [data], checksum_of(data))


@dataclass
class _Chunks:
    answer: Callable[[], Awaitable[pb.BulkAddressReply]]
    asked: int = 0

    async def BulkAddress(self, request: Any, **_: Any) -> pb.BulkAddressReply:
        self.asked += 1
        return await self.answer()


@dataclass
class FakeNode:
    """What `BulkPuts` uses of a `NodeChannel`."""

    address: str
    bulk: str = ""
    unimplemented: bool = False
    chunks: _Chunks = field(init=False)

    def __post_init__(self) -> None:
        async def answer() -> pb.BulkAddressReply:
            if self.unimplemented:
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    "Method not found!",
                )
            return pb.BulkAddressReply(address=self.bulk)

        self.chunks = _Chunks(answer)

"""Node -> node gRPC client: chunk copies for repair and scrub, and a cheap health view.

`PeerPool` keeps one channel per peer address in the `ChannelPool` the gateway's client
uses too (`cargohold.grpc_channels`: same options, TLS/mTLS) and offers exactly what the
background roles need: `has` (batched), `put`, `get`, `status`, `probe` and `live` (which
of some addresses answer `Admin.Status` within `peer_probe_timeout`, probed in parallel,
and what they answered: repair reads `disk_full` there). Failures surface as `Unavailable`
(the peer did not answer) or the `RegistryError` the peer sent (`from_grpc_details`),
never as raw gRPC errors, so callers handle one family of exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import grpc
import grpc.aio

from cargohold.config import Config
from cargohold.errors import RegistryError, Unavailable, from_grpc_details
from cargohold.grpc_channels import RETRYABLE, ChannelPool, NodeChannel
from protos import registry_pb2 as pb


def _error(address: str, exc: grpc.aio.AioRpcError) -> RegistryError:
    decoded = from_grpc_details(exc.details(), exc.trailing_metadata())
    if decoded is not None and exc.code() not in RETRYABLE:
        return decoded
    return Unavailable(f"peer {address}: {exc.code().name}", detail={"peer": address})


class PeerPool:
    """Channels to the other nodes; see the module docstring."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self._channels = ChannelPool(cfg)

    def _peer(self, address: str) -> NodeChannel:
        return self._channels.node(address)

    async def status(self, address: str, deadline: float | None = None) -> pb.StatusReply:
        try:
            return await self._peer(address).admin.Status(
                pb.StatusRequest(), timeout=deadline or self._cfg.node.peer_probe_timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(address, exc) from None

    async def live(self, addresses: Iterable[str]) -> set[str]:
        """The addresses that answer Admin.Status within `peer_probe_timeout`."""
        return set(await self.probe(addresses))

    async def probe(self, addresses: Iterable[str]) -> dict[str, pb.StatusReply]:
        """{address: its Admin.Status} for the addresses that answer within
        `peer_probe_timeout`, probed in parallel."""
        wanted = list(dict.fromkeys(addresses))

        async def one(address: str) -> pb.StatusReply | None:
            with contextlib.suppress(RegistryError):
                return await self.status(address)
            return None

        found = await asyncio.gather(*(one(a) for a in wanted))
        return {a: reply for a, reply in zip(wanted, found, strict=True) if reply is not None}

    async def has(self, address: str, ids: list[bytes]) -> list[bool]:
        """Which of `ids` the peer holds. A probe (`probe_only`): not a use for its GC."""
        if not ids:
            return []
        try:
            reply = await self._peer(address).chunks.Has(
                pb.HasChunksRequest(ids=ids, probe_only=True),
                timeout=self._cfg.node.peer_rpc_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(address, exc) from None
        if len(reply.present) != len(ids):
            raise Unavailable(f"peer {address}: Has answered {len(reply.present)} of {len(ids)}")
        return list(reply.present)

    async def put(self, address: str, chunk_id: bytes, data: bytes, checksum: bytes) -> bool:
        """Store a chunk on a peer (fsynced there); True when it already had it."""
        try:
            reply = await self._peer(address).chunks.Put(
                pb.PutChunkRequest(id=chunk_id, data=data, checksum=checksum),
                timeout=self._cfg.node.peer_rpc_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(address, exc) from None
        return bool(reply.existed)

    async def get(self, address: str, chunk_id: bytes) -> tuple[bytes, bytes]:
        """(data, checksum) as the peer verified them against its stored checksum."""
        try:
            reply = await self._peer(address).chunks.Get(
                pb.GetChunkRequest(id=chunk_id), timeout=self._cfg.node.peer_rpc_timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(address, exc) from None
        return reply.data, reply.checksum

    async def close(self) -> None:
        await self._channels.close()

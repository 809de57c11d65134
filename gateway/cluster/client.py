"""`ClusterClient`: the one object gateway handlers use to reach the storage nodes.

A facade over the parts of `gateway/cluster/`, each owning one job: node channels
(`cargohold.grpc_channels.ChannelPool`), the membership/leader view with its
recently-failed tracker (`membership`, `failures`), placement (`placement`), metadata
calls (`metadata`), chunk writes (`writes`) and chunk reads (`reads`). It wires them
together, starts and stops them in order, and forwards the handlers' calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

from cargohold.config import Config
from cargohold.errors import Unavailable
from cargohold.grpc_channels import ChannelPool
from cargohold.log import log_event
from gateway.cluster.background import BackgroundTasks
from gateway.cluster.local_reads import LocalChunkStore
from gateway.cluster.membership import Member, MembershipView
from gateway.cluster.metadata import MetadataClient
from gateway.cluster.placement import Placement
from gateway.cluster.reads import ChunkReader, LocalSlice
from gateway.cluster.writes import ChunkWriter, Offers

logger = logging.getLogger("cargohold.gateway.cluster")


class ClusterClient:
    """Metadata commands/queries and replicated chunk I/O against the storage nodes."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self.pool = ChannelPool(cfg)
        self.background = BackgroundTasks()
        self.view = MembershipView(cfg, self.pool, self.background)
        self.placer = Placement(cfg, self.view)
        self.metadata = MetadataClient(cfg, self.pool, self.view)
        self.writer = ChunkWriter(cfg, self.pool, self.view, self.placer, self.background)
        self.reader = ChunkReader(cfg, self.pool, self.view, self.placer, self.background)

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    async def connect(cls, cfg: Config) -> ClusterClient:
        """Open channels to the seeds, learn members and leader, start refreshing.

        A cluster that is not reachable yet is not an error here: requests answer 503
        until the periodic refresh finds it.
        """
        client = cls(cfg)
        try:
            await client.view.refresh()
        except Unavailable:
            log_event(
                logger,
                "cluster.unreachable_at_start",
                logging.WARNING,
                seeds=",".join(cfg.gateway.nodes),
            )
        client.view.start()
        return client

    async def close(self) -> None:
        """Stop refreshing, let background replica writes finish briefly, close channels."""
        await self.view.stop()
        await self.background.close(self._cfg.gateway.rpc_timeout_seconds)
        await self.pool.close()
        self.reader.close()
        self.writer.bulk.close()

    # -- membership -----------------------------------------------------------------------
    @property
    def members(self) -> list[Member]:
        return self.view.members

    @property
    def leader(self) -> str | None:
        return self.view.leader

    async def refresh(self) -> None:
        await self.view.refresh()

    def placement(self, chunk_id: bytes) -> list[Member]:
        """The R members that own this chunk (fewer when the cluster is smaller)."""
        return self.placer.owners(chunk_id)

    def read_order(self, chunk_id: bytes) -> list[Member]:
        """Owners first (healthy ones first), then every other member in rendezvous order."""
        return self.placer.read_order(chunk_id)

    # -- metadata -------------------------------------------------------------------------
    async def command(self, op: str, args: dict[str, Any]) -> Any:
        """A replicated Metadata.Command; retried across nodes (commands are idempotent)."""
        return await self.metadata.command(op, args)

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        """A Metadata.Query; linearizable ones wait for a Raft barrier on the node."""
        return await self.metadata.query(op, args, linearizable=linearizable)

    # -- chunks ---------------------------------------------------------------------------
    @property
    def write_slots(self) -> asyncio.Semaphore:
        """Gateway-wide bound on chunk writes in flight (see `gateway.chunking.ingest`)."""
        return self.writer.write_slots

    async def store_chunk(self, chunk_id: bytes, data: bytes) -> None:
        """Write one chunk to its R replicas; return once W fsynced it."""
        await self.writer.store_chunk(chunk_id, data)

    async def store_encoded(
        self, chunk_id: bytes, length: int, request: bytes, offers: Offers | None = None
    ) -> None:
        """`store_chunk` for a chunk already encoded as a PutChunkRequest (`encode_put`);
        `offers`: its upload body's `Has` offers (gateway/cluster/writes.py)."""
        await self.writer.store_encoded(chunk_id, length, request, offers)

    async def store_bytes(self, data: bytes) -> dict[str, Any]:
        """Chunk and replicate a small buffer (a manifest body); return its recipe."""
        return await self.writer.store_bytes(data)

    async def recipe_of(self, data: bytes) -> dict[str, Any]:
        """The recipe `store_bytes(data)` returns, computed without writing anything."""
        return await self.writer.recipe_of(data)

    async def read_chunk(
        self,
        chunk_hex: str,
        length: int | None = None,
        *,
        local_missing: bool = False,
        local_corrupt: bool = False,
    ) -> memoryview:
        """The verified bytes of one chunk (see `ChunkReader.read_chunk`)."""
        return await self.reader.read_chunk(
            chunk_hex, length, local_missing=local_missing, local_corrupt=local_corrupt
        )

    def read_range(
        self, recipe: dict[str, Any], start: int, end: int
    ) -> AsyncGenerator[memoryview, None]:
        """Verified bytes [start, end) of a recipe, with read-ahead; pieces in order."""
        return self.reader.read_range(recipe, start, end)

    def read_range_marked(
        self, recipe: dict[str, Any], start: int, end: int
    ) -> AsyncGenerator[memoryview | LocalSlice, None]:
        """`read_range` with `LocalSlice`s for chunks to send from the local store."""
        return self.reader.read_range_marked(recipe, start, end)

    @property
    def local_store(self) -> LocalChunkStore | None:
        """The co-located node's chunk store (gateway.local_node_data_dir), if any."""
        return self.reader.local

    async def read_all(self, recipe: dict[str, Any]) -> bytes:
        """The whole content of a (small) recipe."""
        return await self.reader.read_all(recipe)

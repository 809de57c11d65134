"""Scrub: the background role that re-reads every local chunk against its stored checksum,
and the re-fetch that replaces a corrupt copy with a good one from another replica.

`ScrubRole` runs a pass every `scrub_interval` seconds (or at once on `trigger()`, the
Admin `Trigger` RPC with role "scrub"), walking the chunk ids in key order and calling
`store.verify` on each, paced to `scrub_rate_bytes` per second. `verify` moves a copy that
fails its xxh3 checksum, or whose bytes do not hash (sha256) to its chunk id, to quarantine
(the chunk store owns that): a copy written with a matching checksum but other bytes is
caught too. Scrub then asks `Refetcher` for a good copy at once.

`Refetcher.schedule(id)` is also what the Chunks service calls when a `Get` finds a corrupt
copy, so a read that hit bit rot heals the copy in the background. It asks the other
non-removed members in rendezvous order for the chunk and stores the first copy that the
local store accepts: `store.put` re-hashes the bytes with sha256 against the chunk id, so a
peer's wrong bytes are refused (DigestInvalid) and the next peer is tried. Re-fetches of the
same chunk are coalesced. `progress()` is `Admin.Status.extra["scrub"]`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from cargohold.config import Config
from cargohold.errors import ChunkMissing, RegistryError
from cargohold.log import log_event
from cargohold.periodic import cancel_all_and_wait
from cargohold.placement import rank_nodes
from node.chunkstore import ChunkStore
from node.pacing import LoopedPassRole, PassSchedule, PassStats, RateLimiter
from node.peers import PeerPool
from node.repair import MemberSource, read_members

logger = logging.getLogger("cargohold.node.scrub")


@dataclass
class ScrubStats(PassStats):
    # Since the process started.
    chunks_scrubbed: int = 0
    bytes_scrubbed: int = 0
    corrupt_found: int = 0
    # Re-fetches (from scrub and from the Get path) that stored a good copy / found none.
    repaired: int = 0
    refetch_failed: int = 0


class Refetcher:
    """Fetch a good copy of a quarantined chunk from another replica; see the docstring."""

    def __init__(
        self,
        cfg: Config,
        store: ChunkStore,
        members: MemberSource,
        peers: PeerPool,
        stats: ScrubStats,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._members = members
        self._peers = peers
        self._stats = stats
        self._inflight: dict[bytes, asyncio.Task[bool]] = {}

    def schedule(self, chunk_id: bytes) -> None:
        """Start a re-fetch in the background (callable from any coroutine on the loop)."""
        if chunk_id not in self._inflight:
            log_event(logger, "scrub.refetch_scheduled", chunk=chunk_id.hex())
            self._start(chunk_id)

    def _start(self, chunk_id: bytes) -> asyncio.Task[bool]:
        task = asyncio.get_running_loop().create_task(self._refetch(chunk_id))
        self._inflight[chunk_id] = task
        task.add_done_callback(lambda _t: self._inflight.pop(chunk_id, None))
        return task

    async def refetch(self, chunk_id: bytes) -> bool:
        """Re-fetch now (joining one already running); True when a good copy is stored."""
        task = self._inflight.get(chunk_id) or self._start(chunk_id)
        return await asyncio.shield(task)

    async def _refetch(self, chunk_id: bytes) -> bool:
        me = self._cfg.node.id
        grpc = {
            i: addr
            for i, addr, state in read_members(self._members)
            if state != "removed" and i != me
        }
        for node in rank_nodes(chunk_id, grpc):
            try:
                data, checksum = await self._peers.get(grpc[node], chunk_id)
                await self._store.put(chunk_id, data, checksum or None)
            except RegistryError as exc:
                log_event(
                    logger,
                    "scrub.refetch_miss",
                    node=node,
                    chunk=chunk_id.hex(),
                    error=type(exc).__name__,
                )
                continue
            self._stats.repaired += 1
            log_event(logger, "scrub.refetched", logging.WARNING, node=node, chunk=chunk_id.hex())
            return True
        self._stats.refetch_failed += 1
        log_event(logger, "scrub.refetch_failed", logging.ERROR, chunk=chunk_id.hex())
        return False

    async def close(self) -> None:
        await cancel_all_and_wait(list(self._inflight.values()))


class ScrubRole(LoopedPassRole[ScrubStats]):
    def __init__(
        self, cfg: Config, store: ChunkStore, members: MemberSource, peers: PeerPool
    ) -> None:
        self._cfg = cfg
        self._store = store
        self.stats = ScrubStats()
        self.refetcher = Refetcher(cfg, store, members, peers, self.stats)
        self._schedule = PassSchedule(cfg.node.scrub_interval)
        self._rate = RateLimiter(cfg.node.scrub_rate_bytes)
        self._logger = logger

    async def run_pass(self, dry_run: bool = False) -> None:
        """Verify every chunk once (scrub has no rehearsal: `dry_run` is never asked)."""
        stats = self.stats
        stats.begin_pass()
        page_size = max(1, self._cfg.node.chunk_list_page_size)
        after = b""
        while True:
            page = await self._store.list_ids(after, page_size)
            for chunk_id, size in page:
                await self._rate.acquire(size)
                try:
                    intact = await self._store.verify(chunk_id)
                except ChunkMissing:
                    continue  # deleted since listed
                stats.chunks_scrubbed += 1
                stats.bytes_scrubbed += size
                if not intact:
                    stats.corrupt_found += 1
                    await self.refetcher.refetch(chunk_id)
            if len(page) < page_size:
                break
            after = page[-1][0]
        stats.end_pass()
        log_event(
            logger, "scrub.pass_done", chunks=stats.chunks_scrubbed, corrupt=stats.corrupt_found
        )

    async def close(self) -> None:
        await self.refetcher.close()

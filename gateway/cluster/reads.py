"""Chunk reads: placement order, hedged, shared, verified, read ahead.

Replicas are tried in `Placement.read_order`. Any error, NOT_FOUND or DATA_LOSS moves on
to the next one; a replica slower than `gateway.hedge_after_seconds` gets a hedged request
to the next, first good answer wins, and the replica outrun by a hedge is tried last for a
while (one hedge delay per hung node, not one per chunk). Replies are parsed as views into
the received message (`decode_get_reply`), not copied again.

Verification (`gateway.verify_reads`): "xxh3" checks the bytes against the checksum the
node sent, which the node checked its stored copy against before answering; the copy's
sha256 was checked against the chunk id when it was written. "sha256" re-hashes every
chunk against its id (also catches a node serving wrong bytes with a matching checksum),
at a CPU cost measured in bench/README.md.

`read_range` keeps `gateway.read_ahead_chunks` reads in flight ahead of the consumer.
Concurrent reads of one chunk share one node read (`gateway.share_chunk_reads`): chunks
are immutable and addressed by content, so a pull storm costs one read per chunk, not one
per client. A caller that goes away does not cancel the shared read.

Short-circuit local reads (`gateway.local_node_data_dir`, gateway/cluster/local_reads.py):
a chunk the co-located node holds is read from its LMDB, verified, before any gRPC; a
miss, or a local read slower than the hedge delay, goes the usual way, and a local copy
that fails its check is never served: the replicas are asked with the local node first,
so it notices the corruption itself.

For a zero-copy send (`read_range_marked`, gateway/local_send.py), a chunk the local store
holds (a lookup, in the read-ahead; the first chunk goes unlooked-up) is not read at all: a
`LocalSlice` stands in its place in the sequence, and the caller sends it from the store
itself (`LocalChunkStore.send`), or reads it with `read_chunk` when that finds it missing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import grpc.aio

from cargohold.concurrency import hash_off_loop
from cargohold.digests import checksum_of, chunk_id_of
from cargohold.errors import ChunkCorrupt, Unavailable
from cargohold.grpc_channels import RETRYABLE
from cargohold.log import log_event
from cargohold.request_ids import call_metadata
from cargohold.wire import decode_get_reply
from gateway.cluster.local_reads import LocalChunkStore, LocalCopyCorrupt
from gateway.cluster.membership import Member
from gateway.cluster.parts import ClusterParts, log_chunk_event
from protos import registry_pb2

logger = logging.getLogger("cargohold.gateway.cluster")


@dataclass(frozen=True)
class LocalSlice:
    """Bytes [lo, hi) of a chunk the local store held when looked up (not read yet)."""

    chunk_hex: str
    length: int
    lo: int
    hi: int


class ChunkReader(ClusterParts):
    """Verified chunk reads; see the module docstring."""

    def __post_init__(self) -> None:
        # Chunk reads in flight, shared by concurrent readers of the same chunk.
        self._reads: dict[tuple[str, int | None], asyncio.Task[memoryview]] = {}
        gw = self.cfg.gateway
        self.local: LocalChunkStore | None = (
            LocalChunkStore(gw.local_node_data_dir, gw.verify_reads, gw.sendfile_threads)
            if gw.local_node_data_dir
            else None
        )

    def close(self) -> None:
        if self.local is not None:
            self.local.close()

    async def read_chunk(
        self,
        chunk_hex: str,
        length: int | None = None,
        *,
        local_missing: bool = False,
        local_corrupt: bool = False,
    ) -> memoryview:
        """The verified bytes of one chunk from the first healthy replica, hedged.

        A read-only memoryview into the received message (no copy); bytes-like
        everywhere a `bytes` is (hashlib, `b"".join`, aiohttp's `write`). Concurrent
        callers for the same chunk share one read (and its result or error).
        After a `LocalChunkStore.send` the local store is not read again: it just found
        no copy (`local_missing`) or one that failed its check (`local_corrupt`: then the
        local node is asked first).
        """
        skip_local = local_missing or local_corrupt
        if not self.cfg.gateway.share_chunk_reads:
            return await self._read_chunk(chunk_hex, length, skip_local, local_corrupt)
        key = (chunk_hex, length)
        task = self._reads.get(key)
        if task is None:
            task = asyncio.create_task(
                self._read_chunk(chunk_hex, length, skip_local, local_corrupt)
            )
            self._reads[key] = task
            task.add_done_callback(functools.partial(self._read_done, key))
            self.background.track(task)
        return await asyncio.shield(task)

    def _read_done(self, key: tuple[str, int | None], task: asyncio.Task[memoryview]) -> None:
        if self._reads.get(key) is task:
            del self._reads[key]

    async def _read_chunk(
        self,
        chunk_hex: str,
        length: int | None,
        skip_local: bool = False,
        local_corrupt: bool = False,
    ) -> memoryview:
        chunk_id = bytes.fromhex(chunk_hex)
        if self.local is not None and not skip_local:
            try:
                data = await self._read_local(self.local, chunk_id, length)
            except LocalCopyCorrupt:
                local_corrupt = True
            else:
                if data is not None:
                    return memoryview(data)
        await self.view.ensure_members()
        order = self.placement.read_order(chunk_id)
        if not order:
            raise Unavailable("no storage node known")
        if local_corrupt:
            order = self._local_first(order)
        hedge = self.cfg.gateway.hedge_after_seconds
        pending: set[asyncio.Task[memoryview]] = set()
        owner: dict[asyncio.Task[memoryview], Member] = {}
        failures: list[str] = []
        next_index = 0

        def launch() -> None:
            nonlocal next_index
            member = order[next_index]
            next_index += 1
            task = asyncio.create_task(self._get_one(member, chunk_id, length))
            owner[task] = member
            pending.add(task)

        launch()
        try:
            while pending:
                more = next_index < len(order)
                done, pending = await asyncio.wait(
                    pending, timeout=hedge if more else None, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    log_event(logger, "cluster.read_hedged", logging.DEBUG, chunk=chunk_hex)
                    launch()
                    continue
                found: memoryview | None = None
                for task in done:
                    exc = task.exception()
                    if exc is not None:
                        failures.append(str(exc))
                    elif found is None:
                        found = task.result()
                if found is not None:
                    for task in pending:
                        self.view.failures.limit(owner[task].grpc)
                    return found
                if not pending and next_index < len(order):
                    launch()
        finally:
            for task in pending:
                task.cancel()
        log_event(
            logger,
            "cluster.chunk_unreadable",
            logging.WARNING,
            chunk=chunk_hex,
            errors="; ".join(failures),
        )
        raise Unavailable(
            "no replica could serve a chunk", detail={"chunk": chunk_hex, "errors": failures}
        )

    async def _read_local(
        self, local: LocalChunkStore, chunk_id: bytes, length: int | None
    ) -> bytes | None:
        """The local read, hedged like a replica: when the local disk takes longer than
        `gateway.hedge_after_seconds` (a cold page on a slow or failing disk), the chunk
        is read over gRPC instead and the local answer, when it comes, is dropped."""
        task = asyncio.ensure_future(local.read(chunk_id, length))
        try:
            return await asyncio.wait_for(
                asyncio.shield(task), self.cfg.gateway.hedge_after_seconds
            )
        except TimeoutError:
            task.add_done_callback(_drop_result)
            log_event(logger, "cluster.local_read_slow", logging.INFO, chunk=chunk_id.hex())
            return None

    def _local_first(self, order: list[Member]) -> list[Member]:
        """The read order with the local node first: its own read of the copy that failed
        here answers DATA_LOSS, quarantines it and re-fetches a good one (a healthy copy,
        e.g. rewritten meanwhile, it simply serves); the next replica serves otherwise."""
        local = self.cfg.gateway.local_node_id
        return sorted(order, key=lambda m: m.id != local) if local else order

    async def _get_one(self, member: Member, chunk_id: bytes, length: int | None) -> memoryview:
        node = self.pool.node(member.grpc)
        try:
            raw = await node.get_serialized(
                registry_pb2.GetChunkRequest(id=chunk_id),
                timeout=self.cfg.gateway.rpc_timeout_seconds,
                metadata=call_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in RETRYABLE:
                self.view.failures.record_failure(member.grpc)
            raise Unavailable(f"{member.id}: {exc.code().name}") from None
        try:
            data, checksum = decode_get_reply(raw)
        except ValueError:
            raise ChunkCorrupt(f"{member.id}: malformed reply") from None
        if length is not None and len(data) != length:
            raise ChunkCorrupt(f"{member.id}: length {len(data)} != {length}")
        if self.cfg.gateway.verify_reads == "xxh3" and checksum:
            ok = checksum_of(data) == checksum
        else:
            ok = await hash_off_loop(len(data), chunk_id_of, data) == chunk_id
        if not ok:
            log_chunk_event("cluster.chunk_corrupt_read", logging.WARNING, member, chunk_id)
            raise ChunkCorrupt(f"{member.id}: chunk failed verification")
        return data

    async def read_range(
        self, recipe: dict[str, Any], start: int, end: int
    ) -> AsyncGenerator[memoryview, None]:
        """Verified bytes [start, end) of a recipe, with read-ahead; pieces in order.

        Callers that may stop early should close it (`contextlib.aclosing`) so that the
        reads in flight are cancelled at once rather than at garbage collection.
        """
        async for piece in self._pieces(recipe, start, end, local_marks=False):
            assert isinstance(piece, memoryview)
            yield piece

    def read_range_marked(
        self, recipe: dict[str, Any], start: int, end: int
    ) -> AsyncGenerator[memoryview | LocalSlice, None]:
        """`read_range`, with a `LocalSlice` in place of each piece of a chunk the local
        store holds (module docstring); like `read_range` without a local store."""
        return self._pieces(recipe, start, end, local_marks=self.local is not None)

    async def _pieces(
        self, recipe: dict[str, Any], start: int, end: int, local_marks: bool
    ) -> AsyncGenerator[memoryview | LocalSlice, None]:
        wanted = list(_slices(_recipe_chunks(recipe), start, end))
        ahead = max(1, self.cfg.gateway.read_ahead_chunks)
        tasks: collections.deque[asyncio.Task[memoryview | None]] = collections.deque()
        scheduled = 0
        try:
            for chunk_hex, length, lo, hi in wanted:
                while scheduled < len(wanted) and len(tasks) < ahead:
                    next_hex, next_len = wanted[scheduled][:2]
                    read: Coroutine[Any, Any, memoryview | None]
                    if not local_marks:
                        read = self.read_chunk(next_hex, next_len)
                    elif scheduled == 0:
                        # Wanted at once: no lookup first (a thread hop of latency on
                        # every small blob); the send itself finds out, and reads it
                        # the usual way when it is not held.
                        read = _marked()
                    else:
                        read = self._read_unless_local(next_hex, next_len)
                    tasks.append(asyncio.create_task(read))
                    scheduled += 1
                data = await tasks.popleft()
                if data is None:
                    yield LocalSlice(chunk_hex, length, lo, hi)
                elif lo == 0 and hi == length:
                    yield data
                else:
                    yield data[lo:hi]
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_unless_local(self, chunk_hex: str, length: int) -> memoryview | None:
        """None when the local store holds the chunk (to be sent from there), else its
        bytes as `read_chunk` reads them."""
        assert self.local is not None
        if await self.local.holds(bytes.fromhex(chunk_hex)):
            return None
        return await self.read_chunk(chunk_hex, length)

    async def read_all(self, recipe: dict[str, Any]) -> bytes:
        """The whole content of a (small) recipe."""
        async with contextlib.aclosing(
            self.read_range(recipe, 0, int(recipe.get("size", 0)))
        ) as pieces:
            return b"".join([p async for p in pieces])


async def _marked() -> None:
    """A `LocalSlice` without a lookup (see `_pieces`)."""
    return None


def _drop_result(task: asyncio.Future[bytes | None]) -> None:
    """Retrieve an abandoned local read's outcome (its counters already counted it)."""
    if not task.cancelled():
        task.exception()


def _recipe_chunks(recipe: dict[str, Any]) -> list[tuple[str, int]]:
    return [(str(c[0]), int(c[1])) for c in recipe.get("chunks", [])]


def _slices(
    chunks: Iterable[tuple[str, int]], start: int, end: int
) -> Iterable[tuple[str, int, int, int]]:
    """(chunk, length, lo, hi) for every chunk overlapping [start, end), lo/hi chunk-local."""
    if end <= start:
        return
    offset = 0
    for chunk_hex, length in chunks:
        chunk_end = offset + length
        if chunk_end > start and offset < end:
            yield chunk_hex, length, max(start, offset) - offset, min(end, chunk_end) - offset
        if chunk_end >= end:
            return
        offset = chunk_end

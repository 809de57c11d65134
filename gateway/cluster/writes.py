"""Chunk writes: R replicas in parallel, done at W fsynced acks, spill-over, Has first.

All R replicas of a chunk are written at once from one serialized request
(`cargohold.wire.encode_put`); the call returns once W acknowledged. A replica that fails
is replaced by the next node in write order (`Placement.write_order`), so one dead node
does not fail writes when more nodes exist. Copies still running after W acks finish in
the background (spilling over too if they fail), bounded per node: past
`gateway.background_copies_per_node` of them on one node (a hung node) new ones are
given up for repair and that node is tried last for a while. A node that answers
`StorageFull` is marked full (`FullNodes`: no chunk writes for a while, reads as before)
and its copy spills over like a failed one. When W acks are impossible the write raises
`StorageFull` (507) if full nodes are why, naming every full node with the free and
reserved bytes it reported, else `Unavailable` (503). Chunks of
`gateway.has_check_min_bytes` or more are first offered with `Chunks.Has`, so a node that
holds one already is not sent the bytes again; within one upload body (`Offers`), only
until a node answers "absent": from then on the body is new content, and its later chunks
are sent without asking (a Has costs a gRPC round trip, ~0.7 ms of CPU on this project's
2-core test machine, per chunk and replica, and a chunk after a missing one is almost never held:
fixed-size chunks of different blobs do not line up; bench/README.md, "Has until the
first miss"). A blob pushed again, or one already stored under another repository, is
still offered chunk by chunk and sends nothing. Small chunks' Puts to a node that already
has calls in flight are packed into one `Chunks.PutMany` (gateway/cluster/packing.py);
each still fails or succeeds on its own, as its single Put would. Larger ones go to the
node's bulk port when it has one (gateway/cluster/bulk_puts.py), else as gRPC Puts.

`cargohold_gateway_replica_copies_in_flight` counts the copies still being written after
their chunk was acknowledged (spill-overs included): while it is above zero some chunks
have fewer than R copies yet. An operator reads it as replication lag; the benchmark
waits for it to reach zero before it measures pulls (bench/README.md), so a pull cell
does not pay for its own push's last copies.

Contract with garbage collection: between a chunk write (or a Has that answered
"present") and the `upload_append`/`blob_commit` that references it, nothing in Raft
references the chunk. GC must spare unreferenced chunks younger than a grace period
(longer than the longest PATCH), and a Has answering "present" must count as a use (or
GC must re-check references after deleting), or the Has skip must be turned off
(`gateway.has_check_min_bytes` above the chunk size) while GC runs. The nodes count it
(docs/operations.md, "Garbage collection"): this Has leaves `probe_only` unset, which only
the nodes' own repair probes set.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from dataclasses import dataclass
from typing import Any

import grpc.aio
from prometheus_client import Gauge

from cargohold.concurrency import hash_off_loop
from cargohold.digests import checksum_of, chunk_id_of
from cargohold.errors import StorageFull, Unavailable, from_grpc_details
from cargohold.grpc_channels import RETRYABLE
from cargohold.log import log_event
from cargohold.request_ids import call_metadata
from cargohold.wire import encode_put
from gateway.cluster.bulk_puts import BulkPuts
from gateway.cluster.membership import Member
from gateway.cluster.packing import CallPacker, ChunkPuts
from gateway.cluster.parts import ClusterParts, log_chunk_event
from protos import registry_pb2

logger = logging.getLogger("cargohold.gateway.cluster")

COPIES_IN_FLIGHT = Gauge(
    "cargohold_gateway_replica_copies_in_flight",
    "Chunk copies still being written after their chunk reached W acknowledgements "
    "(including spill-overs to spare nodes); 0 once every chunk has its R copies or was "
    "left to repair",
)


@dataclass
class Offers:
    """The `Has` offers of one upload body: `missed` once a node answered "absent" to one,
    after which the body's chunks go without an offer (see the module docstring)."""

    missed: bool = False


class ChunkWriter(ClusterParts):
    """Replicated chunk writes; see the module docstring."""

    def __post_init__(self) -> None:
        # Replica writes still running after their chunk reached W acks, per node address.
        self._lagging: collections.Counter[str] = collections.Counter()
        # Gateway-wide bound on chunk writes in flight (see `gateway.chunking.ingest`).
        self.write_slots = asyncio.Semaphore(self.cfg.gateway.chunk_writes_in_flight_total)
        # Small chunks' Puts to a node with calls in flight ride one PutMany (packing.py).
        self.puts = CallPacker(
            ChunkPuts(), self.cfg.gateway, item_max_bytes=self.cfg.gateway.pack_chunk_max_bytes
        )
        # Chunks too large to pack go to the node's bulk port when it has one (bulk_puts.py).
        self.bulk = BulkPuts(self.cfg)

    async def store_chunk(self, chunk_id: bytes, data: bytes) -> None:
        """Write one chunk to its R replicas; return once W fsynced it."""
        await self.store_encoded(
            chunk_id, len(data), encode_put(chunk_id, [data], checksum_of(data))
        )

    async def store_encoded(
        self, chunk_id: bytes, length: int, request: bytes, offers: Offers | None = None
    ) -> None:
        """`store_chunk` for a chunk already encoded as a PutChunkRequest (`encode_put`);
        `offers`: the body it belongs to, offered with `Has` only until its first miss."""
        await self.view.ensure_members()
        replicas, quorum = self.cfg.cluster.replicas, self.cfg.cluster.write_quorum
        queue = self.placement.write_order(chunk_id)
        if len(queue) < quorum or (len(queue) < replicas and self.view.settling()):
            # Too few members for W, or (shortly after start, a configured node not listed
            # yet) for R: the list may predate a node's join. Re-learn it before writing.
            await self.view.relearn_for_write()
            queue = self.placement.write_order(chunk_id)
        if len(queue) < quorum:
            raise Unavailable(
                "not enough active storage nodes",
                detail={"active": len(queue), "write_quorum": quorum},
            )
        pending: set[asyncio.Task[None]] = set()
        owner: dict[asyncio.Task[None], Member] = {}
        acks = 0
        failures: list[str] = []
        refused_full: list[Member] = []

        def launch() -> None:
            member = queue.pop(0)
            task = asyncio.create_task(self._put_one(member, chunk_id, length, request, offers))
            owner[task] = member
            pending.add(task)

        for _ in range(min(replicas, len(queue))):
            launch()
        relearned = False
        try:
            while acks < quorum:
                if (acks + len(pending) + len(queue) < quorum or not pending) and not relearned:
                    # Out of members to ask: the member list may be older than a node that
                    # joined since (learned while the cluster was starting). Re-learn it
                    # once and ask the members not asked yet before refusing the write.
                    relearned = True
                    await self.view.relearn_for_write()
                    asked = {m.id for m in owner.values()}
                    queue = [m for m in self.placement.write_order(chunk_id) if m.id not in asked]
                    while queue and len(pending) + acks < quorum:
                        launch()
                    if pending:
                        continue
                if acks + len(pending) + len(queue) < quorum or not pending:
                    self._log_refusal(chunk_id, acks, owner.values())
                    if refused_full:
                        raise self._storage_full(refused_full, failures)
                    raise Unavailable(
                        "write quorum not reachable",
                        detail={"chunk": chunk_id.hex(), "errors": failures},
                    )
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        acks += 1
                    else:
                        if isinstance(exc, StorageFull):
                            refused_full.append(owner[task])
                        else:
                            failures.append(str(exc))
                        if queue:
                            launch()
        except BaseException:
            for task in pending:
                task.cancel()
            raise
        for task in pending:
            self._finish_in_background(task, owner[task], queue, chunk_id, length, request)

    def _log_refusal(self, chunk_id: bytes, acks: int, asked: Any) -> None:
        """One line per refused chunk write: whom it asked and which members it knew."""
        log_event(
            logger,
            "cluster.chunk_write_refused",
            logging.WARNING,
            chunk=chunk_id.hex(),
            acks=acks,
            asked=",".join(m.id for m in asked),
            members=",".join(f"{m.id}/{m.state}" for m in self.view.members),
        )

    def _storage_full(self, refused: list[Member], failures: list[str]) -> StorageFull:
        """The refusal of a write that found fewer than W nodes with space: every active
        node known to be full (these refused it, others were skipped), with its figures."""
        quorum = self.cfg.cluster.write_quorum
        full = {m.id: m for m in refused}
        for node_id in self.view.active_ids():
            member = self.view.member(node_id)
            if self.view.full.is_full(member.grpc):
                full.setdefault(node_id, member)
        nodes = [
            {"node": node_id, **self.view.full.figures(m.grpc)}
            for node_id, m in sorted(full.items())
        ]
        detail: dict[str, Any] = {"nodes": nodes, "write_quorum": quorum}
        if failures:
            detail["errors"] = failures
        return StorageFull(
            f"the registry's storage is full: fewer than {quorum} storage nodes have space "
            f"for new data ({', '.join(sorted(full))} full)",
            detail=detail,
        )

    def _finish_in_background(
        self,
        task: asyncio.Task[None],
        member: Member,
        spare: list[Member],
        chunk_id: bytes,
        length: int,
        request: bytes,
    ) -> None:
        address = member.grpc
        if self._lagging[address] >= self.cfg.gateway.background_copies_per_node:
            # Copies beyond W pile up behind a hung node, each holding a chunk: give this
            # one up (repair restores it) and write around that node for a while.
            task.cancel()
            self.view.failures.limit(address)
            log_chunk_event("cluster.background_write_dropped", logging.INFO, member, chunk_id)
            return
        self._lagging[address] += 1
        task.add_done_callback(functools.partial(self._copy_done, address))
        copy = asyncio.create_task(self._finish_copy(task, list(spare), chunk_id, length, request))
        COPIES_IN_FLIGHT.inc()
        copy.add_done_callback(_copy_finished)
        self.background.track(copy)

    def _copy_done(self, address: str, _task: asyncio.Task[None]) -> None:
        self._lagging.subtract([address])

    async def _finish_copy(
        self,
        task: asyncio.Task[None],
        spare: list[Member],
        chunk_id: bytes,
        length: int,
        request: bytes,
    ) -> None:
        """A copy still running after W acks; if it fails, spill it to a spare node. When
        every spare fails too the chunk stays below R copies until repair restores it:
        say so once, at WARNING (the write itself was acknowledged at W)."""
        try:
            await task
            return
        except (Unavailable, StorageFull) as exc:
            reason = str(exc)
        for member in spare:
            try:
                await self._put_one(member, chunk_id, length, request)
                return
            except (Unavailable, StorageFull) as exc:
                reason = str(exc)
        log_event(
            logger,
            "cluster.background_copy_lost",
            logging.WARNING,
            chunk=chunk_id.hex(),
            spares=len(spare),
            error=reason,
        )

    async def _put_one(
        self,
        member: Member,
        chunk_id: bytes,
        length: int,
        request: bytes,
        offers: Offers | None = None,
    ) -> None:
        node = self.pool.node(member.grpc)
        timeout = self.cfg.gateway.rpc_timeout_seconds
        metadata = call_metadata()
        try:
            offered = offers is None or not offers.missed  # this body still offers
            if length >= self.cfg.gateway.has_check_min_bytes and offered:
                has = await node.chunks.Has(
                    registry_pb2.HasChunksRequest(ids=[chunk_id]),
                    timeout=timeout,
                    metadata=metadata,
                )
                if has.present and has.present[0]:
                    return
                if offers is not None:
                    offers.missed = True
            if length <= self.cfg.gateway.pack_chunk_max_bytes or (
                await self.bulk.put(node, request, timeout) is None
            ):
                await self.puts.call(node, request, length, timeout, metadata)
            self.view.full.clear(member.grpc)  # it took a chunk: it has space again
        except grpc.aio.AioRpcError as exc:
            err = from_grpc_details(exc.details(), exc.trailing_metadata())
            if isinstance(err, StorageFull):
                # Full, not failed: no writes for a while, reads as before.
                figures = err.detail if isinstance(err.detail, dict) else {}
                self.view.full.mark(member.grpc, {**figures, "node": member.id})
                log_chunk_event("cluster.node_full", logging.DEBUG, member, chunk_id)
                raise StorageFull(err.message, detail=self.view.full.figures(member.grpc)) from None
            if exc.code() in RETRYABLE:
                self.view.failures.record_failure(member.grpc)
            log_chunk_event(
                "cluster.chunk_put_failed", logging.DEBUG, member, chunk_id, code=exc.code().name
            )
            raise Unavailable(f"{member.id}: {exc.code().name}") from None

    async def store_bytes(self, data: bytes) -> dict[str, Any]:
        """Chunk and replicate a small buffer (a manifest body); return its recipe."""
        pieces, recipe = await split_bytes(data, self.cfg.cluster.chunk_size)
        await asyncio.gather(*(self.store_chunk(i, p) for i, p in pieces))
        return recipe

    async def recipe_of(self, data: bytes) -> dict[str, Any]:
        """The recipe `store_bytes(data)` returns, computed without writing anything."""
        _, recipe = await split_bytes(data, self.cfg.cluster.chunk_size)
        return recipe


async def split_bytes(
    data: bytes, chunk_size: int
) -> tuple[list[tuple[bytes, bytes]], dict[str, Any]]:
    """A small buffer cut as `store_bytes` stores it: (chunk id, piece) pairs, and the
    recipe (`{"size", "chunks": [[id hex, length], ...]}`) that names them."""
    view = memoryview(data)
    pieces = [bytes(view[i : i + chunk_size]) for i in range(0, len(data), chunk_size)]
    ids = [await hash_off_loop(len(p), chunk_id_of, p) for p in pieces]
    recipe = {
        "size": len(data),
        "chunks": [[i.hex(), len(p)] for i, p in zip(ids, pieces, strict=True)],
    }
    return list(zip(ids, pieces, strict=True)), recipe


def _copy_finished(_task: asyncio.Task[None]) -> None:
    """A background copy ended (written, spilled over, lost or cancelled)."""
    COPIES_IN_FLIGHT.dec()

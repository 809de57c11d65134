"""The gateway's cluster client: the only code in the gateway that speaks gRPC to nodes.

`ClusterClient` keeps one grpc.aio channel per node address and knows three things about
the cluster, all re-learned every `gateway.members_refresh_seconds` and soon after a
failure: the member list (the `members` query; seeds are `gateway.nodes`), which member
is the Raft leader (`Admin.Status`), and which nodes failed recently.

Metadata. `command`/`query` send JSON to the leader when known (a linearizable read or a
commit is cheapest there), else to any other member. UNAVAILABLE, DEADLINE_EXCEEDED and
connection errors move on to the next node after a doubling backoff, bounded by
`gateway.metadata_attempts` and `gateway.rpc_timeout_seconds` in total; that is safe
because every command is idempotent (protos/README.md). Any other failure is the
`RegistryError` the node sent (`from_grpc_details`); exhausted retries are `Unavailable`.

Chunk writes. Placement is rendezvous hashing of the chunk id over the ACTIVE members
(`cargohold.placement`). All R replicas are written in parallel, one serialized request
for all of them; the call returns once W of them acknowledged (fsynced). A replica that
fails is replaced by the next node in rendezvous order ("spill-over", repair moves it
home later), so one dead node does not fail writes when more nodes exist; a node that
was unreachable in the last seconds is tried after the others. Copies still running
after W acks finish in the background (and spill over too if they fail): tracked,
awaited (then cancelled) by `close()`, and bounded per node: past
`gateway.chunk_writes_in_flight_total` of them on one node (a hung node) new ones are
given up for repair and that node is avoided for a while. When W acks are impossible
the write raises `Unavailable`. Chunks of `gateway.has_check_min_bytes` or more are
first offered with `Chunks.Has`, so a node that already holds one is not sent the bytes
again; `Put` itself is idempotent, so an existing chunk never fails a write.
Contract with garbage collection: between a chunk write (or a Has that answered
"present") and the `upload_append`/`blob_commit` that references it, a chunk is
referenced by nothing in Raft. GC must therefore spare unreferenced chunks younger than
a grace period (longer than the longest PATCH), and a Has answering "present" must count
as a use (or GC must re-check references after deleting), or the Has skip must be
turned off (`gateway.has_check_min_bytes` above the chunk size) while GC runs.

Chunk reads. Replicas are tried in placement order (healthy nodes first, then the rest of
the members in rendezvous order, which finds spilled or not-yet-moved copies). Any error,
NOT_FOUND or DATA_LOSS moves on to the next replica; a replica slower than
`gateway.hedge_after_seconds` gets a hedged request to the next one, first good answer
wins; a replica outrun by a hedge is read after the others for a while. Replies are
parsed as views into the received message (`decode_get_reply`), not copied again.
Verification (`gateway.verify_reads`): "xxh3" (the default) checks the received bytes
against the xxh3 checksum the node sent, which the node itself verified its stored copy
against before answering (DATA_LOSS otherwise); the copy's sha256 was checked against
the chunk id by the node when it was written. So the bytes are verified end to end at
write and against bit rot and transit errors at read, for ~0.1 ms per 4 MiB. "sha256"
re-hashes every chunk against its id at read too (also catches a node that serves wrong
bytes with a matching checksum), in a worker thread: measured here it costs ~40% of the
gateway's CPU on a pull (0.51 vs 0.29 CPU-seconds per 256 MiB).
`read_range` keeps `gateway.read_ahead_chunks` chunk reads in flight ahead of the
consumer. Concurrent reads of the same chunk share one read (`gateway.share_chunk_reads`):
chunks are immutable and addressed by content, so a pull storm (many clients fetching one
image at once) costs the nodes one read per chunk, not one per client. Existence is not
shared: every blob request still asks its own linearizable `blob_get` first. A caller that
goes away does not cancel the shared read; `close()` waits for it like a background write.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from cargohold.config import Config
from cargohold.digests import checksum_of, chunk_id_of
from cargohold.errors import (
    ChunkCorrupt,
    RegistryError,
    Unavailable,
    from_grpc_details,
)
from cargohold.grpc_channels import channel_credentials, open_channel
from cargohold.log import log_event
from cargohold.placement import rank_nodes
from cargohold.wire import decode_bytes_fields, varint
from protos import registry_pb2, registry_pb2_grpc

logger = logging.getLogger("cargohold.gateway.cluster")

# Below this size hashing inline is cheaper than a thread hop.
_INLINE_HASH_BYTES = 64 * 1024
# A node that failed is tried last for this long.
_DOWN_SECONDS = 2.0
# Status/members look-ups are small: they get a short deadline.
_PROBE_TIMEOUT = 2.0
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class Member:
    id: str
    grpc: str
    raft: str
    state: str


class _Node:
    """One channel and its stubs."""

    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        self.address = address
        self.channel = channel
        self.chunks = registry_pb2_grpc.ChunksStub(channel)
        self.metadata = registry_pb2_grpc.MetadataStub(channel)
        self.admin = registry_pb2_grpc.AdminStub(channel)
        # Chunks.Put taking an already serialized PutChunkRequest: a chunk is serialized
        # once and the same bytes go to all R replicas.
        self.put_serialized = channel.unary_unary(
            "/cargohold.v1.Chunks/Put",
            request_serializer=None,
            response_deserializer=registry_pb2.PutChunkReply.FromString,
        )
        # Chunks.Get answering the serialized GetChunkReply, parsed by `decode_get_reply`
        # without copying the chunk's bytes again.
        self.get_serialized = channel.unary_unary(
            "/cargohold.v1.Chunks/Get",
            request_serializer=registry_pb2.GetChunkRequest.SerializeToString,
            response_deserializer=None,
        )


def _recipe_chunks(recipe: dict[str, Any]) -> list[tuple[str, int]]:
    return [(str(c[0]), int(c[1])) for c in recipe.get("chunks", [])]


class ClusterClient:
    """Metadata commands/queries and replicated chunk I/O against the storage nodes."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self._nodes: dict[str, _Node] = {}
        self._members: list[Member] = []
        self._by_id: dict[str, Member] = {}
        self._leader: str | None = None  # grpc address
        self._down_until: dict[str, float] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # Replica writes still running after their chunk reached W acks, per node address.
        self._lagging: collections.Counter[str] = collections.Counter()
        self._refresh_task: asyncio.Task[None] | None = None
        # Chunk reads in flight, shared by concurrent readers of the same chunk.
        self._reads: dict[tuple[str, int | None], asyncio.Task[memoryview]] = {}
        self._refresh_lock = asyncio.Lock()
        self._last_refresh = 0.0
        self._closed = False
        self._credentials = channel_credentials(cfg)
        # Gateway-wide bound on chunk writes in flight (see `gateway.chunking.ingest`).
        self.write_slots = asyncio.Semaphore(max(1, cfg.gateway.chunk_writes_in_flight_total))

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    async def connect(cls, cfg: Config) -> ClusterClient:
        """Open channels to the seeds, learn members and leader, start refreshing.

        A cluster that is not reachable yet is not an error here: requests answer 503
        until the periodic refresh finds it.
        """
        client = cls(cfg)
        try:
            await client.refresh()
        except Unavailable:
            log_event(
                logger,
                "cluster.unreachable_at_start",
                logging.WARNING,
                seeds=",".join(cfg.gateway.nodes),
            )
        client._refresh_task = asyncio.create_task(client._refresh_loop())
        return client

    async def close(self) -> None:
        """Stop refreshing, let background replica writes finish briefly, close channels."""
        self._closed = True
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        if self._background:
            _, pending = await asyncio.wait(
                set(self._background), timeout=self._cfg.gateway.rpc_timeout_seconds
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for node in list(self._nodes.values()):
            await node.channel.close()
        self._nodes.clear()

    def _node(self, address: str) -> _Node:
        node = self._nodes.get(address)
        if node is None:
            channel = open_channel(address, self._cfg, self._credentials)
            node = _Node(address, channel)
            self._nodes[address] = node
        return node

    def _track(self, task: asyncio.Task[Any]) -> None:
        """Keep a background task referenced until done; its failure is already logged."""
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed extra replica is left for repair

    # -- membership and leader ----------------------------------------------------------
    @property
    def members(self) -> list[Member]:
        return list(self._members)

    @property
    def leader(self) -> str | None:
        return self._leader

    def _mark_down(self, address: str) -> None:
        self._down_until[address] = time.monotonic() + _DOWN_SECONDS
        if address == self._leader:
            self._leader = None
        self._refresh_soon()

    def _is_down(self, address: str) -> bool:
        return self._down_until.get(address, 0.0) > time.monotonic()

    def _refresh_soon(self) -> None:
        if self._closed or self._refresh_lock.locked():
            return
        if time.monotonic() - self._last_refresh < 0.5:
            return
        self._track(asyncio.create_task(self._refresh_quietly()))

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(Unavailable):
            await self.refresh()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.gateway.members_refresh_seconds)
            try:
                await self.refresh()
            except Unavailable:
                log_event(logger, "cluster.refresh_failed", logging.DEBUG)

    def _probe_addresses(self) -> list[str]:
        seen: dict[str, None] = {}
        if self._leader:
            seen[self._leader] = None
        for m in self._members:
            if m.state != "removed":
                seen[m.grpc] = None
        for address in self._cfg.gateway.nodes:
            seen[address] = None
        healthy = [a for a in seen if not self._is_down(a)]
        return healthy + [a for a in seen if self._is_down(a)]

    async def refresh(self) -> None:
        """Re-learn the member list and the leader from the first node that answers and
        knows a Raft leader. A node that knows none (cut off from its peers by a partition,
        or an election is running) may hold a stale view and cannot serve linearizable
        metadata: its view is used only when no node knows a leader, and answering does not
        clear its "failed recently" mark (else a partitioned ex-leader, which still answers
        probes, would stay first in line for every query, each waiting out a barrier)."""
        async with self._refresh_lock:
            self._last_refresh = time.monotonic()
            leaderless: tuple[bytes, registry_pb2.StatusReply] | None = None
            for address in self._probe_addresses():
                node = self._node(address)
                try:
                    reply = await node.metadata.Query(
                        registry_pb2.MetadataRequest(op="members", args=b"{}"),
                        timeout=_PROBE_TIMEOUT,
                    )
                    status = await node.admin.Status(
                        registry_pb2.StatusRequest(), timeout=_PROBE_TIMEOUT
                    )
                except grpc.aio.AioRpcError:
                    self._down_until[address] = time.monotonic() + _DOWN_SECONDS
                    continue
                if not status.leader_raft_address:
                    if leaderless is None:
                        leaderless = (reply.result, status)
                    continue
                self._down_until.pop(address, None)
                await self._apply_view(reply.result, status)
                return
            if leaderless is not None:
                await self._apply_view(*leaderless)
                return
        raise Unavailable("no storage node answers", detail={"seeds": self._cfg.gateway.nodes})

    async def _apply_view(self, members_json: bytes, status: registry_pb2.StatusReply) -> None:
        members = [
            Member(
                str(m["id"]), str(m["grpc"]), str(m.get("raft", "")), str(m.get("state", "active"))
            )
            for m in json.loads(members_json or b"[]")
        ]
        if not members:
            # Not joined yet: the seeds themselves, as they name themselves.
            members = await self._members_from_seeds()
        self._set_members(members)
        self._set_leader(status)

    async def _members_from_seeds(self) -> list[Member]:
        found: list[Member] = []
        for address in self._cfg.gateway.nodes:
            with contextlib.suppress(grpc.aio.AioRpcError):
                status = await self._node(address).admin.Status(
                    registry_pb2.StatusRequest(), timeout=_PROBE_TIMEOUT
                )
                found.append(Member(status.node_id, address, status.raft_address, "active"))
        return found

    def _set_members(self, members: list[Member]) -> None:
        if members != self._members:
            log_event(
                logger,
                "cluster.members",
                members=",".join(f"{m.id}@{m.grpc}/{m.state}" for m in members),
            )
        self._members = members
        self._by_id = {m.id: m for m in members}

    def _set_leader(self, status: registry_pb2.StatusReply) -> None:
        leader = None
        if status.leader_raft_address:
            for m in self._members:
                if m.raft == status.leader_raft_address:
                    leader = m.grpc
        self._leader = leader

    async def _ensure_members(self) -> None:
        if not self._members:
            await self.refresh()

    # -- metadata -----------------------------------------------------------------------
    async def command(self, op: str, args: dict[str, Any]) -> Any:
        """A replicated Metadata.Command; retried across nodes (commands are idempotent)."""
        return await self._metadata(True, op, args, linearizable=False)

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        """A Metadata.Query; linearizable ones wait for a Raft barrier on the node."""
        return await self._metadata(False, op, args, linearizable=linearizable)

    def _metadata_targets(self) -> list[str]:
        order = self._probe_addresses()
        return order or list(self._cfg.gateway.nodes)

    async def _metadata(
        self, is_command: bool, op: str, args: dict[str, Any], linearizable: bool
    ) -> Any:
        gw = self._cfg.gateway
        request = registry_pb2.MetadataRequest(
            op=op, args=json.dumps(args, separators=(",", ":")).encode(), linearizable=linearizable
        )
        deadline = time.monotonic() + gw.rpc_timeout_seconds
        backoff = gw.retry_backoff_seconds
        last = "no node"
        for attempt in range(gw.metadata_attempts):
            targets = self._metadata_targets()
            address = targets[attempt % len(targets)]
            node = self._node(address)
            call = node.metadata.Command if is_command else node.metadata.Query
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                reply = await call(request, timeout=remaining)
            except grpc.aio.AioRpcError as exc:
                err = from_grpc_details(exc.details())
                if exc.code() in _RETRYABLE or isinstance(err, Unavailable):
                    last = f"{address}: {exc.code().name} {exc.details()}"
                    if err is None:  # the node itself is unreachable
                        self._mark_down(address)
                    else:  # it answers, but Raft could not (no leader, timeout)
                        if address == self._leader:
                            self._leader = None
                        self._refresh_soon()
                    log_event(
                        logger,
                        "cluster.metadata_retry",
                        logging.DEBUG,
                        op=op,
                        node=address,
                        code=exc.code().name,
                    )
                    await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                    backoff = min(backoff * 2, 1.0)
                    continue
                raise self._error(exc, err) from None
            return json.loads(reply.result) if reply.result else None
        raise Unavailable(detail={"op": op, "last": last})

    @staticmethod
    def _error(exc: grpc.aio.AioRpcError, decoded: RegistryError | None) -> RegistryError:
        if decoded is not None:
            return decoded
        return RegistryError(
            f"storage node error: {exc.code().name}", detail={"details": exc.details()}
        )

    # -- placement --------------------------------------------------------------------
    def _active_ids(self) -> list[str]:
        return [m.id for m in self._members if m.state == "active"]

    def placement(self, chunk_id: bytes) -> list[Member]:
        """The R members that own this chunk (fewer when the cluster is smaller)."""
        ranked = rank_nodes(chunk_id, self._active_ids())
        return [self._by_id[i] for i in ranked[: self._cfg.cluster.replicas]]

    def read_order(self, chunk_id: bytes) -> list[Member]:
        """Owners first (healthy ones first), then every other member in rendezvous order."""
        owners = self.placement(chunk_id)
        owner_ids = {m.id for m in owners}
        rest = [
            self._by_id[i]
            for i in rank_nodes(chunk_id, [m.id for m in self._members if m.state != "removed"])
            if i not in owner_ids
        ]
        healthy = [m for m in owners if not self._is_down(m.grpc)]
        return healthy + [m for m in owners if self._is_down(m.grpc)] + rest

    # -- chunk writes -------------------------------------------------------------------
    async def store_chunk(self, chunk_id: bytes, data: bytes) -> None:
        """Write one chunk to its R replicas; return once W fsynced it."""
        await self.store_encoded(
            chunk_id, len(data), encode_put(chunk_id, [data], len(data), checksum_of(data))
        )

    async def store_encoded(self, chunk_id: bytes, length: int, request: bytes) -> None:
        """`store_chunk` for a chunk already encoded as a PutChunkRequest (`encode_put`)."""
        await self._ensure_members()
        replicas, quorum = self._cfg.cluster.replicas, self._cfg.cluster.write_quorum
        candidates = [self._by_id[i] for i in rank_nodes(chunk_id, self._active_ids())]
        if len(candidates) < quorum:
            # A member list learned while nodes were still joining (or before a node was
            # added): re-learn it once before refusing the write.
            await self._refresh_quietly()
            candidates = [self._by_id[i] for i in rank_nodes(chunk_id, self._active_ids())]
        if len(candidates) < quorum:
            raise Unavailable(
                "not enough active storage nodes",
                detail={"active": len(candidates), "write_quorum": quorum},
            )
        # Nodes that failed recently are tried last: their copy spills to the next node.
        queue = [m for m in candidates if not self._is_down(m.grpc)] + [
            m for m in candidates if self._is_down(m.grpc)
        ]
        pending: set[asyncio.Task[None]] = set()
        owner: dict[asyncio.Task[None], Member] = {}
        acks = 0
        failures: list[str] = []

        def launch() -> None:
            member = queue.pop(0)
            task = asyncio.create_task(self._put_one(member, chunk_id, length, request))
            owner[task] = member
            pending.add(task)

        for _ in range(min(replicas, len(queue))):
            launch()
        try:
            while acks < quorum:
                if acks + len(pending) + len(queue) < quorum or not pending:
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
                        failures.append(str(exc))
                        if queue:
                            launch()
        except BaseException:
            for task in pending:
                task.cancel()
            raise
        limit = self._cfg.gateway.chunk_writes_in_flight_total
        for task in pending:
            address = owner[task].grpc
            if self._lagging[address] >= limit:
                # Copies beyond W pile up behind a hung node, each holding a chunk: give
                # this one up (repair restores it) and write around that node for a while.
                task.cancel()
                self._down_until[address] = time.monotonic() + _DOWN_SECONDS
                log_event(
                    logger,
                    "cluster.background_write_dropped",
                    logging.INFO,
                    node=owner[task].id,
                    chunk=chunk_id.hex(),
                )
                continue
            self._lagging[address] += 1
            task.add_done_callback(functools.partial(self._copy_done, address))
            self._track(
                asyncio.create_task(self._finish_copy(task, list(queue), chunk_id, length, request))
            )

    async def _finish_copy(
        self,
        task: asyncio.Task[None],
        spare: list[Member],
        chunk_id: bytes,
        length: int,
        request: bytes,
    ) -> None:
        """A copy still running after W acks; if it fails, spill it to a spare node."""
        try:
            await task
            return
        except Unavailable:
            pass
        for member in spare:
            with contextlib.suppress(Unavailable):
                await self._put_one(member, chunk_id, length, request)
                return

    async def _put_one(self, member: Member, chunk_id: bytes, length: int, request: bytes) -> None:
        node = self._node(member.grpc)
        timeout = self._cfg.gateway.rpc_timeout_seconds
        try:
            if length >= self._cfg.gateway.has_check_min_bytes:
                has = await node.chunks.Has(
                    registry_pb2.HasChunksRequest(ids=[chunk_id]), timeout=timeout
                )
                if has.present and has.present[0]:
                    return
            await node.put_serialized(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _RETRYABLE:
                self._mark_down(member.grpc)
            log_event(
                logger,
                "cluster.chunk_put_failed",
                logging.DEBUG,
                node=member.id,
                chunk=chunk_id.hex(),
                code=exc.code().name,
            )
            raise Unavailable(f"{member.id}: {exc.code().name}") from None

    async def store_bytes(self, data: bytes) -> dict[str, Any]:
        """Chunk and replicate a small buffer (a manifest body); return its recipe."""
        size = self._cfg.cluster.chunk_size
        view = memoryview(data)
        pieces = [bytes(view[i : i + size]) for i in range(0, len(data), size)]
        ids = [await hash_off_loop(chunk_id_of, p) for p in pieces]
        await asyncio.gather(*(self.store_chunk(i, p) for i, p in zip(ids, pieces, strict=True)))
        return {
            "size": len(data),
            "chunks": [[i.hex(), len(p)] for i, p in zip(ids, pieces, strict=True)],
        }

    # -- chunk reads --------------------------------------------------------------------
    async def read_chunk(self, chunk_hex: str, length: int | None = None) -> memoryview:
        """The verified bytes of one chunk from the first healthy replica, hedged.

        A read-only memoryview into the received message (no copy); bytes-like
        everywhere a `bytes` is (hashlib, `b"".join`, aiohttp's `write`). Concurrent
        callers for the same chunk share one read (and its result or error).
        """
        if not self._cfg.gateway.share_chunk_reads:
            return await self._read_chunk(chunk_hex, length)
        key = (chunk_hex, length)
        task = self._reads.get(key)
        if task is None:
            task = asyncio.create_task(self._read_chunk(chunk_hex, length))
            self._reads[key] = task
            task.add_done_callback(functools.partial(self._read_done, key))
            self._track(task)
        return await asyncio.shield(task)

    def _copy_done(self, address: str, _task: asyncio.Task[Any]) -> None:
        self._lagging.subtract([address])

    def _read_done(self, key: tuple[str, int | None], task: asyncio.Task[memoryview]) -> None:
        if self._reads.get(key) is task:
            del self._reads[key]

    async def _read_chunk(self, chunk_hex: str, length: int | None) -> memoryview:
        await self._ensure_members()
        chunk_id = bytes.fromhex(chunk_hex)
        order = self.read_order(chunk_id)
        if not order:
            raise Unavailable("no storage node known")
        hedge = self._cfg.gateway.hedge_after_seconds
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
                    # Replicas outrun by a hedge are read last for a while, so a hung or
                    # partitioned node costs one hedge delay, not one per chunk.
                    for task in pending:
                        self._down_until[owner[task].grpc] = time.monotonic() + _DOWN_SECONDS
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

    async def _get_one(self, member: Member, chunk_id: bytes, length: int | None) -> memoryview:
        node = self._node(member.grpc)
        try:
            raw = await node.get_serialized(
                registry_pb2.GetChunkRequest(id=chunk_id),
                timeout=self._cfg.gateway.rpc_timeout_seconds,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _RETRYABLE:
                self._mark_down(member.grpc)
            raise Unavailable(f"{member.id}: {exc.code().name}") from None
        try:
            data, checksum = decode_get_reply(raw)
        except ValueError:
            raise ChunkCorrupt(f"{member.id}: malformed reply") from None
        if length is not None and len(data) != length:
            raise ChunkCorrupt(f"{member.id}: length {len(data)} != {length}")
        if self._cfg.gateway.verify_reads == "xxh3" and checksum:
            ok = checksum_of(data) == checksum
        else:
            ok = await hash_off_loop(chunk_id_of, data) == chunk_id
        if not ok:
            log_event(
                logger,
                "cluster.chunk_corrupt_read",
                logging.WARNING,
                node=member.id,
                chunk=chunk_id.hex(),
            )
            raise ChunkCorrupt(f"{member.id}: chunk failed verification")
        return data

    async def read_range(
        self, recipe: dict[str, Any], start: int, end: int
    ) -> AsyncGenerator[memoryview, None]:
        """Verified bytes [start, end) of a recipe, with read-ahead; pieces in order.

        Callers that may stop early should close it (`contextlib.aclosing`) so that the
        reads in flight are cancelled at once rather than at garbage collection.
        """
        wanted = list(_slices(_recipe_chunks(recipe), start, end))
        ahead = max(1, self._cfg.gateway.read_ahead_chunks)
        tasks: collections.deque[asyncio.Task[memoryview]] = collections.deque()
        scheduled = 0
        try:
            for _chunk_hex, length, lo, hi in wanted:
                while scheduled < len(wanted) and len(tasks) < ahead:
                    chunk_hex, chunk_len = wanted[scheduled][:2]
                    tasks.append(asyncio.create_task(self.read_chunk(chunk_hex, chunk_len)))
                    scheduled += 1
                data = await tasks.popleft()
                if lo == 0 and hi == length:
                    yield data
                else:
                    yield data[lo:hi]
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def read_all(self, recipe: dict[str, Any]) -> bytes:
        """The whole content of a (small) recipe."""
        async with contextlib.aclosing(
            self.read_range(recipe, 0, int(recipe.get("size", 0)))
        ) as pieces:
            return b"".join([p async for p in pieces])


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


async def hash_off_loop(fn: Any, data: bytes | memoryview) -> Any:
    """Run a hashing function inline for small buffers, in a worker thread for big ones."""
    if len(data) < _INLINE_HASH_BYTES:
        return fn(data)
    return await asyncio.to_thread(fn, data)


def encode_put(
    chunk_id: bytes, pieces: Sequence[bytes | memoryview], length: int, checksum: bytes
) -> bytes:
    """A serialized PutChunkRequest{id, data, checksum} built with one copy of the data.

    Protobuf would need the chunk joined into one `bytes` first and then copy it again
    while serializing; this writes the wire format (fields 1, 2, 3 as length-delimited
    bytes, in order, as protobuf emits them) straight from the body's pieces. Checked
    against `SerializeToString` in tests/gateway/test_cluster_client.py.
    """
    return b"".join(
        [
            b"\x0a",
            varint(len(chunk_id)),
            chunk_id,
            b"\x12",
            varint(length),
            *pieces,
            b"\x1a",
            varint(len(checksum)),
            checksum,
        ]
    )


def decode_get_reply(raw: bytes) -> tuple[memoryview, bytes]:
    """(data, checksum) of a serialized GetChunkReply; `data` is a view, not a copy.

    Protobuf's parser would copy the chunk into a new `bytes`; this walks the wire format
    (length-delimited and varint fields; anything else is ValueError) and slices. Checked
    against protobuf in tests/gateway/test_cluster_client.py.
    """
    fields = decode_bytes_fields(raw)
    return fields.get(1, memoryview(b"")), bytes(fields.get(2, b""))

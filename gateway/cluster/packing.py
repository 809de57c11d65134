"""Packing the small calls a gateway makes to one node into one call.

A small unary gRPC call costs ~0.5-0.65 ms of CPU across gateway and node; one call
carrying the N requests waiting for a node ~20-75 µs per request (bench/README.md, "gRPC
per call and per streamed message"). A push storm makes many small calls to the same
nodes at once: chunk Puts of small blobs and manifests to their replicas, Metadata
commands to the leader. `CallPacker` carries them, for one call kind (`PackKind`:
`ChunkPuts`, `MetadataCommands`), per node address:

- fewer than `gateway.packs_in_flight_per_node` calls of this kind in flight to the node:
  the request goes now, as the single call it always was, in the caller's task (a lone
  push pays nothing and waits for nothing);
- otherwise it queues; whenever a call to that node returns, everything queued goes, in
  calls of at most `gateway.pack_max_items` requests and `gateway.pack_max_bytes` (one
  queued request alone: a single call). Requests above the kind's item limit
  (`gateway.pack_chunk_max_bytes` for chunks: packing copies them) never queue; with
  `gateway.pack_calls` off nothing does.

To its caller a request looks like its single call: the node answers each packed request
with its own status (`cargohold.pack_items`), raised as the `grpc.aio.AioRpcError` the
single call would have raised, with the same details and detail trailer. A pack that fails
as a whole raises its error to every request in it (a copy each): chunk writes spill
over, metadata commands are retried one by one by their caller (idempotent). A node that
answers UNIMPLEMENTED (it predates packs: a rolling upgrade) gets single calls for
`gateway.pack_unimplemented_retry_seconds`, and the requests of that pack are sent
again singly. Each request keeps its deadline (one that runs out while queued or packed raises
DEADLINE_EXCEEDED; the pack's deadline is its latest request's) and its request id (the
pack's `request_ids`: a pack carries no `x-request-id` of its own; the call token is added
by the channel as for every call). A caller cancelled while queued leaves the queue; one
cancelled while its pack is in flight has its answer dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from cargohold.config import GatewayConfig
from cargohold.grpc_channels import NodeChannel
from cargohold.log import REQUEST_ID, log_event
from cargohold.pack_items import copy_error, item_error, status_error
from cargohold.wire import encode_put_many
from protos import registry_pb2 as pb

logger = logging.getLogger("cargohold.gateway.cluster")

ItemT = TypeVar("ItemT")
ReplyT = TypeVar("ReplyT")
Metadata = tuple[tuple[str, str], ...] | None


class PackKind(ABC, Generic[ItemT, ReplyT]):
    """One call kind: its single call, its packed call and its reply's decoding."""

    method: str

    @abstractmethod
    async def single(
        self, node: NodeChannel, item: ItemT, seconds: float, metadata: Metadata
    ) -> ReplyT:
        """The request's own call."""

    @abstractmethod
    async def pack(
        self, node: NodeChannel, items: Sequence[ItemT], request_ids: Sequence[str], seconds: float
    ) -> pb.PackReply:
        """One call carrying `items` (their request ids in the same order)."""

    @abstractmethod
    def reply(self, raw: bytes) -> ReplyT:
        """A successful item's reply, from the serialized reply the node packed."""


class ChunkPuts(PackKind[bytes, pb.PutChunkReply]):
    """`Chunks.Put` of a serialized PutChunkRequest (`cargohold.wire.encode_put`)."""

    method = "Chunks/PutMany"

    async def single(
        self, node: NodeChannel, item: bytes, seconds: float, metadata: Metadata
    ) -> pb.PutChunkReply:
        reply: pb.PutChunkReply = await node.put_serialized(
            item, timeout=seconds, metadata=metadata
        )
        return reply

    async def pack(
        self, node: NodeChannel, items: Sequence[bytes], request_ids: Sequence[str], seconds: float
    ) -> pb.PackReply:
        reply: pb.PackReply = await node.put_many_serialized(
            encode_put_many(items, request_ids), timeout=seconds
        )
        return reply

    def reply(self, raw: bytes) -> pb.PutChunkReply:
        return pb.PutChunkReply.FromString(raw)


class MetadataCommands(PackKind[pb.MetadataRequest, pb.MetadataReply]):
    """`Metadata.Command`."""

    method = "Metadata/Commands"

    async def single(
        self, node: NodeChannel, item: pb.MetadataRequest, seconds: float, metadata: Metadata
    ) -> pb.MetadataReply:
        reply: pb.MetadataReply = await node.metadata.Command(
            item, timeout=seconds, metadata=metadata
        )
        return reply

    async def pack(
        self,
        node: NodeChannel,
        items: Sequence[pb.MetadataRequest],
        request_ids: Sequence[str],
        seconds: float,
    ) -> pb.PackReply:
        request = pb.MetadataPack(commands=items, request_ids=request_ids)
        reply: pb.PackReply = await node.metadata.Commands(request, timeout=seconds)
        return reply

    def reply(self, raw: bytes) -> pb.MetadataReply:
        return pb.MetadataReply.FromString(raw)


@dataclass(eq=False)
class _Waiter(Generic[ItemT, ReplyT]):
    """A queued request and the future its caller awaits."""

    item: ItemT
    size: int
    deadline: float  # loop time
    metadata: Metadata
    request_id: str
    future: asyncio.Future[ReplyT]
    queued: bool = True


@dataclass(eq=False)
class _Node(Generic[ItemT, ReplyT]):
    """One node's calls of this kind: how many are in flight, what waits for one."""

    in_flight: int = 0
    queue: collections.deque[_Waiter[ItemT, ReplyT]] = field(default_factory=collections.deque)


@dataclass
class PackStats:
    """What a packer did (tests and the bench read it)."""

    singles: int = 0
    packs: int = 0
    packed: int = 0
    unimplemented: int = 0


class CallPacker(Generic[ItemT, ReplyT]):
    """Calls of one kind to nodes, packed while calls to the same node are in flight; see
    the module docstring."""

    def __init__(
        self,
        kind: PackKind[ItemT, ReplyT],
        gw: GatewayConfig,
        item_max_bytes: int,
        clock: Any = time.monotonic,
    ) -> None:
        self._kind = kind
        self._enabled = gw.pack_calls
        self._in_flight_max = max(1, gw.packs_in_flight_per_node)
        self._max_items = max(1, gw.pack_max_items)
        self._max_bytes = max(1, gw.pack_max_bytes)
        self._item_max = item_max_bytes
        self._unpacked_seconds = gw.pack_unimplemented_retry_seconds
        self._clock = clock
        self._nodes: dict[str, _Node[ItemT, ReplyT]] = {}
        # Node address -> until when it gets single calls (it answered UNIMPLEMENTED).
        self._unpacked: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = PackStats()

    async def call(
        self, node: NodeChannel, item: ItemT, size: int, seconds: float, metadata: Metadata
    ) -> ReplyT:
        """The request's reply, as its single call to `node` would answer it."""
        if not self._enabled or size > self._item_max or self._single_only(node.address):
            return await self._kind.single(node, item, seconds, metadata)
        state = self._nodes.get(node.address)
        if state is None:
            state = self._nodes[node.address] = _Node()
        if state.in_flight < self._in_flight_max and not state.queue:
            state.in_flight += 1
            self.stats.singles += 1
            try:
                return await self._kind.single(node, item, seconds, metadata)
            finally:
                state.in_flight -= 1
                self._send_queued(node, state)
        loop = asyncio.get_running_loop()
        waiter: _Waiter[ItemT, ReplyT] = _Waiter(
            item,
            size,
            loop.time() + seconds,
            metadata,
            REQUEST_ID.get() or "",
            loop.create_future(),
        )
        state.queue.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                return await waiter.future
        except TimeoutError:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "Deadline Exceeded",
            ) from None
        finally:
            if waiter.queued:  # cancelled or out of time before it was sent
                waiter.queued = False
                state.queue.remove(waiter)
            elif not waiter.future.done():
                waiter.future.cancel()  # its pack's answer is dropped

    def _single_only(self, address: str) -> bool:
        until = self._unpacked.get(address)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._unpacked[address]
        return False

    def _send_queued(self, node: NodeChannel, state: _Node[ItemT, ReplyT]) -> None:
        """Send what is queued for `node`, while it has fewer calls in flight than allowed."""
        while state.queue and state.in_flight < self._in_flight_max:
            batch = self._take(state, everything=self._single_only(node.address))
            state.in_flight += 1
            # A context of its own: the pack belongs to none of its callers' requests.
            task = asyncio.create_task(
                self._send(node, state, batch), context=contextvars.Context()
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self, state: _Node[ItemT, ReplyT], everything: bool) -> list[_Waiter[ItemT, ReplyT]]:
        """The next pack's requests off the queue; `everything`: the whole queue (a node
        found without packs meanwhile: they go as single calls)."""
        batch: list[_Waiter[ItemT, ReplyT]] = []
        size = 0
        while state.queue and (everything or len(batch) < self._max_items):
            waiter = state.queue[0]
            if batch and not everything and size + waiter.size > self._max_bytes:
                break
            state.queue.popleft()
            waiter.queued = False
            batch.append(waiter)
            size += waiter.size
        return batch

    async def _send(
        self, node: NodeChannel, state: _Node[ItemT, ReplyT], batch: list[_Waiter[ItemT, ReplyT]]
    ) -> None:
        try:
            if len(batch) == 1 or self._single_only(node.address):
                self.stats.singles += len(batch)
                await asyncio.gather(*(self._one(node, w) for w in batch))
            else:
                await self._pack(node, batch)
        except asyncio.CancelledError:
            for waiter in batch:
                _fail(waiter, status_error(grpc.StatusCode.CANCELLED, "Locally cancelled"))
            raise
        finally:
            state.in_flight -= 1
            self._send_queued(node, state)

    async def _one(self, node: NodeChannel, waiter: _Waiter[ItemT, ReplyT]) -> None:
        """`waiter`'s request as its single call."""
        if waiter.future.done():
            return
        timeout = max(0.001, waiter.deadline - asyncio.get_running_loop().time())
        try:
            reply = await self._kind.single(node, waiter.item, timeout, waiter.metadata)
        except Exception as exc:  # what the single call raised, as it would have
            _fail(waiter, exc)
        else:
            _resolve(waiter, reply)

    async def _pack(self, node: NodeChannel, batch: list[_Waiter[ItemT, ReplyT]]) -> None:
        live = [w for w in batch if not w.future.done()]
        if not live:
            return
        now = asyncio.get_running_loop().time()
        timeout = max(0.001, max(w.deadline for w in live) - now)
        try:
            reply = await self._kind.pack(
                node, [w.item for w in live], [w.request_id for w in live], timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._unpacked[node.address] = self._clock() + self._unpacked_seconds
                self.stats.unimplemented += 1
                log_event(
                    logger,
                    "cluster.packs_unimplemented",
                    logging.INFO,
                    node=node.address,
                    method=self._kind.method,
                )
                self.stats.singles += len(live)
                await asyncio.gather(*(self._one(node, w) for w in live))
                return
            for waiter in live:
                _fail(waiter, copy_error(exc))
            return
        except Exception as exc:
            for waiter in live:
                _fail(waiter, exc)
            return
        self.stats.packs += 1
        self.stats.packed += len(live)
        if len(reply.items) != len(live):
            details = f"pack of {len(live)} answered with {len(reply.items)} items"
            for waiter in live:
                _fail(waiter, status_error(grpc.StatusCode.INTERNAL, details))
            return
        for waiter, item in zip(live, reply.items, strict=True):
            if item.code:
                _fail(waiter, item_error(item))
            else:
                try:
                    _resolve(waiter, self._kind.reply(item.reply))
                except Exception as exc:  # an undecodable reply: as the single call's
                    _fail(waiter, exc)


def _resolve(waiter: _Waiter[Any, ReplyT], reply: ReplyT) -> None:
    if not waiter.future.done():
        waiter.future.set_result(reply)


def _fail(waiter: _Waiter[Any, Any], exc: BaseException) -> None:
    if not waiter.future.done():
        waiter.future.set_exception(exc)

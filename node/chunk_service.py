"""The gRPC `Chunks` service of a node: Put/Get/Has/Delete/List over one `ChunkStore`.

Handlers stay thin: the store owns verification, durability and quarantine. Every
`RegistryError` leaves through `cargohold.grpc_status.abort_with` (the one status table,
in `cargohold.errors`), so the gateway's cluster client re-raises the same class:

    ChunkMissing  -> NOT_FOUND            (this replica lacks it: try the next one)
    ChunkCorrupt  -> DATA_LOSS            (copy quarantined: try the next one, repair later)
    DigestInvalid -> INVALID_ARGUMENT     (id or checksum does not match the data sent)
    StorageFull   -> RESOURCE_EXHAUSTED   (no space above this node's reserve, or its map
                                          is full; the detail has its disk figures)
    Unavailable   -> UNAVAILABLE          (store closing: retry elsewhere)

The server's message size limits (NodeConfig.grpc_max_message) are set where the server is
built (node/server.py); `add_to_server` only registers the servicer.

The two chunk-carrying calls skip the protobuf runtime (`cargohold.wire`): `Put` receives
the serialized PutChunkRequest and takes the chunk's bytes as a view of it; `Get` answers a
GetChunkReply encoded straight from the LMDB read view (one copy, not three). Put checks
the xxh3 checksum the gateway sent against the bytes and trusts the sha256 id the gateway
computed from them (gateways are trusted cluster members: cluster network/mTLS); with
`NodeConfig.verify_put_sha256`, or when no checksum is sent, it re-hashes the id too.
Copies a node fetches itself (scrub re-fetch) always go through the full sha256 check.

`PutMany` (a gateway's pack of small Puts, protos/README.md "Packed calls") runs each put
through the same code as `Put`, all at once so the store's writer thread commits them
under one fsync, and answers a PackItem per put: the status `abort_with` would have ended
that put's own call with (`cargohold.pack_items`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from cargohold.config import NodeConfig
from cargohold.errors import (
    ChunkCorrupt,
    DigestInvalid,
    RegistryError,
)
from cargohold.grpc_status import abort_with
from cargohold.log import log_event
from cargohold.pack_items import error_item, ok_item, status_item
from cargohold.request_ids import adopt, adopt_id
from cargohold.wire import decode_bytes_fields, decode_repeated_fields, encode_bytes_fields
from node.chunkstore import ChunkStore
from node.metrics import PackCounts
from protos import registry_pb2 as pb
from protos import registry_pb2_grpc as pb_grpc

logger = logging.getLogger("cargohold.node.chunk_service")

T = TypeVar("T")


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> NoReturn:
    if isinstance(exc, RegistryError):
        await abort_with(context, exc)
    log_event(logger, "chunks.rpc_failed", logging.ERROR, method=method, error=repr(exc))
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")
    raise AssertionError("unreachable: context.abort raises")


def failure_item(method: str, exc: Exception) -> pb.PackItem:
    """The PackItem of a packed request (or a bulk put, node/bulk_puts.py) that failed:
    what `_abort` would have sent."""
    if isinstance(exc, RegistryError):
        return error_item(exc)
    log_event(logger, "chunks.rpc_failed", logging.ERROR, method=method, error=repr(exc))
    return status_item(grpc.StatusCode.INTERNAL, f"internal error: {exc}")


async def _call(
    context: grpc.aio.ServicerContext, method: str, work: Callable[[], Awaitable[T]]
) -> T:
    adopt(context)  # log lines of this call name the gateway request behind it
    try:
        return await work()
    except Exception as exc:
        await _abort(context, method, exc)


class ChunksServicer(pb_grpc.ChunksServicer):
    def __init__(
        self,
        store: ChunkStore,
        page_size: int = NodeConfig.chunk_list_page_size,
        page_max: int = NodeConfig.chunk_list_page_max,
        on_corrupt: Callable[[bytes], None] | None = None,
        verify_put_sha256: bool = NodeConfig.verify_put_sha256,
        packs: PackCounts | None = None,
    ) -> None:
        self._store = store
        # Packed calls served and the puts they carried (node/metrics.py reads them).
        self._packs = packs
        self._verify_put_sha256 = verify_put_sha256
        # Called with the id of a copy Get found corrupt (scrub's re-fetch from a replica).
        self._on_corrupt = on_corrupt
        self._page_size = max(1, page_size)
        self._page_max = max(1, page_max)
        # Where this node takes bulk puts (node/bulk_puts.py), once listening; "" = nowhere.
        self.bulk_address = ""

    async def Put(
        self, request: pb.PutChunkRequest, context: grpc.aio.ServicerContext
    ) -> pb.PutChunkReply:
        existed = await _call(
            context,
            "Put",
            lambda: self._store.put(
                request.id,
                request.data,
                request.checksum or None,
                verify_id=self._verify_put_sha256,
            ),
        )
        return pb.PutChunkReply(existed=existed)

    async def PutRaw(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.PutChunkReply:
        """`Put` on the serialized request: the chunk stays a view of the received bytes."""
        existed = await _call(context, "Put", lambda: self._put_serialized(raw))
        return pb.PutChunkReply(existed=existed)

    async def PutManyRaw(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.PackReply:
        """`PutMany` on the serialized PutManyRequest: each put runs as `PutRaw` runs it,
        all at once (the store's writer thread commits them together), and answers its
        own PackItem; the chunks stay views of the received bytes."""
        adopt(context)
        try:
            fields = decode_repeated_fields(raw)
        except ValueError:
            await _abort(context, "PutMany", DigestInvalid("malformed PutManyRequest"))
        puts, ids = fields.get(1, []), fields.get(2, [])
        if self._packs is not None:
            self._packs.record("Chunks/PutMany", len(puts))
        items = await asyncio.gather(
            *(
                self._pack_put(put, bytes(ids[i]).decode(errors="replace") if i < len(ids) else "")
                for i, put in enumerate(puts)
            )
        )
        return pb.PackReply(items=items)

    async def _pack_put(self, raw: memoryview, request_id: str) -> pb.PackItem:
        """One put of a pack, in a task of its own (its log lines name `request_id`)."""
        adopt_id(request_id)
        try:
            existed = await self._put_serialized(raw)
        except Exception as exc:
            return failure_item("PutMany", exc)
        return ok_item(pb.PutChunkReply(existed=existed).SerializeToString())

    async def _put_serialized(self, raw: bytes | memoryview) -> bool:
        """Store the chunk of a serialized PutChunkRequest; whether it existed already."""
        try:
            fields = decode_bytes_fields(raw)
        except ValueError:
            raise DigestInvalid("malformed PutChunkRequest") from None
        empty = memoryview(b"")
        chunk_id = bytes(fields.get(1, empty))
        checksum = bytes(fields.get(3, empty)) or None
        return await self._store.put(
            chunk_id, fields.get(2, empty), checksum, verify_id=self._verify_put_sha256
        )

    async def BulkAddress(
        self, request: pb.BulkAddressRequest, context: grpc.aio.ServicerContext
    ) -> pb.BulkAddressReply:
        return pb.BulkAddressReply(address=self.bulk_address)

    async def put_value(self, chunk_id: bytes, value: memoryview) -> bool:
        """A bulk put (node/bulk_puts.py): `checksum || data` as received, checked as `Put`
        checks its chunk."""
        return await self._store.put_value(chunk_id, value, verify_id=self._verify_put_sha256)

    async def Get(
        self, request: pb.GetChunkRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetChunkReply:
        data, checksum = await self._get(request.id, context, self._store.get_with_checksum)
        return pb.GetChunkReply(data=data, checksum=checksum)

    async def GetRaw(self, request: pb.GetChunkRequest, context: grpc.aio.ServicerContext) -> bytes:
        """`Get` answering the serialized GetChunkReply, encoded from the stored copy."""
        return await self._get(
            request.id, context, lambda cid: self._store.get_encoded(cid, _encode_get_reply)
        )

    async def _get(
        self,
        chunk_id: bytes,
        context: grpc.aio.ServicerContext,
        read: Callable[[bytes], Awaitable[T]],
    ) -> T:
        adopt(context)
        try:
            return await read(chunk_id)
        except ChunkCorrupt as exc:
            if self._on_corrupt is not None:
                self._on_corrupt(chunk_id)
            await _abort(context, "Get", exc)
        except Exception as exc:
            await _abort(context, "Get", exc)

    async def Has(
        self, request: pb.HasChunksRequest, context: grpc.aio.ServicerContext
    ) -> pb.HasChunksReply:
        ids, touch = list(request.ids), not request.probe_only
        present = await _call(context, "Has", lambda: self._store.has(ids, touch=touch))
        return pb.HasChunksReply(present=present)

    async def Delete(
        self, request: pb.DeleteChunksRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteChunksReply:
        deleted = await _call(context, "Delete", lambda: self._store.delete(list(request.ids)))
        return pb.DeleteChunksReply(deleted=deleted)

    async def List(
        self, request: pb.ListChunksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ListChunksReply]:
        size = min(request.page_size or self._page_size, self._page_max)
        after = request.after
        while True:
            page = await _call(
                context, "List", functools.partial(self._store.list_ids, after, size)
            )
            if page:
                yield pb.ListChunksReply(ids=[cid for cid, _ in page], sizes=[n for _, n in page])
            if len(page) < size:
                return
            after = page[-1][0]


def _encode_get_reply(data: memoryview, checksum: bytes) -> bytes:
    return encode_bytes_fields([(1, [data]), (2, [checksum])])


def _identity(raw: bytes) -> bytes:
    return raw


def add_to_server(
    server: grpc.aio.Server,
    store: ChunkStore,
    config: NodeConfig | None = None,
    on_corrupt: Callable[[bytes], None] | None = None,
    packs: PackCounts | None = None,
) -> ChunksServicer:
    """Register the Chunks service for `store` on `server`; returns the servicer.

    The generated registration, except that Put, PutMany and Get use the raw handlers
    (same messages on the wire, no protobuf copies of the chunk bytes).
    """
    cfg = config or NodeConfig()
    servicer = ChunksServicer(
        store,
        page_size=cfg.chunk_list_page_size,
        page_max=cfg.chunk_list_page_max,
        on_corrupt=on_corrupt,
        verify_put_sha256=cfg.verify_put_sha256,
        packs=packs,
    )
    handlers = {
        "Put": grpc.unary_unary_rpc_method_handler(
            servicer.PutRaw,
            request_deserializer=_identity,
            response_serializer=pb.PutChunkReply.SerializeToString,
        ),
        "PutMany": grpc.unary_unary_rpc_method_handler(
            servicer.PutManyRaw,
            request_deserializer=_identity,
            response_serializer=pb.PackReply.SerializeToString,
        ),
        "Get": grpc.unary_unary_rpc_method_handler(
            servicer.GetRaw,
            request_deserializer=pb.GetChunkRequest.FromString,
            response_serializer=_identity,
        ),
    }
    for name, kind, request, reply in (
        ("Has", grpc.unary_unary_rpc_method_handler, pb.HasChunksRequest, pb.HasChunksReply),
        (
            "Delete",
            grpc.unary_unary_rpc_method_handler,
            pb.DeleteChunksRequest,
            pb.DeleteChunksReply,
        ),
        ("List", grpc.unary_stream_rpc_method_handler, pb.ListChunksRequest, pb.ListChunksReply),
        (
            "BulkAddress",
            grpc.unary_unary_rpc_method_handler,
            pb.BulkAddressRequest,
            pb.BulkAddressReply,
        ),
    ):
        handlers[name] = kind(
            getattr(servicer, name),
            request_deserializer=request.FromString,
            response_serializer=reply.SerializeToString,
        )
    service = "cargohold.v1.Chunks"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
    return servicer

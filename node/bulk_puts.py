"""The node's bulk put listener: chunk Puts on plain TCP, read straight into their buffer.

The protocol, and why it exists, is in cargohold/bulk_wire.py. This module serves it:
an asyncio server (`BufferedProtocol`: the kernel copies each received byte once, into
the frame's own bytearray, laid out as the chunk store keeps it, `checksum || data`)
that stores each put with `ChunkStore.put_value` and answers the PackItem a gRPC Put
would have ended with. What holds:

- **Same checks, same durability.** A put is checked exactly as `Chunks.Put` checks it
  (the sender's xxh3 against the data; the sha256 id too with `node.verify_put_sha256`),
  and its reply is written only after the store's fsynced commit.
- **Authenticated first.** Nothing but a hello of at most `TOKEN_MAX` bytes is read
  before the caller's token (signed for `BULK_METHOD`) checks out against the role
  matrix (node/access.py): a refused hello is answered UNAUTHENTICATED or
  PERMISSION_DENIED and the connection closed.
- **Bounded.** A frame larger than `node.grpc_max_message` (the gRPC limit) or a request
  id longer than `REQUEST_ID_MAX` ends the connection; at most `node.bulk_max_connections`
  are open (more are closed at once); one frame per connection is in memory at a time
  (reading pauses while it is stored), and idle connections hold none (buffers free
  again wait for the next frame node-wide, at most `SPARE_BUFFERS`); a connection silent
  for `node.bulk_idle_seconds` is closed, mid-frame included.
- **Off with TLS.** The node listens only when its gRPC port is plaintext
  (node/server.py): with TLS configured, chunk bytes keep to the encrypted channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import cast

import grpc

from cargohold.bulk_wire import (
    BULK_METHOD,
    CHECKSUM_LEN,
    CHUNK_ID_LEN,
    HELLO,
    HELLO_MAGIC,
    PUT,
    PUT_MAGIC,
    REQUEST_ID_MAX,
    TOKEN_MAX,
    reply,
)
from cargohold.cluster_auth import AuthError, TokenVerifier
from cargohold.config import Config
from cargohold.errors import DigestInvalid
from cargohold.log import log_event
from cargohold.pack_items import error_item, ok_item, status_item
from cargohold.request_ids import adopt_id
from node.access import FirstSeen
from node.chunk_service import failure_item
from protos import registry_pb2 as pb

logger = logging.getLogger("cargohold.node.bulk_puts")

# Frame buffers kept for reuse, node-wide (`FrameBuffers`).
SPARE_BUFFERS = 8

# Stores one put: (chunk id, `checksum || data`) -> whether a healthy copy existed.
PutValue = Callable[[bytes, memoryview], Awaitable[bool]]


class BulkCounters:
    """Puts and bytes taken on the bulk port, refusals (node/metrics.py reads them)."""

    def __init__(self) -> None:
        self.puts = 0
        self.bytes = 0
        self.refused = 0


class _Connection(asyncio.BufferedProtocol):
    """One caller's connection: hello, then put frames one at a time."""

    def __init__(self, server: BulkPutServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._head = bytearray(max(HELLO.size, PUT.size))
        self._want = HELLO.size  # bytes of the current part still to read
        self._buffer: bytearray | memoryview = memoryview(self._head)[: HELLO.size]
        self._filled = 0
        self._state = "hello"
        self._request_id_len = 0
        self._peer = "-"
        self.last_read = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    # -- asyncio.BufferedProtocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) else "-"
        if not self._server.admit(self):
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.forget(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)[self._filled : self._want]

    def buffer_updated(self, nbytes: int) -> None:
        self.last_read = time.monotonic()
        self._filled += nbytes
        if self._filled < self._want:
            return
        try:
            self._part_done()
        except _Refused as refused:
            self._refuse(refused.item, refused.reason)

    def eof_received(self) -> bool:
        return False  # close our side too

    # -- frames --------------------------------------------------------------------------
    def _expect(self, state: str, buffer: bytearray | memoryview, size: int) -> None:
        self._state, self._buffer, self._want, self._filled = state, buffer, size, 0

    def _part_done(self) -> None:
        head = memoryview(self._head)
        if self._state == "hello":
            magic, size = HELLO.unpack(head[: HELLO.size])
            if magic != HELLO_MAGIC or not 0 < size <= TOKEN_MAX:
                raise _Refused(_bad("not a bulk put hello"), "bad hello")
            self._expect("token", bytearray(size), size)
        elif self._state == "token":
            self._accept_hello(bytes(self._buffer).decode("ascii", errors="replace"))
        elif self._state == "head":
            magic, rid_len, length = PUT.unpack(head[: PUT.size])
            if magic != PUT_MAGIC or rid_len > REQUEST_ID_MAX:
                raise _Refused(_bad("not a bulk put frame"), "bad frame")
            if length > self._server.max_message:
                raise _Refused(
                    _bad(f"chunk of {length} bytes exceeds {self._server.max_message}"),
                    "frame too large",
                )
            self._request_id_len = rid_len
            size = rid_len + CHUNK_ID_LEN + CHECKSUM_LEN + length
            self._expect("frame", self._server.buffers.take(size), size)
        else:
            frame = self._buffer
            assert isinstance(frame, bytearray)
            self._expect("head", memoryview(self._head)[: PUT.size], PUT.size)
            assert self._transport is not None
            self._transport.pause_reading()
            self._task = asyncio.get_running_loop().create_task(self._store(frame))

    def _accept_hello(self, token: str) -> None:
        try:
            role = self._server.tokens.verify(token, BULK_METHOD)
        except AuthError as err:
            raise _Refused(
                status_item(grpc.StatusCode.UNAUTHENTICATED, f"unauthenticated: {err.reason}"),
                err.reason,
            ) from None
        if role not in self._server.roles:
            reason = f"role {role} may not call {BULK_METHOD}"
            raise _Refused(
                status_item(grpc.StatusCode.PERMISSION_DENIED, f"permission_denied: {reason}"),
                reason,
            )
        self._write(ok_item(b""))
        self._expect("head", memoryview(self._head)[: PUT.size], PUT.size)

    async def _store(self, frame: bytearray) -> None:
        view = memoryview(frame)
        rid_end = self._request_id_len
        adopt_id(bytes(view[:rid_end]).decode(errors="replace"))
        chunk_id = bytes(view[rid_end : rid_end + CHUNK_ID_LEN])
        try:
            existed = await self._server.put_value(chunk_id, view[rid_end + CHUNK_ID_LEN :])
            item = ok_item(pb.PutChunkReply(existed=existed).SerializeToString())
            self._server.counters.puts += 1
            self._server.counters.bytes += len(view) - rid_end - CHUNK_ID_LEN - CHECKSUM_LEN
        except Exception as exc:  # answered as the gRPC Put would have been
            item = failure_item("BulkPut", exc)
        del view
        self._server.buffers.give(frame)
        self._write(item)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _write(self, item: pb.PackItem) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(reply(item.SerializeToString()))

    def _refuse(self, item: pb.PackItem, reason: str) -> None:
        self._server.refused(self._peer, reason)
        self._write(item)
        if self._transport is not None:
            self._transport.close()

    def close_idle(self, now: float, idle: float) -> None:
        """Close this connection when it has read nothing for `idle` seconds and no put of
        it is being stored."""
        busy = self._task is not None and not self._task.done()
        if not busy and now - self.last_read > idle and self._transport is not None:
            self._transport.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class FrameBuffers:
    """Frame buffers free again once their put returned (the store copied them into
    LMDB), kept for the next frame of the same size: chunks are mostly one size, and a
    fresh 4 MiB bytearray is zero-filled (and, on some hosts, freshly faulted memory).
    At most `keep` are kept, node-wide, so idle connections hold none."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._free: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        for i, buffer in enumerate(self._free):
            if len(buffer) == size:
                return self._free.pop(i)
        return bytearray(size)

    def give(self, buffer: bytearray) -> None:
        if len(self._free) >= self._keep:
            self._free.pop(0)
        self._free.append(buffer)


class _Refused(Exception):
    def __init__(self, item: pb.PackItem, reason: str) -> None:
        super().__init__(reason)
        self.item, self.reason = item, reason


def _bad(message: str) -> pb.PackItem:
    return error_item(DigestInvalid(message))


class BulkPutServer:
    """The bulk port of one node; `start` binds it, `address` is what it advertises."""

    def __init__(
        self, cfg: Config, put_value: PutValue, roles: frozenset[str], advertise_host: str
    ) -> None:
        node = cfg.node
        self.tokens = TokenVerifier(
            cfg.cluster.secret, cfg.cluster.auth_max_skew, cfg.cluster.auth_nonce_cache_max
        )
        self.roles = roles
        self.put_value = put_value
        self.max_message = node.grpc_max_message
        self.counters = BulkCounters()
        self.buffers = FrameBuffers(SPARE_BUFFERS)
        self._listen = bulk_listen_address(node.bulk_listen, node.grpc_listen)
        self._advertise_host = advertise_host
        self._max_connections = node.bulk_max_connections
        self._idle = node.bulk_idle_seconds
        self._connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._logged = FirstSeen()
        self.address = ""

    async def start(self) -> str:
        """Listen on `node.bulk_listen` ("auto": the gRPC host, a free port); return the
        address to advertise."""
        host, _, port = self._listen.rpartition(":")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host.strip("[]") or None, int(port or 0)
        )
        bound = self._server.sockets[0].getsockname()[1]
        self.address = f"{self._advertise_host}:{bound}"
        self._sweeper = loop.create_task(self._sweep_idle())
        log_event(logger, "bulk.listening", address=self.address)
        return self.address

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)

    def admit(self, connection: _Connection) -> bool:
        if len(self._connections) >= self._max_connections:
            self.refused("-", "too many connections")
            return False
        self._connections.add(connection)
        return True

    def forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def refused(self, peer: str, reason: str) -> None:
        """Count a refusal; log it the first time this peer host gets this reason."""
        self.counters.refused += 1
        if self._logged.first((peer, reason)):
            log_event(logger, "bulk.refused", logging.WARNING, peer=peer, reason=reason)

    async def _sweep_idle(self) -> None:
        period = max(0.05, min(self._idle / 4, 5.0))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for connection in list(self._connections):
                connection.close_idle(now, self._idle)


def bulk_listen_address(listen: str, grpc_listen: str) -> str:
    """`node.bulk_listen` resolved: "auto" is the gRPC listen host with a free port."""
    if listen == "auto":
        host = grpc_listen.rpartition(":")[0]
        return f"{host}:0"
    return listen


def advertise_host(grpc_advertise: str) -> str:
    """The host part of the node's advertised gRPC address (what gateways reach)."""
    return grpc_advertise.rpartition(":")[0]

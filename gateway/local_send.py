"""Zero-copy blob bodies: local chunks go from the node's data.mdb to the client by sendfile.

A blob GET (gateway/blobs.py) whose gateway reads its host's node's LMDB
(`gateway.local_node_data_dir`) sends the chunks that node holds with sendfile(2)
(`gateway.local_sendfile`, on by default), verified first and holding the LMDB snapshot
at most `gateway.sendfile_hold_seconds` per chunk (gateway/cluster/local_reads.py). This
module owns the HTTP side of it: which responses may (`DirectSender.for_response`), and
writing to the connection's socket beside aiohttp and the event loop's transport.

- **Only where it is plain bytes on a socket**: a prepared, uncompressed, not chunked
  response on a plain-HTTP connection (no TLS: `sslcontext`) whose transport exposes its
  socket. Everything else (TLS, chunks not held locally, a proxied mirror download, a
  gateway without local reads) is written by `response.write` as before; in one body,
  local and other pieces go out in recipe order.
- **Nothing of aiohttp's or the loop's ahead of it**: before each direct send aiohttp's
  buffered status line and headers are written (`StreamWriter.send_headers`), and the
  transport's write buffer is waited empty (its high-water mark lowered to 0 meanwhile,
  so the protocol pauses and resumes on the empty buffer; then restored). The event loop
  writes nothing on this connection while the handler sends.
- **aiohttp's accounting kept**: bytes sent directly are counted in the writer's
  `output_size` (the access log's size) and taken off its remaining `length`, so
  `write_eof` and keep-alive work as after `response.write`. aiohttp's own FileResponse
  does the same (prepare, sendfile, write_eof) where the loop implements
  `loop.sendfile`; uvloop does not (aiohttp then falls back to reads and writes).
- **Loopback clients** get sendfile only where it costs this host less than writing the
  chunk from the LMDB map (one kernel copy, on the same send threads):
  `gateway.local_sendfile_loopback`, measured at start by default (gateway/send_probe.py).
- **A client gone mid-send** is an OSError (EPIPE, ECONNRESET, or the transport closing
  while the worker waits), handled as any write failure (`blob.client_gone`).
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter

from gateway.cluster import ClusterClient
from gateway.cluster.local_reads import LocalChunkStore, LocalCopyCorrupt
from gateway.cluster.reads import LocalSlice
from gateway.context import GatewayContext
from gateway.send_probe import LoopbackSends

# What clients on this host's loopback get (gateway/send_probe.py); absent: sendfile.
LOOPBACK_SENDS: web.AppKey[LoopbackSends] = web.AppKey("cargohold_loopback_sends", LoopbackSends)

# While waiting for the transport's buffer to empty without a pause to wait on.
EMPTY_POLL_SECONDS = 0.001


class DirectSender:
    """Writes `LocalSlice`s of one response straight to its socket; see the docstring."""

    def __init__(
        self,
        response: web.StreamResponse,
        writer: StreamWriter,
        transport: asyncio.Transport,
        sock_fd: int,
        cluster: ClusterClient,
        store: LocalChunkStore,
        hold_seconds: float,
        mapped: bool = False,
    ) -> None:
        self.response, self.writer, self.transport = response, writer, transport
        self.sock_fd = sock_fd
        self.cluster, self.store = cluster, store
        self.hold_seconds = hold_seconds
        # Local chunks written from the LMDB map instead of by sendfile (a loopback client).
        self.mapped = mapped
        # Bytes of this body that went out beside aiohttp (by sendfile or from the map).
        self.direct_bytes = 0

    @classmethod
    def for_response(
        cls,
        request: web.Request,
        response: web.StreamResponse,
        writer: AbstractStreamWriter | None,
        ctx: GatewayContext,
    ) -> DirectSender | None:
        """A sender for this prepared response, or None when it must use `write`."""
        gw = ctx.cfg.gateway
        if not (gw.local_sendfile and gw.local_node_data_dir):
            return None
        store = ctx.cluster.local_store
        transport = request.transport
        if store is None or transport is None or transport.is_closing():
            return None
        if not isinstance(writer, StreamWriter) or writer.chunked or writer._compress:
            return None
        tls = ("sslcontext", "ssl_object")
        if any(transport.get_extra_info(key) is not None for key in tls):
            return None  # the socket carries TLS records: plain bytes would break them
        # A loopback client where writing from the map costs this host less than sendfile.
        sends = request.app.get(LOOPBACK_SENDS)
        mapped = sends is not None and not sends.use_sendfile(transport.get_extra_info("peername"))
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            return None
        # (uvloop's transports are not asyncio.Transport subclasses: no isinstance here.)
        hold = gw.sendfile_hold_seconds
        return cls(response, writer, transport, fd, ctx.cluster, store, hold, mapped)

    async def send(self, piece: LocalSlice) -> int:
        """Send one local slice (from the store, or read as usual when the store no longer
        holds it or its copy fails its check); the number of body bytes written."""
        await self._flushed()
        try:
            done = await self.store.send(
                bytes.fromhex(piece.chunk_hex),
                piece.length,
                piece.lo,
                piece.hi,
                self.sock_fd,
                self.hold_seconds,
                self.transport.is_closing,
                self.mapped,
            )
        except LocalCopyCorrupt:
            data = await self.cluster.read_chunk(piece.chunk_hex, piece.length, local_corrupt=True)
            await self.response.write(data[piece.lo : piece.hi])
            return piece.hi - piece.lo
        if done is None:  # not held (not looked up, or deleted since): read it as usual
            data = await self.cluster.read_chunk(piece.chunk_hex, piece.length, local_missing=True)
            await self.response.write(data[piece.lo : piece.hi])
            return piece.hi - piece.lo
        self._count(done.sent)
        if done.rest:
            await self.response.write(done.rest)
        return piece.hi - piece.lo

    def _count(self, sent: int) -> None:
        """Account bytes sent beside aiohttp as its own writes would be."""
        self.direct_bytes += sent
        self.writer.output_size += sent
        if self.writer.length is not None:
            self.writer.length = max(0, self.writer.length - sent)

    async def _flushed(self) -> None:
        """Headers written and the transport's buffer empty: the socket is the next byte's."""
        self.writer.send_headers()
        transport = self.transport
        if transport.get_write_buffer_size() == 0:
            return
        low, high = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0, low=0)
        try:
            while transport.get_write_buffer_size() > 0:
                if transport.is_closing():
                    raise ConnectionResetError("the connection is closing")
                if self.writer.protocol.writing_paused:
                    await self.writer.drain()
                else:
                    await asyncio.sleep(EMPTY_POLL_SECONDS)
        finally:
            with contextlib.suppress(RuntimeError):  # a transport closed meanwhile
                transport.set_write_buffer_limits(high=high, low=low)

"""The gateway's side of bulk puts: chunk Puts on a node's bulk port instead of gRPC.

Why, and the protocol: cargohold/bulk_wire.py; the node's side: node/bulk_puts.py.
`BulkPuts.put` sends one encoded PutChunkRequest (`cargohold.wire.encode_put`, the bytes
every replica gets) as a bulk frame: the header, then the chunk's bytes straight from the
request (`sock_sendall` of a view: no copy in user space), and answers the node's
PutChunkReply, or raises the `AioRpcError` the gRPC Put would have raised, so
`ChunkWriter._put_one` handles both paths alike. It answers None when there is no bulk
path to that node now, and the caller sends the gRPC Put instead:

- the node does not advertise a bulk port (`Chunks.BulkAddress` empty or UNIMPLEMENTED:
  TLS on its gRPC port, `node.bulk_listen` off, an older release), or the gateway's own
  channels use TLS, or `gateway.bulk_puts` is off;
- its bulk port refused the connection or the hello: the address is forgotten and asked
  again after `gateway.bulk_retry_seconds` (a restarted node listens on a new port when
  `node.bulk_listen` is "auto").

A connection that breaks before the reply (the node restarted, or closed an idle
connection) sends that put once more as a gRPC Put (a put is idempotent) and the address
is asked again after `bulk_retry_seconds`; a put without a reply within the call's
timeout is a failed Put (UNAVAILABLE: the writer spills it over, as for a gRPC Put that
timed out). Connections are pooled per node, one put at a time each, at most
`gateway.bulk_idle_connections` idle, none kept idle longer than `IDLE_KEEP_SECONDS`;
any failure or cancellation mid-frame closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field

import grpc
import grpc.aio
from prometheus_client import Counter

from cargohold.bulk_wire import (
    BULK_METHOD,
    CHECKSUM_LEN,
    CHUNK_ID_LEN,
    REPLY,
    REPLY_MAX,
    hello,
    put_header,
)
from cargohold.cluster_auth import client_credential, sign
from cargohold.config import Config
from cargohold.grpc_channels import NodeChannel
from cargohold.log import log_event
from cargohold.pack_items import item_error, status_error
from cargohold.request_ids import REQUEST_ID, call_metadata
from cargohold.wire import decode_bytes_fields
from protos import registry_pb2 as pb

logger = logging.getLogger("cargohold.gateway.cluster.bulk")

BULK_PUTS = Counter(
    "cargohold_gateway_bulk_puts",
    "Chunk puts too large to pack: sent on a node's bulk port (sent), or as gRPC Puts "
    "because no bulk path to the node was usable (grpc)",
    ["path"],
)
_SENT, _GRPC = BULK_PUTS.labels("sent"), BULK_PUTS.labels("grpc")

# An idle pooled connection older than this is closed rather than reused.
IDLE_KEEP_SECONDS = 30.0
# The longest wait before a node whose bulk port keeps failing to connect is tried again.
RETRY_MAX_SECONDS = 600.0


class BulkFailed(Exception):
    """The connection broke with a frame in flight."""


@dataclass
class _Node:
    address: str | None = None  # the node's bulk "host:port"; None: not known
    retry_at: float = 0.0  # monotonic time before which the node gets gRPC Puts only
    failures: int = 0  # connections in a row its bulk port refused or never answered
    idle: list[tuple[socket.socket, float]] = field(default_factory=list)
    lookup: asyncio.Lock = field(default_factory=asyncio.Lock)


class BulkPuts:
    """Bulk connections to the nodes; see the module docstring."""

    def __init__(self, cfg: Config) -> None:
        gw = cfg.gateway
        self._credential = client_credential(cfg, "gateway")
        # Plaintext gRPC only: with TLS configured chunk bytes keep to the encrypted channel.
        self.enabled = gw.bulk_puts and not cfg.cluster.tls_ca
        self._retry = gw.bulk_retry_seconds
        self._connect_seconds = gw.bulk_connect_seconds
        self._idle_max = gw.bulk_idle_connections
        self._nodes: dict[str, _Node] = {}
        # Puts sent, and puts that went to gRPC because no bulk path was usable.
        self.sent = 0
        self.fallbacks = 0

    def _fell_back(self) -> None:
        self.fallbacks += 1
        _GRPC.inc()

    def close(self) -> None:
        for state in self._nodes.values():
            for sock, _ in state.idle:
                sock.close()
            state.idle.clear()

    async def put(
        self, node: NodeChannel, request: bytes, seconds: float
    ) -> pb.PutChunkReply | None:
        """Send one encoded PutChunkRequest over `node`'s bulk port, the reply due within
        `seconds`; None: send it as a gRPC Put instead."""
        fields = decode_bytes_fields(request)
        chunk_id, data, checksum = fields.get(1), fields.get(2), fields.get(3)
        if (
            chunk_id is None
            or data is None
            or checksum is None
            or len(chunk_id) != CHUNK_ID_LEN
            or len(checksum) != CHECKSUM_LEN
        ):
            return None
        state = self._nodes.setdefault(node.address, _Node())
        address = await self._address(node, state)
        if address is None:
            self._fell_back()
            return None
        header = put_header(REQUEST_ID.get() or "", bytes(chunk_id), bytes(checksum), len(data))
        sock = self._pooled(state) or await self._connect(node, state, address, seconds)
        if sock is None:
            self._fell_back()
            return None
        try:
            async with asyncio.timeout(seconds):
                item = await _exchange(sock, header, data)
        except TimeoutError:
            sock.close()
            self._forget(state)
            raise status_error(
                grpc.StatusCode.UNAVAILABLE, f"bulk put to {address} timed out"
            ) from None
        except BulkFailed as exc:
            # Broken before its reply (the node restarted, or closed an idle connection):
            # the put is idempotent, so it goes once more, as a gRPC Put.
            sock.close()
            self._forget(state)
            log_event(logger, "bulk.put_failed", logging.INFO, node=node.address, error=str(exc))
            self._fell_back()
            return None
        except BaseException:
            sock.close()
            raise
        self._release(state, sock)
        self.sent += 1
        _SENT.inc()
        if item.code:
            raise item_error(item)
        return pb.PutChunkReply.FromString(item.reply)

    # -- addresses and connections ----------------------------------------------------------
    async def _address(self, node: NodeChannel, state: _Node) -> str | None:
        if not self.enabled or self._credential is None:
            return None
        if state.address is not None:
            return state.address
        if time.monotonic() < state.retry_at:
            return None
        async with state.lookup:
            if state.address is None and time.monotonic() >= state.retry_at:
                try:
                    reply = await node.chunks.BulkAddress(
                        pb.BulkAddressRequest(), timeout=5.0, metadata=call_metadata()
                    )
                    state.address = reply.address or None
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                        log_event(
                            logger,
                            "bulk.address_failed",
                            logging.DEBUG,
                            node=node.address,
                            code=exc.code().name,
                        )
                if state.address is None:
                    state.retry_at = time.monotonic() + self._retry
        return state.address

    def _pooled(self, state: _Node) -> socket.socket | None:
        now = time.monotonic()
        while state.idle:
            sock, since = state.idle.pop()
            if now - since <= IDLE_KEEP_SECONDS:
                return sock
            sock.close()
        return None

    def _release(self, state: _Node, sock: socket.socket) -> None:
        if len(state.idle) < self._idle_max and state.address is not None:
            state.idle.append((sock, time.monotonic()))
        else:
            sock.close()

    def _forget(self, state: _Node, refused: bool = False) -> None:
        """No bulk puts to this node until `bulk_retry_seconds` have passed; then ask
        it again where its bulk port is. Each connection in a row that its port
        `refused` (or never answered: a firewall dropping it) doubles the wait, up to
        `RETRY_MAX_SECONDS`, so a blocked port stalls one put now and then, not often."""
        state.address = None
        state.failures = state.failures + 1 if refused else 0
        wait = min(self._retry * 2 ** max(0, state.failures - 1), RETRY_MAX_SECONDS)
        state.retry_at = time.monotonic() + max(self._retry, wait)
        for sock, _ in state.idle:
            sock.close()
        state.idle.clear()

    async def _connect(
        self, node: NodeChannel, state: _Node, address: str, seconds: float
    ) -> socket.socket | None:
        """A fresh connection past its hello; None (address forgotten) when the port or the
        hello refused it, or neither answered within `seconds`."""
        assert self._credential is not None
        loop = asyncio.get_running_loop()
        host, _, port = address.rpartition(":")
        sock: socket.socket | None = None
        try:
            infos = await loop.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
            family, kind, proto, _, target = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(min(seconds, self._connect_seconds)):
                await loop.sock_connect(sock, target)
                item = await _exchange(sock, hello(sign(self._credential, BULK_METHOD)), b"")
        except (OSError, BulkFailed, ValueError, TimeoutError) as exc:
            if sock is not None:
                sock.close()
            log_event(
                logger, "bulk.connect_failed", logging.INFO, node=node.address, error=repr(exc)
            )
            self._forget(state, refused=True)
            return None
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        if item.code:
            sock.close()
            log_event(
                logger, "bulk.refused", logging.WARNING, node=node.address, details=item.details
            )
            self._forget(state, refused=True)
            return None
        state.failures = 0
        return sock


async def _exchange(sock: socket.socket, head: bytes, data: bytes | memoryview) -> pb.PackItem:
    """Send a frame (`head`, then `data`), read the node's PackItem reply."""
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, head)
        if data:
            await loop.sock_sendall(sock, data)
        size = REPLY.unpack(await _read(loop, sock, REPLY.size))[0]
        if size > REPLY_MAX:
            raise BulkFailed(f"reply of {size} bytes")
        return pb.PackItem.FromString(await _read(loop, sock, size))
    except OSError as exc:
        raise BulkFailed(str(exc) or type(exc).__name__) from None


async def _read(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = await loop.sock_recv_into(sock, view[got:])
        if n == 0:
            raise BulkFailed("connection closed by the node")
        got += n
    return bytes(buffer)

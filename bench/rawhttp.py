"""A lean HTTP/1.1 keep-alive client for the small-request workloads (manifest HEAD/GET).

aiohttp's client costs ~100-250 µs of CPU per request; on a 2-core machine shared with
the system under test that would make the client the bottleneck of a req/s measurement.
This one sends a prebuilt request on a persistent connection and frames the response
itself (status line, Content-Length or chunked, HEAD has no body), so it costs a few µs.
It checks the status and that `Docker-Content-Digest` is present, nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import urlsplit


class RawHTTPError(RuntimeError):
    """Unexpected status, a missing header or a broken framing."""


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is duck-typed

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(RawHTTPError(f"connection lost: {exc}"))

    async def more(self) -> None:
        if self.closed:
            raise RawHTTPError("connection closed by peer")
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter
        self.waiter = None


class RawClient:
    """One persistent connection to one `http://host:port`."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.hostport = f"{self.host}:{self.port}"
        self.conn: _Conn | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.conn = await loop.create_connection(_Conn, self.host, self.port)

    def close(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()

    def build(self, method: str, path: str, accept: str, authorization: str = "") -> bytes:
        auth = f"Authorization: {authorization}\r\n" if authorization else ""
        return (
            f"{method} {path} HTTP/1.1\r\nHost: {self.hostport}\r\n"
            f"Accept: {accept}\r\nUser-Agent: cargohold-bench\r\n{auth}\r\n"
        ).encode()

    async def request(self, raw: bytes, head: bool, expect: int = 200) -> int:
        """Send a prebuilt request, read the whole response; returns the body length."""
        if self.conn is None or self.conn.closed:
            await self.connect()
        try:
            return await self._exchange(raw, head, expect)
        except BaseException:
            # A failed exchange leaves unread bytes behind: never reuse this stream.
            self.close()
            self.conn = None
            raise

    async def _exchange(self, raw: bytes, head: bool, expect: int) -> int:
        conn = self.conn
        if conn is None or conn.transport is None:
            raise RawHTTPError("not connected")
        conn.transport.write(raw)
        while (end := conn.buf.find(b"\r\n\r\n")) < 0:
            await conn.more()
        header = bytes(conn.buf[:end]).lower()
        del conn.buf[: end + 4]
        status = int(header[9:12])
        if status != expect:
            raise RawHTTPError(f"status {status}: {header[:200]!r}")
        if b"\r\ndocker-content-digest:" not in header:
            raise RawHTTPError("no Docker-Content-Digest")
        if head:
            return 0
        if b"\r\ntransfer-encoding: chunked" in header:
            return await self._chunked(conn)
        at = header.find(b"\r\ncontent-length:")
        if at < 0:
            raise RawHTTPError("response without length")
        length = int(header[at + 17 : header.find(b"\r\n", at + 2)].strip() or b"0")
        while len(conn.buf) < length:
            await conn.more()
        del conn.buf[:length]
        return length

    @staticmethod
    async def _chunked(conn: _Conn) -> int:
        total = 0
        while True:
            while (eol := conn.buf.find(b"\r\n")) < 0:
                await conn.more()
            size = int(bytes(conn.buf[:eol]).split(b";")[0], 16)
            while len(conn.buf) < eol + 2 + size + 2:
                await conn.more()
            del conn.buf[: eol + 2 + size + 2]
            total += size
            if size == 0:
                return total


class _BodyCounter(asyncio.BufferedProtocol):
    """Reads responses into one reusable buffer and only counts body bytes."""

    def __init__(self, bufsize: int) -> None:
        self.buf = bytearray(bufsize)
        self.view = memoryview(self.buf)
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.remaining = -1  # -1: still reading the header
        self.length = 0
        self.received = 0  # every byte read on this connection (progress)
        self.done: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is duck-typed

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        if self.remaining >= 0:
            self.remaining -= nbytes
        else:
            self.head += self.view[:nbytes]
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            try:
                self.length = self._parse(bytes(self.head[:end]).lower())
            except RawHTTPError as exc:
                self._finish(exc)
                return
            self.remaining = self.length - (len(self.head) - end - 4)
            self.head.clear()
        if self.remaining <= 0:
            self._finish(None if self.remaining == 0 else RawHTTPError("body overrun"))

    @staticmethod
    def _parse(header: bytes) -> int:
        status = int(header[9:12])
        if status != 200:
            raise RawHTTPError(f"status {status}: {header[:200]!r}")
        at = header.find(b"\r\ncontent-length:")
        if at < 0:
            raise RawHTTPError("blob response without Content-Length")
        eol = header.find(b"\r\n", at + 2)
        return int(header[at + 17 : eol if eol > 0 else None].strip())

    def _finish(self, exc: Exception | None) -> None:
        done, self.done = self.done, None
        self.remaining = -1
        if done is not None and not done.done():
            if exc is None:
                done.set_result(self.length)
            else:
                done.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish(RawHTTPError(f"connection lost: {exc}"))


class RawBlobReader:
    """One persistent connection that GETs blobs and counts their bytes (no hashing):
    the kernel's copy into one reused buffer is the whole client cost."""

    def __init__(self, base_url: str, bufsize: int = 1024 * 1024) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.bufsize = bufsize
        self.proto: _BodyCounter | None = None
        self._received = 0

    async def get(self, path: str, authorization: str = "") -> int:
        if self.proto is None or self.proto.closed:
            loop = asyncio.get_running_loop()
            _, self.proto = await loop.create_connection(
                lambda: _BodyCounter(self.bufsize), self.host, self.port
            )
        proto = self.proto
        if proto.transport is None:
            raise RawHTTPError("not connected")
        proto.done = asyncio.get_running_loop().create_future()
        auth = f"Authorization: {authorization}\r\n" if authorization else ""
        proto.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"User-Agent: cargohold-bench\r\n{auth}\r\n".encode()
        )
        try:
            return await proto.done
        except BaseException:
            # The rest of a failed response is still in flight: never reuse this stream.
            self.close()
            raise

    @property
    def received(self) -> int:
        return self._received + (self.proto.received if self.proto is not None else 0)

    def close(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self._received += self.proto.received
            self.proto.transport.close()
            self.proto = None


class RawReaderPool:
    """`count` `RawBlobReader`s over `urls` (round robin), each lent to one GET at a time:
    concurrent pulls, each on a connection no other pull is using."""

    def __init__(self, urls: Sequence[str], count: int) -> None:
        self.readers = [RawBlobReader(urls[i % len(urls)]) for i in range(count)]
        self._idle: asyncio.Queue[RawBlobReader] = asyncio.Queue()
        for reader in self.readers:
            self._idle.put_nowait(reader)

    async def get(self, path: str) -> int:
        reader = await self._idle.get()
        try:
            return await reader.get(path)
        finally:
            self._idle.put_nowait(reader)

    @property
    def received(self) -> int:
        return sum(reader.received for reader in self.readers)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()

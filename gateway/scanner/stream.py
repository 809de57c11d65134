"""A blocking file-like view of a layer's chunks, for the worker thread that unpacks it.

The event loop owns the cluster reads (`ClusterClient.read_range`, with its read-ahead and
hedging); the thread pulls the next piece with `run_coroutine_threadsafe`, so at most the
read-ahead window of a layer is in memory and a slow thread slows the reads (back-pressure).
`rate` paces the reads (bytes per second, 0 = unpaced) so scans leave room for pushes.
Once `close()` ran (a scan timed out or was cancelled), the thread's next read raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator

from cargohold.errors import ScanError


class LayerStream:
    """`read(n)` for a thread; the pieces come from `pieces` on the event loop `loop`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pieces: AsyncGenerator[memoryview, None],
        rate: int = 0,
    ) -> None:
        self._loop = loop
        self._pieces = pieces
        self._rate = rate
        self._buf = memoryview(b"")
        self._pos = 0
        self._closed = False
        self._started = time.monotonic()
        self.count = 0

    async def _next(self) -> memoryview:
        if self._closed:
            raise ScanError("the scan was stopped")
        try:
            piece = await anext(self._pieces)
        except StopAsyncIteration:
            return memoryview(b"")
        self.count += len(piece)
        if self._rate > 0:  # pace: never ahead of `rate` bytes per second on average
            ahead = self.count / self._rate - (time.monotonic() - self._started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        return piece

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (one piece's rest when n < 0); b"" at the end. Thread side."""
        if self._pos >= len(self._buf):
            self._buf = asyncio.run_coroutine_threadsafe(self._next(), self._loop).result()
            self._pos = 0
            if not self._buf:
                return b""
        end = len(self._buf) if n < 0 else min(len(self._buf), self._pos + n)
        out = bytes(self._buf[self._pos : end])
        self._pos = end
        return out

    async def close(self) -> None:
        """Stop: the thread's next read fails; the cluster reads in flight are cancelled."""
        self._closed = True
        with contextlib.suppress(Exception):
            await self._pieces.aclose()

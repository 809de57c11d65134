"""Request bodies under a gateway-wide memory budget, each read with an idle timeout.

`BodyBudget` (one per gateway, `BUDGET` on the application) counts request bytes read
from clients and not yet stored: at most `gateway.max_buffered_bytes`. A body is read in
windows: before a window's bytes are read its size is reserved, and a reader that finds
the budget spent waits (first come, first served) while its socket is not read, so TCP
pushes back on the client. `BudgetedBody` reads an upload body in windows of one chunk
(`cluster.chunk_size`, or what remains of a declared `Content-Length`), so windows line up
with the chunks `gateway.chunking` cuts and a whole chunk can always be completed once
its window is granted (reserving piece by piece could leave every upload holding part of
a chunk, waiting for the others). Manifest bodies reserve their size for the handler's
duration (`hold`). A single body never buffers more than one chunk beyond the writes in
flight that `gateway.chunking` already bounds.

A body that sends nothing for `gateway.body_idle_timeout_seconds` ends the request with
408 (`RequestTimeout`): nothing of that request is committed, and an upload stays at its
last acknowledged size, resumable from the `Range` the 408 carries.

When the budget drains after a burst that filled it (a reader had to wait) or held at
least `gateway.body_trim_after_bytes`, freed memory is given back to the kernel
(`cargohold.memtune.release_memory`, off the event loop): the malloc tuning keeps up to
`malloc_retain_bytes` free at the top of the heap only, and a burst of stalled clients
leaves free memory scattered through it. A smaller burst (8 uploads of large blobs hold
about 160 MiB of windows) keeps its freed memory for the next one: giving it back made
every such burst fault ~170 MiB in again, each page zero-filled by the kernel
(bench/README.md, "Push at c8 vs c1").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from aiohttp import StreamReader, web

from cargohold.log import log_event
from cargohold.memtune import release_memory

logger = logging.getLogger("cargohold.gateway.body")

# Read at most this much per read call (aiohttp hands over what is buffered, up to it).
_READ_BYTES = 1024 * 1024
# A drained budget trims this long after it drained (and not if used again meanwhile).
_TRIM_DELAY_SECONDS = 1.0


class BodyTimeout(Exception):
    """The client sent no body bytes for the idle timeout."""


class BodyBudget:
    """Bytes reserved for request bodies, at most `limit` (0 = no limit), FIFO waiters.

    Once drained, memory is given back after a burst that made a reader wait or reached
    `trim_after` bytes (0 = after every burst)."""

    def __init__(self, limit: int, trim_after: int = 256 * 1024 * 1024) -> None:
        self.limit = limit
        self.trim_after = trim_after
        self.used = 0
        self._peak_since_trim = 0
        self._waited_since_trim = False
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._trim: asyncio.TimerHandle | None = None

    async def acquire(self, size: int) -> None:
        """Reserve `size` bytes; waits while the budget is spent (a body larger than the
        whole budget gets it alone)."""
        if not self._waiters and self._fits(size):
            self._take(size)
            return
        self._waited_since_trim = True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(size)  # granted just as we were cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, size: int) -> None:
        self.used -= size
        self._wake()
        if self.used == 0 and self._burst_to_trim():
            self._schedule_trim()

    def _burst_to_trim(self) -> bool:
        if self._waited_since_trim:
            return True
        return self._peak_since_trim > 0 and self._peak_since_trim >= self.trim_after

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        await self.acquire(size)
        try:
            yield
        finally:
            self.release(size)

    def _fits(self, size: int) -> bool:
        return self.limit <= 0 or self.used == 0 or self.used + size <= self.limit

    def _take(self, size: int) -> None:
        self.used += size
        self._peak_since_trim = max(self._peak_since_trim, self.used)

    def _wake(self) -> None:
        while self._waiters:
            size, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self._fits(size):
                return
            self._waiters.popleft()
            self._take(size)
            future.set_result(None)

    def _schedule_trim(self) -> None:
        if self._trim is not None:
            return
        loop = asyncio.get_running_loop()
        self._trim = loop.call_later(_TRIM_DELAY_SECONDS, self._start_trim)

    def _start_trim(self) -> None:
        self._trim = None
        if self.used != 0:
            return
        peak, self._peak_since_trim = self._peak_since_trim, 0
        waited, self._waited_since_trim = self._waited_since_trim, False
        # Buffers of failed requests often sit in reference cycles (exception -> traceback
        # -> frame -> buffer) that only the cyclic collector frees, and after a burst too
        # little is allocated for it to run by itself.
        collected = gc.collect()  # a backstop: the known cycles are broken where they form
        log_event(logger, "body.gc", logging.DEBUG, collected=collected)
        task = asyncio.get_running_loop().run_in_executor(None, release_memory)
        task.add_done_callback(
            lambda _: log_event(logger, "body.memory_released", peak=peak, waited=waited)
        )


class BudgetedBody:
    """An upload body read in chunk-sized windows reserved in `budget` (see module doc).

    `iter_any()` is what `gateway.chunking.cut_chunks` consumes; `chunk_stored(n)` gives
    back `n` bytes once a chunk's write finished; `close()` gives back the rest.
    """

    def __init__(
        self,
        content: StreamReader,
        budget: BodyBudget,
        chunk_size: int,
        idle_timeout: float,
        declared: int | None,
        read_bytes: int = 256 * 1024,
    ) -> None:
        self._content = content
        self._read_bytes = read_bytes
        self._budget = budget
        self._chunk_size = chunk_size
        self._idle = idle_timeout if idle_timeout > 0 else None
        self._left = declared  # bytes the client still declared, when it did
        self._window = 0  # bytes of the current reserved window not read yet
        self._held = 0

    async def _read(self, size: int) -> bytes:
        try:
            async with asyncio.timeout(self._idle):  # no extra task per read, unlike wait_for
                return await self._content.read(size)
        except TimeoutError:
            raise BodyTimeout() from None

    async def iter_any(self) -> AsyncIterator[bytes]:
        while True:
            if self._window == 0:
                size = self._chunk_size if self._left is None else min(self._chunk_size, self._left)
                if size == 0:
                    # All declared bytes were read: only the end of the body is left.
                    if await self._read(1):
                        raise BodyTimeout()  # unreachable: aiohttp enforces Content-Length
                    return
                await self._budget.acquire(size)
                if not self._held:
                    # Granted: let the socket fill a larger buffer ahead of our reads.
                    self._content.set_read_chunk_size(self._read_bytes)
                self._held += size
                self._window = size
            data = await self._read(min(self._window, _READ_BYTES))
            if not data:
                return
            self._window -= len(data)
            if self._left is not None:
                self._left -= len(data)
            yield data

    def chunk_stored(self, size: int) -> None:
        size = min(size, self._held)
        self._held -= size
        self._budget.release(size)

    def close(self) -> None:
        if self._held:
            self._budget.release(self._held)
            self._held = 0


BUDGET: web.AppKey[BodyBudget] = web.AppKey("cargohold_body_budget", BodyBudget)


def budget(request: web.Request) -> BodyBudget:
    return request.app[BUDGET]

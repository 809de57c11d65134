"""A TCP relay with a bandwidth limit: the "slow link" between a registry and the
upstream it pulls from, for benches that must not be measured on loopback alone.

`Link(target_host, target_port, mib_s)` listens on a free loopback port and relays every
connection to the target; what the target sends back shares one token bucket of `mib_s`
MiB/s across all connections (a link, not a per-connection cap). Requests flow unlimited.
It runs its own event loop in a thread, so the bench's client loop does not pace it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

_PIECE = 1024 * 1024


class Link:
    def __init__(self, host: str, port: int, mib_s: float) -> None:
        self.host, self.port = host, port
        self.rate = mib_s * 1024 * 1024
        self._server: asyncio.Server | None = None
        self._next = time.monotonic()  # when the link is free for the next byte
        self.listen_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    async def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        await asyncio.to_thread(ready.wait)

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(asyncio.start_server(self._relay, "127.0.0.1", 0))
        self.listen_port = self._server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
        self._server.close()
        loop.close()

    async def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10)

    async def _throttle(self, n: int) -> None:
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + n / self.rate
        if self._next > now:
            await asyncio.sleep(self._next - now)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.host, self.port, limit=4 * _PIECE
            )
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, limit: bool) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(_PIECE):
                    if limit:
                        await self._throttle(len(data))
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

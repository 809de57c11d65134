"""Revocation at once on every gateway: is this gateway's cached access directory still the
cluster's? (docs/security.md "Revocation at once").

Every authenticated request asks the cluster for its access revision (`access_revision`,
a non-linearizable read, which the metadata client sends to the Raft leader) before its
identity is trusted. The leader applies a committed command before anyone is told it
committed, so a revocation acknowledged through any gateway or the CLI is in the
revision the next request reads: when it differs from the one the directory was read at,
the directory is read again (`access_list`) before the request is judged.

`RevisionWatch` makes that cheap: at most one read is in flight per gateway, and a
caller is answered by a read *sent after it asked* (a read already in flight may predate
a revocation the caller has seen acknowledged, so the caller waits for the next one). So
N concurrent requests cost one or two reads, not N, and each adds at most two round
trips to the leader to its latency. Reads are also paced (`auth.revocation_check_interval`:
the next one is sent at least that long after the previous one was), so under load one
read serves every request that arrived in that interval, and the check costs a bounded
number of reads per second instead of one per request; the price is up to that interval
of added latency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RevisionWatch:
    """Single-flight reads of a revision, at most one per `min_interval` seconds; see the
    module docstring."""

    def __init__(self, read: Callable[[], Awaitable[str]], min_interval: float = 0.0) -> None:
        self._read = read
        self._min_interval = min_interval
        self._sent = 0  # reads sent so far
        self._last_sent = float("-inf")
        self._task: asyncio.Task[str] | None = None
        self._task_sent: int | None = None  # which read `_task` sent (None: not yet sent)

    @property
    def reads(self) -> int:
        return self._sent

    async def _paced_read(self) -> str:
        wait = self._last_sent + self._min_interval - time.monotonic()
        if wait > 0:  # callers arriving meanwhile join this read: it is not sent yet
            await asyncio.sleep(wait)
        self._last_sent = time.monotonic()
        self._sent += 1
        self._task_sent = self._sent
        return await self._read()

    async def current(self) -> str:
        """The revision, from a read sent after this call began (its error, if it failed)."""
        asked_after = self._sent
        while True:
            task = self._task
            if task is None or task.done():
                self._task_sent = None
                task = self._task = asyncio.ensure_future(self._paced_read())
                task.add_done_callback(_retrieve)
                return await asyncio.shield(task)
            if self._task_sent is None or self._task_sent > asked_after:
                return await asyncio.shield(task)  # sent (or to be sent) after this caller asked
            # In flight since before this caller asked: wait for it to end, then ask again.
            await asyncio.wait([task])


def _retrieve(task: asyncio.Task[str]) -> None:
    """A failed read whose callers all went away is not an "exception never retrieved"."""
    if not task.cancelled():
        task.exception()

"""Coalescing of identical concurrent linearizable reads (a thundering herd on one tag).

When a thousand pods roll out the same image, a thousand `HEAD /manifests/<tag>` arrive
at once; each needs a linearizable answer, but not its own RPC. `Coalescer.run(key, fn)`
lets concurrent callers with the same key share one call of `fn` under one rule that
keeps every answer linearizable: a caller only ever receives the result of a call that
*started after it arrived*. So a caller arriving while a call is in flight does not join
that call (it may predate a write the caller must see); it waits for the next one, which
starts when the current one ends and is shared by every caller that arrived meanwhile.
At most two calls per key exist at any time, whatever the number of callers.

Results and exceptions are shared as they are: callers must not mutate a result.
A caller that is cancelled (its client went away) never cancels the shared call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Slot:
    fn: Callable[[], Awaitable[Any]]
    running: asyncio.Future[Any] | None = None
    following: asyncio.Future[Any] | None = None
    following_callers: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Coalescer:
    def __init__(self) -> None:
        self._slots: dict[Hashable, _Slot] = {}

    def __len__(self) -> int:
        """Keys with a call in flight (for tests and metrics)."""
        return len(self._slots)

    def waiting(self, key: Hashable) -> int:
        """Callers of `key` waiting for the next call (for tests and metrics)."""
        slot = self._slots.get(key)
        return slot.following_callers if slot is not None else 0

    async def run(self, key: Hashable, fn: Callable[[], Awaitable[Any]]) -> Any:
        slot = self._slots.get(key)
        loop = asyncio.get_running_loop()
        if slot is None:
            slot = self._slots[key] = _Slot(fn=fn, running=loop.create_future())
            waiter = slot.running
            slot.task = loop.create_task(self._drive(key, slot))
        else:
            if slot.following is None:
                slot.following = loop.create_future()
            slot.following_callers += 1
            waiter = slot.following
        assert waiter is not None
        return await asyncio.shield(waiter)

    async def _drive(self, key: Hashable, slot: _Slot) -> None:
        try:
            while slot.running is not None:
                future = slot.running
                try:
                    result = await slot.fn()
                except Exception as exc:
                    future.set_exception(exc)
                    # Nobody may be left to retrieve it (every caller was cancelled).
                    future.exception()
                else:
                    future.set_result(result)
                slot.running, slot.following = slot.following, None
                slot.following_callers = 0
        finally:
            if self._slots.get(key) is slot:
                del self._slots[key]
            for pending in (slot.running, slot.following):
                if pending is not None and not pending.done():
                    pending.cancel()

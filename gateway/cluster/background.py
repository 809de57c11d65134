"""Tasks of the cluster client that outlive the request that started them.

Replica copies still running after W acks, chunk reads shared by several requests and
soon-after-a-failure member refreshes. Each is kept referenced until done (a failure is
already logged or left for repair); `close` gives them a bounded time to finish, then
cancels the rest, so a stopping gateway neither hangs nor drops a copy it could finish.
"""

from __future__ import annotations

import asyncio
from typing import Any


class BackgroundTasks:
    """The running background tasks; see the module docstring."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed extra replica is left for repair

    async def close(self, grace: float) -> None:
        """Wait up to `grace` seconds for the tasks, then cancel what still runs."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

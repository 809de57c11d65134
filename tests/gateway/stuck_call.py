"""A metadata call that hangs until it is cancelled and then reports the cancellation as an
error, as a grpc.aio call does (the metadata client maps its CANCELLED to Unavailable); and
the check that one cancellation still ends the background loop that was in it."""

from __future__ import annotations

import asyncio
from typing import Any

from cargohold.errors import Unavailable
from cargohold.periodic import cancel_and_wait


class StuckCall:
    """Stands in for a metadata call. Only the first cancellation is turned into an error,
    so a loop that swallows it can still be ended (a failing test does not hang)."""

    def __init__(self) -> None:
        self.called = asyncio.Event()
        self.converted = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.called.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.converted:
                raise
            self.converted += 1
            raise Unavailable("CANCELLED: locally cancelled") from None


async def assert_one_cancel_ends(task: asyncio.Task[Any], call: StuckCall) -> None:
    """Once `task` is inside `call`, a single cancel must end it (within 10 s)."""
    await asyncio.wait_for(call.called.wait(), 10)
    task.cancel()
    try:
        done, _ = await asyncio.wait({task}, timeout=10)
        assert task in done and task.cancelled()
        assert call.converted == 1
    finally:
        await cancel_and_wait(task)  # ended all the same should an assertion fail

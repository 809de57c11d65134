"""Calls that report a cancellation as an error, as a grpc.aio call does, for the tests of
every background loop that must still end on one cancel.

grpc.aio turns a cancellation that lands inside a call into `AioRpcError(CANCELLED)` (the
metadata client maps it to `Unavailable`): a loop that catches call errors and goes on
would never end. `converted_cancel` is that call's wait; `StuckCall` a metadata call made
of it; `assert_one_cancel_ends` the check that one cancellation still ends the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from cargohold.errors import Unavailable
from cargohold.periodic import cancel_and_wait


async def converted_cancel(
    error: BaseException | None, waiting: Awaitable[Any] | None = None
) -> Any:
    """Await `waiting` (default: an hour's sleep); a cancellation that lands in it is raised
    as `error` instead (None: left a cancellation)."""
    try:
        return await (waiting if waiting is not None else asyncio.sleep(3600))
    except asyncio.CancelledError:
        if error is None:
            raise
        raise error from None


class StuckCall:
    """Stands in for a metadata call that hangs. Only the first cancellation is turned into
    an error, so a loop that swallows it can still be ended (a failing test does not hang)."""

    def __init__(self) -> None:
        self.called = asyncio.Event()
        self.converted = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.called.set()
        error = None if self.converted else Unavailable("CANCELLED: locally cancelled")
        try:
            return await converted_cancel(error)
        except Unavailable:
            self.converted += 1
            raise


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

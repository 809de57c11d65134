"""Background loops that run one step now and then and outlive any one failed step.

Several roles (the activity log's sealer, the webhook lease round, ...) run a step forever:
a pause, the step, a warning (one structured line) when the step raised, and on. This is
that loop, once. Cancelling the task ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from cargohold.log import log_event


async def run_every(
    pause: Callable[[], float],
    step: Callable[[], Awaitable[object]],
    logger: logging.Logger,
    failed_event: str,
    first_pause: float | None = None,
) -> None:
    """Forever: sleep `pause()` seconds (`first_pause` the first time, when given), then
    `await step()`; an exception from the step is logged as `failed_event` (WARNING, its
    type and the start of its message) and the loop goes on."""
    wait = pause() if first_pause is None else first_pause
    while True:
        await asyncio.sleep(wait)
        try:
            await step()
        except Exception as exc:  # the loop must outlive any one failed step
            raise_if_cancelling()  # ... but not its own cancellation, whatever it became
            log_event(
                logger,
                failed_event,
                logging.WARNING,
                error=type(exc).__name__,
                message=str(exc)[:200],
            )
        wait = pause()


# How often `cancel_and_wait` asks again while a task has not ended.
RECANCEL_SECONDS = 0.5


def raise_if_cancelling() -> None:
    """Raise CancelledError when the running task has been asked to cancel.

    For `except` clauses of background loops: grpc.aio turns a cancellation that lands
    inside a call into `AioRpcError(CANCELLED)` (an Exception), so a loop that catches
    errors and goes on would swallow its own cancellation and never end, and whoever
    awaits it on shutdown waits forever. `Task.cancelling()` still counts the request."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    """Cancel a background task (None: nothing) and wait until it has ended; a task that
    swallowed the cancellation (see `raise_if_cancelling`) is asked again every
    `RECANCEL_SECONDS` until it ends."""
    if task is None:
        return
    task.cancel()
    while not task.done():
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
        if not task.done():
            task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def cancel_all_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """`cancel_and_wait` for several tasks at once; what they raised is dropped (they are
    being stopped: their failures were theirs to report)."""
    await asyncio.gather(*(cancel_and_wait(t) for t in tasks), return_exceptions=True)

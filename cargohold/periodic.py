"""Background loops that run one step now and then and outlive any one failed step.

Several roles (the activity log's sealer, the webhook lease round, ...) run a step forever:
a pause, the step, a warning (one structured line) when the step raised, and on. This is
that loop, once. Cancelling the task ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

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
            log_event(
                logger,
                failed_event,
                logging.WARNING,
                error=type(exc).__name__,
                message=str(exc)[:200],
            )
        wait = pause()


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    """Cancel a background task (None: nothing) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

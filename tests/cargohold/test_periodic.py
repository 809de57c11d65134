"""cargohold/periodic.py: the loop pauses, runs its step, survives a failed step (logged
once as a structured warning) and ends when cancelled, even when the cancellation landed
in a call that reported it as an error (as grpc.aio does)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cargohold.periodic import cancel_all_and_wait, cancel_and_wait, run_every
from tests.cancel_fakes import converted_cancel


async def test_a_failed_step_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    steps: list[int] = []
    pauses: list[float] = []
    done = asyncio.Event()

    async def step() -> None:
        steps.append(len(steps))
        if len(steps) == 2:
            raise RuntimeError("boom " + "x" * 500)
        if len(steps) == 4:
            done.set()

    def pause() -> float:
        pauses.append(0.0)
        return 0.0

    logger = logging.getLogger("cargohold.test.periodic")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        task = asyncio.create_task(run_every(pause, step, logger, "test.step_failed", 0.001))
        await asyncio.wait_for(done.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert steps[:4] == [0, 1, 2, 3]
    assert len(pauses) >= 3  # the first pause was first_pause, then pause() each round
    (record,) = [r for r in caplog.records if r.getMessage() == "test.step_failed"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["error"] == "RuntimeError" and len(fields["message"]) == 200


async def test_a_cancellation_reported_as_an_error_still_ends_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """grpc.aio turns a cancellation inside a call into AioRpcError (an Exception): the
    loop must not take it for a failed step and go on."""
    started = asyncio.Event()

    async def step() -> None:
        started.set()
        await converted_cancel(RuntimeError("CANCELLED"))

    task = asyncio.ensure_future(run_every(lambda: 0.0, step, logging.getLogger("t"), "t.failed"))
    await started.wait()
    await asyncio.wait_for(cancel_and_wait(task), 5)
    assert task.cancelled()
    assert "t.failed" not in caplog.text


async def test_cancel_and_wait_asks_again_a_task_that_swallowed_the_cancellation() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # once, as a loop catching a converted cancellation would

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), 5)
    assert task.cancelled() and swallowed == 1


async def test_cancel_all_and_wait_ends_every_task_and_drops_their_errors() -> None:
    async def failing() -> None:
        raise RuntimeError("its own failure")

    async def converting() -> None:  # a cancellation reported as an error, once
        await converted_cancel(RuntimeError("CANCELLED"))

    tasks = [asyncio.ensure_future(failing()), asyncio.ensure_future(converting()), None]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all_and_wait(tasks), 5)
    assert all(t.done() for t in tasks if t is not None)

"""cargohold/periodic.py: the loop pauses, runs its step, survives a failed step (logged
once as a structured warning) and ends when cancelled."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cargohold.periodic import run_every


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

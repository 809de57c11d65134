"""The scanner's claim loop (gateway/scanner/worker.py) ends when it is stopped, even when
the stop lands in a metadata call that reports it as an error (grpc.aio does: the
metadata client maps the call's CANCELLED to Unavailable, which the loop logs and
retries)."""

from __future__ import annotations

import asyncio

from fakecluster import FakeCluster

from cargohold.config import Config
from cargohold.errors import Unavailable
from cargohold.periodic import cancel_and_wait
from gateway.context import GatewayContext
from gateway.scanner.worker import Scanner


async def test_a_stop_that_lands_in_a_metadata_call_ends_the_claim_loop() -> None:
    scanner = Scanner(GatewayContext(cfg=Config(), cluster=FakeCluster()))  # type: ignore[arg-type]
    called = asyncio.Event()
    converted = 0

    async def no_pushes() -> bool:
        return False

    async def work_waiting() -> float | None:  # the loop's metadata query, stuck
        nonlocal converted
        called.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if converted:  # (only once: a failing test still ends)
                raise
            converted += 1
            raise Unavailable("CANCELLED: locally cancelled") from None
        return None

    scanner._pushes_going_on = no_pushes  # type: ignore[method-assign]
    scanner._work_waiting = work_waiting  # type: ignore[method-assign]
    scanner.start()
    task = scanner._task
    assert task is not None
    await asyncio.wait_for(called.wait(), 10)
    task.cancel()  # once
    try:
        done, _ = await asyncio.wait({task}, timeout=10)
        assert task in done and task.cancelled()
    finally:
        await cancel_and_wait(task)
    await scanner.close()  # nothing left running: returns at once

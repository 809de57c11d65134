"""The scanner's claim loop (gateway/scanner/worker.py) ends when it is stopped, even when
the stop lands in a metadata call that reports it as an error (grpc.aio does: the
metadata client maps the call's CANCELLED to Unavailable, which the loop logs and
retries)."""

from __future__ import annotations

from fakecluster import FakeCluster

from cargohold.config import Config
from gateway.context import GatewayContext
from gateway.scanner.worker import Scanner
from tests.cancel_fakes import StuckCall, assert_one_cancel_ends


async def test_a_stop_that_lands_in_a_metadata_call_ends_the_claim_loop() -> None:
    scanner = Scanner(GatewayContext(cfg=Config(), cluster=FakeCluster()))  # type: ignore[arg-type]
    stuck = StuckCall()

    async def no_pushes() -> bool:
        return False

    scanner._pushes_going_on = no_pushes  # type: ignore[method-assign]
    scanner._work_waiting = stuck  # type: ignore[method-assign]  # the loop's query
    scanner.start()
    assert scanner._task is not None
    await assert_one_cancel_ends(scanner._task, stuck)
    await scanner.close()  # nothing left running: returns at once

"""The loop every plain background role shares (node/pacing.py `LoopedPassRole`)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest

from node.pacing import LoopedPassRole, PassSchedule, PassStats
from tests.cancel_fakes import converted_cancel


@dataclass
class _Stats(PassStats):
    failed_passes: int = 0
    dry_runs: int = 0


class _FlakyRole(LoopedPassRole[_Stats]):
    """Fails its first pass, then succeeds."""

    def __init__(self) -> None:
        self.stats = _Stats()
        self._schedule = PassSchedule(3600.0)
        self._logger = logging.getLogger("cargohold.node.flaky")
        self.calls = 0

    async def run_pass(self, dry_run: bool = False) -> None:
        self.stats.begin_pass()
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("first pass breaks")
        self.stats.dry_runs += dry_run
        self.stats.end_pass()

    def _pass_failed(self, exc: Exception) -> None:
        self.stats.failed_passes += 1
        self.stats.end_pass(completed=False)


async def test_a_failed_pass_is_logged_counted_and_the_role_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    role = _FlakyRole()
    loop = asyncio.create_task(role.run())
    try:
        with caplog.at_level(logging.ERROR, logger="cargohold.node.flaky"):
            first = await asyncio.wait_for(role.trigger(wait=True), 30)
        assert first["failed_passes"] == 1 and first["passes"] == 0
        assert not first["running"]
        assert [r.msg for r in caplog.records] == ["flaky.pass_failed"]
        second = await asyncio.wait_for(role.trigger(wait=True, dry_run=True), 30)
        assert second["passes"] == 1 and second["dry_runs"] == 1
        assert second["failed_passes"] == 1
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


class _CallingRole(_FlakyRole):
    """Its pass waits in a 'call' that reports a cancellation as an error (as grpc.aio's
    AioRpcError(CANCELLED) does)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_call = asyncio.Event()

    async def run_pass(self, dry_run: bool = False) -> None:
        self.stats.begin_pass()
        self.in_call.set()
        await converted_cancel(RuntimeError("CANCELLED"))


async def test_a_cancellation_inside_a_pass_ends_the_role_not_the_pass() -> None:
    """Before: the role logged the 'failed pass' and waited an interval for the next one,
    and the node's shutdown waited with it."""
    role = _CallingRole()
    loop = asyncio.create_task(role.run())
    role._schedule.request()
    await asyncio.wait_for(role.in_call.wait(), 30)
    loop.cancel()
    done, _ = await asyncio.wait({loop}, timeout=5)
    assert loop in done and loop.cancelled()
    assert role.stats.failed_passes == 0

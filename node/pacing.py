"""Pacing for the node's background roles (repair, scrub): a byte-rate limiter and the
schedule of passes (every interval, or now when an operator or a test asks), and the pass
bookkeeping and control every role shares (`PassStats`, `PassRole`).

`RateLimiter(rate)` spaces work so that, over time, at most `rate` bytes per second go
through `acquire`; a single item larger than a second's budget is let through and paid
for by waiting afterwards. `PassSchedule` numbers passes: `request()` returns the number
of a pass that begins after the call (the one running now does not count, it may have
scanned past the chunk the caller cares about) and `wait_for(n)` returns once pass `n`
has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from cargohold.log import log_event
from cargohold.periodic import raise_if_cancelling


@dataclass
class PassStats:
    """What every background role reports about its passes (`Admin.Status.extra`); each
    role's stats class adds its own counters to these."""

    passes: int = 0
    running: bool = False
    last_pass_start: float = 0.0
    last_pass_end: float = 0.0

    def begin_pass(self) -> None:
        self.running = True
        self.last_pass_start = time.time()

    def end_pass(self, completed: bool = True) -> None:
        """A pass ends; `completed` False when it stopped early (it is not counted)."""
        if completed:
            self.passes += 1
        self.last_pass_end = time.time()


class RateLimiter:
    def __init__(self, rate_bytes: float) -> None:
        self._rate = max(1.0, float(rate_bytes))
        self._next = time.monotonic()

    async def acquire(self, nbytes: int) -> None:
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + nbytes / self._rate
        if start > now:
            await asyncio.sleep(start - now)


class PassSchedule:
    def __init__(self, interval: float) -> None:
        self._interval = max(0.0, interval)
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self.started = 0
        self.finished = 0
        self._want_real = self._want_dry = False

    def request(self, dry_run: bool = False) -> int:
        """Ask for a pass now (a rehearsal with `dry_run`); returns the number of the pass
        that will serve the request."""
        if dry_run:
            self._want_dry = True
        else:
            self._want_real = True
        self._wake.set()
        return self.started + 1

    async def next_pass(self, immediately: bool = False) -> bool:
        """Wait for the interval or a request, then count a new pass as started. Returns
        whether it is a dry run: only dry runs were asked for since the last pass (a real
        pass asked at the same time wins; a scheduled pass is real)."""
        if not immediately and not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
        self._wake.clear()
        self.started += 1
        dry = self._want_dry and not self._want_real
        self._want_dry = self._want_real = False
        return dry

    async def finish(self) -> None:
        self.finished = self.started
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, number: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.finished >= number)


S = TypeVar("S", bound=PassStats)


class PassRole(Generic[S]):
    """A background role run in passes: what `Admin.Trigger` and `Admin.Status` see of it.

    Subclasses set `stats` (a `PassStats`) and `_schedule` (a `PassSchedule`) and run
    their passes; `trigger` asks for a pass that begins after the call (a rehearsal with
    `dry_run`, for the roles that have one)."""

    stats: S
    _schedule: PassSchedule

    def progress(self) -> dict[str, Any]:
        return asdict(self.stats)

    async def trigger(self, wait: bool = False, dry_run: bool = False) -> dict[str, Any]:
        """Run a pass now (a real one wins over a dry run asked at the same time)."""
        number = self._schedule.request(dry_run)
        if wait:
            await self._schedule.wait_for(number)
        return self.progress()


class LoopedPassRole(PassRole[S]):
    """A `PassRole` whose loop is the plain one (repair has its own: it resumes a cursor
    and re-runs a pass the member list changed under). Subclasses also set `_logger` and
    implement `run_pass`."""

    _logger: logging.Logger

    async def run(self) -> None:
        """One pass per interval or trigger, until cancelled. A pass that raises is logged
        (`<role>.pass_failed`) and recorded (`_pass_failed`); it never ends the role."""
        role = self._logger.name.rsplit(".", 1)[-1]
        while True:
            dry = await self._schedule.next_pass()
            try:
                await self.run_pass(dry_run=dry)
            except Exception as exc:  # a bad pass must not end the role
                raise_if_cancelling()  # ... but its cancellation, grpc's error or not, does
                self._pass_failed(exc)
                log_event(self._logger, f"{role}.pass_failed", logging.ERROR, error=repr(exc))
            finally:
                self.stats.running = False
            await self._schedule.finish()

    async def run_pass(self, dry_run: bool = False) -> None:
        raise NotImplementedError

    def _pass_failed(self, exc: Exception) -> None:
        """What a role records of a pass that raised, besides the log line."""

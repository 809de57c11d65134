"""The access-revision check (gateway/auth/revision.py): concurrent callers share one
read, and a caller is never answered by a read sent before it asked."""

from __future__ import annotations

import asyncio

import pytest

from gateway.auth.revision import RevisionWatch


class SlowRead:
    """A read each test releases by hand; answers the number of reads started so far."""

    def __init__(self) -> None:
        self.started = 0
        self.gates: list[asyncio.Event] = []

    async def __call__(self) -> str:
        self.started += 1
        number = self.started
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return f"rev-{number}"


async def _until(check: object) -> None:
    for _ in range(100):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


async def test_callers_during_a_read_wait_for_the_next_one_and_share_it() -> None:
    read = SlowRead()
    watch = RevisionWatch(read)
    first = asyncio.ensure_future(watch.current())
    await _until(lambda: read.started == 1)
    # Three callers arrive while read 1 is in flight: it may predate what they saw.
    later = [asyncio.ensure_future(watch.current()) for _ in range(3)]
    await asyncio.sleep(0)
    assert read.started == 1
    read.gates[0].set()
    assert await first == "rev-1"
    await _until(lambda: read.started == 2)
    read.gates[1].set()
    assert await asyncio.gather(*later) == ["rev-2"] * 3  # one read for all three
    assert watch.reads == 2


async def test_a_failed_read_fails_its_callers_and_the_next_caller_reads_again() -> None:
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("node gone")
        return "rev"

    watch = RevisionWatch(failing)
    with pytest.raises(OSError):
        await watch.current()
    assert await watch.current() == "rev"


async def test_paced_reads_are_shared_by_everyone_who_asked_before_they_were_sent() -> None:
    read = SlowRead()
    watch = RevisionWatch(read, min_interval=0.05)
    first = asyncio.ensure_future(watch.current())
    await _until(lambda: read.started == 1)
    read.gates[0].set()
    assert await first == "rev-1"
    # The next read waits for the interval; everyone asking meanwhile joins it.
    waiting = [asyncio.ensure_future(watch.current()) for _ in range(5)]
    await asyncio.sleep(0)
    assert read.started == 1
    await _until_slow(lambda: read.started == 2)
    late = asyncio.ensure_future(watch.current())  # asked after read 2 was sent
    read.gates[1].set()
    assert await asyncio.gather(*waiting) == ["rev-2"] * 5
    await _until_slow(lambda: read.started == 3)
    read.gates[2].set()
    assert await late == "rev-3"


async def _until_slow(check: object) -> None:
    for _ in range(200):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.005)
    raise AssertionError("never happened")

"""bench.stats and bench.driver: percentiles, bounded closed-loop driving."""

from __future__ import annotations

import asyncio
import math

from bench.driver import drive
from bench.stats import percentile, summarise


def test_nearest_rank_percentiles() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_summary_is_in_milliseconds() -> None:
    summary = summarise([0.001, 0.002, 0.003])
    assert summary["p50_ms"] == 2.0
    assert summary["max_ms"] == 3.0


async def test_drive_runs_exactly_max_ops_and_counts_units() -> None:
    seen: list[int] = []

    async def op(i: int) -> int:
        seen.append(i)
        await asyncio.sleep(0)
        return 10

    result = await drive(4, op, max_ops=25, max_seconds=30)
    assert sorted(seen) == list(range(25))
    assert (result.ops, result.units, result.errors, result.timed_out) == (25, 250, 0, False)
    assert len(result.latencies) == 25


async def test_drive_goes_on_past_max_ops_until_min_seconds() -> None:
    seen: list[int] = []

    async def op(i: int) -> int:
        seen.append(i)
        await asyncio.sleep(0.01)
        return 1

    started = asyncio.get_running_loop().time()
    result = await drive(2, op, max_ops=4, max_seconds=30, min_seconds=0.2)
    assert asyncio.get_running_loop().time() - started >= 0.2
    # Past the 4 asked for, indices counting on; each op started before the bound ended.
    assert result.ops == len(seen) > 4 and sorted(seen) == list(range(len(seen)))
    assert not result.timed_out
    # max_seconds bounds it too.
    bounded = await drive(2, op, max_ops=1000, max_seconds=0.05, min_seconds=10)
    assert bounded.elapsed < 5 and bounded.ops < 1000 and not bounded.timed_out


async def test_drive_counts_errors_and_stops_after_max_errors() -> None:
    async def op(i: int) -> int:
        raise RuntimeError(f"boom {i}")

    result = await drive(2, op, max_ops=1000, max_seconds=30, max_errors=5)
    assert result.ops == 0
    assert 5 <= result.errors <= 6
    assert result.error_samples[0].startswith("RuntimeError: boom")


async def test_drive_cancels_operations_past_the_grace_period() -> None:
    never = asyncio.Event()

    async def op(i: int) -> int:
        await never.wait()
        return 1

    result = await drive(2, op, max_ops=10, max_seconds=0.01, grace_seconds=0.05)
    assert result.timed_out
    assert result.ops == 0


def test_timed_out_byte_cell_reports_bytes_moved() -> None:
    from bench.driver import DriveResult

    result = DriveResult(
        workers=1, ops=1, units=1_000_000, elapsed=2.0, timed_out=True, moved=4_000_000
    )
    out = result.to_json("bytes")
    assert out["MB_per_s"] == 2.0 and out["MB_per_s_completed"] == 0.5
    assert "timed out" in out["MB_per_s_basis"]
    assert (
        DriveResult(workers=1, ops=1, units=10, elapsed=1.0, moved=99).to_json("bytes")["MB_per_s"]
        == 0.0
    )

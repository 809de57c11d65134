"""bench.physical's page cache writes: both figures measured, the file gone, and the wait
for free page reporting (at least the pause, longer while the host is still being told);
the loopback stream's rate and the CPU its two ends spent."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bench import physical
from bench.physical import MiB


def test_page_cache_writes_measure_both_and_leave_nothing(tmp_path: Path) -> None:
    fresh, rewrite = physical.page_cache_write_mb_s(8 * MiB, tmp_path, pause_s=0.0)
    assert fresh > 0 and rewrite > 0
    assert list(tmp_path.iterdir()) == []


def test_wait_without_the_counter_is_the_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(physical, "REPORTED_KIB", tmp_path / "absent")
    assert 0.3 <= physical.wait_for_free_page_reporting(0.3) < 1.0


def test_wait_lasts_while_reporting_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(physical, "REPORTING_QUIET_S", 0.2)
    monkeypatch.setattr(physical, "FRESH_PAGE_PAUSE_MAX_S", 0.8)
    # A quiet counter (growth under the threshold): the pause alone.
    quiet = itertools.count(0, physical.REPORTING_QUIET_KIB // 100)
    monkeypatch.setattr(physical, "_reported_kib", lambda: next(quiet))
    assert 0.3 <= physical.wait_for_free_page_reporting(0.3) < 0.6
    # 64 MiB reported every poll: waits to the bound.
    busy = itertools.count(0, 64 * 1024)
    monkeypatch.setattr(physical, "_reported_kib", lambda: next(busy))
    assert physical.wait_for_free_page_reporting(0.3) >= 0.8


def test_one_core_bounds_are_the_best_of_their_rounds() -> None:
    """A bound is what the machine can do: a round slowed by someone else does not count,
    and the rounds share the bytes."""
    rates = iter([900.0, 2500.0, 1200.0])
    asked: list[int] = []

    def rate(total: int) -> float:
        asked.append(total)
        return next(rates)

    assert physical.best_of(rate, 3 * MiB, rounds=3) == 2500.0
    assert asked == [MiB, MiB, MiB]


def test_a_loopback_stream_reports_its_rate_and_both_ends_cpu() -> None:
    rate, cpu_s_per_gb = physical.loopback_stream(32 * MiB)
    assert rate > 0
    # Both ends copy every byte at least once: some CPU, and not absurdly much.
    assert 0 < cpu_s_per_gb < 100

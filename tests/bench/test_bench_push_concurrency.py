"""bench.push_concurrency's helpers: setting parsing and the RSS reading (no cluster)."""

from __future__ import annotations

import mmap
import os

from bench.push_concurrency import (
    _counters_used,
    _kernel_counters,
    _rss_parts,
    _RssSampler,
    _setting,
)


def test_settings_are_typed_like_toml_values() -> None:
    assert _setting("chunk_writes_in_flight_total=16") == ("chunk_writes_in_flight_total", 16)
    assert _setting("rpc_timeout_seconds=2.5") == ("rpc_timeout_seconds", 2.5)
    assert _setting("access_log=false") == ("access_log", False)
    assert _setting("verify_reads=xxh3") == ("verify_reads", "xxh3")


def test_rss_of_this_process_has_an_anonymous_part() -> None:
    anon, file = _rss_parts(os.getpid())
    assert anon > 0 and file >= 0
    assert _rss_parts(2**22 + 1) == (0, 0)  # no such process


def test_sampler_reports_every_process_it_was_given() -> None:
    sampler = _RssSampler({"me": os.getpid()})
    peaks = sampler.stop()
    assert set(peaks) == {"me"} and set(peaks["me"]) == {"anon", "file"}


def test_kernel_counters_count_the_faults_of_fresh_memory() -> None:
    pid = os.getpid()
    before = {"me": _kernel_counters(pid)}
    size = 4 * 1024 * 1024
    fresh = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        fresh[offset] = 1  # first touch of each page: one minor fault each
    fresh.close()
    used = _counters_used(before, {"me": pid, "gone": 2**22 + 1}, 1.0)
    assert set(used) == {"me"}
    assert used["me"]["minor_faults"] >= size // mmap.PAGESIZE
    assert used["me"]["user_s_per_GB"] >= 0 and used["me"]["sys_s_per_GB"] >= 0
    assert _kernel_counters(2**22 + 1) is None

"""bench.push_concurrency's helpers: setting parsing and the RSS reading (no cluster)."""

from __future__ import annotations

import os

from bench.push_concurrency import _rss_parts, _RssSampler, _setting


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

"""bench/search_latency.py stays runnable: a tiny corpus through every query of its mix
(what it measures is reported by the bench, never asserted here)."""

from __future__ import annotations

from bench.search_latency import mix, run


def test_search_bench_runs_every_query() -> None:
    result = run(tags=400, repos=40, rounds=1, seed=1)
    assert set(result["per_query_ms"]) == {*mix(400), "second page"}
    assert result["all_ms"]["n"] == len(result["per_query_ms"])
    assert result["index_bytes_per_tag"] > 0

"""bench/metadata_preloaded.py: the run order alternates the sizes, a snapshot counts as
"during the push" when its writing overlaps it, and the summary's ratio is per median."""

from __future__ import annotations

from typing import Any

from bench.metadata_preloaded import (
    markdown_preloaded,
    quiet,
    schedule,
    snapshots_between,
    summarize,
)


def test_schedule_alternates_which_size_goes_first() -> None:
    assert schedule([1_000_000, 10_000], 1) == [10_000, 1_000_000]
    assert schedule([10_000, 1_000_000], 3) == [
        10_000,
        1_000_000,
        1_000_000,
        10_000,
        10_000,
        1_000_000,
    ]


def test_snapshots_overlapping_the_push_window() -> None:
    recent = [
        {"started_at": 100.0, "seconds": 5.0},  # ended before the push
        {"started_at": 108.0, "seconds": 5.0},  # still writing when the push began
        {"started_at": 115.0, "seconds": 1.0},  # inside
        {"started_at": 119.0},  # still being written at the end: counts from its start
        {"started_at": 121.0, "seconds": 1.0},  # after
    ]
    got = snapshots_between(recent, 110.0, 120.0)
    assert [s["started_at"] for s in got] == [108.0, 115.0, 119.0]


def _run(images: int, rate: float | None) -> dict[str, Any]:
    return {
        "preloaded_images": images,
        "setup_seconds": 1.0,
        "added": [{"serving_seconds": 2.0, "by_snapshot": True}],
        "push": {
            "images_per_s": rate,
            "images": 100,
            "put_p50_ms": 1.0,
            "put_p99_ms": 2.0,
            "loadavg_at_start": (1.0, 1.0, 1.0),
            "loadavg_at_end": (2.0, 2.0, 2.0),
            "node_cpu_seconds": [1.0, 2.0, 3.0],
            "snapshots_during": [{"node": "n2", "seconds": 4.5}],
            "errors": 0,
        },
    }


def _report(runs: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """A preloaded report around `runs`, as `metadata_scale.run` writes it."""
    return {
        "mode": "full",
        "started": "now",
        "host": "h",
        "cpus": 2,
        "repos": 1000,
        "concurrency": 16,
        "preloaded": {"build_seconds": {}, "runs": runs, "summary": summary},
    }


def test_summary_ratio_of_medians_to_the_smallest_size() -> None:
    runs = [
        _run(10_000, 100.0),
        _run(1_000_000, 90.0),
        _run(1_000_000, 80.0),
        _run(1_000_000, 100.0),
        _run(10_000, 120.0),
        _run(10_000, 110.0),
        _run(1_000_000, None),  # a run that pushed nothing is not a rate
    ]
    summary = summarize(runs)
    two = summarize([_run(10_000, 100.0), _run(10_000, 120.0)])
    assert two["median_images_per_s"] == {10_000: 110.0}  # of two runs: their mean
    assert summary["median_images_per_s"] == {10_000: 110.0, 1_000_000: 90.0}
    assert summary["ratio_to_smallest"] == {10_000: 1.0, 1_000_000: round(90 / 110, 3)}
    text = markdown_preloaded(_report(runs[:2], summary))
    assert "| 1,000,000 | 3 | 1.0 / 2.0 |" in text
    assert "n2 4.5 s" in text


def test_quiet_means_every_node_under_the_threshold() -> None:
    assert quiet([0.01, 0.1], window=1.0, threshold=0.15)
    assert not quiet([0.01, 0.5], window=1.0, threshold=0.15)  # one node still building
    assert quiet([0.2, 0.2], window=2.0, threshold=0.15)


def _scale(gib: float) -> dict[str, Any]:
    memory = {"n1": {"bytes": 1, "gib": gib, "per_manifest": 950.4}}
    reads = {"p50_ms": 1.0, "p99_ms": 2.0}
    return {
        "manifests": 1_105_500,
        "rss_anon": memory,
        "rss_anon_restarted": memory,
        "rss_anon_end": memory,
        "reads": {"tags_list_page": reads, "catalog_page": reads, "manifest_get": reads},
        "snapshot": {
            "seconds": 6.5,
            "bytes": 255 * 2**20,
            "put_p99_during_ms": 300.0,
            "put_p99_outside_ms": 150.0,
            "ratio": 2.0,
        },
        "restart_node": {"seconds": 4.1},
        "restart_cluster": {"seconds": 7.9},
        "catch_up": {
            "seconds": 33.0,
            "follower": "n2",
            "by_snapshot": True,
            "reads_served_meanwhile": 900,
            "read_errors_meanwhile": 0,
        },
        "loadavg_end": (3.0, 2.0, 1.0),
    }


def test_scale_steps_get_a_row_per_run_that_has_them() -> None:
    runs = [_run(10_000, 100.0), {**_run(1_000_000, 90.0), "scale": _scale(0.98)}]
    text = markdown_preloaded(_report(runs, summarize(runs)))
    row = next(line for line in text.splitlines() if line.startswith("| 1,000,000 | 1,105,500"))
    assert "0.98 GiB (950 B) | 0.98 GiB (950 B) | 0.98 GiB (950 B) (follower n2) |" in row
    assert "| 300.0 / 150.0 (2.0) | 4.1 | 7.9 | 33.0 (900 / 0) | 3.0 |" in row
    assert not any(line.startswith("| 10,000 | 11,") for line in text.splitlines())

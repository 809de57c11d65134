"""bench.report and bench.charts on a synthetic run: ratios, targets, files written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import charts, report


def _system(
    push: float,
    pull: float,
    get_digest: float,
    tag: float,
    storm_p99: float,
    errors: int = 0,
    pull_cpu_s: float = 1.0,
) -> dict[str, Any]:
    reads = {
        f"{op}_c32": {"ops_per_s": tag, "p50_ms": 1.0, "p99_ms": 2.0}
        for op in ("get_tag", "head_tag", "head_digest")
    }
    reads["get_digest_c32"] = {"ops_per_s": get_digest, "p50_ms": 1.0, "p99_ms": 2.0}
    return {
        "label": "x",
        "peak_rss_MiB": {"p1": 10.0, "p2": 20.0},
        "results": {
            "blob_push": {
                "1MiB_c1": {"MB_per_s": push, "errors": errors},
                "64MiB_c8": {"MB_per_s": push * 2},
            },
            "blob_pull": {
                # 2 GB pulled in all, `pull_cpu_s` CPU-seconds each cell.
                "1MiB_c1": {
                    "MB_per_s": pull,
                    "server_cpu_s": pull_cpu_s,
                    "server_bytes_moved": 10**9,
                    "server_cpu_s_per_GB": pull_cpu_s,
                },
                "64MiB_c8": {
                    "MB_per_s": pull,
                    "server_cpu_s": pull_cpu_s,
                    "server_bytes_moved": 10**9,
                },
            },
            "manifest_reads": reads,
            "pull_storm": {"p50_ms": storm_p99 / 2, "p99_ms": storm_p99, "MB_per_s": 1.0},
            "dedup": {
                "logical_bytes": 100,
                "stored_bytes_all_replicas": 50,
                "replicas": 1,
                "stored_bytes_per_replica": 50,
                "ratio": 2.0,
            },
        },
    }


def _run() -> dict[str, Any]:
    return {
        "profile": "smoke",
        "started_utc": "2026-01-01T00:00:00Z",
        "elapsed_s": 1.0,
        "machine": {
            "host": "h",
            "cores": 2,
            "cpu_model": "cpu",
            "memory_total_MiB": 1,
            "kernel": "k",
            "python": "3.11",
            "load_average_at_start": [0.0],
        },
        "physical": {"sha256_MB_per_s": 2000.0},
        "systems": {
            "distribution": _system(100.0, 1000.0, 1000.0, 1000.0, 100.0),
            "cargohold-r1": _system(200.0, 1000.0, 2000.0, 2000.0, 90.0, errors=1, pull_cpu_s=0.5),
        },
    }


def test_targets_are_ratios_against_distribution() -> None:
    status = {t.label: (round(t.value, 3), t.status) for t in report.targets(_run())}
    assert status["blob push, R=1 (geomean of cells)"] == (2.0, "met")
    # Issue 13: pulls at 1.2x at least, no 64 MiB or larger cell below 1.0x.
    assert status["blob pull, R1 (geomean of cells)"] == (1.0, "MISSED")
    assert status["blob pull, R1, worst 64 MiB or larger cell"] == (1.0, "met")
    assert status["manifest GET by digest, 32 conns, R1"] == (2.0, "MISSED")
    assert status["manifest HEAD by tag, 32 conns, R1"] == (2.0, "met")
    assert status["pull storm p99 (ratio, lower is better), R1"] == (0.9, "met")
    assert status["server CPU per GB pulled (ratio, lower is better), R1"] == (0.5, "met")
    # A system that was not run has no target rows.
    assert not [t for t in report.targets(_run()) if t.system == "cargohold-r3"]


def test_r3_push_storm_and_tag_writes_are_held_to_distribution() -> None:
    run = _run()
    r3 = _system(50.0, 1300.0, 3000.0, 2000.0, 90.0)
    r3["results"]["push_storm"] = {"images_per_s": 45.0}
    r3["results"]["tag_puts"] = {
        "tag_put_c1": {"ops_per_s": 50.0},
        "tag_put_c16": {"ops_per_s": 200.0},
    }
    run["systems"]["cargohold-r3"] = r3
    base = run["systems"]["distribution"]["results"]
    base["push_storm"] = {"images_per_s": 50.0}
    base["tag_puts"] = {"tag_put_c1": {"ops_per_s": 100.0}, "tag_put_c16": {"ops_per_s": 200.0}}
    status = {t.label: (round(t.value, 3), t.status) for t in report.targets(run)}
    assert status["push storm, R3 (images/s)"] == (0.9, "MISSED")
    assert status["tag writes, R3 (geomean of cells)"] == (0.707, "MISSED")
    assert status["blob pull, R3 (geomean of cells)"] == (1.3, "met")
    assert status["blob pull, R3, worst 64 MiB or larger cell"] == (1.3, "met")


def test_missing_baseline_gives_no_value() -> None:
    run = _run()
    del run["systems"]["distribution"]
    assert all(t.status == "n/a" for t in report.targets(run))


def test_physical_table_lists_page_cache_figures_per_cpu_second(tmp_path: Path) -> None:
    run = _run()
    run["physical"]["page_cache_fresh_write_MB_per_s"] = 436.6
    run["physical"]["page_cache_rewrite_MB_per_s"] = 9953.7
    md = report.write(run, tmp_path, "stem", [])[1].read_text()
    assert "| sha256 | 2,000.0 |" in md
    assert "| page_cache_fresh_write | 436.6 |" in md
    assert "| page_cache_rewrite | 9,953.7 |" in md
    assert "page_cache_*: MB per CPU-second of the writing thread" in md
    # Without them, no note.
    plain = report.write(_run(), tmp_path, "plain", [])[1].read_text()
    assert "page_cache_*" not in plain


def test_files_written(tmp_path: Path) -> None:
    run = _run()
    pngs = charts.write(run, tmp_path, "stem")
    paths = report.write(run, tmp_path, "stem", pngs)
    saved = json.loads(paths[0].read_text())
    assert saved["targets"] and saved["systems"]["cargohold-r1"]
    md = paths[1].read_text()
    assert "| 1MiB_c1 | 100.0 | — | 200.0 (1 err) | — | 2.00x |" in md
    assert "| 1MiB_c1 | 1,000.0 | 1.0 | 1,000.0 | 0.5 | 1.00x |" in md
    # Efficiency: 1 CPU-s per GB pulled (Distribution), 0.5 (Cargohold); no push figures.
    assert "| distribution | — | 1.00 | p1 10, p2 20 | 30 |" in md
    assert "| cargohold-r1 | — | 0.50 | p1 10, p2 20 | 30 |" in md
    assert "| cargohold-r1 | 100 | 50 | 1 | 50 | 2.00 |" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert pngs == []
    else:
        assert pngs and all((tmp_path / p).stat().st_size > 0 for p in pngs)


def test_push_cells_are_set_against_the_machines_floor(tmp_path: Path) -> None:
    run = _run()
    run["physical"]["page_cache_fresh_write_MB_per_s"] = 500.0
    # Floor: 1000/2000 (sha256) + copies * 1000/500 (fresh page cache) CPU-s per GB.
    assert report.push_floor(run, 1) == 2.5
    assert report.push_floor(run, 3) == 6.5
    base = run["systems"]["distribution"]["results"]["blob_push"]["64MiB_c8"]
    base |= {"server_cpu_s_per_GB": 5.0, "client_cpu_pct": 10.0}
    ours = run["systems"]["cargohold-r1"]
    ours["copies"] = 1
    ours["results"]["blob_push"]["64MiB_c8"] |= {"server_cpu_s_per_GB": 4.0}
    r3 = _system(100.0, 1000.0, 1000.0, 1000.0, 100.0)
    r3["label"] = "Cargohold 3 nodes R=3 W=2"  # a run from before `copies` was recorded
    r3["results"]["blob_push"]["64MiB_c8"] |= {"server_cpu_s_per_GB": 13.0}
    run["systems"]["cargohold-r3"] = r3
    assert report.copies_of(r3) == 3
    assert report.copies_of(run["systems"]["distribution"]) == 1
    md = report.write(run, tmp_path, "stem", [])[1].read_text()
    assert "## Push cost against this machine's floor" in md
    # Distribution: 200 MB/s at 5.0 CPU-s per GB = 1.00 core, its client 0.10.
    assert (
        "| distribution | 64MiB_c8 | 1 | 200.0 | 5.00 | 2.50 | 2.00 | 1.00 + 0.10 of 2 | — |" in md
    )
    # Cargohold at R=1 could at best be 5.0 / 2.5 = 2x where both are CPU-bound, at R=3 0.77x.
    assert (
        "| cargohold-r1 | 64MiB_c8 | 1 | 400.0 | 4.00 | 2.50 | 1.60 | 1.60 + 0.00 of 2 | 2.00x |"
        in md
    )
    assert (
        "| cargohold-r3 | 64MiB_c8 | 3 | 200.0 | 13.00 | 6.50 | 2.00 | 2.60 + 0.00 of 2 | 0.77x |"
        in md
    )
    # Cells without a CPU figure are left out; no physical page-cache figure, no section.
    assert "| distribution | 1MiB_c1 |" not in md
    assert "hand-overs" not in md  # a run from before the hand-over cost was measured
    plain = report.write(_run(), tmp_path, "plain", [])[1].read_text()
    assert "floor" not in plain


def test_hand_overs_between_processes_are_counted_when_measured(tmp_path: Path) -> None:
    run = _run()
    run["physical"] |= {
        "page_cache_fresh_write_MB_per_s": 500.0,
        "loopback_handover_cpu_s_per_GB": 0.5,
    }
    base = run["systems"]["distribution"]["results"]["blob_push"]["64MiB_c8"]
    base |= {"server_cpu_s_per_GB": 5.0, "client_cpu_pct": 10.0}
    ours = run["systems"]["cargohold-r1"]
    ours["copies"] = 3
    ours["results"]["blob_push"]["64MiB_c8"] |= {"server_cpu_s_per_GB": 8.0}
    assert report.handover_cost(run) == 0.5
    assert report.handovers_of("distribution", 1) == 1
    assert report.handovers_of("cargohold-r1", 3) == 4
    md = report.write(run, tmp_path, "moved", [])[1].read_text()
    assert "| loopback_handover (CPU-s per GB, not MB/s) | 0.500 |" in md
    assert "| best ratio if CPU-bound | best ratio with hand-overs |" in md
    # Floor 0.5 + 3 * 2.0 = 6.5; with 1 + 3 hand-overs at 0.5 it is 8.5: 5.0 / 8.5 = 0.59x.
    assert (
        "| cargohold-r1 | 64MiB_c8 | 3 | 400.0 | 8.00 | 6.50 | 1.23 | 3.20 + 0.00 of 2 | 0.77x "
        "| 0.59x |" in md
    )
    assert (
        "| distribution | 64MiB_c8 | 1 | 200.0 | 5.00 | 2.50 | 2.00 | 1.00 + 0.10 of 2 | — | — |"
        in md
    )

"""bench/metadata_scale.py: the corpus is what the report says, and the offline path (the
real snapshot code, a fresh process reloading it) runs end to end at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.metadata_scale import GROUP, Corpus, PushStats, markdown, offline, parse_size, sha


def test_sizes_parse() -> None:
    assert [parse_size(s) for s in ("1k", "10K", "1m", "2500", "0.5k")] == [
        1000,
        10_000,
        1_000_000,
        2500,
        500,
    ]


def test_images_are_distinct_and_an_index_lists_its_group() -> None:
    corpus = Corpus(repos=3)
    images = [corpus.image(i) for i in range(2 * GROUP)]
    assert len({sha(m) for _, _, m in images}) == 2 * GROUP
    assert {repo for repo, _, _ in images[:GROUP]} == {corpus.repo(0)}
    repo, config, manifest = images[0]
    body = json.loads(manifest)
    assert body["config"]["digest"] == sha(config)
    assert body["layers"][0]["digest"] == sha(corpus.layer(repo))
    index = json.loads(corpus.index(0, [m for _, _, m in images[:GROUP]]))
    assert [d["digest"] for d in index["manifests"]] == [sha(m) for _, _, m in images[:GROUP]]


def test_offline_snapshots_and_reloads(tmp_path: Path) -> None:
    rows = offline([2 * GROUP], repos=2, work=tmp_path)
    assert len(rows) == 1
    row = rows[0]
    assert row["images"] == 2 * GROUP
    assert row["manifests"] == 2 * (GROUP + 1)
    assert row["snapshot_bytes"] > 0
    assert row["load_seconds"] is not None  # the fresh process loaded a snapshot
    text = markdown(
        {
            "mode": "quick",
            "started": "now",
            "host": "h",
            "cpus": 2,
            "repos": 2,
            "offline": rows,
        }
    )
    assert "| 20 | 22 |" in text


def test_a_push_summary_counts_the_rate_and_the_put_percentiles() -> None:
    stats = PushStats(images=10, manifests=11)
    stats.puts = [(0.0, 0.001 * (i + 1)) for i in range(100)]  # 1 .. 100 ms
    stats.error("HTTP 500 on PUT")
    got = stats.summary(2.0)
    assert got["images_per_s"] == 5.0 and got["seconds"] == 2.0
    assert got["put_p50_ms"] == pytest.approx(50.5, abs=1) and got["put_p99_ms"] >= 99
    assert got["errors"] == 1 and got["first_errors"] == ["HTTP 500 on PUT"]
    assert PushStats().summary(0.0)["images_per_s"] is None

"""What a node's memory keeps after loading a snapshot, per compact format version (issue 20).

    .venv/bin/python -m bench.snapshot_format --images 200000 --versions 5,6 --rounds 3

No cluster, no Raft: the offline corpus of bench/metadata_scale.py (`--repos` repositories,
an index every 10 images) applied straight to a `MetadataState`, encoded once per format
version to a file (in this process: bytes, wall and CPU seconds of the encode), then each
file loaded by fresh processes, versions alternated, `--rounds` each. A loading process
does what a member does with a snapshot (node/metadata/raft.py `_read_dump`: the cyclic
collector off during the load, the heap frozen and `malloc_trim` after it) and reports its
`RssAnon` per manifest after the load, and again after it built the search index (as a
bare member does at its first search) and trimmed. It also reports pymalloc's own account
of the heap after the load (`sys._debugmallocstats()`): the unused pools inside arenas
still in use are what the load's transient small objects left behind that the trim cannot
return (docs/metadata.md, "The heap a load leaves behind, given back").

`--recipe-blobs N` adds N distinct blobs of `--recipe-chunks` chunks each (layers bigger
than a chunk: `Recipe` records, the chunk list kept whole), spread over the repositories;
the figures stay per manifest.

The figures are absolute (the whole process, the interpreter and imports included, as
bench/metadata_scale.py reports them) and above the process's RssAnon before the load.
Results: `bench/results/<date>-snapshot-format[-<tag>].{json,md}`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
# pymalloc's lines of `sys._debugmallocstats()` that are read (bytes, or a count).
_MALLOC_STATS = {
    "unused_pool_bytes": re.compile(r"^\d+ unused pools \* \d+ bytes\s+=\s+([\d,]+)"),
    "available_block_bytes": re.compile(r"^# bytes in available blocks\s+=\s+([\d,]+)"),
    "allocated_block_bytes": re.compile(r"^# bytes in allocated blocks\s+=\s+([\d,]+)"),
    "arenas": re.compile(r"^# arenas allocated current\s+=\s+([\d,]+)"),
}


def malloc_stats() -> dict[str, int]:
    """pymalloc's figures above, from `sys._debugmallocstats()` (it writes to fd 2)."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    found: dict[str, int] = {}
    for line in text.splitlines():
        for key, pattern in _MALLOC_STATS.items():
            match = pattern.match(line)
            if match:
                found[key] = int(match.group(1).replace(",", ""))
    return found


def load_child(path: str, manifests: int) -> dict[str, Any]:
    """A fresh process's load of `path` (a bare `encode_snapshot` stream)."""
    from bench.metadata_scale import rss_anon
    from cargohold.memtune import release_memory
    from node.metadata.state import MetadataState

    pid = os.getpid()
    state = MetadataState()
    release_memory()
    before = rss_anon(pid)
    cpu, wall = time.process_time(), time.monotonic()
    gc.disable()
    with open(path, "rb") as f:
        state.load_stream(f)
    gc.enable()
    load_cpu, load_wall = time.process_time() - cpu, time.monotonic() - wall
    gc.freeze()
    release_memory()
    loaded = rss_anon(pid)
    stats = malloc_stats()
    state.query("search", {"spec": {"n": 1}})
    release_memory()
    searched = rss_anon(pid)
    return {
        "load_cpu_seconds": round(load_cpu, 2),
        "load_wall_seconds": round(load_wall, 2),
        "rss_anon_before": before,
        "loaded_per_manifest": round(loaded / manifests, 1),
        "loaded_above_before_per_manifest": round((loaded - before) / manifests, 1),
        "with_search_per_manifest": round(searched / manifests, 1),
        "unused_pools_per_manifest": round(stats.get("unused_pool_bytes", 0) / manifests, 1),
        "malloc": stats,
        "loadavg": os.getloadavg(),
    }


def build(
    images: int, repos: int, recipe_blobs: int = 0, recipe_chunks: int = 3
) -> tuple[Any, int, float]:
    """The offline corpus of bench/metadata_scale.py: (state, manifests, seconds)."""
    import hashlib

    from bench.metadata_scale import GROUP, Corpus, _recipe, apply_group, sha
    from node.metadata.state import MetadataState

    started = time.monotonic()
    corpus, state = Corpus(repos), MetadataState()
    groups = max(1, images // GROUP)
    for k in range(min(repos, groups)):
        layer = corpus.layer(corpus.repo(k))
        state.apply(
            "blob_commit",
            {"repo": corpus.repo(k), "digest": sha(layer), "recipe": _recipe(layer), "now": 1.0},
        )
    for group in range(groups):
        apply_group(state, corpus, group)
    chunk = 4 << 20
    for i in range(recipe_blobs):
        chunks = [
            [hashlib.sha256(f"chunk {i}/{k}".encode()).hexdigest(), chunk]
            for k in range(recipe_chunks)
        ]
        state.apply(
            "blob_commit",
            {
                "repo": corpus.repo(i % max(1, min(repos, groups))),
                "digest": sha(f"big layer {i}".encode()),
                "recipe": {"size": chunk * recipe_chunks, "chunks": chunks},
                "now": 1.0,
            },
        )
    return state, groups * (GROUP + 1), time.monotonic() - started


def encode(state: Any, version: int, path: Path) -> dict[str, Any]:
    """Write `state` in compact `version` to `path`: bytes, wall and CPU seconds."""
    from node.metadata.state import MetadataState

    cpu, wall = time.process_time(), time.monotonic()
    size = 0
    with open(path, "wb") as f:
        for piece in MetadataState.encode_snapshot(
            state.snapshot(), compact=True, compact_version=version
        ):
            f.write(piece)
            size += len(piece)
    return {
        "snapshot_bytes": size,
        "write_wall_seconds": round(time.monotonic() - wall, 2),
        "write_cpu_seconds": round(time.process_time() - cpu, 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    versions = [int(v) for v in args.versions.split(",")]
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "images": args.images,
        "repos": args.repos,
        "recipe_blobs": args.recipe_blobs,
        "recipe_chunks": args.recipe_chunks,
        "loadavg_start": os.getloadavg(),
        "versions": {},
    }
    with tempfile.TemporaryDirectory(prefix="snapfmt-") as work:
        gc.disable()  # building millions of tuples: as a node applies, the state holds no cycles
        state, manifests, seconds = build(
            args.images, args.repos, args.recipe_blobs, args.recipe_chunks
        )
        gc.freeze()
        gc.enable()
        report.update(manifests=manifests, build_seconds=round(seconds, 1))
        files = {}
        for version in versions:
            files[version] = Path(work) / f"v{version}.snapshot"
            report["versions"][version] = {"encode": encode(state, version, files[version])}
            report["versions"][version]["loads"] = []
            print(json.dumps({version: report["versions"][version]["encode"]}), flush=True)
        del state
        for _ in range(args.rounds):
            for version in versions:
                child = ["--load-child", str(files[version]), "--manifests", str(manifests)]
                out = subprocess.run(
                    [sys.executable, "-m", "bench.snapshot_format", *child],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=Path(__file__).resolve().parent.parent,
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                report["versions"][version]["loads"].append(row)
                print(json.dumps({version: row}), flush=True)
    report["loadavg_end"] = os.getloadavg()
    report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return report


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Snapshot formats: what a load leaves in RAM, {report['started']}",
        "",
        f"{report['images']:,} images ({report['manifests']:,} manifests) of the offline "
        f"corpus over {report['repos']} repositories"
        + (
            f", {report['recipe_blobs']:,} more blobs of {report['recipe_chunks']} chunks"
            if report.get("recipe_blobs")
            else ""
        )
        + f", {report['cpus']} CPUs (shared); load "
        f"average {report['loadavg_start'][0]:.1f} at the start, "
        f"{report['loadavg_end'][0]:.1f} at the end. Medians of the fresh loading processes "
        "(B per manifest: RssAnon of the whole process after the load and malloc_trim; "
        "unused pools: pymalloc's unused pools in arenas still in use).",
        "",
        "| version | snapshot MB | write s (CPU) | load CPU s | load wall s | loaded B/manifest "
        "| above before | unused pools B/manifest | + search index B/manifest | loads |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for version, entry in report["versions"].items():
        enc, loads = entry["encode"], entry["loads"]

        def med(key: str, loads: list[dict[str, Any]] = loads) -> float:
            return _median([row[key] for row in loads])

        lines.append(
            f"| {version} | {enc['snapshot_bytes'] / 1e6:.1f} | {enc['write_wall_seconds']} "
            f"({enc['write_cpu_seconds']}) | {med('load_cpu_seconds')} | "
            f"{med('load_wall_seconds')} | {med('loaded_per_manifest')} | "
            f"{med('loaded_above_before_per_manifest')} | {med('unused_pools_per_manifest')} "
            f"| {med('with_search_per_manifest')} | {len(loads)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--repos", type=int, default=1000)
    parser.add_argument("--recipe-blobs", type=int, default=0, help="blobs of several chunks")
    parser.add_argument("--recipe-chunks", type=int, default=3, help="chunks per such blob")
    parser.add_argument("--versions", default="5,6", help="compact versions, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="loads per version")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    parser.add_argument("--load-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--manifests", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_child:
        print(json.dumps(load_child(args.load_child, args.manifests)), flush=True)
        return 0
    report = run(args)
    stem = f"{dt.date.today().isoformat()}-snapshot-format{args.tag}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"results: {out / stem}.{{json,md}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

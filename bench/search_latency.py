"""Search latency over 100 k tags: the node's share of `GET /_cargohold/api/v1/search`
(issue 15: p99 under 50 ms), and what the index costs.

    .venv/bin/python -m bench.search_latency                      # 100 k tags, 10 k repos
    .venv/bin/python -m bench.search_latency --tags 20000 --rounds 20

No cluster: the corpus goes through the `manifest_put` commands a gateway sends (with the
`info` a push reads from the config blob: platform and labels), applied by the real
`MetadataState`; pulls are recorded through `pull_record`. Each query is the JSON `query`
path a node answers (decode the spec, sync the index, search, encode the page), timed with
`perf_counter`; a round runs every query of the mix once, in a shuffled order, each right
after a tag was pushed (so every search first syncs a changed row: the worst case for the
incremental upkeep). The first search of a bare state (the index built from the state in one
go) is timed apart, then the build a node makes in the background
(node/metadata/search_build.py: its total time and its longest hold of the state's lock);
the index's memory is what a third build allocates under tracemalloc.

The mix: names (substring, glob), a namespace, labels (selective and common), a platform, a
media type, times, sizes, each sort and order, repository results, a second page by cursor,
and a caller's access filter over 100 namespaces. Print: p50 / p99 / max per query and over
all, the load average before and after, and the machine (bench/machine.py).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import statistics
import threading
import time
import tracemalloc
from typing import Any

from cargohold.config import NodeConfig
from node.metadata.search_build import SearchIndexBuilder
from node.metadata.state import MetadataState

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
T0 = 1_760_000_000.0
BUILD_SLICE = NodeConfig.search_build_slice
BUILD_PAUSE = NodeConfig.search_build_pause
ARCHES = ("linux/amd64", "linux/arm64/v8", "linux/s390x", "linux/ppc64le")


def _digest(*parts: object) -> str:
    return "sha256:" + hashlib.sha256(repr(parts).encode()).hexdigest()


def _recipe(*parts: object, size: int) -> dict[str, Any]:
    return {"size": size, "chunks": [[_digest(*parts)[7:], size]]}


def build(tags: int, repos: int, rng: random.Random) -> MetadataState:
    """`tags` tags over `repos` repositories in 100 namespaces, distinct images."""
    state = MetadataState()
    for i in range(tags):
        repo = f"ns{i % 100:02d}/app{i % repos:05d}"
        layer, config, manifest = _digest("l", i), _digest("c", i), _digest("m", i)
        size = rng.randint(1_000, 50_000_000)
        for digest, parts, n in ((layer, ("l", i), size), (config, ("c", i), 1000)):
            state.apply(
                "blob_commit",
                {"repo": repo, "digest": digest, "recipe": _recipe(*parts, size=n), "now": T0},
            )
        labels = {
            "org.opencontainers.image.vendor": f"vendor{i % 50}",
            "org.opencontainers.image.source": f"https://git.example/{repo}",
            "team": f"t{i % 7}",
        }
        if i % 1000 == 0:
            labels["rare"] = "yes"
        state.apply(
            "manifest_put",
            {
                "repo": repo,
                "digest": manifest,
                "media_type": MANIFEST,
                "recipe": _recipe("m", i, size=700),
                "blobs": [config, layer],
                "tag": f"v{i}",
                "now": T0 + i,
                "info": {"platforms": [ARCHES[i % len(ARCHES)]], "labels": labels},
            },
        )
    pulls = [
        [
            f"ns{i % 100:02d}/app{i % repos:05d}",
            _digest("m", i),
            f"v{i}",
            T0 + 2 * tags + i,
            None,
            None,
            None,
        ]
        for i in range(0, tags, 3)
    ]
    for start in range(0, len(pulls), 500):
        state.apply("pull_record", {"pulls": pulls[start : start + 500]})
    return state


def mix(tags: int) -> dict[str, dict[str, Any]]:
    access = {
        "default": False,
        "namespaces": [[f"ns{n:02d}", n % 3 == 0] for n in range(100)],
    }
    return {
        "name substring": {"q": "app0004"},
        "name glob": {"q": "ns1?/app*7"},
        "namespace": {"namespace": "ns42"},
        "label rare": {"labels": ["rare=yes"]},
        "label common": {"labels": ["team=t3"]},
        "label + platform": {
            "labels": ["org.opencontainers.image.vendor=vendor7"],
            "platform": "linux/arm64",
        },
        "platform, by size": {"platform": "linux/s390x", "sort": "size", "desc": True},
        "media type": {"media_type": MANIFEST},
        "pushed window": {"pushed_after": T0 + tags // 2, "pushed_before": T0 + tags // 2 + 500},
        "size range": {"min_size": 10_000_000, "max_size": 10_050_000},
        "sort pushed desc": {"sort": "pushed", "desc": True},
        "sort pulled desc": {"sort": "pulled", "desc": True},
        "never matches": {"q": "zzz-no-such-name"},
        "repositories": {"kind": "repository"},
        "repositories by push": {"kind": "repository", "sort": "pushed", "desc": True},
        "with access filter": {"q": "app", "access": access},
    }


def run(tags: int, repos: int, rounds: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    started = time.perf_counter()
    state = build(tags, repos, rng)
    built = time.perf_counter() - started
    gc.collect()
    t = time.perf_counter()
    state.query("search", {"spec": {"n": 50}})
    first = time.perf_counter() - t
    # As a node builds it: in the background, slices under the lock (the longest lock hold
    # is how long the node's applies may wait on it).
    state._search = None
    gc.collect()
    builder = SearchIndexBuilder(state, threading.Lock(), BUILD_SLICE, BUILD_PAUSE)
    builder.build()
    background = builder.last_build
    state.search_inline = True
    # Its memory: the index dropped and built again under tracemalloc (which slows it).
    state._search = None
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    state.query("search", {"spec": {"n": 50}})
    index_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    queries = mix(tags)
    # A second page by cursor, and a tag pushed before every search (upkeep on the path).
    cursor = state.query("search", {"spec": {"n": 50, "sort": "pushed", "desc": True}})["next"]
    queries["second page"] = {"sort": "pushed", "desc": True, "cursor": cursor}
    times: dict[str, list[float]] = {name: [] for name in queries}
    pushed = 0
    for _ in range(rounds):
        names = list(queries)
        rng.shuffle(names)
        for name in names:
            pushed += 1
            i = rng.randrange(tags)
            repo = f"ns{i % 100:02d}/app{i % repos:05d}"
            state.apply(
                "manifest_put",
                {
                    "repo": repo,
                    "digest": _digest("m", i),
                    "media_type": MANIFEST,
                    "recipe": _recipe("m", i, size=700),
                    "blobs": [_digest("c", i), _digest("l", i)],
                    "tag": f"moved{pushed % 100}",
                    "now": T0 + 3 * tags + pushed,
                },
            )
            spec = json.loads(json.dumps({"n": 50, **queries[name]}))
            t = time.perf_counter()
            page = state.query("search", {"spec": spec})
            json.dumps(page)
            times[name].append((time.perf_counter() - t) * 1000)
    every = sorted(x for xs in times.values() for x in xs)

    def p(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    return {
        "tags": tags,
        "repos": repos,
        "rounds": rounds,
        "build_seconds": round(built, 1),
        "first_search_ms": round(first * 1000, 1),
        "background_build": {
            "seconds": round(background["seconds"], 2),
            "slices": background["slices"],
            "longest_lock_hold_ms": round(background["longest_slice_seconds"] * 1000, 1),
        },
        "index_bytes_per_tag": round(index_bytes / tags),
        "per_query_ms": {
            name: {
                "p50": round(statistics.median(xs), 2),
                "p99": round(p(xs, 0.99), 2),
                "max": round(max(xs), 2),
            }
            for name, xs in times.items()
        },
        "all_ms": {
            "p50": round(p(every, 0.5), 2),
            "p99": round(p(every, 0.99), 2),
            "max": round(every[-1], 2),
            "n": len(every),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=100_000)
    parser.add_argument("--repos", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = run(args.tags, args.repos, args.rounds, args.seed)
    result["loadavg_before"] = [round(x, 2) for x in load_before]
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

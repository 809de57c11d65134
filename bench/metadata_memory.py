"""Memory per manifest of the node's metadata, and the cost of one listing page (issue 20).

    .venv/bin/python -m bench.metadata_memory                 # 20 k images, 1,000 repos
    .venv/bin/python -m bench.metadata_memory --images 100000 --repos 1000
    .venv/bin/python -m bench.metadata_memory --lists          # + tags/list and _catalog pages

No cluster: the corpus goes through the same commands a gateway sends, applied by the real
`MetadataState` (the JSON `apply` path the Raft log replays), and each command is also
appended to a real `RaftJournal` as pysyncobj stores it (`pickle.dumps((funcID, args))`),
so what the Raft layer holds between two snapshots is counted as well, and so is the
search index every node builds from the state at start (one row per tag). Memory is
`tracemalloc`'s count of live Python allocations (what `RssAnon` grows by, less the
allocator's slack), split by part.

The corpus is the issue's: tiny distinct images, one tag each, over `--repos` repositories;
each image is a distinct config blob and a distinct layer blob (each committed with its own
upload id, as a docker-style push does) and its manifest; every 10th image an OCI index of
the last 10 manifests, tagged too. "Per manifest" divides by every manifest (images and
indexes).

Listing pages are timed by `--lists` on a separate state: `tags_list` pages of 1,000 from a
repository of `--tags` tags (default 100 k), and catalog pages of 1,000 from `--repos`
repositories, each page right after a new tag was pushed (the worst case for any cache).
This is the node's share of a page; the HTTP round trip adds the gateway's (bench
docs/metadata.md "Memory and listing").
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import pickle
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

from cargohold import metadata_api as api
from node.metadata.journal import RaftJournal
from node.metadata.state import MetadataState

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
T0 = 1_760_000_000.0


def _digest(*parts: object) -> str:
    return "sha256:" + hashlib.sha256(repr(parts).encode()).hexdigest()


def _chunk(*parts: object) -> str:
    """The chunk id of a blob below the chunk size: one chunk, its own sha256 (as stored)."""
    return _digest(*parts)[len("sha256:") :]


def _upload_id(n: int) -> str:
    # The shape of gateway/upload_ids.py's ids: 55 URL-safe base64 characters.
    return hashlib.sha256(f"upload{n}".encode()).hexdigest()[:55]


def _wire(request: api.Request[Any]) -> dict[str, Any]:
    """The args as a node receives them: JSON-decoded (lists, fresh strings)."""
    args: dict[str, Any] = json.loads(json.dumps(request.to_args()))
    return args


def corpus(
    images: int, repos: int, index_every: int = 10, shared_layer: bool = False
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(op, args) of a push of `images` tiny distinct images round-robin over `repos`."""
    for request in requests(images, repos, index_every, shared_layer):
        yield request.op, _wire(request)


def requests(
    images: int, repos: int, index_every: int = 10, shared_layer: bool = False
) -> Iterator[api.Request[Any]]:
    """The typed commands of `corpus`; `shared_layer`: one layer per repository, pushed
    with its first image (a client skips a layer the registry has)."""
    recent: dict[str, list[str]] = {}
    uploads = 0
    for i in range(images):
        repo = f"org{(i % repos) // 100:02d}/team/app{i % repos:04d}"
        now = T0 + i / 300
        blobs = []
        for kind, size in (("config", 300), ("layer", 2000)):
            key = repo if shared_layer and kind == "layer" else i
            digest = _digest(kind, key)
            blobs.append(digest)
            if key == repo and i >= repos:
                continue
            uploads += 1
            recipe: api.Recipe = {"size": size, "chunks": [[_chunk(kind, key), size]]}
            yield api.BlobCommit(repo, digest, recipe, _upload_id(uploads), now)
        manifest = _digest("manifest", i)
        yield api.ManifestPut(
            repo,
            manifest,
            MANIFEST,
            {"size": 530, "chunks": [[_chunk("manifest", i), 530]]},
            blobs=tuple(blobs),
            artifact_type=CONFIG,
            tag=f"v{i // repos}",
            now=now,
        )
        last = recent.setdefault(repo, [])
        last.append(manifest)
        if (i + 1) % index_every == 0:
            yield api.ManifestPut(
                repo,
                _digest("index", i),
                INDEX,
                {"size": 1500, "chunks": [[_chunk("index", i), 1500]]},
                manifests=tuple(last[-index_every:]),
                tag=f"multi{i // repos}",
                now=now,
            )
            del last[:-index_every]


def manifests_in(images: int, index_every: int = 10) -> int:
    return images + images // index_every


# Allocations made by these files count (`<string>`: the named tuples' generated
# constructors); another thread's (a test's leftover loop, say) do not, so the figure is
# the same alone or inside a test run.
_OURS = (
    "*/node/metadata/*",
    "*/cargohold/metadata_api.py",
    "*/bench/metadata_memory.py",
    "<string>",
)


def _traced(fn: Any) -> tuple[Any, int]:
    """`fn()` and the bytes it left allocated (tracemalloc, module docstring)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        result = fn()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    filters = [tracemalloc.Filter(True, pattern) for pattern in _OURS]
    diff = after.filter_traces(filters).compare_to(before.filter_traces(filters), "filename")
    return result, sum(stat.size_diff for stat in diff)


def state_bytes(images: int, repos: int, shared_layer: bool = False) -> tuple[MetadataState, int]:
    """A state holding the corpus, and the bytes it holds (derived listing orders built:
    one `tags_list` per repository and a `catalog`, as a browsing client would). Commands
    are unpickled inside the measurement, as a node reads them from its log, so the strings
    they bring are counted."""
    entries = [pickle.dumps(c) for c in corpus(images, repos, shared_layer=shared_layer)]

    def build() -> MetadataState:
        state = MetadataState()
        for entry in entries:
            state.apply(*pickle.loads(entry))
        state.query("catalog", {"n": 1000, "last": None})
        for repo in list(state.tags)[:repos]:
            state.query("tags_list", {"repo": repo, "n": 1000, "last": None})
        return state

    return _traced(build)


def search_bytes(state: MetadataState) -> int:
    """Bytes the state's search index holds once built (node/metadata/search_index.py),
    built as a bare state does at its first search; every node builds it at start."""

    def build() -> None:
        state.query("search", {"spec": {}})

    return _traced(build)[1]


def journal_bytes(images: int, repos: int, shared_layer: bool = False) -> int:
    """Bytes a RaftJournal holds in RAM after the corpus was appended, one command per log
    entry as pysyncobj pickles it (funcID 0 = `_apply`), synced as the tick thread does."""
    commands = list(corpus(images, repos, shared_layer=shared_layer))
    with tempfile.TemporaryDirectory(prefix="chmem-") as tmp:

        def build() -> RaftJournal:
            journal = RaftJournal(tmp, fsync=False)
            for idx, command in enumerate(commands, start=2):
                journal.add(pickle.dumps((0, command)), idx, 1)
                if idx % 64 == 0:
                    journal.sync()
            journal.sync()
            return journal

        journal, used = _traced(build)
        journal._destroy()
    return used


def _time_pages(state: MetadataState, repo: str, pages: int, tag_base: str) -> list[float]:
    out = []
    last = None
    for p in range(pages):
        # A new tag before each page: whatever the state caches is invalidated.
        digest = next(iter(state.manifests[repo]))
        state.apply("manifest_put", _retag_args(state, repo, digest, f"{tag_base}{p}"))
        start = time.perf_counter()
        page = state.query("tags_list", {"repo": repo, "n": 1000, "last": last})
        out.append(time.perf_counter() - start)
        last = page["tags"][-1] if page["more"] else None
    return out


def _retag_args(state: MetadataState, repo: str, digest: str, tag: str) -> dict[str, Any]:
    info = state.query("manifest_get", {"repo": repo, "digest": digest})
    return _wire(api.ManifestPut(repo, digest, info["media_type"], info["recipe"], tag=tag, now=T0))


def listing(tags: int, repos: int, pages: int = 50) -> dict[str, float]:
    """Median and max ms of the node's share of a 1,000-entry page (module docstring)."""
    state = MetadataState()
    repo = "big/repo"
    for op, args in corpus(tags, 1):
        state.apply(op, dict(args, repo=repo))
    for op, args in corpus(repos, repos, index_every=10**9):
        state.apply(op, dict(args, upload=None) if op == "blob_commit" else args)
    tag_times = _time_pages(state, repo, pages, "zz-new-")
    cat_times = []
    last = None
    for p in range(pages):
        state.apply("blob_commit", _new_repo_blob(p))
        start = time.perf_counter()
        page = state.query("catalog", {"n": 1000, "last": last})
        cat_times.append(time.perf_counter() - start)
        last = page["repositories"][-1] if page["more"] else None
    ms = 1000.0
    return {
        "tags_list_page_ms_median": statistics.median(tag_times) * ms,
        "tags_list_page_ms_max": max(tag_times) * ms,
        "catalog_page_ms_median": statistics.median(cat_times) * ms,
        "catalog_page_ms_max": max(cat_times) * ms,
    }


def _new_repo_blob(p: int) -> dict[str, Any]:
    return _wire(
        api.BlobCommit(
            f"zz/new{p:04d}",
            _digest("newrepo", p),
            {"size": 1, "chunks": [[_chunk("newrepo", p), 1]]},
            None,
            T0,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--repos", type=int, default=1000)
    parser.add_argument("--tags", type=int, default=100_000)
    parser.add_argument(
        "--shared-layer",
        action="store_true",
        help="one layer per repository (pushed once) instead of a distinct layer per image",
    )
    parser.add_argument("--lists", action="store_true", help="also time listing pages")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    opts = parser.parse_args()
    n = manifests_in(opts.images)
    state, sbytes = state_bytes(opts.images, opts.repos, opts.shared_layer)
    ibytes = search_bytes(state)
    del state
    jbytes = journal_bytes(opts.images, opts.repos, opts.shared_layer)
    result: dict[str, Any] = {
        "images": opts.images,
        "manifests": n,
        "repos": opts.repos,
        "layers": "one per repository" if opts.shared_layer else "one per image",
        "state_bytes_per_manifest": round(sbytes / n, 1),
        "search_index_bytes_per_manifest": round(ibytes / n, 1),
        "journal_bytes_per_manifest": round(jbytes / n, 1),
        "total_bytes_per_manifest": round((sbytes + ibytes + jbytes) / n, 1),
    }
    if opts.lists:
        result["listing"] = listing(opts.tags, opts.repos)
    if opts.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:32} {value}")


if __name__ == "__main__":
    main()

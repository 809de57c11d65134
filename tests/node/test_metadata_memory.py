"""Memory per manifest of the metadata state, fixed so that a regression fails `make test`.

tracemalloc counts what a `MetadataState` holds after 10,000 tiny distinct images (a
distinct config each and one layer per repository, committed through upload sessions, one
tag each over 1,000 repositories, an index every 10 images: bench/metadata_memory.py's
corpus with `--shared-layer`) were applied as the Raft log applies them, listing orders
built. The figures are taken in a fresh interpreter (a subprocess): tracemalloc counts
every thread's allocations, and a thread an earlier test left running (a Raft member's
tick, a build) would be counted too. The bound is the measured figure plus headroom
(docs/metadata.md, "Memory per manifest"); a change that makes records bigger must make
the case for it there and move the bound with it. The search index every node builds
from that state (one row per tag, node/metadata/search_index.py) is fixed the same way,
apart. Nothing is timed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from bench.metadata_memory import manifests_in

# Bytes per manifest: all of the state's containers, records, strings and listing orders.
# Measured 1,039 on CPython 3.11 at this size (1,135 before one `OneChunk` was shared per
# size, 1,236 while every closed upload session was kept for `upload_expire_after`, 1,532
# before the compact records). Dicts grow in steps, so the figure moves by ±15 % with the
# number of images (781 at 20,000), and by up to ~90 with what the process interned before
# (the interpreter's table).
STATE_BOUND = 1150
# Bytes per tag of the search index built from that state: its columns, orders, postings
# and counts. Measured 110 (127 before one kind column took the place of media type,
# artifact type and platforms; 787 before rows had ids and columns: a NamedTuple per row in
# a dict by "repo NUL tag", four sorted lists of order-key strings, sets of keys as postings).
SEARCH_BOUND = 130
IMAGES = 10_000


_MEASURE = """
import json, sys
from bench.metadata_memory import search_bytes, state_bytes
state, used = state_bytes(int(sys.argv[1]), repos=1000, shared_layer=True)
search = search_bytes(state)
found = state.query("search", {"spec": {"sort": "pushed", "desc": True, "n": 2}})
print(json.dumps({
    "state_bytes": used,
    "search_bytes": search,
    "manifests": state.query("status", {})["manifests"],
    "tags": sum(len(tags) for tags in state.tags.values()),
    "newest": [item["tag"] for item in found["items"]],
}))
"""


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    result: dict[str, Any] = in_fresh_interpreter(_MEASURE, str(IMAGES))
    return result


def in_fresh_interpreter(script: str, *args: str) -> Any:
    """Run `script` in a new interpreter (no thread of an earlier test is counted) and
    return the JSON of its last line of output."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_state_memory_per_manifest_stays_bounded(measured: dict[str, Any]) -> None:
    per_manifest = measured["state_bytes"] / manifests_in(IMAGES)
    assert measured["manifests"] == manifests_in(IMAGES)
    assert per_manifest <= STATE_BOUND, f"{per_manifest:.0f} B per manifest"


def test_search_index_memory_per_tag_stays_bounded(measured: dict[str, Any]) -> None:
    tags = measured["tags"]
    assert tags == manifests_in(IMAGES)  # one tag per image and per index
    assert measured["newest"] == ["v9", "multi9"]
    per_tag = measured["search_bytes"] / tags
    assert per_tag <= SEARCH_BOUND, f"{per_tag:.0f} B per tag"


# A snapshot of 2,000 images in `blob`, tracemalloc started, an empty state in `target`.
_LOADS = """
import gc, io, json, tracemalloc
from bench.metadata_memory import state_bytes
from node.metadata.state import MetadataState
state, _ = state_bytes(2000, repos=100, shared_layer=True)
blob = b"".join(MetadataState.encode_snapshot(state.snapshot(), compact=True))
del state
tracemalloc.start()
target = MetadataState()
"""

_RELOAD = (
    _LOADS
    + """
target.load_stream(io.BytesIO(blob))
held = tracemalloc.get_traced_memory()[0]
tracemalloc.reset_peak()
target.load_stream(io.BytesIO(blob))
current, peak = tracemalloc.get_traced_memory()
print(json.dumps({"held": held, "again": current, "peak": peak}))
"""
)


def test_a_load_over_a_whole_state_lets_the_old_one_go_first() -> None:
    """A follower installing the leader's snapshot over its own state: the peak is one
    state plus the load's transients (the unpickler's memo: ~0.55 of the state here), not
    two states (2.1 of it measured before the old containers were released first)."""
    got = in_fresh_interpreter(_RELOAD)
    assert abs(got["again"] - got["held"]) < 0.1 * got["held"]
    assert got["peak"] < 1.8 * got["held"], got


_RELOAD_SEARCHED = (
    _LOADS
    + """
held = []
for _ in range(3):
    target.load_stream(io.BytesIO(blob))
    target.query("search", {"spec": {}})
    gc.freeze()  # as a node does after every load (raft.py _freeze_heap)
    held.append(tracemalloc.get_traced_memory()[0])
print(json.dumps(held))
"""
)


def test_a_load_lets_the_frozen_search_index_of_the_old_state_go() -> None:
    """The search index is a reference cycle (its orders key on its own methods); frozen
    with the heap after a load, it was never collected once a later load dropped it, and
    it kept the old state's strings: each load of a node that had searched (every node
    builds its index at start) added about a third of the state."""
    held = in_fresh_interpreter(_RELOAD_SEARCHED)
    assert held[2] - held[0] < 0.05 * held[0], held

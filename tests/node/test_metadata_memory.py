"""Memory per manifest of the metadata state, fixed so that a regression fails `make test`.

tracemalloc counts what a `MetadataState` holds after 10,000 tiny distinct images (a
distinct config each and one layer per repository, committed through upload sessions, one
tag each over 1,000 repositories, an index every 10 images: bench/metadata_memory.py's
corpus with `--shared-layer`) were applied as the Raft log applies them, listing orders
built. The bound is the measured figure plus headroom (docs/metadata.md, "Memory per
manifest"); a change that makes records bigger must make the case for it there and move
the bound with it. The search index every node builds from that state (one row per tag,
node/metadata/search_index.py) is fixed the same way, apart. Nothing is timed.
"""

from __future__ import annotations

import pytest

from bench.metadata_memory import manifests_in, search_bytes, state_bytes
from node.metadata.state import MetadataState

# Bytes per manifest: all of the state's containers, records, strings and listing orders.
# Measured 1,135 on CPython 3.11 at this size (1,236 while every closed upload session was
# kept for `upload_expire_after`, 1,532 before the compact records). Dicts
# grow in steps, so the figure moves by ±15 % with the number of images (875 at 20,000),
# and by up to ~90 with what the process interned before (the interpreter's table).
STATE_BOUND = 1260
# Bytes per tag of the search index built from that state: its columns, orders, postings
# and counts. Measured 127 (787 before rows had ids and columns: a NamedTuple per row in a
# dict by "repo NUL tag", four sorted lists of order-key strings, sets of keys as postings).
SEARCH_BOUND = 160
IMAGES = 10_000


@pytest.fixture(scope="module")
def measured() -> tuple[MetadataState, int]:
    return state_bytes(IMAGES, repos=1000, shared_layer=True)


def test_state_memory_per_manifest_stays_bounded(measured: tuple[MetadataState, int]) -> None:
    state, used = measured
    per_manifest = used / manifests_in(IMAGES)
    assert state.query("status", {})["manifests"] == manifests_in(IMAGES)
    assert per_manifest <= STATE_BOUND, f"{per_manifest:.0f} B per manifest"


def test_search_index_memory_per_tag_stays_bounded(measured: tuple[MetadataState, int]) -> None:
    state, _ = measured
    used = search_bytes(state)
    tags = sum(len(tags) for tags in state.tags.values())
    assert tags == manifests_in(IMAGES)  # one tag per image and per index
    found = state.query("search", {"spec": {"sort": "pushed", "desc": True, "n": 2}})
    assert [item["tag"] for item in found["items"]] == ["v9", "multi9"]
    per_tag = used / tags
    assert per_tag <= SEARCH_BOUND, f"{per_tag:.0f} B per tag"

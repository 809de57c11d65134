"""Memory per manifest of the metadata state, fixed so that a regression fails `make test`.

tracemalloc counts what a `MetadataState` holds after 10,000 tiny distinct images (a
distinct config each and one layer per repository, committed through upload sessions, one
tag each over 1,000 repositories, an index every 10 images: bench/metadata_memory.py's
corpus with `--shared-layer`) were applied as the Raft log applies them, listing orders
built. The bound is the measured figure plus headroom (docs/metadata.md, "Memory per
manifest"); a change that makes records bigger must make the case for it there and move
the bound with it. Nothing is timed.
"""

from __future__ import annotations

from bench.metadata_memory import manifests_in, state_bytes

# Bytes per manifest: all of the state's containers, records, strings and listing orders.
# Measured 1,135 on CPython 3.11 at this size (1,236 while every closed upload session was
# kept for `upload_expire_after`, 1,532 before the compact records). Dicts
# grow in steps, so the figure moves by ±15 % with the number of images (875 at 20,000),
# and by up to ~90 with what the process interned before (the interpreter's table).
STATE_BOUND = 1260


def test_state_memory_per_manifest_stays_bounded() -> None:
    images = 10_000
    state, used = state_bytes(images, repos=1000, shared_layer=True)
    per_manifest = used / manifests_in(images)
    assert state.query("status", {})["manifests"] == manifests_in(images)
    assert per_manifest <= STATE_BOUND, f"{per_manifest:.0f} B per manifest"

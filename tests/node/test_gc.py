"""Garbage collection (node/gc.py) on the real metadata state and the in-memory and LMDB
chunk stores: what the mark holds, what the sweep removes, and what it must spare (young
chunks, chunks a Has just found, recipes unlinked for less than a grace period)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import pytest

from cargohold import metadata_api as api
from cargohold.config import Config
from node.chunkstore import LmdbChunkStore
from node.gc import GcRole, mark, unlinked_blobs
from node.memstore import MemoryChunkStore
from node.metadata.state import MetadataState

REPO = "lib/app"


def data(name: str, size: int = 1000) -> bytes:
    return (name.encode() * size)[:size]


def chunk_id(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def digest(payload: bytes) -> str:
    return "sha256:" + hashlib.sha256(payload).hexdigest()


class FakeRaft:
    """A one-node Raft member over the real state machine: commands apply at once."""

    def __init__(self, leader: bool = True) -> None:
        self.state = MetadataState()
        self.leader = leader
        self.index = 0

    async def barrier(self) -> None:
        return None

    def state_snapshot(self) -> tuple[dict[str, Any], int]:
        return self.state.snapshot(), self.index

    def is_leader(self) -> bool:
        return self.leader

    async def command(self, op: str, args: dict[str, Any]) -> Any:
        self.index += 1
        return self.state.apply(op, args)

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        return self.state.query(op, args)


def config(grace: float = 0.0) -> Config:
    cfg = Config()
    cfg.lifecycle.gc_grace_seconds = grace
    cfg.lifecycle.gc_rate_chunks = 0
    cfg.lifecycle.gc_delete_batch = 2  # several sweep transactions per page
    cfg.node.chunk_list_page_size = 3  # several pages
    return cfg


async def store_blob(store: Any, raft: FakeRaft, repo: str, *parts: bytes) -> str:
    """Put the chunks, then commit a blob of them (what a gateway does)."""
    for part in parts:
        await store.put(chunk_id(part), part)
    blob = b"".join(parts)
    recipe: api.Recipe = {
        "size": len(blob),
        "chunks": [[chunk_id(p).hex(), len(p)] for p in parts],
    }
    await api.Metadata(raft).blob_commit(
        api.BlobCommit(repo, digest(blob), recipe, None, time.time())
    )
    return digest(blob)


async def held(store: Any) -> set[bytes]:
    return {cid for cid, _ in await store.list_ids(b"", 10_000)}


def test_mark_holds_blobs_manifests_and_open_uploads() -> None:
    st = MetadataState()
    a, b, c = data("a"), data("b"), data("c")
    st.execute(
        api.BlobCommit(
            REPO, digest(a), {"size": 1000, "chunks": [[chunk_id(a).hex(), 1000]]}, None, 1
        )
    )
    st.execute(api.UploadAppend("u1", REPO, 0, [[chunk_id(b).hex(), 1000]], "r1", 1.0))
    st.execute(
        api.ManifestPut(
            REPO,
            digest(c),
            "application/vnd.oci.image.manifest.v1+json",
            {"size": 1000, "chunks": [[chunk_id(c).hex(), 1000]]},
            blobs=(digest(a),),
        )
    )
    snap = st.snapshot()
    assert mark(snap) == {chunk_id(a), chunk_id(b), chunk_id(c)}
    assert unlinked_blobs(snap) == {}
    st.execute(api.BlobUnlink(REPO, digest(a)))
    snap = st.snapshot()
    assert unlinked_blobs(snap) == {digest(a): 1000}
    # Still marked: an unlinked recipe keeps its chunks until gc_prune forgets it.
    assert chunk_id(a) in mark(snap)


def test_gc_prune_forgets_only_unlinked_recipes() -> None:
    st = MetadataState()
    a, b = data("a"), data("b")
    for payload in (a, b):
        st.execute(
            api.BlobCommit(
                REPO,
                digest(payload),
                {"size": 1000, "chunks": [[chunk_id(payload).hex(), 1000]]},
                None,
                1,
            )
        )
    st.execute(api.BlobUnlink(REPO, digest(a)))
    assert st.apply("gc_prune", {"blobs": [digest(a), digest(b)]}) == {"pruned": 1}
    assert digest(a) not in st.blobs and digest(b) in st.blobs
    assert st.execute(api.Status()).blob_bytes == 1000
    # A retry forgets nothing more; a snapshot round trip keeps the result.
    assert st.apply("gc_prune", {"blobs": [digest(a)]}) == {"pruned": 0}
    copy = MetadataState()
    copy.load(st.dump())
    assert set(copy.blobs) == {digest(b)}


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, open_lmdb_store: Any) -> Any:
    if request.param == "memory":
        return MemoryChunkStore()
    return open_lmdb_store()


async def test_sweep_removes_unreferenced_and_spares_referenced(store: Any) -> None:
    raft = FakeRaft()
    kept = [data(f"k{i}") for i in range(5)]
    await store_blob(store, raft, REPO, *kept)
    upload = data("upload")
    await store.put(chunk_id(upload), upload)
    await api.Metadata(raft).upload_append(
        api.UploadAppend("u1", REPO, 0, [[chunk_id(upload).hex(), 1000]], "r", time.time())
    )
    orphans = [data(f"o{i}", 700) for i in range(4)]
    for o in orphans:
        await store.put(chunk_id(o), o)
    gc = GcRole(config(grace=0.0), store, raft)
    await gc.run_pass()
    assert await held(store) == {chunk_id(p) for p in [*kept, upload]}
    assert gc.stats.swept_chunks == 4 and gc.stats.swept_bytes == 4 * 700
    assert gc.stats.reclaimed_bytes_total == 4 * 700
    assert (await store.stats()).bytes == 6 * 1000


async def test_unlinked_blob_is_pruned_then_swept(store: Any) -> None:
    raft = FakeRaft()
    parts = [data(f"p{i}") for i in range(3)]
    blob = await store_blob(store, raft, REPO, *parts)
    shared = await store_blob(store, raft, "lib/other", parts[0])
    await api.Metadata(raft).blob_unlink(REPO, blob)
    gc = GcRole(config(grace=0.0), store, raft)
    await gc.run_pass()
    assert blob not in raft.state.blobs and shared in raft.state.blobs
    assert gc.stats.pruned_blobs == 1
    # The chunk another blob shares stays; the two others are gone.
    assert await held(store) == {chunk_id(parts[0])}


async def test_recipe_unlinked_for_less_than_the_grace_stays() -> None:
    store = MemoryChunkStore()
    raft = FakeRaft()
    blob = await store_blob(store, raft, REPO, data("x"))
    await api.Metadata(raft).blob_unlink(REPO, blob)
    gc = GcRole(config(grace=0.5), store, raft)
    await gc.run_pass()
    assert blob in raft.state.blobs  # first seen unlinked now: not yet
    # Linked again meanwhile (an upload finished with the same digest): kept for good.
    await store_blob(store, raft, REPO, data("x"))
    await asyncio.sleep(0.6)
    await gc.run_pass()
    assert blob in raft.state.blobs
    await api.Metadata(raft).blob_unlink(REPO, blob)
    await gc.run_pass()
    assert blob in raft.state.blobs  # the clock started again at this unlink
    await asyncio.sleep(0.6)
    await gc.run_pass()
    assert blob not in raft.state.blobs


async def test_young_chunks_and_has_answers_are_spared(store: Any) -> None:
    raft = FakeRaft()
    old, young, found = data("old"), data("young"), data("found")
    for payload in (old, found):
        await store.put(chunk_id(payload), payload)
    store.touches.opened = 0.0
    store.touches.forget_before(time.monotonic() + 1)  # as if written long ago
    gc = GcRole(config(grace=30.0), store, raft)
    # Written now, and found present by a Has now: both count as a use within the grace.
    await store.put(chunk_id(young), young)
    assert (await store.has([chunk_id(found)])) == [True]
    store.touches._times[chunk_id(old)] = time.monotonic() - 60  # test hook: an old write
    await gc.run_pass()
    assert await held(store) == {chunk_id(young), chunk_id(found)}
    assert gc.stats.spared_young == 2 and gc.stats.swept_chunks == 1


async def test_dry_run_deletes_nothing(store: Any) -> None:
    raft = FakeRaft()
    blob = await store_blob(store, raft, REPO, data("a"), data("b"))
    await api.Metadata(raft).blob_unlink(REPO, blob)
    orphan = data("orphan")
    await store.put(chunk_id(orphan), orphan)
    gc = GcRole(config(grace=0.0), store, raft)
    await gc.run_pass(dry_run=True)
    assert gc.stats.dry_run and gc.stats.pruned_blobs == 1 and gc.stats.swept_chunks == 1
    assert blob in raft.state.blobs and len(await held(store)) == 3
    assert gc.stats.reclaimed_bytes_total == 0


async def test_follower_sweeps_but_does_not_prune() -> None:
    store = MemoryChunkStore()
    raft = FakeRaft(leader=False)
    blob = await store_blob(store, raft, REPO, data("a"))
    await api.Metadata(raft).blob_unlink(REPO, blob)
    gc = GcRole(config(grace=0.0), store, raft)
    await gc.run_pass()
    assert blob in raft.state.blobs and await held(store) == {chunk_id(data("a"))}


async def test_trigger_wait_and_dry_run_role(store: Any) -> None:
    raft = FakeRaft()
    orphan = data("orphan")
    await store.put(chunk_id(orphan), orphan)
    gc = GcRole(config(grace=0.0), store, raft)
    task = asyncio.get_running_loop().create_task(gc.run())
    try:
        dry = await asyncio.wait_for(gc.trigger(wait=True, dry_run=True), 10)
        assert dry["dry_run"] and dry["swept_chunks"] == 1 and dry["passes"] == 1
        real = await asyncio.wait_for(gc.trigger(wait=True), 10)
        assert not real["dry_run"] and real["reclaimed_chunks_total"] == 1
        assert await held(store) == set()
    finally:
        task.cancel()


async def test_lmdb_sweep_waits_for_a_has_and_a_put_wins(open_lmdb_store: Any) -> None:
    """The store-level guarantee the gateway's Has skip relies on."""
    store: LmdbChunkStore = open_lmdb_store()
    a, b = data("a"), data("b")
    await store.put(chunk_id(a), a)
    await store.put(chunk_id(b), b)
    cutoff = time.monotonic()
    assert (await store.has([chunk_id(a)])) == [True]  # a use after the cutoff
    assert await store.put(chunk_id(b), b)  # an existing copy acknowledged again
    assert await store.sweep([chunk_id(a), chunk_id(b)], cutoff) == (0, 0)
    assert await store.sweep([chunk_id(a), chunk_id(b)], time.monotonic()) == (2, 2000)
    assert (await store.stats()).count == 0


async def test_lmdb_reopened_store_counts_chunks_young_for_a_grace(
    open_lmdb_store: Any, tmp_path: Any
) -> None:
    path = tmp_path / "reopen"
    first: LmdbChunkStore = open_lmdb_store(path)
    a = data("a")
    await first.put(chunk_id(a), a)
    first.close()
    before_open = time.monotonic()
    second: LmdbChunkStore = open_lmdb_store(path)
    # Written before this process opened the store: touched "at open", not before.
    assert await second.sweep([chunk_id(a)], before_open) == (0, 0)
    assert await second.sweep([chunk_id(a)], time.monotonic()) == (1, 1000)
    usage = second.file_usage()
    assert usage["file_bytes"] >= usage["high_water_bytes"] >= usage["data_bytes"] > 0


async def test_a_refused_prune_does_not_stop_the_sweep() -> None:
    from cargohold.errors import MetadataStorageFull

    class FullLog(FakeRaft):
        async def command(self, op: str, args: dict[str, Any]) -> Any:
            if op == "gc_prune":
                raise MetadataStorageFull()
            return await super().command(op, args)

    store = MemoryChunkStore()
    raft = FullLog()
    blob = await store_blob(store, raft, REPO, data("a"))
    await api.Metadata(raft).blob_unlink(REPO, blob)
    orphan = data("orphan")
    await store.put(chunk_id(orphan), orphan)
    gc = GcRole(config(grace=0.0), store, raft)
    await gc.run_pass()
    assert blob in raft.state.blobs and gc.stats.failed_passes == 0
    assert await held(store) == {chunk_id(data("a"))}  # the orphan went all the same


async def test_the_documented_copy_compact_of_a_stopped_store_gives_the_space_back(
    open_lmdb_store: Any, tmp_path: Any
) -> None:
    """docs/operations.md "Garbage collection": freed pages are reused by later writes (the
    file does not grow), and a copy-compact of a stopped node's store (the Python form of
    `mdb_copy -c`) keeps every chunk and only the pages in use."""
    import lmdb

    path = tmp_path / "chunks"
    store: LmdbChunkStore = open_lmdb_store(path)
    first = [data(f"first-{i}") * 8 for i in range(400)]  # 8 KB each
    for blob in first:
        await store.put(chunk_id(blob), blob)
    swept = await store.sweep([chunk_id(b) for b in first[:300]], time.monotonic())
    assert swept == (300, 300 * 8000)
    before = store.file_usage()
    again = [data(f"again-{i}") * 8 for i in range(300)]  # as much as was freed
    for blob in again:
        await store.put(chunk_id(blob), blob)
    after = store.file_usage()
    assert after["file_bytes"] - before["file_bytes"] < len(again) * 8000 // 4, (before, after)
    kept = first[300:] + again
    await store.sweep([chunk_id(b) for b in again], time.monotonic())
    used = store.file_usage()
    store.close()

    compact = tmp_path / "chunks.compact"
    compact.mkdir()
    env = lmdb.open(str(path), readonly=True, max_dbs=3)
    env.copy(str(compact), compact=True)
    env.close()
    reopened: LmdbChunkStore = open_lmdb_store(compact)
    for blob in first[300:]:
        assert await reopened.get(chunk_id(blob)) == blob
    assert (await reopened.stats()).count == len(kept) - len(again)
    smaller = reopened.file_usage()
    assert smaller["file_bytes"] < used["file_bytes"] // 2, (used, smaller)
    assert smaller["data_bytes"] <= used["data_bytes"]


def _audit_rows(st: MetadataState) -> list[tuple[Any, ...]]:
    """(actor, actor_kind, client, action, repository, reference, detail) of each record."""
    rows = []
    for line in st.execute(api.AuditTail(0)).lines:
        e = json.loads(line)[2:]  # [seq, prev, *event]
        rows.append((e[1], e[2], e[3], e[5], e[6], e[7], e[10]))
    return rows


async def _trashed_manifest(raft: FakeRaft, repo: str, name: str) -> None:
    d = digest(name.encode())
    raft.state.apply(
        "manifest_put",
        {
            "repo": repo,
            "digest": d,
            "media_type": "application/vnd.oci.image.manifest.v1+json",
            "recipe": {"size": 3, "chunks": [[hashlib.sha256(name.encode()).hexdigest(), 3]]},
            "tag": None,
            "now": 1.0,
        },
    )
    raft.state.execute(api.ManifestDelete(repo, d, now=2.0, trash=True))


async def test_a_real_pass_puts_what_it_deleted_in_the_activity_log() -> None:
    store = MemoryChunkStore()
    raft = FakeRaft()
    blob = await store_blob(store, raft, REPO, data("a"), data("b"))
    await api.Metadata(raft).blob_unlink(REPO, blob)
    await _trashed_manifest(raft, REPO, "one")
    await _trashed_manifest(raft, REPO, "two")
    await _trashed_manifest(raft, "lib/other", "three")
    cfg = config(grace=0.0)
    cfg.node.id = "n7"
    gc = GcRole(cfg, store, raft)
    await gc.run_pass(dry_run=True)
    assert _audit_rows(raft.state) == []  # a dry run deletes nothing and records nothing
    before = raft.index
    await gc.run_pass()
    gc_actor = ("gc", "system", "n7")
    assert _audit_rows(raft.state) == [
        # The state's own records of the purge, one per repository, in the same apply.
        (*gc_actor, "purge", "lib/app", "trash", _purged(cfg, 2)),
        (*gc_actor, "purge", "lib/other", "trash", _purged(cfg, 1)),
        # Then one event for the whole pass (not one per chunk or blob).
        (
            *gc_actor,
            "gc",
            "",
            "pass",
            # The blob, and the three purged manifests' recipes (3 bytes each).
            "pruned 4 blob recipes (2009 bytes), expired 0 uploads, swept 2 chunks (2000 bytes)",
        ),
    ]
    # trash_purge, one gc_prune batch, expire_uploads and the one audit_append.
    assert raft.index - before == 4
    # A pass with nothing to delete adds nothing.
    await gc.run_pass()
    assert len(_audit_rows(raft.state)) == 3


def _purged(cfg: Config, count: int) -> str:
    return f"{count} trash entries deleted over {cfg.lifecycle.trash_retention_seconds:g} s ago"

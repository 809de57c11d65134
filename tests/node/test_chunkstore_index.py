"""The chunk store's index: `has` and `list_ids` answer from small entries, never from the
chunks' own pages, and a store written before the index existed is indexed in steps while
it keeps answering correctly."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import lmdb
import pytest

import node.chunkstore as chunkstore
from cargohold.digests import checksum_of
from node.chunkstore import LmdbChunkStore
from tests.page_state import mapped_rss

MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="Linux only")


def _chunk(size: int) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    return hashlib.sha256(data).digest(), data


def _open(path: Path) -> LmdbChunkStore:
    return LmdbChunkStore(str(path), 256 * MiB, 16, 16 * MiB)


async def _indexed(store: LmdbChunkStore) -> None:
    for _ in range(500):
        if store._indexed:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the store was not indexed")


def _drop_file_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def test_probes_and_listings_do_not_read_the_chunks(tmp_path: Path) -> None:
    chunks = [_chunk(MiB) for _ in range(8)]
    store = _open(tmp_path / "c")
    for chunk_id, data in chunks:
        await store.put(chunk_id, data)
    store.close()
    # A fresh map of a file none of whose pages are cached: whatever a call touches is
    # what it maps here.
    data_mdb = tmp_path / "c" / "data.mdb"
    _drop_file_cache(data_mdb)
    store = _open(tmp_path / "c")
    try:
        assert store._indexed
        ids = sorted(chunk_id for chunk_id, _ in chunks)
        assert await store.has([*ids, b"\0" * 32]) == [True] * 8 + [False]
        assert await store.list_ids(b"", 100) == [(i, MiB) for i in ids]
        # Before the index, these two calls mapped all 8 MiB of chunk data (py-lmdb
        # pre-faults every page of a value it returns).
        assert mapped_rss(data_mdb) < 2 * MiB
        assert await store.get(ids[0]) == dict(chunks)[ids[0]]
        assert mapped_rss(data_mdb) >= MiB  # the measure sees a chunk that is read
    finally:
        store.close()


def _unindex(path: Path) -> None:
    """Make `path` look like a store written before the index: no entries, no mark."""
    env = lmdb.open(str(path), max_dbs=4, subdir=True)
    try:
        index = env.open_db(b"index")
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.drop(index, delete=False)
            txn.delete(chunkstore._META_INDEXED, db=meta)
    finally:
        env.close()


async def test_a_store_written_before_the_index_is_indexed_in_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunkstore, "_INDEX_STEP", 2)
    chunks = dict(_chunk(4096 + i) for i in range(9))
    store = _open(tmp_path / "c")
    for chunk_id, data in chunks.items():
        await store.put(chunk_id, data)
    store.close()
    _unindex(tmp_path / "c")

    steps = 0
    real_step = LmdbChunkStore._index_step

    def counted(self: LmdbChunkStore) -> None:
        nonlocal steps
        steps += 1
        real_step(self)

    monkeypatch.setattr(LmdbChunkStore, "_index_step", counted)
    store = _open(tmp_path / "c")
    try:
        # Writes while it is indexed keep their own entries: one chunk gone, one new.
        gone = sorted(chunks)[4]
        assert await store.delete([gone]) == 1
        del chunks[gone]
        new_id, new_data = _chunk(5000)
        await store.put(new_id, new_data)
        chunks[new_id] = new_data
        listed = await store.list_ids(b"", 100)  # correct before and after the index
        assert listed == sorted((i, len(d)) for i, d in chunks.items())
        await _indexed(store)
        assert steps >= 3  # 8-9 chunks while it runs, 2 a step
        assert await store.list_ids(b"", 100) == sorted((i, len(d)) for i, d in chunks.items())
        assert await store.has([*chunks, gone]) == [True] * len(chunks) + [False]
    finally:
        store.close()
    # The mark is durable: the next open answers from the index at once.
    store = _open(tmp_path / "c")
    try:
        assert store._indexed
        assert await store.list_ids(b"", 100) == sorted((i, len(d)) for i, d in chunks.items())
    finally:
        store.close()


async def test_quarantine_and_sweep_remove_index_entries(tmp_path: Path) -> None:
    store = _open(tmp_path / "c")
    try:
        await _indexed(store)
        (a, data_a), (b, data_b) = _chunk(8192), _chunk(8192)
        await store.put(a, data_a)
        await store.put(b, data_b)
        # Corrupt a's stored bytes in place (a silent disk error), then read it.
        with store._env.begin(write=True) as txn:
            value = bytearray(txn.get(a, db=store._chunks))
            value[-1] ^= 0xFF
            txn.put(a, bytes(value), db=store._chunks)
        assert await store.verify(a) is False
        assert await store.has([a]) == [False]
        count, freed = await store.sweep([b], idle_before=float("inf"))
        assert (count, freed) == (1, 8192)
        assert await store.has([a, b]) == [False, False]
        assert await store.list_ids(b"", 10) == []
        with store._env.begin() as txn:
            assert txn.stat(store._index)["entries"] == 0
    finally:
        store.close()


async def test_an_index_written_to_behind_its_back_is_rebuilt(tmp_path: Path) -> None:
    """A rollback to a release without the index, then forward again: the chunks that
    release deleted or wrote must not be answered from the old entries."""
    store = _open(tmp_path / "c")
    kept, gone = _chunk(4096), _chunk(4096)
    try:
        await _indexed(store)
        for chunk_id, data in (kept, gone):
            await store.put(chunk_id, data)
    finally:
        store.close()
    added = _chunk(4096)
    env = lmdb.open(str(tmp_path / "c"), max_dbs=4, subdir=True)
    try:  # what the older release does: "chunks" only (counters left as they were)
        chunks_db = env.open_db(b"chunks")
        with env.begin(write=True) as txn:
            txn.delete(gone[0], db=chunks_db)
            txn.put(added[0], checksum_of(added[1]) + added[1], db=chunks_db)
    finally:
        env.close()
    store = _open(tmp_path / "c")
    try:
        assert not store._indexed
        assert await store.has([kept[0], gone[0], added[0]]) == [True, False, True]
        await _indexed(store)
        assert await store.has([kept[0], gone[0], added[0]]) == [True, False, True]
        assert await store.list_ids(b"", 10) == sorted([(kept[0], 4096), (added[0], 4096)])
    finally:
        store.close()


async def test_a_rebuild_cut_short_resumes_and_is_never_trusted_half_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback detected, then the node stops after the first rebuild step: the next
    open must not answer from the half-built index."""
    monkeypatch.setattr(chunkstore, "_INDEX_STEP", 2)
    chunks = dict(_chunk(4096 + i) for i in range(7))
    store = _open(tmp_path / "c")
    try:
        await _indexed(store)
        for chunk_id, data in chunks.items():
            await store.put(chunk_id, data)
    finally:
        store.close()
    added = _chunk(4096)
    env = lmdb.open(str(tmp_path / "c"), max_dbs=4, subdir=True)
    try:  # the older release writes "chunks" only
        chunks_db = env.open_db(b"chunks")  # its own write txn: not inside the one below
        with env.begin(write=True) as txn:
            txn.put(added[0], checksum_of(added[1]) + added[1], db=chunks_db)
    finally:
        env.close()
    chunks[added[0]] = added[1]

    real_step = LmdbChunkStore._index_step
    steps = 0

    def one_step_then_stop(self: LmdbChunkStore) -> None:
        nonlocal steps
        steps += 1
        real_step(self)
        self._index_after = None  # as if the process died here

    monkeypatch.setattr(LmdbChunkStore, "_index_step", one_step_then_stop)
    store = _open(tmp_path / "c")
    try:
        for _ in range(500):
            if steps:
                break
            await asyncio.sleep(0.01)
        assert steps == 1 and not store._indexed
    finally:
        store.close()
    monkeypatch.setattr(LmdbChunkStore, "_index_step", real_step)
    store = _open(tmp_path / "c")
    try:
        assert not store._indexed  # two of eight entries are there: not trusted
        expected = sorted((i, len(d)) for i, d in chunks.items())
        assert await store.list_ids(b"", 100) == expected
        await _indexed(store)
        assert await store.list_ids(b"", 100) == expected
        assert await store.has(list(chunks)) == [True] * len(chunks)
    finally:
        store.close()


async def test_a_new_store_is_built_not_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fresh store has nothing to distrust: no 'rebuilt' warning at every new node."""
    store = _open(tmp_path / "c")
    try:
        await _indexed(store)
    finally:
        store.close()
    assert "chunkstore.index_rebuilt" not in caplog.text

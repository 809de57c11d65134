"""`node.drop_written_pages`: a commit that stored chunks drops the cached pages of the
values it wrote (posix_fadvise DONTNEED on their file ranges, after the acknowledgements),
no other page of data.mdb, and nothing stored changes."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from cargohold import local_readers
from cargohold.mapped_pages import FOLIO_BYTES, PAGE_SIZE
from node.chunkstore import CHECKSUM_LEN, LmdbChunkStore
from tests.page_state import cached_pages, file_offset_of, read_at

MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="Linux only")


def _chunk(size: int) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    return hashlib.sha256(data).digest(), data


async def _advised(advice: list[tuple[int, int, int, int]], calls: int) -> None:
    """Wait for the writer thread, which advises after it has acknowledged the put."""
    for _ in range(500):
        if len(advice) >= calls:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(advice)} advice calls, not {calls}")


@pytest.fixture
def advice(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int, int]]:
    calls: list[tuple[int, int, int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, how: int) -> None:
        # Recorded once the advice has been given: the tests wait for the record and then
        # look at the page cache, which must not race the writer thread's call.
        real(fd, offset, length, how)
        calls.append((fd, offset, length, how))

    monkeypatch.setattr(os, "posix_fadvise", record)
    return calls


async def test_a_commit_with_puts_drops_the_pages_it_wrote(
    tmp_path: Path, advice: list[tuple[int, int, int, int]]
) -> None:
    store = LmdbChunkStore(str(tmp_path / "c"), 64 * MiB, 16, 16 * MiB, drop_written_pages="always")
    data_mdb = tmp_path / "c" / "data.mdb"
    try:
        chunk_id, data = _chunk(256 * 1024)
        assert await store.put(chunk_id, data) is False
        await _advised(advice, 1)
        fd, offset, length, how = advice[-1]
        # The whole pages the value (checksum || data) lies in: its own overflow pages.
        start = file_offset_of(data_mdb, data[:4096]) - CHECKSUM_LEN
        assert how == os.POSIX_FADV_DONTNEED
        assert offset == start // PAGE_SIZE * PAGE_SIZE
        assert offset + length == -(-(start + CHECKSUM_LEN + len(data)) // PAGE_SIZE) * PAGE_SIZE
        assert os.fstat(fd).st_ino == os.stat(data_mdb).st_ino
        assert await store.get(chunk_id) == data  # read back (from the disk if dropped)
        before = len(advice)
        assert await store.put(chunk_id, data) is True  # held already: nothing written
        assert await store.delete([chunk_id]) == 1
        assert len(advice) == before  # commits that store nothing leave the cache alone
    finally:
        store.close()
    reopened = LmdbChunkStore(str(tmp_path / "c"), 64 * MiB, 16, 16 * MiB)
    try:
        assert (await reopened.stats()).count == 0
    finally:
        reopened.close()


async def test_a_commit_leaves_other_cached_pages_alone(
    tmp_path: Path, advice: list[tuple[int, int, int, int]]
) -> None:
    store = LmdbChunkStore(str(tmp_path / "c"), 64 * MiB, 16, 16 * MiB, drop_written_pages="always")
    data_mdb = tmp_path / "c" / "data.mdb"
    try:
        old_id, old = _chunk(1 * MiB)
        await store.put(old_id, old)
        await _advised(advice, 1)
        # Read the old chunk back into the page cache (it was dropped after its commit).
        at = file_offset_of(data_mdb, old[:4096])
        assert read_at(data_mdb, at, len(old)) == old
        whole = cached_pages(data_mdb, at, len(old))
        assert whole >= len(old) // PAGE_SIZE
        # A chunk between them, so the old and new ones share no folio.
        await store.put(*_chunk(2 * FOLIO_BYTES))
        await _advised(advice, 2)
        new_id, new = _chunk(1 * MiB)
        await store.put(new_id, new)
        await _advised(advice, 3)
        assert cached_pages(data_mdb, at, len(old)) == whole  # still all cached
        # The new chunk's pages are gone from the cache (but for parts of the folios at
        # its ends that hold B-tree pages too), and that range holds it.
        _, new_at, length, _ = advice[-1]
        assert cached_pages(data_mdb, new_at, length) <= length // PAGE_SIZE // 4
        assert new in read_at(data_mdb, new_at, length)
        assert await store.get(new_id) == new and await store.get(old_id) == old
    finally:
        store.close()


async def test_the_pages_beside_a_value_stay_cached(
    tmp_path: Path, advice: list[tuple[int, int, int, int]]
) -> None:
    """The B-tree and meta pages around a written value (in the same large folio, often)
    stay cached: the next commit reads them, and dropping them made each small put wait
    for the disk. Values too small for pages of their own are not dropped at all."""
    store = LmdbChunkStore(str(tmp_path / "c"), 64 * MiB, 16, 16 * MiB, drop_written_pages="always")
    data_mdb = tmp_path / "c" / "data.mdb"
    try:
        await store.put(*_chunk(1000))  # inline in a leaf page: left alone
        await store.put(*_chunk(256 * 1024))
        await _advised(advice, 1)
        assert len(advice) == 1
        _, offset, length, _ = advice[0]
        size = data_mdb.stat().st_size
        outside = size // PAGE_SIZE - length // PAGE_SIZE
        assert outside > 0
        assert cached_pages(data_mdb, 0, size) - cached_pages(data_mdb, offset, length) == outside
        assert cached_pages(data_mdb, offset, length) <= length // PAGE_SIZE // 4
    finally:
        store.close()


async def test_off_by_default(tmp_path: Path, advice: list[tuple[int, int, int, int]]) -> None:
    store = LmdbChunkStore(str(tmp_path / "c"), 64 * MiB, 16, 16 * MiB)
    try:
        chunk_id, data = _chunk(4096)
        await store.put(chunk_id, data)
        assert await store.get(chunk_id) == data
        assert advice == []
    finally:
        store.close()


async def test_chunks_survive_a_reopen_with_pages_dropped(tmp_path: Path) -> None:
    store = LmdbChunkStore(str(tmp_path / "c"), 64 * MiB, 16, 16 * MiB, drop_written_pages="always")
    chunks = [_chunk(100_000 + i) for i in range(5)]
    try:
        for chunk_id, data in chunks:
            await store.put(chunk_id, data)
    finally:
        store.close()
    reopened = LmdbChunkStore(str(tmp_path / "c"), 64 * MiB, 16, 16 * MiB)
    try:
        for chunk_id, data in chunks:
            assert await reopened.get(chunk_id) == data
    finally:
        reopened.close()


async def test_unread_keeps_the_pages_while_a_gateway_here_reads_the_store(
    tmp_path: Path, advice: list[tuple[int, int, int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default mode: a co-located gateway's mark keeps fresh writes cached for its
    sends; once it lets go (it stopped, or died), writes are dropped behind again."""
    monkeypatch.setattr(local_readers, "RECHECK_SECONDS", 0.0)
    store = LmdbChunkStore(str(tmp_path / "c"), 64 * MiB, 16, 16 * MiB, drop_written_pages="unread")
    data_mdb = tmp_path / "c" / "data.mdb"
    mark = local_readers.ReaderMark(str(tmp_path / "c"))
    try:
        assert mark.held
        kept_id, kept = _chunk(1 * MiB)
        await store.put(kept_id, kept)
        # The writer thread looks for the mark after acknowledging a commit: a later put
        # returns only once that look (and any advice) is done, so the mark can go. That
        # put's own look may run after the mark went: it is smaller than a page, so it is
        # never advised either way.
        await store.put(*_chunk(1000))
        mark.close()
        await store.put(*_chunk(2 * FOLIO_BYTES))
        await _advised(advice, 1)
        assert len(advice) == 1  # only the write after the mark went away
        at = file_offset_of(data_mdb, kept[:4096])
        assert cached_pages(data_mdb, at, len(kept)) >= len(kept) // PAGE_SIZE
        assert await store.get(kept_id) == kept
    finally:
        mark.close()
        store.close()


async def test_unread_keeps_the_pages_while_the_node_serves_reads(
    tmp_path: Path, advice: list[tuple[int, int, int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No gateway here, but chunks served over gRPC lately: the store is read, so its
    fresh pages stay cached; once no read came for `read_recently_seconds`, they go."""
    store = LmdbChunkStore(
        str(tmp_path / "c"),
        64 * MiB,
        16,
        16 * MiB,
        drop_written_pages="unread",
        read_recently_seconds=3600.0,
    )
    try:
        chunk_id, data = _chunk(1 * MiB)
        await store.put(chunk_id, data)
        await _advised(advice, 1)  # nobody read it: dropped behind
        assert await store.get(chunk_id) == data  # a read served
        await store.put(*_chunk(1 * MiB))
        await store.put(*_chunk(4096))
        assert len(advice) == 1  # kept while reads come
        store._read_recently = 0.0  # an hour later
        await store.put(*_chunk(1 * MiB))
        await _advised(advice, 2)
    finally:
        store.close()

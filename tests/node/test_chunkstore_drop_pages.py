"""`node.drop_written_pages`: a commit that stored chunks drops data.mdb's cached pages
(posix_fadvise DONTNEED, after the acknowledgements), and nothing stored changes."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from node.chunkstore import LmdbChunkStore

MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="Linux only")


def _chunk(size: int) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    return hashlib.sha256(data).digest(), data


@pytest.fixture
def advice(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int, int]]:
    calls: list[tuple[int, int, int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, how: int) -> None:
        calls.append((fd, offset, length, how))
        real(fd, offset, length, how)

    monkeypatch.setattr(os, "posix_fadvise", record)
    return calls


async def test_a_commit_with_puts_drops_the_data_files_pages(
    tmp_path: Path, advice: list[tuple[int, int, int, int]]
) -> None:
    store = LmdbChunkStore(str(tmp_path / "c"), 64 * MiB, 16, 16 * MiB, drop_written_pages=True)
    try:
        chunk_id, data = _chunk(256 * 1024)
        assert await store.put(chunk_id, data) is False
        # The writer thread advises after it has acknowledged the put: wait for it.
        for _ in range(500):
            if advice:
                break
            await asyncio.sleep(0.01)
        assert advice, "no advice after a put"
        fd, offset, length, how = advice[-1]
        assert (offset, length, how) == (0, 0, os.POSIX_FADV_DONTNEED)
        assert os.fstat(fd).st_ino == os.stat(tmp_path / "c" / "data.mdb").st_ino
        assert await store.get(chunk_id) == data  # read back (from the disk if dropped)
        before = len(advice)
        assert await store.delete([chunk_id]) == 1
        assert len(advice) == before  # a commit without puts leaves the cache alone
    finally:
        store.close()
    reopened = LmdbChunkStore(str(tmp_path / "c"), 64 * MiB, 16, 16 * MiB)
    try:
        assert (await reopened.stats()).count == 0
    finally:
        reopened.close()


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
    store = LmdbChunkStore(str(tmp_path / "c"), 64 * MiB, 16, 16 * MiB, drop_written_pages=True)
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

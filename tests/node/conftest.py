"""Fixtures shared by the node tests: ready-made chunk stores and in-process Raft members,
closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.config import Config, NodeConfig
from node.chunkstore import LmdbChunkStore
from node.memstore import MemoryChunkStore
from node.metadata.raft import RaftMember

# Large enough for every test's chunks; LMDB maps it sparsely, so it costs no disk.
TEST_MAP_SIZE = 256 * 1024 * 1024

LmdbOpener = Callable[..., LmdbChunkStore]


@pytest.fixture
def open_lmdb_store(tmp_path: Path) -> Iterator[LmdbOpener]:
    """A factory `open_lmdb_store(path=None, map_size=..., batch_max_items=...)`; every store
    it opened is closed at teardown (closing twice is harmless)."""
    opened: list[LmdbChunkStore] = []
    cfg = NodeConfig()

    def open_store(
        path: Path | None = None,
        map_size: int = TEST_MAP_SIZE,
        batch_max_items: int = cfg.commit_batch_max_items,
    ) -> LmdbChunkStore:
        store = LmdbChunkStore(
            path=str(path or tmp_path / "chunks"),
            map_size=map_size,
            batch_max_items=batch_max_items,
            batch_max_bytes=cfg.commit_batch_max_bytes,
        )
        opened.append(store)
        return store

    try:
        yield open_store
    finally:
        for store in opened:
            store.close()


@pytest.fixture
def lmdb_chunk_store(open_lmdb_store: LmdbOpener) -> LmdbChunkStore:
    return open_lmdb_store()


@pytest.fixture
def memory_chunk_store() -> Iterator[MemoryChunkStore]:
    store = MemoryChunkStore()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
async def members() -> AsyncIterator[Callable[..., RaftMember]]:
    """Factory of in-process RaftMembers; every one is closed at teardown."""
    started: list[RaftMember] = []

    def start(cfg: Config, cls: type[RaftMember] = RaftMember, **kwargs: Any) -> RaftMember:
        member = cls(cfg, **kwargs)
        started.append(member)
        return member

    try:
        yield start
    finally:
        for member in started:
            await member.close()

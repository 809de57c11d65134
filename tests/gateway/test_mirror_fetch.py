"""gateway/mirror/fetch.py without a real cluster or upstream: a client is sent the
download's recent bytes from memory and older ones from the spool, never the last byte
before the digest is verified, and the cluster write (`yield_to_clients`) waits while a
client is behind; a download that fits in the memory pool is kept whole in memory (never
spooled) until its last reader is done, one that does not is spooled; a stored download
lets its bytes go with its last client and, while it lingers, sends joiners to the
cluster. The cluster write comes after the clients: a client has the whole verified blob
while its write still waits for the gateway's other downloads (within
`store_defer_bytes`, else it writes at once), and a download that fails writes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from cargohold.config import Config
from cargohold.metadata_api import Recipe
from gateway.cluster import ClusterClient
from gateway.mirror.fetch import BlobFetch, DigestMismatch, Fetches, Streams
from gateway.mirror.pool import MemoryPool
from gateway.mirror.upstream import Upstream, UpstreamFailed

DATA = b"01234567"
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


async def test_memory_then_spool_and_the_store_yields_to_clients() -> None:
    streams = Streams()
    fetch = BlobFetch("up/app", DIGEST, streams, memory_bytes=4)
    fetch.proxy = "up"
    hasher = hashlib.sha256()
    await fetch._append(DATA[:4], hasher)
    await fetch._append(DATA[4:], hasher)  # the first piece leaves memory: only spooled
    client = fetch.stream(0, None)
    # Everything but the last byte before the digest is checked (from the spool).
    assert bytes(await anext(client)) == DATA[:7]
    assert streams.behind == 1
    store = asyncio.create_task(fetch.yield_to_clients(time.monotonic() + 60))
    await asyncio.sleep(0)
    assert not store.done()  # a client has bytes waiting: the cluster write waits
    assert f"sha256:{hasher.hexdigest()}" == DIGEST
    fetch.verified = True
    fetch._notify()
    last = await anext(client)
    assert isinstance(last, memoryview) and bytes(last) == DATA[7:]  # from memory
    assert [piece async for piece in client] == []
    assert streams.behind == 0
    await store  # no client behind any more
    # A client that stays behind holds the store back only until its deadline.
    again = fetch.stream(0, None)
    assert bytes(await anext(again)) == DATA
    assert streams.behind == 1
    await fetch.yield_to_clients(time.monotonic() + 0.01)
    await again.aclose()  # a client going away is no longer behind
    assert streams.behind == 0
    fetch._finished = True
    fetch._maybe_close()


def test_the_memory_pool_bounds_each_blob_and_the_total() -> None:
    pool = MemoryPool(limit=10, blob_limit=6)
    assert not pool.reserve(None)  # no announced size: spooled
    assert not pool.reserve(7)  # above the per-blob limit
    assert pool.reserve(6)
    assert not pool.reserve(5)  # beyond what is left
    assert pool.reserve(4)
    assert pool.held == 10
    pool.free(6)
    assert pool.reserve(6) and pool.held == 10
    assert not MemoryPool(limit=0, blob_limit=0).reserve(1)  # 0: off


async def test_a_download_that_fits_is_kept_whole_in_memory_and_freed_after_its_readers() -> None:
    pool = MemoryPool(limit=100, blob_limit=100)
    fetch = BlobFetch("up/app", DIGEST, Streams(), memory_bytes=1, pool=pool)
    fetch.proxy = "up"
    fetch._hold(len(DATA))
    assert fetch.in_memory and pool.held == len(DATA)
    hasher = hashlib.sha256()
    for i in range(0, len(DATA), 2):
        await fetch._append(DATA[i : i + 2], hasher)
    assert fetch._fd is None  # nothing spooled
    fetch.acquire()
    client = fetch.stream(1, None)
    got = b""
    while len(got) < len(DATA) - 2:  # all but the last byte before the digest is checked
        got += bytes(await anext(client))
    assert got == DATA[1:7]
    fetch.verified = True
    fetch._notify()
    assert bytes(await anext(client)) == DATA[7:]
    assert [piece async for piece in client] == []
    fetch._finished = True
    fetch._maybe_close()
    # A finished download keeps its pieces while a reader holds it: a late reader from 0.
    assert b"".join([bytes(p) async for p in fetch.stream(0, None)]) == DATA
    assert pool.held == len(DATA)
    fetch.release()  # the last reader gone: the reservation goes back to the pool
    assert pool.held == 0 and not len(fetch._recent)


async def test_a_download_that_does_not_fit_is_spooled() -> None:
    pool = MemoryPool(limit=100, blob_limit=4)
    fetch = BlobFetch("up/app", DIGEST, Streams(), memory_bytes=1, pool=pool)
    fetch.proxy = "up"
    fetch._hold(len(DATA))  # above the per-blob limit
    assert not fetch.in_memory and pool.held == 0
    hasher = hashlib.sha256()
    await fetch._append(DATA[:4], hasher)
    await fetch._append(DATA[4:], hasher)
    assert fetch._fd is not None  # spooled, as without a pool
    fetch.verified = True
    assert b"".join([bytes(p) async for p in fetch.stream(0, None)]) == DATA
    fetch._finished = True
    fetch._maybe_close()
    assert fetch._fd is None


async def test_more_bytes_than_announced_fail_an_in_memory_download() -> None:
    pool = MemoryPool(limit=100, blob_limit=100)
    fetch = BlobFetch("up/app", DIGEST, Streams(), memory_bytes=1, pool=pool)
    fetch.proxy = "up"
    fetch._hold(4)
    with pytest.raises(UpstreamFailed):
        await fetch._append(DATA, hashlib.sha256())
    assert fetch.written == 0


async def test_a_stored_download_releases_its_bytes_with_its_last_reader() -> None:
    pool = MemoryPool(limit=100, blob_limit=100)
    fetch = BlobFetch("up/app", DIGEST, Streams(), memory_bytes=1, pool=pool)
    fetch.proxy = "up"
    fetch._hold(len(DATA))
    fetch.acquire()  # the download's own hold (Fetches.join)
    await fetch._append(DATA, hashlib.sha256())
    fetch.verified = True
    fetch.acquire()  # a client still reading
    fetch.recipe = Recipe(size=len(DATA), chunks=[["ab" * 32, len(DATA)]])
    fetch.committed = True
    fetch._finished = True
    fetch.release()  # stored: the download lets go while it lingers
    assert fetch.stored() is None and pool.held == len(DATA)  # the client still reads
    assert b"".join([bytes(p) async for p in fetch.stream(0, None)]) == DATA
    fetch.release()  # the client is done
    # Gone from memory; a pull joining it now is given the recipe to read the cluster.
    assert pool.held == 0 and fetch.stored() == fetch.recipe


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def iter_any(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self._data), 3):
            await asyncio.sleep(0)  # a socket read: other tasks run between pieces
            yield self._data[i : i + 3]

    def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        return self.iter_any()


class _Upstream:
    """`Upstream.open_blob` answering one blob (its size announced)."""

    def __init__(self, data: bytes) -> None:
        self.proxy = SimpleNamespace(namespace="up")
        self.data = data
        self.gets = 0

    @contextlib.asynccontextmanager
    async def open_blob(self, repo: str, digest: str) -> AsyncIterator[Any]:
        self.gets += 1
        yield SimpleNamespace(content_length=len(self.data), content=_Body(self.data))


class _Cluster:
    """The cluster client as `ingest` uses it: writes kept by chunk id."""

    def __init__(self) -> None:
        self.write_slots = asyncio.Semaphore(8)
        self.chunks: dict[bytes, int] = {}

    async def store_encoded(
        self, chunk_id: bytes, length: int, request: bytes, offers: object = None
    ) -> None:
        self.chunks[chunk_id] = length


async def test_a_lingering_stored_download_is_joined_but_read_from_the_cluster() -> None:
    cfg = Config()
    cfg.mirror.fetch_linger_seconds = 60.0
    committed: list[tuple[str, str, Recipe]] = []

    async def commit(repo: str, digest: str, recipe: Recipe) -> None:
        committed.append((repo, digest, recipe))

    cluster = _Cluster()
    fetches = Fetches(cfg, cast(ClusterClient, cluster), commit)
    upstream = _Upstream(DATA)
    fetch = fetches.join(cast(Upstream, upstream), "up/app", "app", DIGEST)
    try:
        await fetch.done
        assert fetch.error is None and fetch.committed
        ((repo, digest, recipe),) = committed
        assert (repo, digest) == ("up/app", DIGEST) and recipe["size"] == len(DATA)
        assert list(cluster.chunks) == [hashlib.sha256(DATA).digest()]  # verified, stored
        # It lingers, joinable (one upstream GET), with its memory already released.
        assert fetches.join(cast(Upstream, upstream), "up/app", "app", DIGEST) is fetch
        assert upstream.gets == 1
        assert fetches.pool.held == 0 and fetch.stored() == recipe
    finally:
        await fetches.close()


async def _until(check: Any) -> None:
    """Let the loop run until `check()` holds (bounded in turns, not time)."""
    for _ in range(10_000):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("never held")


def _fetches(cfg: Config) -> tuple[Fetches, _Cluster, list[tuple[str, str, Recipe]]]:
    committed: list[tuple[str, str, Recipe]] = []

    async def commit(repo: str, digest: str, recipe: Recipe) -> None:
        committed.append((repo, digest, recipe))

    cluster = _Cluster()
    return Fetches(cfg, cast(ClusterClient, cluster), commit), cluster, committed


async def test_a_client_has_the_whole_blob_before_its_cluster_write_starts() -> None:
    cfg = Config()
    cfg.mirror.store_yield_seconds = 600.0
    fetches, cluster, committed = _fetches(cfg)
    fetches.streams.download_started()  # another download of this gateway is running
    upstream = _Upstream(DATA)
    try:
        fetch = fetches.join(cast(Upstream, upstream), "up/app", "app", DIGEST)
        assert b"".join([bytes(p) async for p in fetch.stream(0, None)]) == DATA
        # The client is done; the write waits for the gateway to be idle: nothing in the
        # cluster, nothing committed, the bytes still held for pulls that join it.
        await _until(lambda: fetches.streams.deferred == len(DATA))
        assert fetch.verified and not fetch.committed and not fetch.done.done()
        assert cluster.chunks == {} and committed == []
        assert fetches.join(cast(Upstream, upstream), "up/app", "app", DIGEST) is fetch
        assert b"".join([bytes(p) async for p in fetch.stream(0, None)]) == DATA
        assert upstream.gets == 1
        fetches.streams.download_ended()  # the gateway is idle: the write goes
        await fetch.done
        assert fetch.error is None and fetch.committed and fetches.streams.deferred == 0
        ((_repo, digest, recipe),) = committed
        assert digest == DIGEST and recipe["size"] == len(DATA)
        assert list(cluster.chunks) == [hashlib.sha256(DATA).digest()]
    finally:
        await fetches.close()


async def test_a_write_beyond_store_defer_bytes_starts_at_once() -> None:
    cfg = Config()
    cfg.mirror.store_yield_seconds = 600.0
    cfg.mirror.store_defer_bytes = len(DATA) - 1
    fetches, cluster, committed = _fetches(cfg)
    fetches.streams.download_started()  # never idle during this test
    try:
        fetch = fetches.join(cast(Upstream, _Upstream(DATA)), "up/app", "app", DIGEST)
        async with asyncio.timeout(30):  # a guard against a hang, not a timed assert
            await fetch.done
        # Written beside the running download, without pausing for it.
        assert fetch.committed and len(committed) == 1 and fetches.streams.deferred == 0
        assert list(cluster.chunks) == [hashlib.sha256(DATA).digest()]
    finally:
        await fetches.close()


async def test_a_download_that_does_not_match_writes_nothing_to_the_cluster() -> None:
    cfg = Config()
    cfg.cluster.chunk_size = 16  # several chunks' worth: none may be written
    fetches, cluster, committed = _fetches(cfg)
    try:
        bad = DATA * 16  # not the bytes DIGEST names
        fetch = fetches.join(cast(Upstream, _Upstream(bad)), "up/app", "app", DIGEST)
        client = fetch.stream(0, None)
        got = b""
        with pytest.raises(DigestMismatch):
            async for piece in client:
                got += bytes(piece)
        assert len(got) < len(bad) and bad.startswith(got)  # never the last byte
        await fetch.done
        assert not fetch.committed and committed == [] and cluster.chunks == {}
    finally:
        await fetches.close()


async def test_the_cluster_write_waits_for_the_gateway_to_stay_quiet() -> None:
    streams = Streams(quiet=600.0)
    streams.download_started()
    streams.download_ended()  # idle now, but only just: a client's next request may follow
    waiting = asyncio.create_task(streams.wait_idle(600.0))
    for _ in range(100):
        await asyncio.sleep(0)
    assert not waiting.done()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await Streams(quiet=0.0).wait_idle(600.0)  # never busy: at once

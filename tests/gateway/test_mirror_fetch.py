"""gateway/mirror/fetch.py without a cluster: a client is sent the download's recent bytes
from memory and older ones from the spool, never the last byte before the digest is
verified, and the cluster write (`yield_to_clients`) waits while a client is behind; a
download that fits in the memory pool is kept whole in memory (never spooled) until its
last reader is done, one that does not is spooled."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from gateway.mirror.fetch import BlobFetch, Streams
from gateway.mirror.pool import MemoryPool
from gateway.mirror.upstream import UpstreamFailed

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

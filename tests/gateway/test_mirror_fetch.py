"""gateway/mirror/fetch.py without a cluster: a client is sent the download's recent bytes
from memory and older ones from the spool, never the last byte before the digest is
verified, and the cluster write (`yield_to_clients`) waits while a client is behind."""

from __future__ import annotations

import asyncio
import hashlib
import time

from gateway.mirror.fetch import BlobFetch, Streams

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

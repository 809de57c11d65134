"""Turning a request body into stored chunks: cut, hash, write, pipelined.

`ingest` reads a body stream in whatever pieces aiohttp hands over and cuts them into
fixed-size chunks (`cluster.chunk_size`; the body's tail becomes a short chunk, so that
once `ingest` returns every byte it consumed is durable on W nodes). A chunk is never
joined into one buffer of its own: its pieces (memoryviews of aiohttp's buffers) are
hashed in one worker-thread hop — its sha256 id, its xxh3 checksum and the running blob
digest the caller passes in, piece by piece while each piece is hot in cache (the first
chunk of a blob is hashed once: its id is the running sha256 after it) — and then
copied once, straight into the encoded PutChunkRequest (`cargohold.wire.encode_put`)
that goes to all R replicas. A full-size chunk is offered with `Has` first only until
one of the body's offers finds it missing (gateway/cluster/writes.py). Up to
`gateway.upload_writes_in_flight` chunk writes per upload, and
`gateway.chunk_writes_in_flight_total` across the gateway (a write holds its slot until W
replicas acknowledged), run while reading goes on, so memory is bounded by about
(in-flight + 1) chunks per upload and by the total; a layer is never buffered.

Hashing runs off the event loop for all but small chunks (`cargohold.concurrency`), so
hashing a chunk overlaps the loop instead of stalling every other request for that long.

If reading the body fails (client gone, bad chunked encoding) or a write fails, the
writes in flight are cancelled and awaited, and the exception propagates: the caller
commits nothing, and chunks already written are unreferenced garbage for GC.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import xxhash

from cargohold.concurrency import hash_off_loop
from cargohold.errors import SizeInvalid
from cargohold.wire import encode_put
from gateway.cluster import ClusterClient
from gateway.cluster.writes import Offers

Pieces = list[memoryview]


class BodyStream(Protocol):
    def iter_any(self) -> AsyncIterator[bytes | memoryview]: ...


async def cut_chunks(stream: BodyStream, chunk_size: int) -> AsyncIterator[Pieces]:
    """Yield the body as chunks of exactly `chunk_size` bytes (then a shorter tail), each
    as the list of pieces (zero-copy memoryviews) that make it up."""
    pieces: Pieces = []
    have = 0
    async for data in stream.iter_any():
        view = memoryview(data)
        while view:
            take = min(len(view), chunk_size - have)
            pieces.append(view[:take])
            have += take
            view = view[take:]
            if have == chunk_size:
                yield pieces
                pieces, have = [], 0
    if have:
        yield pieces


def _encode(running: Any, pieces: Pieces, id_from_running: bool) -> tuple[bytes, bytes]:
    checksum = xxhash.xxh3_128()
    if id_from_running:
        # `running` is a sha256 that had seen no byte: after this chunk it *is* the chunk's
        # sha256, so its digest is the id and the bytes are hashed once, not twice.
        for piece in pieces:
            running.update(piece)
            checksum.update(piece)
        chunk_id = running.copy().digest()
    else:
        chunk = hashlib.sha256()
        for piece in pieces:
            running.update(piece)
            chunk.update(piece)
            checksum.update(piece)
        chunk_id = chunk.digest()
    return chunk_id, encode_put(chunk_id, pieces, checksum.digest())


async def encode_chunk(
    running: Any, pieces: Pieces, length: int, id_from_running: bool = False
) -> tuple[bytes, bytes]:
    """Feed the pieces to the running digest; return (chunk id, encoded Put request).
    `id_from_running`: `running` is a sha256 that has seen no byte yet, so the chunk id is
    read off it instead of hashing the chunk a second time."""
    return await hash_off_loop(length, _encode, running, pieces, id_from_running)


def _after(stored: Callable[[int], None], length: int) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback telling `stored` that a chunk of `length` bytes was written."""

    def done(_: asyncio.Task[None]) -> None:
        stored(length)

    return done


async def ingest(
    cluster: ClusterClient,
    stream: BodyStream,
    running: Any,
    chunk_size: int,
    in_flight: int,
    limit: int | None = None,
    stored: Callable[[int], None] | None = None,
    fresh: bool = False,
    first: Callable[[bytes, list[memoryview]], None] | None = None,
) -> tuple[list[list[Any]], int]:
    """Store a body as chunks; return ([[chunk_hex, length], ...], total bytes).

    `running` (a hashlib object) is updated with every byte in order; `fresh` says it is a
    sha256 that has seen no byte (the body starts the blob), so the first chunk's id is
    the running digest after it (one sha256 pass over that chunk). `limit`, when set,
    is the most bytes this body may add (SizeInvalid beyond it). `stored(length)` is
    called when a chunk's write ended (its buffer is no longer held for the body budget,
    gateway/body.py). `first(chunk_id, pieces)` sees a `fresh` body's first chunk (its id
    is then the sha256 of exactly those bytes) before its write starts.
    """
    chunks: list[list[Any]] = []
    total = 0
    writes: collections.deque[asyncio.Task[None]] = collections.deque()
    offers = Offers()  # full-size chunks offered with Has until one is missing somewhere
    try:
        async for pieces in cut_chunks(stream, chunk_size):
            length = sum(len(p) for p in pieces)
            total += length
            if limit is not None and total > limit:
                raise SizeInvalid("blob exceeds the size limit", detail={"limit": limit})
            chunk_id, request = await encode_chunk(running, pieces, length, fresh and not chunks)
            if first is not None and fresh and not chunks:
                first(chunk_id, pieces)
            del pieces
            chunks.append([chunk_id.hex(), length])
            while len(writes) >= in_flight:
                await writes.popleft()
            await cluster.write_slots.acquire()
            task = asyncio.create_task(cluster.store_encoded(chunk_id, length, request, offers))
            task.add_done_callback(lambda _: cluster.write_slots.release())
            if stored is not None:
                task.add_done_callback(_after(stored, length))
            writes.append(task)
        while writes:
            await writes.popleft()
    except BaseException:
        for task in writes:
            task.cancel()
        await asyncio.gather(*writes, return_exceptions=True)
        raise
    return chunks, total

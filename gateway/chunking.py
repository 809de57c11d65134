"""Turning a request body into stored chunks: cut, hash, write, pipelined.

`ingest` reads a body stream in whatever pieces aiohttp hands over, cuts fixed-size chunks
(`cluster.chunk_size`; the body's tail becomes a short chunk, so that once `ingest`
returns every byte it consumed is durable on W nodes), hashes each chunk twice in one
worker-thread hop (its sha256 id, and the running blob digest the caller passes in), and
keeps up to `gateway.upload_writes_in_flight` chunk writes running while it reads on.
Memory per upload is bounded by about (in-flight + 1) chunks; a layer is never buffered.

Hashing runs in a thread (`asyncio.to_thread`): hashlib releases the GIL on big buffers,
so the ~4 ms of two sha256 passes over a 4 MiB chunk overlap the event loop instead of
stalling every other request for that long.

If reading the body fails (client gone, bad chunked encoding) or a write fails, the
writes in flight are cancelled and awaited, and the exception propagates: the caller
commits nothing, and chunks already written are unreferenced garbage for GC.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from cargohold.errors import SizeInvalid
from gateway.cluster import ClusterClient


class BodyStream(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]: ...


async def cut_chunks(stream: BodyStream, chunk_size: int) -> AsyncIterator[bytes]:
    """Yield exactly `chunk_size`-byte chunks, then the shorter tail (if any)."""
    pieces: list[bytes] = []
    have = 0
    async for piece in stream.iter_any():
        if not piece:
            continue
        pieces.append(piece)
        have += len(piece)
        if have >= chunk_size:
            buffer = b"".join(pieces) if len(pieces) > 1 else pieces[0]
            cut = 0
            while have - cut >= chunk_size:
                yield buffer if have == chunk_size else buffer[cut:cut + chunk_size]
                cut += chunk_size
            rest = buffer[cut:]
            pieces = [rest] if rest else []
            have = len(rest)
    if have:
        yield b"".join(pieces)


def _hash_chunk(running: Any, data: bytes) -> bytes:
    running.update(data)
    return hashlib.sha256(data).digest()


async def hash_chunk(running: Any, data: bytes) -> bytes:
    """Feed `data` to the running digest and return its chunk id (off the loop if big)."""
    if len(data) < 64 * 1024:
        return _hash_chunk(running, data)
    return await asyncio.to_thread(_hash_chunk, running, data)


async def ingest(cluster: ClusterClient, stream: BodyStream, running: Any, chunk_size: int,
                 in_flight: int, limit: int | None = None) -> tuple[list[list[Any]], int]:
    """Store a body as chunks; return ([[chunk_hex, length], ...], total bytes).

    `running` (a hashlib object) is updated with every byte in order. `limit`, when set,
    is the most bytes this body may add (SizeInvalid beyond it).
    """
    chunks: list[list[Any]] = []
    total = 0
    writes: collections.deque[asyncio.Task[None]] = collections.deque()
    try:
        async for data in cut_chunks(stream, chunk_size):
            total += len(data)
            if limit is not None and total > limit:
                raise SizeInvalid("blob exceeds the size limit", detail={"limit": limit})
            chunk_id = await hash_chunk(running, data)
            chunks.append([chunk_id.hex(), len(data)])
            while len(writes) >= in_flight:
                await writes.popleft()
            writes.append(asyncio.create_task(cluster.store_chunk(chunk_id, data)))
        while writes:
            await writes.popleft()
    except BaseException:
        for task in writes:
            task.cancel()
        await asyncio.gather(*writes, return_exceptions=True)
        raise
    return chunks, total

"""Cutting a body into fixed-size chunks from arbitrary pieces, and encoding them."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import AsyncIterator

import pytest

from gateway.chunking import cut_chunks, encode_chunk, ingest


class _Stream:
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def iter_any(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def _split(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        n = rng.choice([1, 7, 100, 4096, 65536, 100_000])
        out.append(data[i : i + n])
        i += n
    return out


@pytest.mark.parametrize(
    ("size", "seed"),
    [(0, 0), (1, 1), (1000, 2), (4096, 3), (4097, 4), (3 * 4096 + 5, 5), (300_000, 6)],
)
async def test_chunks_are_fixed_size_and_reassemble(size: int, seed: int) -> None:
    data = os.urandom(size)
    chunks = [b"".join(c) async for c in cut_chunks(_Stream(_split(data, seed)), 4096)]
    assert b"".join(chunks) == data
    assert all(len(c) == 4096 for c in chunks[:-1])
    assert not chunks or 0 < len(chunks[-1]) <= 4096


async def test_encode_chunk_feeds_the_running_digest_in_order() -> None:
    data = os.urandom(200_000)
    running = hashlib.sha256()
    ids = []
    async for pieces in cut_chunks(_Stream(_split(data, 9)), 65536):
        length = sum(len(p) for p in pieces)
        chunk_id, request = await encode_chunk(running, pieces, length)
        ids.append(chunk_id)
        assert b"".join(pieces) in request
    assert running.digest() == hashlib.sha256(data).digest()
    assert ids[0] == hashlib.sha256(data[:65536]).digest()


async def test_first_chunk_id_read_off_a_fresh_running_digest() -> None:
    """A body starting a blob: the first chunk's id comes from the running sha256 (one
    pass), later ones from their own hash; ids and the blob digest are the same as with
    two passes."""
    data = os.urandom(200_000)
    running = hashlib.sha256()
    ids = []
    async for pieces in cut_chunks(_Stream(_split(data, 5)), 65536):
        length = sum(len(p) for p in pieces)
        chunk_id, request = await encode_chunk(running, pieces, length, not ids)
        ids.append(chunk_id)
        assert b"".join(pieces) in request
    assert running.digest() == hashlib.sha256(data).digest()
    assert ids == [hashlib.sha256(data[i : i + 65536]).digest() for i in range(0, len(data), 65536)]


class _CountingCluster:
    """Records how many chunk writes run at once; each write yields to the loop a few
    times, so writes of several uploads overlap when nothing bounds them."""

    def __init__(self, slots: int) -> None:
        self.write_slots = asyncio.Semaphore(slots)
        self.active = 0
        self.most = 0
        self.stored: list[bytes] = []

    async def store_encoded(
        self, chunk_id: bytes, length: int, request: bytes, offers: object = None
    ) -> None:
        self.active += 1
        self.most = max(self.most, self.active)
        for _ in range(5):
            await asyncio.sleep(0)
        self.stored.append(chunk_id)
        self.active -= 1


async def test_writes_across_uploads_stay_under_the_gateway_wide_bound() -> None:
    """`gateway.chunk_writes_in_flight_total`: eight uploads, each allowed four writes in
    flight, never have more than the gateway-wide number running at once."""
    cluster = _CountingCluster(slots=3)
    bodies = [os.urandom(6 * 4096 + 1 + i) for i in range(8)]

    async def upload(body: bytes) -> list[list[object]]:
        chunks, total = await ingest(
            cluster,  # type: ignore[arg-type]
            _Stream([body]),
            hashlib.sha256(),
            4096,
            in_flight=4,
        )
        assert total == len(body)
        return chunks

    recipes = await asyncio.gather(*(upload(b) for b in bodies))
    assert cluster.most == 3  # the bound was reached, and never passed
    assert cluster.active == 0 and cluster.write_slots._value == 3  # every slot came back
    assert len(cluster.stored) == sum(len(r) for r in recipes) == 8 * 7

"""The one conformance suite every `ChunkStore` implementation must pass.

Each implementation contributes only a `Kit`: how to open it (optionally with a capacity),
how to flip a stored byte behind its back, and whether it survives close/reopen.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cargohold.digests import checksum_of
from cargohold.errors import ChunkCorrupt, ChunkMissing, DigestInvalid, StorageFull, Unavailable
from node.chunkstore import ChunkStats, ChunkStore, LmdbChunkStore
from node.memstore import MemoryChunkStore

KiB = 1024
MiB = 1024 * KiB
LmdbOpener = Callable[..., LmdbChunkStore]


@dataclass
class Kit:
    durable: bool
    # open(capacity_bytes or None) -> a store over the same backing location every time.
    open: Callable[[int | None], ChunkStore]
    corrupt: Callable[[ChunkStore, bytes], None]


def _corrupt_lmdb(store: ChunkStore, chunk_id: bytes) -> None:
    """Flip the last byte of the stored value (data, or the checksum of a 0-byte chunk)."""
    assert isinstance(store, LmdbChunkStore)
    with store._env.begin(write=True) as txn:
        raw = txn.get(chunk_id, db=store._chunks)
        assert raw is not None
        value = bytearray(raw)
        value[-1] ^= 0x01
        txn.put(chunk_id, bytes(value), db=store._chunks)


def _corrupt_memory(store: ChunkStore, chunk_id: bytes) -> None:
    assert isinstance(store, MemoryChunkStore)
    store.corrupt(chunk_id)


@pytest.fixture(params=["lmdb", "memory"])
def kit(request: pytest.FixtureRequest) -> Kit:
    if request.param == "lmdb":
        opener = request.getfixturevalue("open_lmdb_store")

        def open_lmdb(capacity: int | None) -> ChunkStore:
            return opener(map_size=capacity) if capacity else opener()

        return Kit(durable=True, open=open_lmdb, corrupt=_corrupt_lmdb)
    opened: list[MemoryChunkStore] = []

    def open_memory(capacity: int | None) -> ChunkStore:
        store = MemoryChunkStore(capacity_bytes=capacity)
        opened.append(store)
        return store

    request.addfinalizer(lambda: [s.close() for s in opened])
    return Kit(durable=False, open=open_memory, corrupt=_corrupt_memory)


@pytest.fixture
def store(kit: Kit) -> ChunkStore:
    return kit.open(None)


def chunk(data: bytes) -> tuple[bytes, bytes]:
    return hashlib.sha256(data).digest(), data


def random_chunk(size: int) -> tuple[bytes, bytes]:
    return chunk(os.urandom(size))


async def test_put_get_roundtrip(store: ChunkStore) -> None:
    cid, data = random_chunk(300 * KiB)
    assert await store.put(cid, data) is False
    assert await store.get(cid) == data
    got, checksum = await store.get_with_checksum(cid)
    assert got == data
    assert checksum == checksum_of(data)


async def test_put_is_idempotent(store: ChunkStore) -> None:
    cid, data = random_chunk(70 * KiB)
    assert await store.put(cid, data) is False
    assert await store.put(cid, data) is True
    assert await store.put(cid, data, checksum_of(data)) is True
    assert await store.stats() == ChunkStats(count=1, bytes=len(data), quarantined=0)


async def test_put_rejects_wrong_id_and_wrong_checksum(store: ChunkStore) -> None:
    cid, data = random_chunk(100 * KiB)
    with pytest.raises(DigestInvalid):
        await store.put(hashlib.sha256(b"other").digest(), data)
    with pytest.raises(DigestInvalid):
        await store.put(b"short", data)
    with pytest.raises(DigestInvalid):
        await store.put(cid, data, checksum=b"\0" * 16)
    assert await store.has([cid]) == [False]
    assert await store.stats() == ChunkStats(count=0, bytes=0, quarantined=0)
    assert await store.put(cid, data, checksum=checksum_of(data)) is False


async def test_put_without_id_check_still_checks_the_checksum(store: ChunkStore) -> None:
    cid, data = random_chunk(100 * KiB)
    # verify_id=False trusts the id only when a checksum vouches for the bytes' transport.
    with pytest.raises(DigestInvalid):
        await store.put(cid, data, checksum=b"\0" * 16, verify_id=False)
    with pytest.raises(DigestInvalid):
        await store.put(hashlib.sha256(b"other").digest(), data, verify_id=False)
    with pytest.raises(DigestInvalid):
        await store.put(b"short", data, checksum=checksum_of(data), verify_id=False)
    assert await store.has([cid]) == [False]
    view = memoryview(b"xx" + data)[2:]
    assert await store.put(cid, view, checksum=checksum_of(data), verify_id=False) is False
    assert await store.get(cid) == data


async def test_get_encoded_sees_the_verified_copy(kit: Kit, store: ChunkStore) -> None:
    cid, data = random_chunk(300 * KiB)
    await store.put(cid, data)
    encoded = await store.get_encoded(cid, lambda view, checksum: checksum + bytes(view))
    assert encoded == checksum_of(data) + data
    with pytest.raises(ChunkMissing):
        await store.get_encoded(hashlib.sha256(b"absent").digest(), lambda v, c: b"")
    kit.corrupt(store, cid)
    with pytest.raises(ChunkCorrupt):
        await store.get_encoded(cid, lambda view, checksum: bytes(view))
    assert await store.has([cid]) == [False]


async def test_has_and_delete(store: ChunkStore) -> None:
    a, b = random_chunk(10), random_chunk(20)
    missing = hashlib.sha256(b"missing").digest()
    await store.put(*a)
    await store.put(*b)
    assert await store.has([a[0], missing, b[0], b"bad-length"]) == [True, False, True, False]
    assert await store.delete([a[0], missing]) == 1
    assert await store.delete([a[0]]) == 0
    assert await store.delete([]) == 0
    assert await store.has([a[0], b[0]]) == [False, True]
    with pytest.raises(ChunkMissing):
        await store.get(a[0])
    with pytest.raises(ChunkMissing):
        await store.get(b"bad-length")
    assert await store.stats() == ChunkStats(count=1, bytes=20, quarantined=0)
    # A deleted chunk can be stored again.
    assert await store.put(*a) is False


async def test_list_ids_pages_in_key_order(store: ChunkStore) -> None:
    chunks = [random_chunk(n) for n in range(25)]
    for cid, data in chunks:
        await store.put(cid, data)
    expected = sorted((cid, len(data)) for cid, data in chunks)
    seen: list[tuple[bytes, int]] = []
    after = b""
    while True:
        page = await store.list_ids(after, 7)
        assert len(page) <= 7
        if not page:
            break
        seen.extend(page)
        after = page[-1][0]
    assert seen == expected
    assert await store.list_ids(b"", 0) == []
    assert await store.list_ids(expected[-1][0], 10) == []
    # `after` need not be a stored id: a 31-byte prefix sorts just below its full key.
    assert await store.list_ids(expected[10][0][:-1], 1) == [expected[10]]


async def test_stats_follow_puts_and_deletes(store: ChunkStore) -> None:
    chunks = [random_chunk(1000 * (i + 1)) for i in range(5)]
    for cid, data in chunks:
        await store.put(cid, data)
    assert await store.stats() == ChunkStats(count=5, bytes=15000, quarantined=0)
    await store.delete([chunks[0][0], chunks[4][0]])
    assert await store.stats() == ChunkStats(count=3, bytes=9000, quarantined=0)


async def test_corrupt_copy_is_quarantined_on_get(kit: Kit, store: ChunkStore) -> None:
    cid, data = random_chunk(200 * KiB)
    other = random_chunk(10)
    await store.put(cid, data)
    await store.put(*other)
    kit.corrupt(store, cid)
    with pytest.raises(ChunkCorrupt):
        await store.get(cid)
    assert await store.has([cid, other[0]]) == [False, True]
    assert await store.stats() == ChunkStats(count=1, bytes=10, quarantined=1)
    assert [i for i, _ in await store.list_ids(b"", 100)] == [other[0]]
    with pytest.raises(ChunkMissing):
        await store.get(cid)
    # Repair: a good copy from another replica is accepted and served again.
    assert await store.put(cid, data) is False
    assert await store.get(cid) == data
    assert await store.stats() == ChunkStats(count=2, bytes=200 * KiB + 10, quarantined=1)


async def test_verify_scrubs_one_chunk(kit: Kit, store: ChunkStore) -> None:
    good, bad = random_chunk(50 * KiB), random_chunk(50 * KiB)
    await store.put(*good)
    await store.put(*bad)
    kit.corrupt(store, bad[0])
    assert await store.verify(good[0]) is True
    assert await store.verify(bad[0]) is False
    assert await store.has([good[0], bad[0]]) == [True, False]
    assert (await store.stats()).quarantined == 1
    with pytest.raises(ChunkMissing):
        await store.verify(bad[0])


async def test_verify_catches_a_copy_whose_bytes_are_not_its_id(store: ChunkStore) -> None:
    # Swapped content (issue 9, reproduction 1): another chunk's bytes stored under this id
    # with their own valid checksum pass the xxh3 check but not sha256.
    cid, _ = random_chunk(60 * KiB)
    _, swapped = random_chunk(60 * KiB)
    await store.put(cid, swapped, checksum=checksum_of(swapped), verify_id=False)
    assert await store.verify(cid) is False
    assert await store.has([cid]) == [False]
    assert (await store.stats()).quarantined == 1


async def test_put_replaces_an_undetected_corrupt_copy(kit: Kit, store: ChunkStore) -> None:
    cid, data = random_chunk(80 * KiB)
    await store.put(cid, data)
    kit.corrupt(store, cid)
    assert await store.put(cid, data) is False
    assert await store.get(cid) == data
    assert await store.stats() == ChunkStats(count=1, bytes=len(data), quarantined=1)


async def test_zero_byte_chunk(kit: Kit, store: ChunkStore) -> None:
    cid, data = chunk(b"")
    assert await store.put(cid, data) is False
    assert await store.put(cid, data) is True
    assert await store.get(cid) == b""
    assert await store.has([cid]) == [True]
    assert await store.list_ids(b"", 10) == [(cid, 0)]
    assert await store.stats() == ChunkStats(count=1, bytes=0, quarantined=0)
    kit.corrupt(store, cid)
    with pytest.raises(ChunkCorrupt):
        await store.get(cid)
    assert await store.stats() == ChunkStats(count=0, bytes=0, quarantined=1)


async def test_many_concurrent_puts_are_all_readable(store: ChunkStore) -> None:
    chunks = [random_chunk(size) for size in [0, 1, 4 * KiB, 100 * KiB, 1 * MiB] * 20]
    unique = dict(chunks)
    results = await asyncio.gather(*(store.put(cid, data) for cid, data in chunks))
    assert results.count(False) == len(unique)
    for cid, data in unique.items():
        assert await store.get(cid) == data
    stats = await store.stats()
    assert stats.count == len(unique)
    assert stats.bytes == sum(len(d) for d in unique.values())


async def test_durable_across_close_and_reopen(kit: Kit) -> None:
    if not kit.durable:
        # Nothing to reopen for an in-memory store: a closed one refuses service instead.
        store = kit.open(None)
        store.close()
        with pytest.raises(Unavailable):
            await store.has([b"x" * 32])
        return
    store = kit.open(None)
    chunks = [random_chunk(size) for size in (0, 5, 600 * KiB)]
    await asyncio.gather(*(store.put(cid, data) for cid, data in chunks))
    await store.delete([chunks[1][0]])
    store.close()
    with pytest.raises(Unavailable):
        await store.get(chunks[0][0])
    reopened = kit.open(None)
    assert await reopened.get(chunks[2][0]) == chunks[2][1]
    assert await reopened.get(chunks[0][0]) == b""
    assert await reopened.has([chunks[1][0]]) == [False]
    assert await reopened.stats() == ChunkStats(count=2, bytes=600 * KiB, quarantined=0)


async def test_full_store_refuses_puts_and_keeps_serving(kit: Kit) -> None:
    store = kit.open(2 * MiB)
    chunks = [random_chunk(256 * KiB) for _ in range(16)]
    results = await asyncio.gather(
        *(store.put(cid, data) for cid, data in chunks), return_exceptions=True
    )
    stored = [c for c, r in zip(chunks, results, strict=True) if r is False]
    refused = [r for r in results if isinstance(r, StorageFull)]
    assert stored and refused
    assert len(stored) + len(refused) == len(chunks)
    for cid, data in stored:
        assert await store.get(cid) == data
    assert (await store.stats()).count == len(stored)
    # One more put, alone, is refused the same clear way.
    with pytest.raises(StorageFull):
        await store.put(*random_chunk(1 * MiB))


async def test_full_store_still_deletes_everything_in_one_call(kit: Kit) -> None:
    store = kit.open(2 * MiB)
    stored: list[bytes] = []
    for size in [256 * KiB] * 16 + [100] * 100:
        cid, data = random_chunk(size)
        try:
            await store.put(cid, data)
        except StorageFull:
            continue
        stored.append(cid)
    with pytest.raises(StorageFull):
        await store.put(*random_chunk(256 * KiB))
    # Garbage collection must be able to free a full node, with one large delete.
    assert await store.delete(stored) == len(stored)
    assert await store.stats() == ChunkStats(count=0, bytes=0, quarantined=0)
    cid, data = random_chunk(256 * KiB)
    assert await store.put(cid, data) is False
    assert await store.get(cid) == data


async def test_cancelled_puts_leave_the_store_consistent(store: ChunkStore) -> None:
    chunks = [random_chunk(100 * KiB) for _ in range(40)]
    tasks = [asyncio.ensure_future(store.put(cid, data)) for cid, data in chunks]
    await asyncio.sleep(0)
    for task in tasks[::2]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks[1::2]:
        assert task.result() is False
    present = await store.has([cid for cid, _ in chunks])
    assert all(present[1::2])
    stats = await store.stats()
    assert stats.count == sum(present)
    assert stats.bytes == 100 * KiB * sum(present)
    cid, data = random_chunk(10)
    assert await store.put(cid, data) is False


# --- LmdbChunkStore specifics: the on-disk layout and group commit ------------------------


async def test_lmdb_value_layout_is_checksum_then_data(lmdb_chunk_store: LmdbChunkStore) -> None:
    cid, data = random_chunk(3 * KiB)
    await lmdb_chunk_store.put(cid, data)
    with lmdb_chunk_store._env.begin() as txn:
        assert txn.get(cid, db=lmdb_chunk_store._chunks) == checksum_of(data) + data
        assert txn.get(b"count", db=lmdb_chunk_store._meta) == (1).to_bytes(8, "big")


async def test_lmdb_put_of_a_held_chunk_writes_nothing(lmdb_chunk_store: LmdbChunkStore) -> None:
    """Re-putting a chunk already held (a manifest pushed again under another tag) leaves
    the write transaction clean: LMDB commits no new transaction and syncs nothing. A put
    that stores something still commits, and the counters stay right."""
    store = lmdb_chunk_store
    cid, data = random_chunk(2 * KiB)
    await store.put(cid, data)
    before = store._env.info()["last_txnid"]
    assert await store.put(cid, data) is True
    assert store._env.info()["last_txnid"] == before
    other, more = random_chunk(KiB)
    assert await asyncio.gather(store.put(cid, data), store.put(other, more)) == [True, False]
    assert store._env.info()["last_txnid"] == before + 1
    assert await store.stats() == ChunkStats(count=2, bytes=3 * KiB, quarantined=0)


async def test_lmdb_concurrent_puts_share_commits(open_lmdb_store: LmdbOpener) -> None:
    store = open_lmdb_store(batch_max_items=64)
    chunks = [random_chunk(512) for _ in range(64)]
    await asyncio.gather(*(store.put(cid, data) for cid, data in chunks))
    assert store.commits < len(chunks)
    assert await store.has([cid for cid, _ in chunks]) == [True] * len(chunks)


async def test_lmdb_batches_respect_max_items(open_lmdb_store: LmdbOpener) -> None:
    store = open_lmdb_store(batch_max_items=4)
    chunks = [random_chunk(512) for _ in range(32)]
    await asyncio.gather(*(store.put(cid, data) for cid, data in chunks))
    assert store.commits >= len(chunks) // 4
    assert (await store.stats()).count == len(chunks)


_KILLED_WRITER = textwrap.dedent("""
    import asyncio, hashlib, os, sys
    from node.chunkstore import LmdbChunkStore

    async def writer(store):
        while True:
            data = os.urandom(int.from_bytes(os.urandom(3), "big") % (512 * 1024))
            cid = hashlib.sha256(data).digest()
            await store.put(cid, data)
            print(cid.hex(), flush=True)  # acknowledged: fsynced

    async def main():
        store = LmdbChunkStore(sys.argv[1], 1 << 30, 64, 64 << 20)
        await asyncio.gather(*(writer(store) for _ in range(8)))

    asyncio.run(main())
""")


REPO = Path(__file__).resolve().parents[2]


def _acked_then_killed(path: Path, count: int) -> list[bytes]:
    """Run 8 concurrent putters in a child process; SIGKILL it after `count` acks."""
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    acked: list[bytes] = []
    try:
        assert child.stdout is not None
        while len(acked) < count:
            line = child.stdout.readline()
            assert line, "writer exited early"
            acked.append(bytes.fromhex(line.strip()))
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    return acked


async def test_lmdb_acknowledged_puts_survive_sigkill(
    tmp_path: Path, open_lmdb_store: LmdbOpener
) -> None:
    path = tmp_path / "chunks"
    acked = await asyncio.to_thread(_acked_then_killed, path, 150)
    store = open_lmdb_store(path=path, map_size=1 << 30)
    assert await store.has(acked) == [True] * len(acked)
    for cid in acked[::10]:
        assert hashlib.sha256(await store.get(cid)).digest() == cid
    stats = await store.stats()
    assert stats.count >= len(set(acked))
    listed = await store.list_ids(b"", stats.count + 1)
    assert len(listed) == stats.count
    assert sum(size for _, size in listed) == stats.bytes


async def test_has_touches_unless_told_not_to(store: ChunkStore) -> None:
    cid, data = chunk(b"touched")
    await store.put(cid, data)
    written = store.touches.last(cid)
    assert await store.has([cid], touch=False) == [True]
    assert store.touches.last(cid) == written
    assert await store.has([cid]) == [True]
    assert store.touches.last(cid) > written


async def test_lmdb_clears_reader_slots_of_dead_processes(
    lmdb_chunk_store: LmdbChunkStore,
) -> None:
    """A gateway reading this store directly (gateway/cluster/local_reads.py) that is
    SIGKILLed inside a read transaction leaves a reader slot that would pin old pages
    forever: the next write clears it."""
    cid, data = random_chunk(3 * KiB)
    await lmdb_chunk_store.put(cid, data)
    reader = _reader_in_txn(lmdb_chunk_store.path)
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "in txn"
        assert reader.pid in _reader_pids(lmdb_chunk_store)
    finally:
        reader.kill()
        reader.wait()
    assert reader.pid in _reader_pids(lmdb_chunk_store)  # the stale slot
    lmdb_chunk_store._next_reader_check = 0.0
    await lmdb_chunk_store.put(*random_chunk(3 * KiB))
    assert reader.pid not in _reader_pids(lmdb_chunk_store)


def _reader_in_txn(path: str) -> subprocess.Popen[str]:
    """Another process with a read transaction open on the store (says "in txn")."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import lmdb, sys, time\n"
            "env = lmdb.open(sys.argv[1], readonly=True, lock=True, map_size=0, max_dbs=3)\n"
            "txn = env.begin()\n"
            "print('in txn', flush=True)\n"
            "time.sleep(600)\n",
            path,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def _reader_pids(store: LmdbChunkStore) -> set[int]:
    """PIDs in LMDB's reader table (`readers()`: a header line, then "pid thread txnid")."""
    lines = store._env.readers().splitlines()[1:]
    return {int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit()}

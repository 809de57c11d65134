"""gateway/cluster/local_reads.py against a real node chunk store written by another process.

The writer is `node.chunkstore.LmdbChunkStore` in a child process (LMDB allows one open of
an environment per process), driven line by line over stdin, as a node would write while
a gateway on its host reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold import local_readers
from cargohold.digests import checksum_of
from gateway.cluster import local_reads
from gateway.cluster.local_reads import READS, LocalChunkStore, LocalCopyCorrupt
from node.chunkstore import LmdbChunkStore

WRITER = textwrap.dedent(
    """
    import asyncio, hashlib, random, sys
    import lmdb
    from node.chunkstore import LmdbChunkStore
    store = LmdbChunkStore(sys.argv[1], 1 << 30, 64, 64 << 20)
    loop = asyncio.new_event_loop()
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "put":  # put SEED SIZE: random bytes, stored under their sha256
            data = random.Random(int(args[0])).randbytes(int(args[1]))
            loop.run_until_complete(store.put(hashlib.sha256(data).digest(), data))
        elif cmd == "delete":
            loop.run_until_complete(store.delete([bytes.fromhex(args[0])]))
        elif cmd == "raw":  # raw ID VALUEHEX: a value written as is (a damaged copy)
            with store._env.begin(write=True) as txn:
                txn.put(bytes.fromhex(args[0]), bytes.fromhex(args[1]), db=store._chunks)
        print("ok", flush=True)
    store.close()
    """
)

SIZE = 256 * 1024


def blob(seed: int, size: int = SIZE) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    return hashlib.sha256(data).digest(), data


class Writer:
    def __init__(self, data_dir: Path) -> None:
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(data_dir / "chunks")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
        )

    def do(self, *words: object) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    w = Writer(tmp_path)
    try:
        yield w
    finally:
        w.close()


def count(result: str) -> float:
    return READS.labels(result)._value.get()


async def test_hit_miss_and_length(tmp_path: Path, writer: Writer) -> None:
    chunk_id, data = blob(1)
    writer.do("put", 1, SIZE)
    local = LocalChunkStore(str(tmp_path))
    hits, misses = count("hit"), count("miss")
    assert await local.read(chunk_id, SIZE) == data
    assert await local.read(chunk_id, None) == data
    assert await local.read(blob(2)[0], SIZE) is None
    assert count("hit") == hits + 2 and count("miss") == misses + 1
    # A recipe length that does not match the stored copy is refused, never served.
    with pytest.raises(LocalCopyCorrupt):
        await local.read(chunk_id, SIZE - 1)
    # Written by the node after the gateway opened the store: seen by the next read.
    writer.do("put", 3, 1000)
    assert await local.read(blob(3, 1000)[0], 1000) == blob(3, 1000)[1]
    local.close()


@pytest.mark.parametrize("verify", ["xxh3", "sha256"])
async def test_damaged_copies_are_refused(tmp_path: Path, writer: Writer, verify: str) -> None:
    chunk_id, data = blob(4)
    rotten = bytearray(data)
    rotten[1000] ^= 0xFF
    # Bit rot: the stored checksum no longer matches the bytes.
    writer.do("raw", chunk_id.hex(), (checksum_of(data) + bytes(rotten)).hex())
    # Other bytes with their own valid checksum under this id (a wrong write): only the
    # sha256 check catches that; xxh3 trusts the write-time id check, as gRPC reads do.
    other_id = blob(5)[0]
    writer.do("raw", other_id.hex(), (checksum_of(data) + data).hex())
    local = LocalChunkStore(str(tmp_path), verify=verify)
    corrupt = count("corrupt")
    with pytest.raises(LocalCopyCorrupt):
        await local.read(chunk_id, SIZE)
    if verify == "sha256":
        with pytest.raises(LocalCopyCorrupt):
            await local.read(other_id, SIZE)
        assert count("corrupt") == corrupt + 2
    else:
        assert count("corrupt") == corrupt + 1
    # A too-short value (no room for the checksum) is refused too.
    short_id = hashlib.sha256(b"x").digest()
    writer.do("raw", short_id.hex(), "00")
    with pytest.raises(LocalCopyCorrupt):
        await local.read(short_id, None)
    local.close()


async def test_delete_during_a_read_serves_the_snapshot(
    tmp_path: Path, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GC deletes the chunk, and new writes reuse free pages, while a read is between its
    lookup and its copy: the read still returns the exact bytes of its snapshot."""
    chunk_id, data = blob(6, 4 * 1024 * 1024)
    writer.do("put", 6, 4 * 1024 * 1024)
    real = local_reads.checksum_of
    fired = []

    def checksum_then_churn(view: memoryview) -> bytes:
        if not fired:
            fired.append(True)
            writer.do("delete", chunk_id.hex())
            for seed in range(100, 106):  # several txns so freed pages become reusable
                writer.do("put", seed, 4 * 1024 * 1024)
        return real(view)

    monkeypatch.setattr(local_reads, "checksum_of", checksum_then_churn)
    local = LocalChunkStore(str(tmp_path))
    assert await local.read(chunk_id, len(data)) == data
    assert fired
    # The next transaction sees the delete.
    assert await local.read(chunk_id, len(data)) is None
    local.close()


async def test_missing_store_then_created_then_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_reads, "REOPEN_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(local_reads, "RECHECK_FILE_SECONDS", 0.0)
    local = LocalChunkStore(str(tmp_path / "node"))
    chunk_id, data = blob(7)
    assert await local.read(chunk_id, SIZE) is None  # no store yet: a miss, no error
    first = Writer(tmp_path / "node")
    try:
        first.do("put", 7, SIZE)
        assert await local.read(chunk_id, SIZE) == data
    finally:
        first.close()
    # The node's data directory wiped and re-created: the new file is opened.
    for name in os.listdir(tmp_path / "node" / "chunks"):
        os.unlink(tmp_path / "node" / "chunks" / name)
    second = Writer(tmp_path / "node")
    try:
        second.do("put", 8, SIZE)
        assert await local.read(chunk_id, SIZE) is None
        assert await local.read(blob(8)[0], SIZE) == blob(8)[1]
    finally:
        second.close()
    local.close()


async def test_concurrent_reads_while_the_node_writes_and_deletes(
    tmp_path: Path, writer: Writer
) -> None:
    """Every answer is the exact bytes or a miss, whatever the writer does meanwhile."""
    for seed in range(20):
        writer.do("put", seed + 200, SIZE)
    local = LocalChunkStore(str(tmp_path))
    expected = {blob(seed + 200)[0]: blob(seed + 200)[1] for seed in range(20)}

    async def reads() -> None:
        for _ in range(10):
            for chunk_id, data in expected.items():
                got = await local.read(chunk_id, SIZE)
                assert got is None or got == data

    async def churn() -> None:
        for i, chunk_id in enumerate(expected):
            await asyncio.to_thread(writer.do, "delete", chunk_id.hex())
            await asyncio.to_thread(writer.do, "put", 300 + i, SIZE)

    await asyncio.gather(reads(), reads(), churn())
    local.close()


async def test_the_store_is_opened_and_marked_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`start` opens the store before any read and holds the mark that tells the node to
    keep fresh writes cached; `stop` lets it go."""
    monkeypatch.setattr(local_readers, "RECHECK_SECONDS", 0.0)
    made = LmdbChunkStore(
        str(tmp_path / "chunks"), 1 << 26, 8, 1 << 24, drop_written_pages="unread"
    )
    made.close()  # the node's files, as a node leaves them (its lock file included)
    readers = local_readers.LocalReaders(str(tmp_path / "chunks"))
    store = LocalChunkStore(str(tmp_path))
    try:
        assert readers.present() is False
        store.start()
        for _ in range(200):
            if readers.present():
                break
            await asyncio.sleep(0.01)
        assert readers.present() is True
        await store.stop()
        assert readers.present() is False
    finally:
        await store.stop()
        readers.close()

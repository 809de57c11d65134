"""The node's chunk store: the `ChunkStore` contract and its LMDB implementation.

Key layout of the one LMDB environment per node, `<data_dir>/chunks/` (named DBs)::

    chunks/                          LMDB env: sync=True, metasync=True, writemap=False
    ├── db "chunks"                  the healthy copies this node serves
    │     key   chunk id             32 B, sha256(data): addressing, dedup, key order = list order
    │     value checksum || data     16 B xxh3-128(data), then the chunk's bytes (0 B allowed)
    ├── db "index"                   one small entry per key of "chunks", written in the
    │     key   chunk id             same write txn: what `has` and `list_ids` read, so a
    │     value u64 big-endian       probe never touches a chunk's own pages (below)
    │           data length
    ├── db "quarantine"              copies that failed their checksum, kept for forensics,
    │     key   chunk id             never served; the id is gone from "chunks", so has() says
    │     value checksum || data     False and repair puts a fresh copy from another replica
    └── db "meta"                    counters, updated in the same write txn as the data
          key   b"count"             u64 big-endian: entries in "chunks"
          key   b"bytes"             u64 big-endian: sum of data lengths in "chunks"
          key   b"quarantined"       u64 big-endian: entries in "quarantine"
          key   b"indexed"           b"1" once "index" covers every key of "chunks"
          key   b"indexed_txn"       u64: the id of the last write txn that kept the index

**Why the index.** py-lmdb touches every page of a value it returns (it pre-faults them
with the GIL released), and even a cursor stepping over keys makes LMDB read a big value's
first page, where the kernel's read-around brings in up to `read_ahead_kb` of the file
around it (8 MiB on some hosts). Answered from "chunks", every `Has` read the whole chunk
and every `list_ids` step read-around its first page: each repair pass (every
`repair_interval`, asking every peer about every chunk) read the whole store, several
times over, cached or from the disk, and kept it mapped. The index keeps probes and
listings in small pages; a chunk's pages are read when its bytes are (get, verify, a copy).
A store written before the index existed is indexed by the writer thread in steps of
`_INDEX_STEP` chunks between other writes (reading each chunk once); until `indexed` is
set, probes and listings read "chunks" as before. Every write transaction that changes
anything records its id in `indexed_txn`; a store opened with another id there than
LMDB's last committed one was written since by something that does not keep the index (a
rollback to an older release, a repair tool), so its index is rebuilt the same way rather
than trusted: a stale "present" would let a gateway skip writing a chunk that is gone.

Other processes may read this environment: a gateway on the same host opens it read-only
(gateway/cluster/local_reads.py), each of its read transactions a slot in the reader
table, so this writer never reuses a page it reads. Slots of a process that died inside a
transaction are cleared (`reader_check`) before a write at most every 10 s.

Garbage collection deletes with `sweep(ids, idle_before)`: a delete, in the writer thread,
of only those chunks not written nor found present by `has` since `idle_before` (the
in-RAM record of node/chunk_touch.py, whose lock the sweep's transaction holds until its
commit, so a `has` answering "present" is never followed by that chunk's deletion).

Writes go through one writer thread that drains a queue: concurrent puts, deletes and
quarantine moves are grouped into one write transaction (group commit, at most
`batch_max_items` ops / `batch_max_bytes` bytes) whose fsynced commit acknowledges all of
them. A batch that changes nothing (puts of chunks held intact already, as when a manifest
is pushed again under another tag: small chunks are put, not offered with `Has` first)
leaves its transaction clean, and LMDB commits that without a write or a sync. Reads run
in executor threads inside read transactions (`buffers=True`): the checksum is checked on
the mapped bytes and the data copied out once. sha256 of incoming data is computed in an
executor thread too, so the event loop never hashes megabytes.

With `node.drop_written_pages`, each commit that stored chunks is followed (after its
acknowledgements) by `posix_fadvise(DONTNEED)` on the file ranges of the values it just
wrote (found from their addresses in this process's map of data.mdb,
cargohold/map_offsets.py; each value's own overflow pages, unmapped here first): written
chunks leave the page cache, so writes recycle its memory instead of growing it (cheaper
on hosts where fresh memory is costly, see bench/README.md) and reads of them go to the
disk. Other cached pages of the file are left alone: the cost is per byte written, not
per byte of the file. The default mode, "unread", does so only while nobody reads this
store: no chunk served (`get*`: a gateway's or a peer's read over gRPC) for
`read_recently_seconds`, and no gateway on this host reading it directly (its shared lock
on `local-readers.lock`, cargohold/local_readers.py). A reader would soon want these very
pages (a co-located gateway sends fresh pushes from them); a node nobody reads (the
replicas of a one-host cluster beside the gateway's own node, a storage-only host whose
copies are only read when another fails) would only grow the page cache with them. HDFS
datanodes call this dropping the cache behind writes.

No space raises `StorageFull` for the puts that do not fit, and the store keeps serving
reads and deletes: a put that would eat into the disk reserve (`node/disk.py`, checked
before the write), a full LMDB map, or a commit that fails for lack of disk space (ENOSPC;
LMDB reports a short write as EIO, so an I/O error on a disk below its watermark counts as
one too). Such a failure never closes the environment: the next commit that fits succeeds.
`node/memstore.py` holds `MemoryChunkStore`, the in-memory implementation of the same
contract for tests of other parts; `tests/node/test_chunkstore_suite.py` is the conformance
suite both must pass.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import lmdb

from cargohold.concurrency import hash_off_loop
from cargohold.digests import checksum_of
from cargohold.errors import (
    ChunkCorrupt,
    ChunkMissing,
    ConfigError,
    DigestInvalid,
    RegistryError,
    StorageFull,
    Unavailable,
)
from cargohold.local_readers import LocalReaders
from cargohold.log import log_event
from cargohold.map_offsets import FileMaps
from cargohold.mapped_pages import PAGE_SIZE, buffer_address, release_folios
from node.chunk_touch import ChunkTouches
from node.disk import DiskSpace

logger = logging.getLogger("cargohold.node.chunkstore")

CHECKSUM_LEN = 16
CHUNK_ID_LEN = 32
_U64 = struct.Struct(">Q")
_META_COUNT, _META_BYTES, _META_QUARANTINED = b"count", b"bytes", b"quarantined"
_META_INDEXED, _META_INDEX_TXN = b"indexed", b"indexed_txn"
# `node.drop_written_pages`: never; after every commit that stored chunks; or after those
# only while nobody reads the store: no chunk served lately, no gateway on this host
# reading it directly (cargohold/local_readers.py).
DROP_MODES = ("never", "always", "unread")
# Chunks indexed per write transaction while a store written before the index is indexed.
_INDEX_STEP = 256
# At most this often, a write first clears the reader slots of dead processes.
READER_CHECK_SECONDS = 10.0


@dataclass(frozen=True)
class ChunkStats:
    count: int
    bytes: int
    quarantined: int


@dataclass(frozen=True)
class StoreUsage:
    """`ChunkStats` plus the LMDB map: its size and the bytes of pages in use."""

    count: int
    bytes: int
    quarantined: int
    map_size: int
    map_used: int


class ChunkStore(Protocol):
    """What a node's chunk store offers. Chunk ids are 32-byte sha256 digests.

    `put` is durable before it returns; `get`/`verify` check the stored checksum and move a
    failing copy to quarantine (`ChunkCorrupt` / False); a quarantined chunk is gone for
    `has`, `get`, `list_ids` and `stats().count` until a good copy is put again.
    """

    async def put(
        self,
        chunk_id: bytes,
        data: bytes | memoryview,
        checksum: bytes | None = None,
        verify_id: bool = True,
    ) -> bool:
        """Store `data` under `chunk_id`; True when a healthy copy already existed.
        `verify_id=False` with a checksum trusts the id and checks only the checksum
        (see `prepare_value`). Raises DigestInvalid (id or checksum does not match
        data), StorageFull."""
        ...

    async def put_value(
        self, chunk_id: bytes, value: bytes | bytearray | memoryview, verify_id: bool = True
    ) -> bool:
        """`put` of `checksum || data` laid out as stored (the sender's checksum in front),
        checked in place (`check_value`) and stored without joining the two."""
        ...

    async def get(self, chunk_id: bytes) -> bytes:
        """The verified bytes. Raises ChunkMissing, ChunkCorrupt."""
        ...

    async def get_with_checksum(self, chunk_id: bytes) -> tuple[bytes, bytes]:
        """(data, stored xxh3-128 checksum), verified like `get`."""
        ...

    async def get_encoded(
        self, chunk_id: bytes, encode: Callable[[memoryview, bytes], bytes]
    ) -> bytes:
        """`encode(data view, checksum)` of the verified copy, called while the view is
        valid (in a reader thread for LMDB): the one copy a reply needs, no other.
        Raises like `get_with_checksum`."""
        ...

    async def has(self, ids: list[bytes], *, touch: bool = True) -> list[bool]:
        """Which of these chunks are held; with `touch` (a client's question) every valid
        id counts as a use for garbage collection (node/chunk_touch.py), without it (an
        internal probe: repair, rebalancing) nothing is recorded."""
        ...

    async def delete(self, ids: list[bytes]) -> int:
        """Remove these chunks; returns how many were present."""
        ...

    async def sweep(self, ids: list[bytes], idle_before: float) -> tuple[int, int]:
        """Garbage collection's delete: remove those of `ids` not written nor found
        present by `has` since `idle_before` (monotonic); (chunks, bytes) removed."""
        ...

    touches: ChunkTouches

    async def list_ids(self, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        """Up to `limit` (id, size) pairs with id > `after` (b"" = from the start), key order."""
        ...

    async def stats(self) -> ChunkStats: ...

    async def verify(self, chunk_id: bytes) -> bool:
        """Scrub one chunk: False (and quarantined) when its checksum fails or its bytes do
        not hash (sha256) to its id. Raises ChunkMissing when it is not held."""
        ...

    def close(self) -> None: ...


def _checked(
    chunk_id: bytes, data: bytes | memoryview, checksum: bytes | None, verify_id: bool
) -> bytes:
    """The data's checksum, once `data` matched its id and the sender's checksum (the
    checks `prepare_value` documents); DigestInvalid when either does not."""
    if len(chunk_id) != CHUNK_ID_LEN:
        raise DigestInvalid("chunk id is not a sha256 digest", detail={"chunk": chunk_id.hex()})
    if (verify_id or not checksum) and hashlib.sha256(data).digest() != chunk_id:
        raise DigestInvalid(
            "chunk id is not the sha256 of its data", detail={"chunk": chunk_id.hex()}
        )
    actual = checksum_of(data)
    if checksum and checksum != actual:
        raise DigestInvalid(
            "chunk checksum does not match its data", detail={"chunk": chunk_id.hex()}
        )
    return actual


def prepare_value(
    chunk_id: bytes, data: bytes | memoryview, checksum: bytes | None, verify_id: bool = True
) -> bytes:
    """Check `data` against its id and the sender's checksum; return `checksum || data`.

    The sha256 id check is skipped only when `verify_id` is False AND a checksum came
    with the data: then the sender (a gateway, a trusted cluster member that computed
    the id from these bytes) vouches for the id and xxh3 catches transport corruption.
    """
    return _checked(chunk_id, data, checksum, verify_id) + data


def check_value(
    chunk_id: bytes, value: bytes | bytearray | memoryview, verify_id: bool = True
) -> None:
    """`prepare_value`'s checks on a value already laid out as stored, `checksum || data`
    (a bulk put's buffer as received, cargohold/bulk_wire.py), with the sender's checksum
    in front."""
    if len(value) < CHECKSUM_LEN:
        raise DigestInvalid("chunk value shorter than its checksum")
    view = memoryview(value)  # slices of it are views: the data is not copied
    _checked(chunk_id, view[CHECKSUM_LEN:], bytes(view[:CHECKSUM_LEN]), verify_id)


def is_intact(value: bytes | memoryview) -> bool:
    """True when a stored `checksum || data` value still matches its checksum."""
    if len(value) < CHECKSUM_LEN:
        return False
    return checksum_of(value[CHECKSUM_LEN:]) == bytes(value[:CHECKSUM_LEN])


def is_sound(chunk_id: bytes, value: bytes | memoryview) -> bool:
    """`is_intact`, and the data's sha256 is the chunk id (what scrub checks: a copy with a
    matching checksum but other bytes, written under a wrong id, is caught too)."""
    return is_intact(value) and hashlib.sha256(value[CHECKSUM_LEN:]).digest() == chunk_id


async def prepare_value_async(
    chunk_id: bytes, data: bytes | memoryview, checksum: bytes | None, verify_id: bool = True
) -> bytes:
    return await hash_off_loop(len(data), prepare_value, chunk_id, data, checksum, verify_id)


class _Corrupt(Exception):
    """Raised inside a read thread; the async caller quarantines and raises ChunkCorrupt."""


# --- the writer: one thread, one write transaction per batch of queued ops --------------


class _Batch:
    """One open write transaction plus the counters it will write back."""

    def __init__(self, store: LmdbChunkStore, txn: lmdb.Transaction) -> None:
        self.store, self.txn = store, txn
        self.count = store._read_counter(txn, _META_COUNT)
        self.bytes = store._read_counter(txn, _META_BYTES)
        self.quarantined = store._read_counter(txn, _META_QUARANTINED)
        self._read = (self.count, self.bytes, self.quarantined)
        self.wrote = False  # any change at all, counters or not

    def save_counters(self, always: bool = False) -> None:
        """Write the counters back; unless `always`, only when they changed, so a batch that
        wrote nothing (puts of chunks already held) leaves the transaction clean and LMDB
        commits it without writing or syncing anything: what it found was made durable by
        the commit that stored it."""
        if (
            not always
            and not self.wrote
            and (self.count, self.bytes, self.quarantined) == self._read
        ):
            return
        meta = self.store._meta
        self.txn.put(_META_INDEX_TXN, _U64.pack(self.txn.id()), db=meta)
        self.txn.put(_META_COUNT, _U64.pack(self.count), db=meta)
        self.txn.put(_META_BYTES, _U64.pack(self.bytes), db=meta)
        self.txn.put(_META_QUARANTINED, _U64.pack(self.quarantined), db=meta)

    def quarantine(self, chunk_id: bytes) -> bool:
        """Move a failing copy out of "chunks"; False when absent or (now) sound."""
        txn, s = self.txn, self.store
        current = txn.get(chunk_id, db=s._chunks)
        if current is None or is_sound(chunk_id, current):
            return False
        value = bytes(current)
        self.wrote = True
        txn.delete(chunk_id, db=s._chunks)
        txn.delete(chunk_id, db=s._index)
        if txn.get(chunk_id, db=s._quarantine) is None:
            self.quarantined += 1
        txn.put(chunk_id, value, db=s._quarantine)
        self.count -= 1
        self.bytes -= max(0, len(value) - CHECKSUM_LEN)
        log_event(logger, "chunk.quarantined", logging.WARNING, chunk=chunk_id.hex())
        return True

    def put(self, chunk_id: bytes, value: bytes | bytearray | memoryview) -> bool:
        existing = self.txn.get(chunk_id, db=self.store._chunks)
        if existing is not None:
            if is_intact(existing):
                self.store.touches.touch((chunk_id,))
                return True
            # A silently corrupted copy is replaced by the good bytes we were just sent.
            self.quarantine(chunk_id)
        self.store.touches.touch((chunk_id,))
        self.wrote = True
        self.txn.put(chunk_id, value, db=self.store._chunks)
        self.txn.put(chunk_id, _U64.pack(len(value) - CHECKSUM_LEN), db=self.store._index)
        self.count += 1
        self.bytes += len(value) - CHECKSUM_LEN
        return False

    def delete(self, ids: list[bytes]) -> int:
        deleted = 0
        for chunk_id in ids:
            if len(chunk_id) != CHUNK_ID_LEN:
                continue
            size = self.store._size_of(self.txn, chunk_id)
            if size is None:
                continue
            self.wrote = True
            self.txn.delete(chunk_id, db=self.store._index)
            if not self.txn.delete(chunk_id, db=self.store._chunks):
                continue  # a stale index entry: nothing stored to count
            self.count -= 1
            self.bytes -= size
            deleted += 1
        return deleted

    def sweep(self, ids: list[bytes], cutoff: float) -> tuple[int, int]:
        """Delete the chunks of `ids` idle since before `cutoff`; (chunks, bytes)."""
        touches = self.store.touches
        idle = [i for i in ids if touches.idle_before(i, cutoff)]
        before = self.bytes
        return self.delete(idle), before - self.bytes


@dataclass
class _Op:
    """A queued write: `kind` is put/delete/quarantine; `weight` counts toward batch bytes."""

    kind: str
    future: concurrent.futures.Future[int]
    chunk_id: bytes = b""
    value: bytes | bytearray | memoryview = b""
    ids: tuple[bytes, ...] = ()
    cutoff: float = 0.0
    freed: int = 0  # sweep: bytes removed

    @property
    def weight(self) -> int:
        return len(self.value)

    def apply(self, batch: _Batch) -> int:
        # Every kind answers a count: put/quarantine a bool (changed or not), delete how many.
        if self.kind == "put":
            return batch.put(self.chunk_id, self.value)
        if self.kind == "delete":
            return batch.delete(list(self.ids))
        if self.kind == "sweep":
            count, self.freed = batch.sweep(list(self.ids), self.cutoff)
            return count
        return batch.quarantine(self.chunk_id)


_STOP = object()


def _own_pages(offset: int, length: int) -> tuple[int, int]:
    """The file range of the whole pages a value of `length` (at least `PAGE_SIZE`) bytes
    at file `offset` lies in. LMDB stores a value that large on overflow pages of its own
    (the page header before it, unused bytes after it): they hold nothing else, unlike the
    B-tree pages around them, which the next commit reads."""
    return offset // PAGE_SIZE * PAGE_SIZE, -(-(offset + length) // PAGE_SIZE) * PAGE_SIZE


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching [lo, hi) ranges joined, in order."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


class LmdbChunkStore:
    """Chunks in one LMDB environment at `path` (a directory, created when missing)."""

    def __init__(
        self,
        path: str,
        map_size: int,
        batch_max_items: int,
        batch_max_bytes: int,
        space: DiskSpace | None = None,
        drop_written_pages: str = "never",
        read_recently_seconds: float = 300.0,
    ) -> None:
        if drop_written_pages not in DROP_MODES:
            raise ValueError(f"drop_written_pages: {drop_written_pages!r} not in {DROP_MODES}")
        os.makedirs(path, exist_ok=True)
        self.path = path
        # The data dir's free space and reserve; None: only the map size limits puts.
        self._space = space
        try:
            self._env = lmdb.open(
                path,
                map_size=map_size,
                subdir=True,
                max_dbs=4,
                sync=True,
                metasync=True,
                writemap=False,
                map_async=False,
                lock=True,
            )
        except lmdb.Error as exc:
            raise ConfigError(f"cannot open chunk store at {path}: {exc}") from exc
        self._chunks = self._env.open_db(b"chunks")
        self._quarantine = self._env.open_db(b"quarantine")
        self._meta = self._env.open_db(b"meta")
        self._index = self._env.open_db(b"index")
        with self._env.begin(db=self._meta) as txn:
            marked = txn.get(_META_INDEXED) == b"1"
            kept_by = txn.get(_META_INDEX_TXN)
        last = int(self._env.info()["last_txnid"])
        # Read by reader threads, set once by the writer thread.
        self._indexed = marked and kept_by is not None and _U64.unpack(kept_by)[0] == last
        # Entries that may disagree with "chunks": committed to since by a writer that does
        # not keep the index (a partial build of ours left the id as its last commit). No
        # id at all: nothing of ours ever wrote here (a new store, or one from before the
        # index), so the index is empty and only needs building.
        self._index_stale = (
            not self._indexed and kept_by is not None and _U64.unpack(kept_by)[0] != last
        )
        self._index_after: bytes | None = b""  # None: indexing gave up (logged)
        self._max_items = max(1, batch_max_items)
        self._max_bytes = max(1, batch_max_bytes)
        self._queue: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._lock = threading.Condition()
        self._closed = False
        self._readers = 0
        self._commits = 0
        self._next_reader_check = 0.0
        self._full = False
        self.touches = ChunkTouches()
        # Told the seconds of each write transaction, fsync included (node/metrics.py).
        self.commit_observer: Callable[[float], None] | None = None
        # `node.drop_written_pages`: data.mdb opened once more, to drop the cached pages
        # of values just written. This process's mappings of it give their file offsets
        # (the environment is never remapped while open: what is remembered stays true).
        self._drop_fd: int | None = None
        self._maps: FileMaps | None = None
        # "unread": whether a gateway on this host sends from this store's page cache, or
        # this node served a chunk read within `read_recently_seconds` (monotonic time of
        # the last, set by the readers and read by the writer thread).
        self._local_readers: LocalReaders | None = None
        self._read_recently = read_recently_seconds
        self._served_at = float("-inf")
        if drop_written_pages != "never" and hasattr(os, "posix_fadvise"):
            data_mdb = os.path.join(path, "data.mdb")
            self._drop_fd = os.open(data_mdb, os.O_RDONLY)
            st = os.fstat(self._drop_fd)
            self._maps = FileMaps(data_mdb, st.st_dev, st.st_ino)
            if drop_written_pages == "unread":
                self._local_readers = LocalReaders(path)
        self._writer = threading.Thread(
            target=self._write_loop, name="chunkstore-writer", daemon=True
        )
        self._writer.start()
        log_event(logger, "chunkstore.open", path=path, map_size=map_size)

    # --- async API ----------------------------------------------------------------------

    async def put(
        self,
        chunk_id: bytes,
        data: bytes | memoryview,
        checksum: bytes | None = None,
        verify_id: bool = True,
    ) -> bool:
        if await self._held_when_full(chunk_id, len(data)):
            return True
        value = await prepare_value_async(chunk_id, data, checksum, verify_id)
        return await self._put_value(chunk_id, value)

    async def put_value(
        self, chunk_id: bytes, value: bytes | bytearray | memoryview, verify_id: bool = True
    ) -> bool:
        if await self._held_when_full(chunk_id, len(value) - CHECKSUM_LEN):
            return True
        await hash_off_loop(len(value), check_value, chunk_id, value, verify_id)
        return await self._put_value(chunk_id, value)

    async def _held_when_full(self, chunk_id: bytes, size: int) -> bool:
        """Admit `size` more bytes, or, with no space left, whether the chunk is held
        already (a put is idempotent: a chunk already held needs no space); StorageFull
        when it is not."""
        if self._space is None:
            return False
        try:
            self._space.admit(size + CHECKSUM_LEN)
        except StorageFull:
            if len(chunk_id) == CHUNK_ID_LEN and (await self.has([chunk_id]))[0]:
                return True
            raise
        return False

    async def _put_value(self, chunk_id: bytes, value: bytes | bytearray | memoryview) -> bool:
        result = await self._submit(
            _Op("put", concurrent.futures.Future(), chunk_id=chunk_id, value=value)
        )
        return bool(result)

    async def get(self, chunk_id: bytes) -> bytes:
        data, _ = await self.get_with_checksum(chunk_id)
        return data

    async def get_with_checksum(self, chunk_id: bytes) -> tuple[bytes, bytes]:
        self._served_at = time.monotonic()
        try:
            data, checksum = await asyncio.to_thread(self._read, chunk_id, True)
        except _Corrupt:
            await self._quarantine_copy(chunk_id)
            raise ChunkCorrupt(detail={"chunk": chunk_id.hex()}) from None
        assert data is not None
        return data, checksum

    async def get_encoded(
        self, chunk_id: bytes, encode: Callable[[memoryview, bytes], bytes]
    ) -> bytes:
        self._served_at = time.monotonic()
        try:
            return await asyncio.to_thread(self._read_encoded, chunk_id, encode)
        except _Corrupt:
            await self._quarantine_copy(chunk_id)
            raise ChunkCorrupt(detail={"chunk": chunk_id.hex()}) from None

    async def verify(self, chunk_id: bytes) -> bool:
        try:
            await asyncio.to_thread(self._check_sound, chunk_id)
        except _Corrupt:
            await self._quarantine_copy(chunk_id)
            return False
        return True

    async def has(self, ids: list[bytes], *, touch: bool = True) -> list[bool]:
        return await asyncio.to_thread(self._has, list(ids), touch)

    async def delete(self, ids: list[bytes]) -> int:
        if not ids:
            return 0
        result = await self._submit(_Op("delete", concurrent.futures.Future(), ids=tuple(ids)))
        return result

    async def sweep(self, ids: list[bytes], idle_before: float) -> tuple[int, int]:
        if not ids:
            return 0, 0
        op = _Op("sweep", concurrent.futures.Future(), ids=tuple(ids), cutoff=idle_before)
        count = await self._submit(op)
        return count, op.freed

    async def list_ids(self, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        if limit <= 0:
            return []
        return await asyncio.to_thread(self._list, after, limit)

    async def stats(self) -> ChunkStats:
        return await asyncio.to_thread(self._stats)

    def usage(self) -> StoreUsage:
        """Counters and LMDB map use, read in the caller's thread (Unavailable once closed)."""
        with self._reading() as txn:
            info, stat = self._env.info(), self._env.stat()
            return StoreUsage(
                count=self._read_counter(txn, _META_COUNT),
                bytes=self._read_counter(txn, _META_BYTES),
                quarantined=self._read_counter(txn, _META_QUARANTINED),
                map_size=int(info["map_size"]),
                map_used=(int(info["last_pgno"]) + 1) * int(stat["psize"]),
            )

    def file_usage(self) -> dict[str, int]:
        """The LMDB file against its use: `file_bytes` (data.mdb on disk; LMDB never
        shrinks it), `high_water_bytes` (pages ever allocated) and `data_bytes` (pages the
        databases hold now). Pages freed by deletes are reused by later writes; only a
        compacting copy gives the file's space back (docs/operations.md)."""
        with self._reading() as txn:
            psize = int(self._env.stat()["psize"])
            pages = 0
            for db in (None, self._chunks, self._quarantine, self._meta, self._index):
                st = txn.stat(db) if db is not None else self._env.stat()
                pages += int(st["branch_pages"]) + int(st["leaf_pages"])
                pages += int(st["overflow_pages"])
            high = (int(self._env.info()["last_pgno"]) + 1) * psize
        size = os.path.getsize(os.path.join(self.path, "data.mdb"))
        return {"file_bytes": size, "high_water_bytes": high, "data_bytes": pages * psize}

    @property
    def commits(self) -> int:
        """Write transactions committed since open (puts per commit = group-commit factor)."""
        return self._commits

    def close(self) -> None:
        """Finish queued writes, wait for readers, close the environment. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._writer.join()
        if self._drop_fd is not None:
            os.close(self._drop_fd)
            self._drop_fd = None
        if self._local_readers is not None:
            self._local_readers.close()
        with self._lock:
            self._lock.wait_for(lambda: self._readers == 0)
            self._env.close()
        log_event(logger, "chunkstore.closed", path=self.path)

    # --- reads (executor threads) -------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[lmdb.Transaction]:
        with self._lock:
            if self._closed:
                raise Unavailable("chunk store is closed")
            self._readers += 1
        try:
            with self._env.begin(buffers=True) as txn:
                yield txn
        finally:
            with self._lock:
                self._readers -= 1
                if self._readers == 0:
                    self._lock.notify_all()

    def _intact_value(self, txn: lmdb.Transaction, chunk_id: bytes) -> Any:
        """The stored `checksum || data` of a chunk, checked; ChunkMissing or _Corrupt."""
        value = txn.get(chunk_id, db=self._chunks) if len(chunk_id) == CHUNK_ID_LEN else None
        if value is None:
            raise ChunkMissing(detail={"chunk": chunk_id.hex()})
        if not is_intact(value):
            raise _Corrupt
        return value

    def _read(self, chunk_id: bytes, copy: bool) -> tuple[bytes | None, bytes]:
        with self._reading() as txn:
            value = self._intact_value(txn, chunk_id)
            checksum = bytes(value[:CHECKSUM_LEN])
            return (bytes(value[CHECKSUM_LEN:]) if copy else None), checksum

    def _check_sound(self, chunk_id: bytes) -> None:
        with self._reading() as txn:
            if not is_sound(chunk_id, self._intact_value(txn, chunk_id)):
                raise _Corrupt

    def _read_encoded(self, chunk_id: bytes, encode: Callable[[memoryview, bytes], bytes]) -> bytes:
        with self._reading() as txn:
            view = memoryview(self._intact_value(txn, chunk_id))
            return encode(view[CHECKSUM_LEN:], bytes(view[:CHECKSUM_LEN]))

    def _has(self, ids: list[bytes], touch: bool) -> list[bool]:
        # A client's "present" answer counts as a use: touched before the read, under the
        # sweep lock. An internal probe (touch=False) records nothing.
        if touch:
            with self.touches.lock:
                self.touches.touch(i for i in ids if len(i) == CHUNK_ID_LEN)
        # The flag is read before the transaction begins: once it is set, every
        # transaction begun after sees the complete index.
        db = self._index if self._indexed else self._chunks
        with self._reading() as txn:
            return [len(i) == CHUNK_ID_LEN and txn.get(i, db=db) is not None for i in ids]

    def _size_of(self, txn: lmdb.Transaction, chunk_id: bytes) -> int | None:
        """A held chunk's data length: from the index once it is complete, else from the
        value itself; None when not held. Writer thread (which completes the index)."""
        if self._indexed:
            raw = txn.get(chunk_id, db=self._index)
            return None if raw is None else int(_U64.unpack(raw)[0])
        value = txn.get(chunk_id, db=self._chunks)
        return None if value is None else max(0, len(value) - CHECKSUM_LEN)

    def _list(self, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        out: list[tuple[bytes, int]] = []
        indexed = self._indexed
        with self._reading() as txn:
            cursor = txn.cursor(db=self._index if indexed else self._chunks)
            more = cursor.set_range(after) if after else cursor.first()
            while more and len(out) < limit:
                key = bytes(cursor.key())
                if key != after:
                    value = cursor.value()
                    if indexed:
                        out.append((key, int(_U64.unpack(value)[0])))
                    else:
                        out.append((key, max(0, len(value) - CHECKSUM_LEN)))
                more = cursor.next()
        return out

    def _stats(self) -> ChunkStats:
        with self._reading() as txn:
            return ChunkStats(
                count=self._read_counter(txn, _META_COUNT),
                bytes=self._read_counter(txn, _META_BYTES),
                quarantined=self._read_counter(txn, _META_QUARANTINED),
            )

    def _read_counter(self, txn: lmdb.Transaction, key: bytes) -> int:
        raw = txn.get(key, db=self._meta)
        return _U64.unpack(raw)[0] if raw is not None else 0

    # --- writes (the writer thread) -----------------------------------------------------

    async def _submit(self, op: _Op) -> int:
        with self._lock:
            if self._closed:
                raise Unavailable("chunk store is closed")
            self._queue.put(op)
        return await asyncio.wrap_future(op.future)

    async def _quarantine_copy(self, chunk_id: bytes) -> None:
        with contextlib.suppress(Unavailable):
            await self._submit(_Op("quarantine", concurrent.futures.Future(), chunk_id=chunk_id))

    def _write_loop(self) -> None:
        held: _Op | object | None = None
        while True:
            if held is not None:
                first, held = held, None
            elif not self._indexed and self._index_after is not None:
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    self._index_step()  # only while nothing else waits
                    continue
            else:
                first = self._queue.get()
            if first is _STOP:
                break
            assert isinstance(first, _Op)
            batch, size = [first], first.weight
            while len(batch) < self._max_items:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(op, _Op) or size + op.weight > self._max_bytes:
                    held = op
                    break
                batch.append(op)
                size += op.weight
            live = [op for op in batch if op.future.set_running_or_notify_cancel()]
            try:
                self._commit(live)
            except Exception as exc:  # a bug here must not strand every later writer
                self._fail([op for op in live if not op.future.done()], exc)

    def _commit(self, ops: list[_Op]) -> None:
        if not ops:
            return
        try:
            results = self._transact(ops)
        except Exception as exc:
            if not self._out_of_space(exc):
                self._fail(ops, exc)
            elif len(ops) > 1:
                # Commit what fits: each op alone, so only the ones that overflow fail.
                for op in ops:
                    self._commit([op])
            else:
                self._commit_when_full(ops[0])
            return
        self._set_full(False)
        self._charge(ops, results)
        for op, result in zip(ops, results, strict=True):
            op.future.set_result(result)
        if self._drop_fd is not None and not self._read_locally():
            written = [
                op.chunk_id
                for op, res in zip(ops, results, strict=True)
                if op.kind == "put" and not res
            ]
            if written:
                self._drop_cached_pages(written)

    def _index_step(self) -> None:
        """Index up to `_INDEX_STEP` more chunks of a store written before the index, in one
        write transaction; the last step marks the store indexed. Writes meanwhile keep
        the index of what they change, so a step adds only entries still missing."""
        after = self._index_after
        assert after is not None
        try:
            with self._env.begin(write=True, buffers=True) as txn:
                if self._index_stale:
                    # Unmarked in the same commit: a rebuild cut short resumes at the next
                    # open rather than trusting half an index.
                    txn.drop(self._index, delete=False)
                    txn.delete(_META_INDEXED, db=self._meta)
                    after = b""
                cursor = txn.cursor(db=self._chunks)
                more = cursor.set_range(after) if after else cursor.first()
                seen = 0
                while more and seen < _INDEX_STEP:
                    key = bytes(cursor.key())
                    if key != after:
                        seen += 1
                        after = key
                        if txn.get(key, db=self._index) is None:
                            size = max(0, len(cursor.value()) - CHECKSUM_LEN)
                            txn.put(key, _U64.pack(size), db=self._index)
                    more = cursor.next()
                if not more:
                    txn.put(_META_INDEXED, b"1", db=self._meta)
                txn.put(_META_INDEX_TXN, _U64.pack(txn.id()), db=self._meta)
        except lmdb.Error as exc:
            # No room, most likely: probes and listings keep reading "chunks" (correct,
            # slower); a restart tries again.
            self._index_after = None
            log_event(logger, "chunkstore.index_failed", logging.WARNING, error=str(exc))
            return
        if self._index_stale:
            self._index_stale = False
            log_event(logger, "chunkstore.index_rebuilt", logging.WARNING, path=self.path)
        self._index_after = after
        if not more:
            self._indexed = True
            log_event(logger, "chunkstore.indexed", logging.DEBUG, path=self.path)

    def _read_locally(self) -> bool:
        """With "unread": whether this store's fresh pages are read (keep them): it served
        a chunk lately, or a gateway on this host sends from it."""
        if self._local_readers is None:
            return False
        if time.monotonic() - self._served_at < self._read_recently:
            return True
        return self._local_readers.present()

    def _drop_cached_pages(self, ids: list[bytes]) -> None:
        """`node.drop_written_pages`: after a commit (its pages fsynced, so clean) and its
        acknowledgements, ask the kernel to drop the cached pages of the values it wrote:
        the whole pages each value lies in (from its address in this process's map), after
        unmapping its folios here: LMDB's lookup of a big value reads its first page, and
        that fault maps the folio, which the kernel then would not drop. The kernel drops
        the folios wholly inside those ranges; a large folio that also holds B-tree pages
        stays (widening the ranges to whole folios dropped the B-tree pages the next commit
        reads, and each small put then waited for the disk: bench/README.md). Values
        smaller than a page sit in B-tree pages and are left alone. Pages mapped by another
        process stay. The next write reuses the freed memory instead of growing the page
        cache. Advice only: a failure changes nothing stored."""
        assert self._drop_fd is not None and self._maps is not None
        ranges: list[tuple[int, int]] = []
        try:
            with self._env.begin(db=self._chunks, buffers=True) as txn:
                for chunk_id in ids:
                    value = txn.get(chunk_id)
                    if value is None or len(value) < PAGE_SIZE:
                        continue  # deleted since, or kept in a B-tree page with others
                    address = buffer_address(value)
                    mapping = self._maps.mapping_of(address, len(value))
                    if mapping is None:
                        continue
                    offset = mapping.offset_at(address)
                    release_folios(value, mapping)
                    ranges.append(_own_pages(offset, len(value)))
            for lo, hi in _merged(ranges):
                os.posix_fadvise(self._drop_fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)
        except (OSError, BufferError, ValueError, lmdb.Error) as exc:
            log_event(logger, "chunkstore.drop_pages_failed", logging.DEBUG, error=str(exc))

    def _charge(self, ops: list[_Op], results: list[int]) -> None:
        """Tell the disk view about the bytes just written (puts of new chunks)."""
        if self._space is not None:
            self._space.charge(
                sum(
                    len(op.value)
                    for op, res in zip(ops, results, strict=True)
                    if op.kind == "put" and not res
                )
            )

    def _out_of_space(self, exc: BaseException) -> bool:
        """Whether a failed write transaction ran out of room (map or disk)."""
        if isinstance(exc, lmdb.MapFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if not isinstance(exc, (lmdb.Error, OSError)):
            return False
        text = str(exc)
        if "No space left" in text or "quota exceeded" in text.lower():
            return True
        # LMDB turns a short write into EIO: look at the disk itself.
        return self._space is not None and self._space.usage(fresh=True).full

    def _commit_when_full(self, op: _Op) -> None:
        """A lone op hit a full map. Deletes must still get through (gc frees space): a
        large delete needs more fresh pages than a full map has, one id per txn does not."""
        if op.kind not in ("delete", "sweep") or len(op.ids) < 2:
            # LMDB reuses the pages a txn freed only from the txn after next: one small
            # write makes the space of a just-committed delete usable, then retry once.
            try:
                self._transact([])
                result = self._transact([op])[0]
            except Exception as exc:
                self._fail([op], exc)
                return
            self._set_full(False)
            self._charge([op], [result])
            op.future.set_result(result)
            return
        deleted = 0
        try:
            for chunk_id in op.ids:
                alone = _Op(op.kind, op.future, ids=(chunk_id,), cutoff=op.cutoff)
                deleted += self._transact([alone])[0]
                op.freed += alone.freed
        except Exception as exc:
            self._fail([op], exc)
            return
        op.future.set_result(deleted)

    def _transact(self, ops: list[_Op]) -> list[int]:
        """Apply ops in one write transaction; returns their results once it is fsynced."""
        start = time.perf_counter()
        if start >= self._next_reader_check:
            # Reader slots of processes that died inside a read txn (a gateway reading this
            # store directly, gateway/cluster/local_reads.py) would pin old pages forever.
            self._next_reader_check = start + READER_CHECK_SECONDS
            stale = self._env.reader_check()
            if stale:
                log_event(logger, "chunkstore.stale_readers_cleared", count=stale)
        sweeping = any(op.kind == "sweep" for op in ops)
        # A sweep holds the touch lock from its checks to its commit (see ChunkTouches).
        with self.touches.lock if sweeping else contextlib.nullcontext():
            with self._env.begin(write=True, buffers=True) as txn:
                batch = _Batch(self, txn)
                results = [op.apply(batch) for op in ops]
                # An empty transaction must still write (`_commit_when_full` relies on it).
                batch.save_counters(always=not ops)
        self._commits += 1
        if self.commit_observer is not None:
            self.commit_observer(time.perf_counter() - start)
        return results

    def _fail(self, ops: list[_Op], exc: Exception) -> None:
        if self._out_of_space(exc):
            self._set_full(True)
            if self._space is not None and not isinstance(exc, lmdb.MapFullError):
                exc = self._space.full_error(self._space.usage(fresh=True))
            else:
                exc = StorageFull(
                    "this node's chunk store is full (lmdb map size)", detail={"path": self.path}
                )
        elif not isinstance(exc, RegistryError):
            log_event(
                logger, "chunkstore.commit_failed", logging.ERROR, path=self.path, error=repr(exc)
            )
            exc = Unavailable(f"chunk store write failed: {exc}")
        for op in ops:
            op.future.set_exception(exc)

    def _set_full(self, full: bool) -> None:
        """Log only the transitions, not every refused put of a full node."""
        if full != self._full:
            self._full = full
            log_event(
                logger,
                "chunkstore.full" if full else "chunkstore.not_full",
                logging.WARNING,
                path=self.path,
            )

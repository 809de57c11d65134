"""Short-circuit reads: chunks the co-located node holds, read from its LMDB directly.

In the documented deployment every host runs a node and a gateway. A gateway configured
with its local node's data directory (`gateway.local_node_data_dir`; off when empty)
opens that node's chunk store, `<data_dir>/chunks/`, as a second LMDB environment in
read-only mode (`readonly=True`, `lock=True`: each read transaction takes a slot in the
node's reader table, so the node's writer never reuses a page this gateway is reading)
and reads a chunk there before asking any node over gRPC. HDFS calls the same thing a
short-circuit local read.

What holds, whatever the node does meanwhile:
- **No unverified byte.** The value is `checksum || data` (node/chunkstore.py). Inside
  the read transaction the data is checked against its stored xxh3-128 checksum
  (`gateway.verify_reads = "xxh3"`) or its sha256 against the chunk id ("sha256"), and
  against the recipe's length; only then is it copied out. A copy that fails is refused
  (`LocalCopyCorrupt`): the caller reads from a replica and asks the local node first, so
  the node's own check quarantines the copy and re-fetches a good one (repair notices).
- **No torn or recycled byte.** A read transaction is an MVCC snapshot: a chunk deleted by
  garbage collection (or quarantined) while it is read stays intact in this snapshot, and
  its pages are not reused until the transaction ends. Transactions are short: one chunk
  lookup, one checksum, one copy, in a worker thread — never held across a socket write
  (a slow client would pin the node's free pages). So the bytes leave the map by one
  memcpy (about 0.5 ms per 4 MiB chunk), instead of the node's copy, gRPC's framing, two
  loopback copies and the gateway's receive path.
- **A dead node changes nothing.** Committed LMDB data is consistent on disk whatever
  happens to the writer (SIGKILL included), so reads go on from the snapshot each new
  transaction sees; a chunk not there (missing, or written later) is read over gRPC.
- **A replaced store is noticed.** When `data.mdb` is not the file that was opened (a
  node's data directory wiped and re-created), the environment is reopened.

Nothing here writes: a gateway cannot quarantine, delete or create anything in the
node's store. It needs read access to `data.mdb` and write access to `lock.mdb` (the
reader table), i.e. to run as the node's user or group (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time

import lmdb
from prometheus_client import Counter

from cargohold.digests import checksum_of
from cargohold.log import log_event

logger = logging.getLogger("cargohold.gateway.cluster")

CHECKSUM_LEN = 16  # node/chunkstore.py's value format: xxh3-128 checksum, then data
# After a failed open (no store yet, no permission), the next attempt waits this long.
REOPEN_AFTER_SECONDS = 1.0
# How often the identity of data.mdb is compared with the file that was opened.
RECHECK_FILE_SECONDS = 5.0

READS = Counter(
    "cargohold_gateway_local_chunk_reads_total",
    "Chunk reads tried in the co-located node's LMDB (gateway.local_node_data_dir), by "
    "result: hit (served from it), miss (not there: read over gRPC), corrupt (failed its "
    "check: refused, read from a replica), error (a read failed: read over gRPC), "
    "unavailable (the store could not be opened: read over gRPC)",
    ["result"],
)
READ_BYTES = Counter(
    "cargohold_gateway_local_chunk_read_bytes_total",
    "Chunk bytes served from the co-located node's LMDB",
)


class LocalCopyCorrupt(Exception):
    """The local copy failed its checksum (or sha256, or length): never served."""


class _Unavailable(Exception):
    """The store is not open (it failed to open lately): read over gRPC."""


class _Handle:
    """One open environment and the reads using it: closed once retired and unused
    (closing an LMDB environment invalidates its transactions and unmaps their bytes)."""

    def __init__(self, env: lmdb.Environment, db: lmdb._Database, file_id: object) -> None:
        self.env, self.db, self.file_id = env, db, file_id
        self.users = 0
        self.retired = False

    def release_if_done(self) -> None:
        if self.retired and self.users == 0:
            self.env.close()


class LocalChunkStore:
    """Read-only view of one node's chunk LMDB; see the module docstring."""

    def __init__(self, data_dir: str, verify: str = "xxh3") -> None:
        self.path = os.path.join(data_dir, "chunks")
        self.verify = verify
        self._lock = threading.Lock()
        self._handle: _Handle | None = None
        self._next_open = 0.0
        self._next_check = 0.0

    async def read(self, chunk_id: bytes, length: int | None) -> bytes | None:
        """The verified bytes of a chunk held locally; None when not held (or the store
        cannot be read now). Raises LocalCopyCorrupt for a copy that fails its check."""
        try:
            data = await asyncio.to_thread(self._read, chunk_id, length)
        except _Unavailable:
            READS.labels("unavailable").inc()
            return None
        except LocalCopyCorrupt:
            READS.labels("corrupt").inc()
            log_event(
                logger,
                "cluster.local_chunk_corrupt",
                logging.WARNING,
                path=self.path,
                chunk=chunk_id.hex(),
            )
            raise
        except lmdb.Error as exc:
            READS.labels("error").inc()
            log_event(
                logger, "cluster.local_read_failed", logging.WARNING, path=self.path, error=str(exc)
            )
            self.close()
            return None
        if data is None:
            READS.labels("miss").inc()
            return None
        READS.labels("hit").inc()
        READ_BYTES.inc(len(data))
        return data

    def close(self) -> None:
        """Let go of the environment (closed once the reads using it end); a later read
        opens it again."""
        with self._lock:
            self._retire_locked()

    # --- worker threads ---------------------------------------------------------------

    def _read(self, chunk_id: bytes, length: int | None) -> bytes | None:
        handle = self._acquire()
        if handle is None:
            raise _Unavailable
        try:
            return self._read_in(handle, chunk_id, length)
        finally:
            with self._lock:
                handle.users -= 1
                handle.release_if_done()

    def _read_in(self, handle: _Handle, chunk_id: bytes, length: int | None) -> bytes | None:
        try:
            txn = handle.env.begin(db=handle.db, buffers=True)
        except lmdb.MapResizedError:
            handle.env.set_mapsize(0)  # the node grew its map: adopt its meta page's size
            txn = handle.env.begin(db=handle.db, buffers=True)
        with txn:
            value = txn.get(chunk_id)
            if value is None:
                return None
            view = memoryview(value)
            data = view[CHECKSUM_LEN:]
            if len(view) < CHECKSUM_LEN or (length is not None and len(data) != length):
                raise LocalCopyCorrupt
            if self.verify == "sha256":
                ok = hashlib.sha256(data).digest() == chunk_id
            else:
                ok = checksum_of(data) == bytes(view[:CHECKSUM_LEN])
            if not ok:
                raise LocalCopyCorrupt
            # The one copy: the map's pages are this snapshot's only inside the txn.
            return bytes(data)

    def _acquire(self) -> _Handle | None:
        now = time.monotonic()
        with self._lock:
            handle = self._handle
            if handle is not None and now >= self._next_check:
                self._next_check = now + RECHECK_FILE_SECONDS
                if self._current_file_id() != handle.file_id:
                    log_event(logger, "cluster.local_store_replaced", path=self.path)
                    self._retire_locked()
                    handle = None
            if handle is None:
                if now < self._next_open:
                    return None
                self._next_open = now + REOPEN_AFTER_SECONDS
                handle = self._open_locked()
                if handle is None:
                    return None
                self._handle = handle
                self._next_check = now + RECHECK_FILE_SECONDS
            handle.users += 1
            return handle

    def _open_locked(self) -> _Handle | None:
        try:
            file_id = self._current_file_id()
            if file_id is None:
                raise FileNotFoundError(os.path.join(self.path, "data.mdb"))
            env = lmdb.open(
                self.path,
                readonly=True,
                lock=True,
                subdir=True,
                create=False,
                max_dbs=3,
                map_size=0,  # the node's map size, from the meta page
            )
            try:
                db = env.open_db(b"chunks", create=False)
            except lmdb.Error:
                env.close()
                raise
        except (lmdb.Error, OSError) as exc:
            log_event(
                logger, "cluster.local_store_unavailable", logging.WARNING, path=self.path,
                error=str(exc),
            )  # fmt: skip
            return None
        log_event(logger, "cluster.local_store_open", path=self.path)
        return _Handle(env, db, file_id)

    def _current_file_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(os.path.join(self.path, "data.mdb"))
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _retire_locked(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.retired = True
            handle.release_if_done()

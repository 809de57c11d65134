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
  lookup, one checksum, one copy, in a worker thread. So the bytes leave the map by one
  memcpy (about 0.5 ms per 4 MiB chunk), instead of the node's copy, gRPC's framing, two
  loopback copies and the gateway's receive path.
- **Zero-copy sends, bounded holds** (`send`; `gateway.local_sendfile`, on by default,
  used by blob GETs on plain-HTTP connections: gateway/local_send.py). LMDB keeps a value
  bigger than a page in contiguous overflow pages, so a chunk's bytes are one range of
  `data.mdb`; its file offset is the value's address minus the start of this process's
  mapping of the file (cargohold/map_offsets.py), confirmed per send by reading its
  first 32 bytes back with `pread` (a mismatch, or any doubt, copies instead). Inside the
  read transaction the chunk is verified as above, then `sendfile(2)` moves it from the
  page cache to the client's socket with no copy in user space, in a worker thread
  waiting (`poll`) while the socket is full. This transaction *is* held across socket
  writes, so a slow client pins the node's free pages (and, with garbage collection
  running, grows its file) for at most `gateway.sendfile_hold_seconds` (1 s) per chunk:
  then the rest of the chunk is copied out, the transaction ends and the copy is written
  the usual way.
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
import contextlib
import hashlib
import logging
import os
import select
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import lmdb
from prometheus_client import Counter

from cargohold.digests import checksum_of
from cargohold.local_readers import ReaderMark
from cargohold.log import log_event
from cargohold.map_offsets import FileMaps, Mapping, buffer_address
from cargohold.mapped_pages import release_folios
from cargohold.warm_pool import WarmThreadPool

_T = TypeVar("_T")

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
SENDS = Counter(
    "cargohold_gateway_local_sendfile_total",
    "Local chunk sends by sendfile (gateway.local_sendfile), by result: whole (every byte "
    "by sendfile), written (every byte written from the map: a loopback client, "
    "gateway.local_sendfile_loopback), cut (the client was slower than "
    "gateway.sendfile_hold_seconds allows: the rest copied), copied (no usable file offset "
    "for the value: copied)",
    ["result"],
)
SENDFILE_BYTES = Counter(
    "cargohold_gateway_local_sendfile_bytes_total",
    "Chunk bytes sent from the co-located node's data.mdb by sendfile (no user-space copy)",
)
WRITTEN_BYTES = Counter(
    "cargohold_gateway_local_written_bytes_total",
    "Chunk bytes written to loopback clients straight from the LMDB map (one kernel copy)",
)
# Bytes compared by `pread` at a computed file offset before any sendfile from it.
CONFIRM_BYTES = 32
# Longest one wait for room in the client's socket (the closed-connection check between).
POLL_SLICE_SECONDS = 0.1


@dataclass(frozen=True)
class LocalSend:
    """What `LocalChunkStore.send` did: `sent` bytes went out by sendfile; `rest` (the
    remainder of the requested slice, verified and copied) is the caller's to write."""

    sent: int
    rest: bytes


class LocalCopyCorrupt(Exception):
    """The local copy failed its checksum (or sha256, or length): never served."""


class _Unavailable(Exception):
    """The store is not open (it failed to open lately): read over gRPC."""


class _Handle:
    """One open environment and the reads using it: closed once retired and unused
    (closing an LMDB environment invalidates its transactions and unmaps their bytes)."""

    def __init__(
        self,
        env: lmdb.Environment,
        db: lmdb._Database,
        file_id: object,
        path: str,
        mark: ReaderMark,
    ) -> None:
        self.env, self.db, self.file_id = env, db, file_id
        # Tells the node a gateway reads this store (cargohold/local_readers.py).
        self.mark = mark
        self.users = 0
        self.retired = False
        self.path = path
        # data.mdb opened for sendfile and its mappings; on first use (not every gateway
        # sends files).
        self.data_fd: int | None = None
        self.maps: FileMaps | None = None

    def file(self) -> tuple[int, FileMaps]:
        """data.mdb's descriptor and mappings (caller holds a use of this handle)."""
        if self.data_fd is None or self.maps is None:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            st = os.fstat(fd)
            self.data_fd, self.maps = fd, FileMaps(self.path, st.st_dev, st.st_ino)
        return self.data_fd, self.maps

    def release_if_done(self) -> None:
        if self.retired and self.users == 0:
            self.env.close()
            self.mark.close()
            if self.data_fd is not None:
                os.close(self.data_fd)
                self.data_fd = None


class LocalChunkStore:
    """Read-only view of one node's chunk LMDB; see the module docstring."""

    def __init__(self, data_dir: str, verify: str = "xxh3", send_threads: int = 16) -> None:
        self.path = os.path.join(data_dir, "chunks")
        self.verify = verify
        self._lock = threading.Lock()
        self._file_lock = threading.Lock()
        self._send_threads = send_threads
        self._sender: WarmThreadPool | None = None
        self._handle: _Handle | None = None
        self._next_open = 0.0
        self._next_check = 0.0
        self._keeper: asyncio.Task[None] | None = None

    async def read(self, chunk_id: bytes, length: int | None) -> bytes | None:
        """The verified bytes of a chunk held locally; None when not held (or the store
        cannot be read now). Raises LocalCopyCorrupt for a copy that fails its check."""
        data = await self._counted(asyncio.to_thread(self._read, chunk_id, length), chunk_id)
        if data is not None:
            READ_BYTES.inc(len(data))
        return data

    async def holds(self, chunk_id: bytes) -> bool:
        """Whether the store holds the chunk now (a lookup, no check): a cheap probe
        before `send`. False when the store cannot be read."""
        try:
            return await asyncio.to_thread(self._holds, chunk_id)
        except (_Unavailable, lmdb.Error):
            return False

    async def send(
        self,
        chunk_id: bytes,
        length: int | None,
        lo: int,
        hi: int,
        sock_fd: int,
        hold_seconds: float,
        closing: Callable[[], bool],
        mapped: bool = False,
    ) -> LocalSend | None:
        """Send bytes [lo, hi) of a local chunk to the socket `sock_fd` (non-blocking,
        nothing buffered ahead of it) by sendfile (`mapped`: written from the LMDB map,
        gateway/send_probe.py), verified first (module docstring);
        None when not held (or the store cannot be read now): nothing was sent. Raises
        LocalCopyCorrupt (nothing sent), or OSError when the client went away (`closing()`
        turned true, or the socket failed) after part was sent."""
        # The worker uses its own descriptor of the socket: should the connection be
        # closed meanwhile, its number may be reused by another connection at once.
        fd = os.dup(sock_fd)
        try:
            work = asyncio.get_running_loop().run_in_executor(
                self._send_executor(),
                self._send,
                fd,
                (chunk_id, length, lo, hi, hold_seconds, closing, mapped),
            )
        except RuntimeError:  # the executor shut down by a concurrent close()
            os.close(fd)
            return None  # the caller reads the chunk the usual way
        done = await self._counted(work, chunk_id)
        if done is not None:
            READ_BYTES.inc(hi - lo)
        return done

    async def _counted(self, work: Awaitable[_T | None], chunk_id: bytes) -> _T | None:
        """The outcome of one local read or send, counted by result: None when the store
        cannot be read now or does not hold the chunk; LocalCopyCorrupt raised on."""
        try:
            done = await work
        except _Unavailable:
            READS.labels("unavailable").inc()
            return None
        except LocalCopyCorrupt:
            self._count_corrupt(chunk_id)
            raise
        except lmdb.Error as exc:
            self._count_error(exc)
            return None
        READS.labels("miss" if done is None else "hit").inc()
        return done

    def start(self) -> None:
        """Keep the store open from the start, not from the first read: its mark tells the
        node to keep what it writes cached for the sends (cargohold/local_readers.py)."""
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_open())

    async def stop(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        self.close()

    async def _keep_open(self) -> None:
        while True:
            await asyncio.to_thread(self.ensure_open)
            await asyncio.sleep(RECHECK_FILE_SECONDS)

    def ensure_open(self) -> bool:
        """Open the store (or notice it was replaced) and mark it read; whether it is open."""
        handle = self._acquire()
        if handle is None:
            return False
        with self._lock:
            if not handle.mark.held and not handle.retired:
                handle.mark = ReaderMark(self.path)  # the node made the file after we opened
        self._release(handle)
        return True

    def close(self) -> None:
        """Let go of the environment (closed once the reads using it end); a later read
        opens it again."""
        with self._lock:
            self._retire_locked()
            sender, self._sender = self._sender, None
        if sender is not None:
            sender.shutdown(wait=False)

    def _send_executor(self) -> WarmThreadPool:
        if self._sender is None:
            self._sender = WarmThreadPool(self._send_threads, thread_name_prefix="local-sendfile")
        return self._sender

    def _count_corrupt(self, chunk_id: bytes) -> None:
        READS.labels("corrupt").inc()
        log_event(
            logger, "cluster.local_chunk_corrupt", logging.WARNING, path=self.path,
            chunk=chunk_id.hex(),
        )  # fmt: skip

    def _count_error(self, exc: lmdb.Error) -> None:
        READS.labels("error").inc()
        log_event(
            logger, "cluster.local_read_failed", logging.WARNING, path=self.path, error=str(exc)
        )
        self.close()

    # --- worker threads ---------------------------------------------------------------

    def _read(self, chunk_id: bytes, length: int | None) -> bytes | None:
        handle = self._acquire()
        if handle is None:
            raise _Unavailable
        try:
            return self._read_in(handle, chunk_id, length)
        finally:
            self._release(handle)

    def _read_in(self, handle: _Handle, chunk_id: bytes, length: int | None) -> bytes | None:
        with self._begin(handle) as txn:
            value = self._verified(txn, chunk_id, length)
            if value is None:
                return None
            # The one copy: the map's pages are this snapshot's only inside the txn.
            return bytes(value[CHECKSUM_LEN:])

    def _holds(self, chunk_id: bytes) -> bool:
        handle = self._acquire()
        if handle is None:
            raise _Unavailable
        try:
            with self._begin(handle) as txn:
                return txn.get(chunk_id) is not None
        finally:
            self._release(handle)

    def _send(
        self,
        sock_fd: int,
        args: tuple[bytes, int | None, int, int, float, Callable[[], bool], bool],
    ) -> LocalSend | None:
        try:
            handle = self._acquire()
            if handle is None:
                raise _Unavailable
            try:
                return self._send_in(handle, sock_fd, *args)
            finally:
                self._release(handle)
        finally:
            os.close(sock_fd)

    def _send_in(
        self,
        handle: _Handle,
        sock_fd: int,
        chunk_id: bytes,
        length: int | None,
        lo: int,
        hi: int,
        hold_seconds: float,
        closing: Callable[[], bool],
        mapped: bool,
    ) -> LocalSend | None:
        deadline = time.monotonic() + hold_seconds
        with self._begin(handle) as txn:
            value = self._verified(txn, chunk_id, length)
            if value is None:
                return None
            size = len(value) - CHECKSUM_LEN
            if not 0 <= lo <= hi <= size:
                raise ValueError(f"slice [{lo}, {hi}) of a {size}-byte chunk")
            piece = value[CHECKSUM_LEN + lo : CHECKSUM_LEN + hi]
            found = self._file_offset(handle, value)
            if found is None:
                SENDS.labels("copied").inc()
                return LocalSend(0, bytes(piece))
            data_fd, offset, mapping = found
            try:
                if mapped:
                    sent = send_buffer(sock_fd, piece, deadline, closing)
                    WRITTEN_BYTES.inc(sent)
                else:
                    sent = send_file(
                        sock_fd, data_fd, offset + CHECKSUM_LEN + lo, hi - lo, deadline, closing
                    )
                    SENDFILE_BYTES.inc(sent)
                if sent == hi - lo:
                    SENDS.labels("written" if mapped else "whole").inc()
                    return LocalSend(sent, b"")
                # Held as long as allowed: copy the rest out and let the snapshot go.
                SENDS.labels("cut").inc()
                log_event(
                    logger, "cluster.local_sendfile_cut", logging.DEBUG, chunk=chunk_id.hex(),
                    sent=sent, rest=hi - lo - sent,
                )  # fmt: skip
                return LocalSend(sent, bytes(piece[sent:]))
            finally:
                _unmap(value, mapping)

    def _file_offset(self, handle: _Handle, value: memoryview) -> tuple[int, int, Mapping] | None:
        """(data.mdb's descriptor, offset of `value` in it, the mapping holding it),
        confirmed by reading its first bytes back; None when that cannot be had (then the
        caller copies)."""
        try:
            with self._file_lock:
                data_fd, maps = handle.file()
            address = buffer_address(value)
            for _attempt in range(2):
                mapping = maps.mapping_of(address, len(value))
                if mapping is None:
                    return None
                offset = mapping.offset_at(address)
                head = min(CONFIRM_BYTES, len(value))
                if (
                    offset + len(value) <= os.fstat(data_fd).st_size
                    and os.pread(data_fd, head, offset) == value[:head]
                ):
                    return data_fd, offset, mapping
                maps.forget()  # a stale mapping (the map moved): look again, once
        except (OSError, BufferError) as exc:
            log_event(
                logger, "cluster.local_sendfile_unavailable", logging.WARNING, path=self.path,
                error=str(exc),
            )  # fmt: skip
        return None

    @staticmethod
    def _begin(handle: _Handle) -> lmdb.Transaction:
        try:
            return handle.env.begin(db=handle.db, buffers=True)
        except lmdb.MapResizedError:
            handle.env.set_mapsize(0)  # the node grew its map: adopt its meta page's size
            if handle.maps is not None:
                handle.maps.forget()
            return handle.env.begin(db=handle.db, buffers=True)

    def _verified(
        self, txn: lmdb.Transaction, chunk_id: bytes, length: int | None
    ) -> memoryview | None:
        """The stored value (`checksum || data`) once its data passed the check; None when
        not held. Valid only inside `txn`."""
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
        return view

    def _release(self, handle: _Handle) -> None:
        """One use of `handle` (from `_acquire`) ended."""
        with self._lock:
            handle.users -= 1
            handle.release_if_done()

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
        mark = ReaderMark(self.path)
        log_event(logger, "cluster.local_store_open", path=self.path, marked=mark.held)
        return _Handle(env, db, file_id, os.path.join(self.path, "data.mdb"), mark)

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


def _unmap(value: memoryview, mapping: Mapping) -> None:
    """After a send: let go of this process's mapping of the value's pages, which its
    check (and the lookup before it) faulted in. The pages stay in the page cache (the
    sends read them there); only this gateway's page tables and resident size shrink,
    instead of growing towards every chunk it ever sent."""
    try:
        release_folios(value, mapping)
    except (OSError, ValueError, BufferError):
        pass  # advice only


def send_file(
    sock_fd: int,
    file_fd: int,
    offset: int,
    count: int,
    deadline: float,
    closing: Callable[[], bool],
) -> int:
    """sendfile(2) `count` bytes of `file_fd` from `offset` to the non-blocking socket,
    waiting for room while it is full, until all went out or `deadline` (monotonic) has
    passed; the number of bytes sent. A file shorter than expected stops it early (the
    caller copies the rest). Raises ConnectionResetError once `closing()` is true, and
    OSError (EPIPE, ECONNRESET...) when the client went away."""
    return _push(
        sock_fd,
        count,
        deadline,
        closing,
        lambda sent: os.sendfile(sock_fd, file_fd, offset + sent, count - sent),
    )


def send_buffer(
    sock_fd: int, data: memoryview, deadline: float, closing: Callable[[], bool]
) -> int:
    """write(2) `data` (here: a value in the LMDB map, so the kernel copies it from the page
    cache into the socket) to the non-blocking socket, as `send_file` does otherwise."""
    return _push(sock_fd, len(data), deadline, closing, lambda sent: os.write(sock_fd, data[sent:]))


def _push(
    sock_fd: int,
    count: int,
    deadline: float,
    closing: Callable[[], bool],
    step: Callable[[int], int],
) -> int:
    """`step(sent)` (one non-blocking send of what is left) until `count` bytes went out,
    waiting for room while the socket is full, or until `deadline`; a step of 0 ends it."""
    sent = 0
    poller: select.poll | None = None
    while sent < count:
        if closing():
            raise ConnectionResetError("the connection is closing")
        try:
            n = step(sent)
        except BlockingIOError:
            n = -1
        if n == 0:
            return sent  # past the end of the file
        if n > 0:
            sent += n
            if sent < count and time.monotonic() >= deadline:
                return sent
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            return sent
        if poller is None:
            poller = select.poll()
            poller.register(sock_fd, select.POLLOUT)
        poller.poll(min(left, POLL_SLICE_SECONDS) * 1000)
    return sent

"""Single-flight, streamed blob downloads from an upstream (the pull-through cache's core).

`Fetches.join(upstream, repo, upstream_repo, digest)` returns the one `BlobFetch` of that
blob in this gateway, starting it if none runs: however many clients pull an uncached
blob at once, the upstream sees one GET. The download runs in a task of its own (a client
going away cancels nothing). Each piece, as it arrives, is hashed (the blob's digest)
and appended to a spool file (an unlinked temporary file in `mirror.spool_dir`), from
which every waiting client streams at its own pace (`BlobFetch.stream`), so the first
bytes reach clients while the download goes on. The last `mirror.stream_memory_bytes` of
the download are kept in memory too: readers near its front (the usual case) are sent
those bytes as they are, with no re-read of the spool. A download whose announced size
fits in the gateway's memory pool (`mirror.memory_pool_bytes`, at most
`mirror.memory_blob_bytes` each; gateway/mirror/pool.py) is not spooled at all: all its
pieces stay in memory until its last reader is done, and every reader is sent them (the
pieces the upstream socket handed over, shared by every reader, never copied).

Clients first, the cluster after: once the download is verified (every byte may reach
the clients), one more reader of it feeds `gateway.chunking.ingest`, which cuts, hashes
and writes the bytes into the cluster like a pushed blob, and the recipe is committed.
That write is the gateway's (and the nodes') biggest CPU cost of a cold pull, several
times a direct pull's, so it never runs beside the download or the clients if it can
wait: it starts once this gateway has had no download running and no client with
proxied bytes waiting to be sent for `mirror.store_quiet_seconds` (`Streams`; a client
pulling an image leaves gaps between its blob requests), and pauses while it has, at most
`mirror.store_yield_seconds` in all after the download's end. The bytes it will write
stay where they are meanwhile (in the memory pool or the spool), the downloads waiting
to start their write at most `mirror.store_defer_bytes` in all (one beyond that writes at
once), at most `mirror.max_concurrent_stores` writes at a time. A pull that joins the
download meanwhile is served from those bytes; a gateway that dies before the commit
leaves unreferenced chunks at most, and the next pull fetches the blob again.

Nothing is visible before the digest is verified: the recipe is committed (`blob_commit`,
linking the blob into the proxy repository, so retention and GC treat it like pushed
content) only when the bytes hash to the digest asked for (and their count matches the
upstream's Content-Length). Clients are never handed the last byte before that check: a
download that fails or mismatches ends every client's response short (the connection is
closed), so a client never receives a complete wrong blob; and nothing of it has been
written to the cluster (the write starts after the check).

A stored download stays joinable for `mirror.fetch_linger_seconds` (pulls that missed the
blob in the cluster just before the commit join it rather than fetch again), but its
bytes go as soon as its last client is done: a pull joining it after that is handed the
committed recipe and reads the cluster (`BlobFetch.stored`).

Single flight is per gateway: N gateways pulling the same cold blob at once fetch it at
most N times (docs/mirroring.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from cargohold.concurrency import hash_off_loop
from cargohold.config import Config
from cargohold.digests import new_hasher, parse_digest
from cargohold.errors import SizeInvalid
from cargohold.log import log_event
from cargohold.metadata_api import Recipe
from cargohold.periodic import cancel_all_and_wait
from gateway.chunking import ingest
from gateway.cluster import ClusterClient
from gateway.mirror.metrics import (
    BLOB_FETCHES,
    FETCHED_BYTES,
    FETCHES_IN_FLIGHT,
    STORES_DEFERRED,
)
from gateway.mirror.pieces import Pieces
from gateway.mirror.pool import MemoryPool
from gateway.mirror.upstream import Upstream, UpstreamFailed

logger = logging.getLogger("cargohold.gateway.mirror")

# Largest piece read from the upstream at once when spooling (appended in one write).
_PIECE = 1024 * 1024
# Largest piece a client is sent from the spool at once.
_SEND = 256 * 1024

Commit = Callable[[str, str, Recipe], Awaitable[None]]


class DigestMismatch(Exception):
    """The upstream's bytes do not hash to the digest they were asked by."""


class Streams:
    """This gateway's proxied traffic: upstream blob downloads running (`downloading`) and
    client responses with proxied bytes ready and not yet sent (`behind`). Cluster writes
    of downloads wait for neither to be left, and for that to have lasted `quiet`
    seconds (`wait_idle`: a client pulling an image leaves gaps between its blob requests),
    and a finished download's write waits to start (`defer`) with at most `defer_limit`
    bytes of such downloads."""

    def __init__(self, defer_limit: int = 0, quiet: float = 0.0) -> None:
        self.behind = 0
        self.downloading = 0
        self.defer_limit = defer_limit
        self.quiet = quiet
        self.deferred = 0  # bytes of finished downloads whose cluster write waits to start
        self._idle = asyncio.Event()
        self._idle.set()
        self._idle_since = float("-inf")  # monotonic time the traffic last ended

    def enter(self) -> None:
        self.behind += 1
        self._idle.clear()

    def leave(self) -> None:
        self.behind -= 1
        self._check()

    def download_started(self) -> None:
        self.downloading += 1
        self._idle.clear()

    def download_ended(self) -> None:
        self.downloading -= 1
        self._check()

    def _check(self) -> None:
        if self.behind == 0 and self.downloading == 0:
            self._idle_since = time.monotonic()
            self._idle.set()

    async def wait_idle(self, seconds: float) -> None:
        """Return when no download has run and no client has been behind for `quiet`
        seconds, or after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not self._idle.is_set():
                try:
                    async with asyncio.timeout(left):
                        await self._idle.wait()
                except TimeoutError:
                    return
                continue
            idle = time.monotonic() - self._idle_since
            if idle >= self.quiet:
                return
            await asyncio.sleep(min(self.quiet - idle, left))

    async def defer(self, size: int, deadline: float) -> bool:
        """A finished download of `size` bytes waits to start its cluster write: until
        this gateway is idle or `deadline` (monotonic). False, at once, if the downloads
        already waiting and this one would hold more than `defer_limit` bytes: then the
        write must not pause at all (the held bytes stay bounded)."""
        if self.deferred + size > self.defer_limit:
            return False
        self.deferred += size
        STORES_DEFERRED.set(self.deferred)
        try:
            await self.wait_idle(deadline - time.monotonic())
        finally:
            self.deferred -= size
            STORES_DEFERRED.set(self.deferred)
        return True


class BlobFetch:
    """One upstream download of one blob, spooled for its readers and stored."""

    def __init__(
        self,
        repo: str,
        digest: str,
        streams: Streams,
        memory_bytes: int,
        pool: MemoryPool | None = None,
    ) -> None:
        self.repo = repo
        self.digest = digest
        self.size: int | None = None  # the upstream's Content-Length, once answered
        self.written = 0  # bytes in the spool
        self.verified = False  # the digest matched: the whole spool may be read
        self.committed = False
        self.recipe: Recipe | None = None  # what was committed
        self._closed = False  # finished and its last reader gone: its bytes are released
        self.error: BaseException | None = None
        self.headers: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._progress = asyncio.Event()
        self._fd: int | None = None
        self._readers = 0
        self._finished = False
        self._streams = streams
        # The download's last pieces (offset, bytes), at most `_memory_bytes` beyond the
        # newest one: readers near the front are sent these without reading the spool.
        self._recent = Pieces(keep=memory_bytes)
        # Whole in memory (`_held` bytes reserved in `_pool`): every piece stays in
        # `_recent`, nothing is spooled (gateway/mirror/pool.py).
        self._pool = pool
        self._held = 0
        self.task: asyncio.Task[None] | None = None

    # The writer side (the download task).

    def _notify(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    @property
    def in_memory(self) -> bool:
        """The download is kept whole in memory, not spooled."""
        return self._held > 0

    def _hold(self, size: int | None) -> None:
        """Keep the download in memory if the pool has room for its announced size."""
        if size and self._pool is not None and self._pool.reserve(size):
            self._held = size
            self._recent = Pieces(keep=None)

    async def _append(self, data: bytes, hasher: Any) -> None:
        if self.in_memory:
            if self.written + len(data) > self._held:
                raise UpstreamFailed(f"blob download: more bytes than the {self._held} announced")
            await hash_off_loop(len(data), hasher.update, data)
        else:
            if self._fd is None:
                self._fd = await asyncio.to_thread(_spool_fd, self._spool_dir)
            await asyncio.to_thread(_spool_write, self._fd, data, self.written, hasher)
        self._recent.append(self.written, data)
        self.written += len(data)
        FETCHED_BYTES.labels(self.proxy).inc(len(data))
        self._notify()

    async def run(
        self,
        upstream: Upstream,
        cluster: ClusterClient,
        cfg: Config,
        commit: Commit,
        slots: asyncio.Semaphore,
        stores: asyncio.Semaphore,
    ) -> None:
        self._spool_dir = cfg.mirror.spool_dir or None
        started = time.monotonic()
        try:
            async with slots:
                await self._download(upstream, cfg)
            downloaded = time.monotonic()
            await self._store(cluster, cfg, commit, stores)
            BLOB_FETCHES.labels(self.proxy, "stored").inc()
            log_event(
                logger,
                "mirror.blob_fetched",
                repo=self.repo,
                digest=self.digest,
                size=self.written,
                seconds=round(time.monotonic() - started, 3),
                download_seconds=round(downloaded - started, 3),
            )
        except BaseException as exc:
            self.error = exc
            outcome = "mismatch" if isinstance(exc, DigestMismatch) else "failed"
            BLOB_FETCHES.labels(self.proxy, outcome).inc()
            if not self.headers.done():
                if isinstance(exc, asyncio.CancelledError):
                    self.headers.cancel()
                else:
                    self.headers.set_exception(exc)
                    self.headers.exception()
            log_event(
                logger,
                "mirror.blob_fetch_failed",
                logging.WARNING,
                repo=self.repo,
                digest=self.digest,
                error=f"{type(exc).__name__}: {exc}",
            )
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._finished = True
            if not self.in_memory:
                self._recent.clear()  # late readers read the spool
            if not self.done.done():
                self.done.set_result(None)
            self._notify()
            self._maybe_close()

    async def _download(self, upstream: Upstream, cfg: Config) -> None:
        """Download, hash and hold the blob (clients stream it meanwhile) until verified."""
        algorithm, _ = parse_digest(self.digest)
        hasher = new_hasher(algorithm)
        limit = cfg.gateway.max_blob_size or None
        self._streams.download_started()
        try:
            async with upstream.open_blob(self.repo_upstream, self.digest) as resp:
                self.size = resp.content_length
                self._hold(self.size)
                self.headers.set_result(self.size)
                try:
                    # Held in memory: the pieces as the socket reads made them (no join
                    # into 1 MiB pieces, one copy less). Spooled: 1 MiB per worker hop.
                    body = resp.content
                    pieces = body.iter_any() if self.in_memory else body.iter_chunked(_PIECE)
                    async for data in pieces:
                        if limit is not None and self.written + len(data) > limit:
                            raise SizeInvalid(
                                "blob exceeds the size limit", detail={"limit": limit}
                            )
                        await self._append(data, hasher)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    raise UpstreamFailed(f"blob download: {type(exc).__name__}: {exc}") from None
        finally:
            self._streams.download_ended()
        got = f"{algorithm}:{hasher.hexdigest()}"
        if got != self.digest or (self.size is not None and self.written != self.size):
            raise DigestMismatch(f"upstream sent {self.written} bytes hashing to {got}")
        self.size = self.written
        self.verified = True
        self._notify()

    async def _store(
        self, cluster: ClusterClient, cfg: Config, commit: Commit, stores: asyncio.Semaphore
    ) -> None:
        """Write the verified bytes into the cluster and commit the recipe. Clients have
        every byte by now (or read them from memory or the spool at their pace): the write
        waits for this gateway's downloads and clients (`Streams.defer`), pauses for them
        while it runs, both within `store_yield_seconds` of the download's end."""
        deadline = time.monotonic() + cfg.mirror.store_yield_seconds
        if not await self._streams.defer(self.written, deadline):
            deadline = 0.0  # beyond `store_defer_bytes`: written now, without pauses
        async with stores:
            chunks, total = await ingest(
                cluster,
                _SpoolBody(self, deadline),
                _NO_DIGEST,
                cfg.cluster.chunk_size,
                cfg.gateway.upload_writes_in_flight,
                limit=cfg.gateway.max_blob_size or None,
            )
        recipe = Recipe(size=total, chunks=chunks)
        await commit(self.repo, self.digest, recipe)
        self.recipe = recipe
        self.committed = True

    repo_upstream: str = ""
    proxy: str = ""  # the proxy namespace (metrics label)
    _spool_dir: str | None = None

    # The reader side (client responses).

    async def stream(
        self, start: int, end: int | None, client: bool = True
    ) -> AsyncIterator[bytes | memoryview]:
        """Bytes [start, end) of the blob (end None: to the end) as the download brings
        them; raises the download's error instead of ever yielding unverified last bytes.
        A `client` stream counts in `Streams` while bytes are ready for it."""
        pos = start
        behind = False
        try:
            while end is None or pos < end:
                progress = self._progress
                if self.error is not None and not self.verified:
                    raise self.error
                # Everything but the last byte may go before the digest is checked.
                readable = self.written if self.verified else max(self.written - 1, 0)
                if end is not None:
                    readable = min(readable, end)
                if pos < readable:
                    if client and not behind:
                        behind = True
                        self._streams.enter()
                    data: bytes | memoryview | None = self._in_memory(pos, readable)
                    if data is None:
                        assert self._fd is not None
                        n = min(readable - pos, _SEND)
                        data = await asyncio.to_thread(os.pread, self._fd, n, pos)
                    pos += len(data)
                    yield data
                    continue
                if behind:
                    behind = False
                    self._streams.leave()
                if self.verified and end is None:
                    return
                if self._finished and not self.verified:
                    raise DigestMismatch("download ended unverified")
                await progress.wait()
        finally:
            if behind:
                self._streams.leave()

    def _in_memory(self, pos: int, readable: int) -> memoryview | None:
        """Bytes from `pos` (short of `readable`) out of the recent pieces, if there."""
        return self._recent.view(pos, readable)

    async def yield_to_clients(self, deadline: float) -> None:
        """The cluster write's pause: until no download runs and no client is behind in
        this gateway, or `deadline`."""
        left = deadline - time.monotonic()
        if left > 0:
            await self._streams.wait_idle(left)

    def acquire(self) -> None:
        """A reader holds the spool open until `release` (take it before awaiting)."""
        self._readers += 1

    def stored(self) -> Recipe | None:
        """The committed recipe once the download's bytes are released (every reader
        done): a pull that joins it then (while it lingers) reads the cluster instead."""
        return self.recipe if self._closed else None

    def release(self) -> None:
        self._readers -= 1
        self._maybe_close()

    def _maybe_close(self) -> None:
        if not self._finished or self._readers > 0:
            return
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._held:
            assert self._pool is not None
            self._pool.free(self._held)
            self._held = 0
            self._recent.clear()
        self._closed = True


class _SpoolBody:
    """The spool as `ingest` reads it: the bytes as they arrive, the last one once the
    digest matched (a bad download ends it with the download's error)."""

    def __init__(self, fetch: BlobFetch, deadline: float) -> None:
        self._fetch = fetch
        self._deadline = deadline

    async def iter_any(self) -> AsyncIterator[bytes | memoryview]:
        async for data in self._fetch.stream(0, None, client=False):
            await self._fetch.yield_to_clients(self._deadline)
            yield data


class _NoDigest:
    """`ingest`'s running digest, unused: the download computes the blob's digest."""

    def update(self, data: Any) -> None:
        pass


_NO_DIGEST = _NoDigest()


def _spool_write(fd: int, data: bytes, offset: int, hasher: Any) -> None:
    """Hash a piece and append it to the spool: one worker-thread hop for both."""
    hasher.update(data)
    os.pwrite(fd, data, offset)


def _spool_fd(directory: str | None) -> int:
    fd, path = tempfile.mkstemp(prefix="cargohold-mirror-", dir=directory)
    os.unlink(path)  # gone with the last descriptor, whatever happens to this process
    return fd


class Fetches:
    """The blob downloads running in this gateway, by (repository, digest)."""

    def __init__(self, cfg: Config, cluster: ClusterClient, commit: Commit) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.commit = commit
        self.slots = asyncio.Semaphore(cfg.mirror.max_concurrent_fetches)
        self.stores = asyncio.Semaphore(cfg.mirror.max_concurrent_stores)
        self.running: dict[tuple[str, str], BlobFetch] = {}
        self.streams = Streams(cfg.mirror.store_defer_bytes, cfg.mirror.store_quiet_seconds)
        self.pool = MemoryPool.from_config(cfg.mirror)
        self.started = 0  # downloads begun (tests, metrics)

    def join(self, upstream: Upstream, repo: str, upstream_repo: str, digest: str) -> BlobFetch:
        key = (repo, digest)
        fetch = self.running.get(key)
        if fetch is not None:
            return fetch
        fetch = BlobFetch(
            repo, digest, self.streams, self.cfg.mirror.stream_memory_bytes, self.pool
        )
        fetch.repo_upstream = upstream_repo
        fetch.proxy = upstream.proxy.namespace
        self.running[key] = fetch
        self.started += 1

        async def drive() -> None:
            fetch.acquire()  # the bytes stay readable while the download runs
            holding = True
            FETCHES_IN_FLIGHT.inc()
            try:
                try:
                    await fetch.run(
                        upstream, self.cluster, self.cfg, self.commit, self.slots, self.stores
                    )
                finally:
                    FETCHES_IN_FLIGHT.dec()
                if fetch.committed:
                    # The bytes are in the cluster now: the memory (or spool) goes with the
                    # last client still reading it, not after the linger. A pull that found
                    # no blob in the cluster just before the commit joins this download
                    # rather than start another one, and reads the cluster
                    # (`BlobFetch.stored`) if its bytes are gone by then.
                    holding = False
                    fetch.release()
                    await asyncio.sleep(self.cfg.mirror.fetch_linger_seconds)
            finally:
                if self.running.get(key) is fetch:
                    del self.running[key]
                if holding:
                    fetch.release()

        fetch.task = asyncio.create_task(drive())
        return fetch

    async def close(self) -> None:
        await cancel_all_and_wait([f.task for f in self.running.values()])

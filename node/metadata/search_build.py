"""`SearchIndexBuilder`: a node's search index, built in a thread of its own while the node
goes on applying commands (docs/search.md, "Where the data comes from").

At node start, and again after every snapshot load (which drops the index), the builder:

1. under the state's lock, installs an empty index (`MetadataState.search_build_begin`),
   so every command applied from then on marks the rows it changes, and takes the list of
   repositories (a copy of the keys);
2. fills it in slices: under the lock, the rows of the next tags until
   `node.search_build_slice` rows were added (a big repository is cut between slices
   too); then it releases the lock and pauses `node.search_build_pause` seconds so the
   Raft thread (apply) and queries take it;
3. sorts the orders off the lock (`SearchIndex.finish`): nothing reads them before step 4,
   commands only mark rows;
4. under the lock, recomputes the rows marked meanwhile (`sync`) and declares it ready.

Every row is computed under the lock from the applied state, so it is exact when made, and
any command applied after that marks it for step 4: the index equals what a build under one
long lock would have made at the state of step 4, yet the longest the lock is held is one
slice. A snapshot load during a build drops that index; the builder sees it is no longer the
state's and starts over.

Searches that arrive before step 4: the Metadata service waits up to
`node.search_ready_wait` seconds (`wait_ready`), then the state answers UNAVAILABLE
with the build's progress and the gateway asks the next node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from cargohold.log import log_event
from cargohold.memtune import release_memory
from node.metadata.state import MetadataState

logger = logging.getLogger("cargohold.node.search")

# Seconds before a build that failed unexpectedly is tried again.
_RETRY_SECONDS = 10.0


class SearchIndexBuilder:
    """Builds `state`'s search index in slices under `lock` (module docstring)."""

    def __init__(
        self, state: MetadataState, lock: threading.Lock, slice_rows: int, pause: float
    ) -> None:
        self._state = state
        self._lock = lock
        self._slice_rows = max(1, slice_rows)
        self._pause = max(0.0, pause)
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Searches waiting for the index (each on its event loop).
        self._waiters_lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        # Figures of the last finished build (seconds, rows, slices, longest lock hold).
        self.builds = 0
        self.last_build: dict[str, float] = {}
        with lock:
            state.search_inline = False
            state.on_search_dropped = self._wanted.set
            index = state.search_index()
            if index is None or not index.ready:
                self._wanted.set()

    def ready(self) -> bool:
        index = self._state.search_index()
        return index is not None and index.ready

    async def wait_ready(self) -> None:
        """Until the index is ready (callers bound it with `asyncio.timeout`)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        with self._waiters_lock:
            if self.ready():
                return
            self._waiters.append((loop, waiter))
        try:
            await waiter
        finally:
            with self._waiters_lock, contextlib.suppress(ValueError):
                self._waiters.remove((loop, waiter))

    def _wake_waiters(self) -> None:
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile
                loop.call_soon_threadsafe(_resolve, waiter)

    # -- the thread -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="search-index", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current slice (blocking: call it off the event loop)."""
        self._stopping.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopping.is_set():
                return
            self._wanted.clear()
            try:
                self.build()
            except Exception as exc:  # a bug must not end the thread: log, retry later
                log_event(logger, "search.index_build_failed", logging.ERROR, error=repr(exc))
                if self._stopping.wait(_RETRY_SECONDS):
                    return
                self._wanted.set()

    def build(self) -> bool:
        """One build from start to ready; False when stopped, or when a snapshot load
        replaced the index midway (a new build is wanted then)."""
        started = time.monotonic()
        with self._lock:
            index, repos = self._state.search_build_begin()
        slices = rows = 0
        longest = 0.0
        at_repo = 0
        pending: list[str] | None = None  # the listed tags of repos[at_repo]
        at_tag = 0
        while at_repo < len(repos):
            self._between_slices()
            if self._stopping.is_set():
                return False
            held = time.monotonic()
            with self._lock:
                if self._state.search_index() is not index:
                    return False
                added = 0
                while at_repo < len(repos) and added < self._slice_rows:
                    repo = repos[at_repo]
                    if pending is None:
                        pending, at_tag = list(self._state.tags.get(repo, ())), 0
                    part = pending[at_tag : at_tag + self._slice_rows - added]
                    added += index.add_tags(repo, part)
                    at_tag += len(part)
                    if at_tag >= len(pending):
                        at_repo, pending = at_repo + 1, None
            longest = max(longest, time.monotonic() - held)
            slices += 1
            rows += added
        index.finish()
        with self._lock:
            if self._state.search_index() is not index:
                return False
            index.sync()
            index.ready = True
        self._wake_waiters()
        # The build's transient lists and sort keys left free heap pages that glibc keeps:
        # give them back (a few ms, on this thread, off every lock).
        release_memory()
        self.builds += 1
        self.last_build = {
            "seconds": time.monotonic() - started,
            "rows": rows,
            "slices": slices,
            "longest_slice_seconds": longest,
        }
        log_event(
            logger,
            "search.index_built",
            tags=len(index),
            seconds=round(self.last_build["seconds"], 3),
            slices=slices,
            longest_slice_ms=round(longest * 1000, 1),
        )
        return True

    def _between_slices(self) -> None:
        """Off the lock: let the Raft thread and queries have it."""
        if self._pause:
            time.sleep(self._pause)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

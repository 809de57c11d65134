"""Free space on the filesystem holding a node's data dir, and the reserve chunk writes may
not use.

The chunk store, the Raft journal, its meta file and snapshots share one filesystem.
Chunks are the bulk of the bytes, so chunk writes stop early: they may not take the last
`reserve` bytes, which stay for Raft (appends, term/vote, snapshots, elections) and small
files. With `capacity` the filesystem's size and `free` what this process may still
allocate (statvfs `f_bavail`):

    reserve = min(capacity * node.disk_reserve_fraction, node.disk_reserve_max_bytes)
    full    once free < reserve + headroom         (the high watermark: capacity - reserve
                                                    - headroom used)
    back    once free >= reserve + 2 * headroom    (hysteresis: one crossing, one log line)

`headroom` is one chunk (cluster.chunk_size): a full node could not take one more chunk.
A single put is refused too when it would leave less than `reserve` free, whatever the
state. Figures are cached for `node.disk_check_interval` seconds (statvfs is cheap but
asked on every put); bytes written since the last look are subtracted from the cached
free figure, so a burst cannot overrun the reserve between two looks.

`DiskSpace` is shared by the event loop (admission of puts, Admin.Status) and the chunk
store's writer thread (charging written bytes, classifying a failed commit), hence its
lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cargohold.errors import StorageFull
from cargohold.log import log_event

logger = logging.getLogger("cargohold.node.disk")


@dataclass(frozen=True)
class DiskUsage:
    """One look at the data dir's filesystem, in bytes."""

    capacity: int
    free: int
    used: int
    reserve: int
    full: bool

    @property
    def writable(self) -> int:
        """What chunk writes may still use."""
        return max(0, self.free - self.reserve)

    def as_detail(self) -> dict[str, int | bool]:
        return {
            "capacity_bytes": self.capacity,
            "free_bytes": self.free,
            "used_bytes": self.used,
            "reserve_bytes": self.reserve,
            "full": self.full,
        }


def reserve_bytes(capacity: int, fraction: float, max_bytes: int) -> int:
    """The bytes chunk writes leave free: `fraction` of the filesystem, at most `max_bytes`."""
    return max(0, min(int(capacity * fraction), max_bytes))


def is_full(free: int, reserve: int, headroom: int, was_full: bool) -> bool:
    """The watermark with hysteresis (see the module docstring)."""
    if was_full:
        return free < reserve + 2 * headroom
    return free < reserve + headroom


def admits(free: int, reserve: int, nbytes: int) -> bool:
    """True when writing `nbytes` leaves at least `reserve` free."""
    return free - nbytes >= reserve


StatFn = Callable[[str], os.statvfs_result]


class DiskSpace:
    """The cached view of one data dir's filesystem; see the module docstring."""

    def __init__(
        self,
        path: str,
        reserve_fraction: float,
        reserve_max_bytes: int,
        headroom: int,
        check_interval: float = 1.0,
        node_id: str = "",
        statvfs: StatFn = os.statvfs,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._fraction = reserve_fraction
        self._max_bytes = reserve_max_bytes
        self._headroom = max(0, headroom)
        self._interval = max(0.0, check_interval)
        self._node_id = node_id
        self._statvfs = statvfs
        self._clock = clock
        self._lock = threading.Lock()
        self._usage: DiskUsage | None = None
        self._taken_at = 0.0
        self._written = 0  # bytes charged since the last statvfs

    def usage(self, fresh: bool = False) -> DiskUsage:
        """The current figures: from cache unless older than the check interval (or fresh).

        The cached free figure is lowered by the bytes charged since it was taken."""
        with self._lock:
            now = self._clock()
            if fresh or self._usage is None or now - self._taken_at >= self._interval:
                self._look(now)
            assert self._usage is not None
            if not self._written:
                return self._usage
            u = self._usage
            free = max(0, u.free - self._written)
            full = is_full(free, u.reserve, self._headroom, u.full)
            if full and not u.full:
                # A burst crossed the watermark between two looks.
                self._usage = DiskUsage(u.capacity, u.free, u.used, u.reserve, True)
                self._log_crossing(self._usage, free)
            return DiskUsage(u.capacity, free, u.used + (u.free - free), u.reserve, full)

    def admit(self, nbytes: int) -> None:
        """Raise StorageFull unless a chunk write of `nbytes` fits above the reserve."""
        u = self.usage()
        if u.full or not admits(u.free, u.reserve, nbytes):
            raise self.full_error(u)

    def charge(self, nbytes: int) -> None:
        """Count bytes just written (until the next statvfs shows them)."""
        if nbytes > 0:
            with self._lock:
                self._written += nbytes

    def full_error(self, u: DiskUsage | None = None) -> StorageFull:
        u = u or self.usage()
        who = f"node {self._node_id}" if self._node_id else "this node"
        return StorageFull(
            f"{who} has no space for chunks: {u.free} bytes free, {u.reserve} reserved "
            "for metadata",
            detail={"node": self._node_id, **u.as_detail()},
        )

    def _look(self, now: float) -> None:
        st = self._statvfs(self.path)
        capacity = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        used = max(0, capacity - st.f_bfree * st.f_frsize)
        reserve = reserve_bytes(capacity, self._fraction, self._max_bytes)
        was_full = self._usage.full if self._usage is not None else False
        full = is_full(free, reserve, self._headroom, was_full)
        usage = DiskUsage(capacity, free, used, reserve, full)
        if self._usage is None or full != was_full:
            if full or self._usage is not None:
                self._log_crossing(usage, free)
        self._usage, self._taken_at, self._written = usage, now, 0

    def _log_crossing(self, u: DiskUsage, free: int) -> None:
        log_event(
            logger,
            "node.disk_full" if u.full else "node.disk_ok",
            logging.WARNING,
            node=self._node_id,
            path=self.path,
            free=free,
            reserve=u.reserve,
            capacity=u.capacity,
        )

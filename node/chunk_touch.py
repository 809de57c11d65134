"""When each chunk of this node was last written or found present: what garbage collection
needs to spare chunks an upload is about to reference (docs/operations.md, "Garbage
collection").

The record lives in RAM only. A chunk with no entry counts as touched when the store was
opened, so after a restart every chunk is young for one grace period (the migration of
existing stores, and of a node killed mid-sweep, costs nothing on disk). Times are
`time.monotonic()` of this process: GC compares them with a mark time taken on the same
node, so no clock of another host matters.

`lock` orders a `Has` against a sweep: `Has` records its touch under the lock before it
reads, and the chunk store holds the lock from a sweep transaction's first check to its
commit, so a `Has` either touched first (the sweep spares the chunk) or reads after the
commit (it answers "absent" and the gateway writes the chunk again).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable


class ChunkTouches:
    def __init__(self) -> None:
        self.opened = time.monotonic()
        self.lock = threading.Lock()
        self._times: dict[bytes, float] = {}

    def touch(self, ids: Iterable[bytes]) -> None:
        """Record a write or a "present" answer (dict stores are atomic under the GIL)."""
        now = time.monotonic()
        times = self._times
        for chunk_id in ids:
            times[chunk_id] = now

    def last(self, chunk_id: bytes) -> float:
        return self._times.get(chunk_id, self.opened)

    def idle_before(self, chunk_id: bytes, cutoff: float) -> bool:
        """True when the chunk was last touched before `cutoff` (a monotonic time)."""
        return self.last(chunk_id) < cutoff

    def forget_before(self, cutoff: float) -> int:
        """Drop entries older than `cutoff` (they protect nothing any more); how many."""
        with self.lock:
            old = [k for k, t in self._times.items() if t < cutoff]
            for k in old:
                del self._times[k]
        return len(old)

    def __len__(self) -> int:
        return len(self._times)

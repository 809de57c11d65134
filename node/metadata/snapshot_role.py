"""The `snapshot` background role: take a Raft snapshot now, and report the last ones.

Snapshots start by themselves once the log is large enough (node/metadata/raft.py,
`_compaction_due`); this role, reached through `Admin.Trigger(role="snapshot")`, starts one
at once (before a planned restart, or for the benchmark, bench/metadata_scale.py), and its
progress is the member's snapshot figures: how many were taken, and for the recent ones
when each started, how long it took, how long the Raft thread paused for it and its size.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from node.metadata.raft import RaftMember


class SnapshotRole:
    """Admin role `snapshot`: `trigger` forces a snapshot (`wait`: until it is written or
    its writer failed)."""

    def __init__(self, raft: RaftMember, wait_limit: float = 3600.0) -> None:
        self._raft = raft
        self._wait_limit = wait_limit

    def progress(self) -> dict[str, Any]:
        return self._raft.snapshot_stats()

    async def trigger(self, wait: bool = False) -> dict[str, Any]:
        taken, failed = self._raft.snapshots_taken, self._raft.snapshots_failed
        self._raft.forceLogCompaction()
        if wait:
            deadline = time.monotonic() + self._wait_limit
            # The counters are the Raft thread's: polled, not awaited as an Event. A failed
            # writer ends the wait too (its `failed` count tells the caller): the next
            # attempt comes only when a snapshot is due again.
            while (  # noqa: ASYNC110
                self._raft.snapshots_taken == taken
                and self._raft.snapshots_failed == failed
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.05)
        return self.progress()

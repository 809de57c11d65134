"""The workloads, each a coroutine `run(ctx) -> {result_group: {cell: metrics}}`.

`ALL` is the order a system is driven in: blobs first (the big bytes), then manifests,
storms, tag writes, Raft commands (Cargohold only) and dedup (on a registry already holding
the earlier data: it measures the difference). `cell_count` lets the progress bar know.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.profiles import Profile
from bench.workloads import blobs, dedup, manifests, metadata, storms
from bench.workloads.common import Context

Workload = Callable[[Context], Awaitable[dict[str, Any]]]

ALL: dict[str, Workload] = {
    "blobs": blobs.run,
    "manifests": manifests.run,
    "pull_storm": storms.run_pull_storm,
    "push_storm": storms.run_push_storm,
    "tag_puts": manifests.run_tag_puts,
    "raft": metadata.run,
    "dedup": dedup.run,
}


def cell_count(profile: Profile, has_raft: bool) -> int:
    return (
        2 * len(profile.blob_cells)
        + len(manifests.READ_OPS) * len(profile.manifest_conns)
        + 2
        + len(profile.tag_put_conns)
        + (len(profile.raft_inflight) if has_raft else 0)
        + 1
    )

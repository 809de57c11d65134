"""Online garbage collection: the node role that gives deleted images' space back while
pushes and pulls go on (docs/operations.md, "Garbage collection").

A pass on every node, every `lifecycle.gc_interval_seconds` or at once on `trigger()`
(the Admin `Trigger` RPC, role "gc"; role "gc-dry-run" counts without deleting):

1. on the Raft leader only, the state: the trash is purged of what was deleted more than
   `lifecycle.trash_retention_seconds` ago (`trash_purge`); recipes of blobs that no
   repository links and no trashed manifest holds, seen so a grace period ago and still
   unlinked, are forgotten by `gc_prune` commands (one per `gc_prune_batch` digests; the
   state re-checks links and trash when applying), and upload sessions older than
   `node.upload_expire_after` are expired;
2. mark: note the time T, pass a Raft barrier (every command committed before T is then
   applied here), copy the applied state and collect, off the Raft lock, every chunk of
   every recipe it holds: blobs (linked or not yet pruned), manifests (their own recipes,
   so referrers and index children too), manifests in the trash, open upload sessions and
   the sealed segments of the activity log;
3. sweep this node's own store in key order: a chunk outside the mark set is deleted only
   if this node has not written it nor answered "present" for it to a `Has` since
   T - `gc_grace_seconds` (`ChunkStore.sweep` checks that in its write transaction).

A real pass that deleted anything says so in the activity log: one `gc` event per node
and pass, and one `purge` record per repository the trash purge emptied
(node/audit_events.py).

Why a push never loses a chunk: a chunk becomes referenced by an `upload_append` /
`blob_commit` at most one request after its write or its `Has` (docs of
gateway/cluster/writes.py). If that command committed before T, the mark set holds the
chunk; if after, the write or Has happened after T minus the request's duration, so while
the grace exceeds the longest request, the chunk is younger than the cutoff. A restarted
node counts every chunk as touched at startup (node/chunk_touch.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from cargohold import metadata_api as api
from cargohold.config import Config
from cargohold.errors import RegistryError
from cargohold.log import log_event
from node import audit_events
from node.chunkstore import ChunkStore
from node.metadata.trash import held_blobs
from node.pacing import LoopedPassRole, PassSchedule, PassStats

logger = logging.getLogger("cargohold.node.gc")

_CHUNK_REF = 40  # bytes per chunk in a packed recipe: 32 B id, 8 B length
_ID_LEN = 32
_NEVER = 365 * 24 * 3600.0  # the pass interval when scheduled passes are off


class StateSource(Protocol):
    """The part of the Raft member GC uses (node/metadata/raft.py)."""

    async def barrier(self) -> None: ...

    def state_snapshot(self) -> tuple[dict[str, Any], int]: ...

    def is_leader(self) -> bool: ...

    async def command(self, op: str, args: dict[str, Any]) -> Any: ...

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any: ...


@dataclass
class GcStats(PassStats):
    # The last pass.
    dry_run: bool = False
    applied_index: int = 0
    marked_chunks: int = 0
    scanned_chunks: int = 0
    swept_chunks: int = 0  # removed (a dry run: would remove)
    swept_bytes: int = 0
    spared_young: int = 0
    pruned_blobs: int = 0  # recipes forgotten (leader; a dry run: would forget)
    pruned_bytes: int = 0
    expired_uploads: int = 0
    purged_trash: int = 0  # trash entries forgotten (leader; a dry run: would forget)
    pass_seconds: float = 0.0
    # Since the process started (real passes only).
    reclaimed_chunks_total: int = 0
    reclaimed_bytes_total: int = 0
    pruned_blobs_total: int = 0
    purged_trash_total: int = 0
    failed_passes: int = 0


def mark(snapshot: dict[str, Any]) -> set[bytes]:
    """Every chunk id a recipe of the state references (blobs, manifests, the trash's
    manifests, open uploads, sealed activity-log segments)."""
    marked: set[bytes] = set()
    add = marked.add

    def take(packed: bytes) -> None:
        for i in range(0, len(packed), _CHUNK_REF):
            add(packed[i : i + _ID_LEN])

    for digest, recipe in snapshot["blobs"].items():
        take(recipe.chunks_for(digest))
    for present in snapshot["manifests"].values():
        for digest, manifest in present.items():
            take(manifest.recipe.chunks_for(digest))
    for trashed in snapshot.get("trash", {}).values():
        for digest, entry in trashed.items():
            take(entry.manifest.recipe.chunks_for(digest))
    for record in snapshot["uploads"].values():
        packed = getattr(record, "packed", None)
        if packed:
            take(packed)
    audit = snapshot.get("audit")
    if audit is not None:  # sealed activity-log segments (node/metadata/audit_log.py)
        for packed in audit.packed_recipes():
            take(packed)
    return marked


def unlinked_blobs(snapshot: dict[str, Any]) -> dict[str, int]:
    """{digest: size} of the recipes no repository links and no trashed manifest holds."""
    linked: set[str] = held_blobs(snapshot.get("trash", {}))
    for digests in snapshot["links"].values():
        linked |= digests
    return {d: r.size for d, r in snapshot["blobs"].items() if d not in linked}


class GcRole(LoopedPassRole[GcStats]):
    def __init__(self, cfg: Config, store: ChunkStore, raft: StateSource) -> None:
        self._cfg = cfg
        self._store = store
        self._raft = raft
        self._meta = api.Metadata(raft)
        self.stats = GcStats()
        life = cfg.lifecycle
        self._schedule = PassSchedule(life.gc_interval_seconds or _NEVER)
        self._logger = logger
        # Leader only: when each unlinked recipe was first seen unlinked (monotonic).
        self._unlinked_since: dict[str, float] = {}

    def _pass_failed(self, exc: Exception) -> None:
        self.stats.failed_passes += 1
        self.stats.end_pass(completed=False)

    async def run_pass(self, dry_run: bool = False) -> None:
        stats = self.stats
        stats.begin_pass()
        started = time.monotonic()
        stats.dry_run = dry_run
        stats.pruned_blobs = stats.pruned_bytes = stats.expired_uploads = 0
        stats.purged_trash = 0
        if self._raft.is_leader():
            await self._clean_state(dry_run)
        else:
            self._unlinked_since = {}  # a future leader term starts counting afresh
        marked, cutoff = await self._mark()
        await self._sweep(marked, cutoff, dry_run)
        stats.pass_seconds = round(time.monotonic() - started, 3)
        stats.end_pass()
        if not dry_run:
            await self._record(stats)
        log_event(
            logger,
            "gc.pass_done",
            dry_run=dry_run,
            index=stats.applied_index,
            marked=stats.marked_chunks,
            scanned=stats.scanned_chunks,
            swept=stats.swept_chunks,
            swept_bytes=stats.swept_bytes,
            spared_young=stats.spared_young,
            pruned=stats.pruned_blobs,
            seconds=stats.pass_seconds,
        )

    async def _record(self, stats: GcStats) -> None:
        """What this pass deleted, as one activity-log event (node/audit_events.py)."""
        if not self._cfg.audit.enabled or not (
            stats.pruned_blobs or stats.expired_uploads or stats.swept_chunks
        ):
            return
        actor = audit_events.system_actor("gc", self._cfg.node.id)
        detail = (
            f"pruned {stats.pruned_blobs} blob recipes ({stats.pruned_bytes} bytes), "
            f"expired {stats.expired_uploads} uploads, "
            f"swept {stats.swept_chunks} chunks ({stats.swept_bytes} bytes)"
        )
        await audit_events.append(
            self._raft, [audit_events.system_event(actor, "gc", reference="pass", detail=detail)]
        )

    # -- 1. the state (leader) --------------------------------------------------------------
    async def _clean_state(self, dry_run: bool) -> None:
        life, stats = self._cfg.lifecycle, self.stats
        await self._purge_trash(dry_run)
        await self._raft.barrier()
        snapshot, _ = self._raft.state_snapshot()
        unlinked = await asyncio.to_thread(unlinked_blobs, snapshot)
        now = time.monotonic()
        since = {d: self._unlinked_since.get(d, now) for d in unlinked}
        self._unlinked_since = since
        ready = sorted(d for d, first in since.items() if now - first >= life.gc_grace_seconds)
        if dry_run:
            stats.pruned_blobs = len(ready)
            stats.pruned_bytes = sum(unlinked[d] for d in ready)
            return
        try:
            for i in range(0, len(ready), life.gc_prune_batch):
                batch = tuple(ready[i : i + life.gc_prune_batch])
                pruned = await self._meta.gc_prune(batch)
                stats.pruned_blobs += pruned
                stats.pruned_bytes += sum(unlinked[d] for d in batch)
                for d in batch:
                    since.pop(d, None)
        except RegistryError as exc:
            # A log that cannot grow (or a lost leadership) must not stop the sweep: the
            # recipes left are pruned by a later pass.
            log_event(logger, "gc.prune_failed", logging.WARNING, error=str(exc))
        stats.pruned_blobs_total += stats.pruned_blobs
        try:
            stats.expired_uploads = await self._meta.expire_uploads(
                time.time(), self._cfg.node.upload_expire_after
            )
        except RegistryError as exc:
            log_event(logger, "gc.expire_failed", logging.WARNING, error=str(exc))

    async def _purge_trash(self, dry_run: bool) -> None:
        """What stayed in the trash longer than the retention goes (0: all of it)."""
        retention = self._cfg.lifecycle.trash_retention_seconds
        now = time.time()
        if dry_run:
            entries = await self._meta.trash_list()
            self.stats.purged_trash = sum(e.deleted_at <= now - retention for e in entries)
            return
        try:
            # The state records one `purge` per repository, as this actor.
            actor = audit_events.system_actor("gc", self._cfg.node.id, "trash purge")
            audit = actor if self._cfg.audit.enabled else None
            self.stats.purged_trash = await self._meta.trash_purge(now, retention, None, audit)
        except RegistryError as exc:
            log_event(logger, "gc.trash_purge_failed", logging.WARNING, error=str(exc))
            return
        self.stats.purged_trash_total += self.stats.purged_trash

    # -- 2. mark ------------------------------------------------------------------------------
    async def _mark(self) -> tuple[set[bytes], float]:
        mark_time = time.monotonic()
        await self._raft.barrier()
        snapshot, index = self._raft.state_snapshot()
        marked = await asyncio.to_thread(mark, snapshot)
        self.stats.applied_index = index
        self.stats.marked_chunks = len(marked)
        cutoff = mark_time - self._cfg.lifecycle.gc_grace_seconds
        # Touches older than the cutoff protect nothing any more (cutoffs only grow).
        touches = getattr(self._store, "touches", None)
        if touches is not None:
            touches.forget_before(cutoff)
        return marked, cutoff

    # -- 3. sweep -----------------------------------------------------------------------------
    async def _sweep(self, marked: set[bytes], cutoff: float, dry_run: bool) -> None:
        life, stats = self._cfg.lifecycle, self.stats
        stats.scanned_chunks = stats.swept_chunks = stats.swept_bytes = stats.spared_young = 0
        touches = self._store.touches
        page_size = max(1, self._cfg.node.chunk_list_page_size)
        pace = life.gc_rate_chunks
        after = b""
        while True:
            page = await self._store.list_ids(after, page_size)
            stats.scanned_chunks += len(page)
            garbage = [(cid, size) for cid, size in page if cid not in marked]
            idle = [(cid, size) for cid, size in garbage if touches.idle_before(cid, cutoff)]
            stats.spared_young += len(garbage) - len(idle)
            for i in range(0, len(idle), life.gc_delete_batch):
                batch = idle[i : i + life.gc_delete_batch]
                if dry_run:
                    count, freed = len(batch), sum(size for _, size in batch)
                else:
                    count, freed = await self._store.sweep([cid for cid, _ in batch], cutoff)
                    stats.reclaimed_chunks_total += count
                    stats.reclaimed_bytes_total += freed
                stats.swept_chunks += count
                stats.swept_bytes += freed
            if pace > 0 and page:
                await asyncio.sleep(len(page) / pace)
            if len(page) < page_size:
                return
            after = page[-1][0]
